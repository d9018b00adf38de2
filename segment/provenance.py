"""Which studies a trained segment model folder learnt from, rebuilt from the folder itself.

A model folder keeps its config (config.yaml) and, for a numbered fold, every fold's expert split
(splits.json). Its cases are rebuilt as `segment train` built them (segment.train.load_data: the
config's datasets under data.root plus the teacher datalist, then segment.folds.resolve_split), and
the rebuilt expert split is checked against splits.json, so data that changed since training cannot
pass silently. A study is out of sample for the model when no study of its patient (patient ids
compared across datasets, as the protocol does) trained it or chose its epoch.

Example:
    >>> seen = seen_studies("ensemble/models/default/unet2d_long_fold0", base=".")
    >>> "001" in seen        # prostate158/001 is held out by fold 0
    False
"""

from __future__ import annotations

import json
from pathlib import Path

from mricore.config import from_dict, resolve_paths
from mricore.datasets import Case, load_dataset
from mricore.errors import InputError
from mricore.modelfolder import read_model
from mricore.protocol import Fold

from .caseprep import TEACHER_LABEL, TEACHER_ZONES
from .config import SegmentConfig
from .folds import config_cases, resolve_split, teacher_datalist


def folder_config(folder: Path, base: Path) -> SegmentConfig:
    """The folder's config.yaml, its relative paths taken against `base` (not the folder: `ensemble pack`
    writes them repository-relative)."""
    import yaml

    path = folder / "config.yaml"
    if not path.is_file():
        raise InputError(folder, "model folder has no config.yaml (its training data are unknown)", "no such file",
                         "use a folder written by `segment train` or `ensemble pack`")
    return from_dict(SegmentConfig, resolve_paths(yaml.safe_load(path.read_text()) or {}, base.resolve()), str(path))


def teacher_path(folder: str | Path, base: str | Path, cfg: SegmentConfig | None = None) -> Path | None:
    """The teacher datalist model folder `folder` trained with (data.teacher, `{fold}` filled in, relative
    paths against `base`), or None when it had none. Whether the file is still there is not checked.
    `cfg`: the folder's config when the caller has read it already (`folder_config`)."""
    cfg = cfg or folder_config(Path(folder), Path(base))
    return Path(teacher_datalist(cfg, read_model(folder).fold)) if cfg.data.teacher else None


def training_fold(folder: str | Path, base: str | Path, teacher: list[Case] | None = None) -> tuple[SegmentConfig, Fold]:
    """(config, fold) of segment model folder `folder`: the cases that trained it (`train`), chose its
    epoch (`inner`) and were held out (`held_out`), rebuilt from its config.yaml and model.json.

    `base`: the folder the config's relative paths are relative to (the repository root for a packed
    bundle; absolute paths ignore it). `teacher`: the teacher datalist's cases, when that file is not
    at hand (e.g. every study it could have held: an upper bound); None reads the datalist the config
    names (`teacher_path`).

    Raises InputError when the teacher datalist is needed and missing, or when the rebuilt split is not
    the folder's splits.json; ConfigError for a config that no longer loads."""
    folder, base = Path(folder), Path(base)
    meta, cfg = read_model(folder), folder_config(folder, base)
    cases = config_cases(cfg)
    path = teacher_path(folder, base, cfg)
    if teacher is None and path is not None:
        if not path.is_file():
            raise InputError(path, f"{folder.name} trained with this teacher datalist, which is not here",
                             "no such file", "regenerate it (python -m bench.peer_accuracy --teacher runs/teacher), "
                             "or pass the studies it held as `teacher`")
        teacher = load_dataset(path)
    split = resolve_split(cfg, cases + list(teacher or []), meta.fold)
    saved = folder / "splits.json"
    if saved.is_file() and split.splits != json.loads(saved.read_text()):
        raise InputError(saved, "the data no longer give the folds this model was trained on",
                         f"rebuilt from {cfg.data.root}", "point base at the data the model was trained on")
    return cfg, split


def seen_studies(folder: str | Path, base: str | Path, teacher: list[Case] | None = None) -> dict[str, list[str]]:
    """Patient id -> the studies of that patient that trained model folder `folder` or chose its epoch,
    each as "dataset/case_id (label key)". A study whose patient is not a key is out of sample for the
    model. Arguments and errors as `training_fold`."""
    cfg, fold = training_fold(folder, base, teacher)
    keys = [k for k in (cfg.data.label, cfg.data.silver_label, TEACHER_LABEL, TEACHER_ZONES) if k]
    seen: dict[str, list[str]] = {}
    for c in fold.train + fold.inner:
        label = next((k for k in keys if k in c.labels), "no label")
        seen.setdefault(c.patient_id, []).append(f"{c.dataset}/{c.case_id} ({label})")
    return seen
