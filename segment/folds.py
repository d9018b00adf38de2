"""Which of a dataset's cases a segment fold trains on, validates on and holds out.

The protocol itself (patient-level folds, `data.splits_file` checks, the inner split) is
mricore.protocol's; segment adds which cases take part: expert-labelled cases (`data.label`) are
split, silver-only and teacher cases only ever train.
"""

from __future__ import annotations

from dataclasses import replace

from mricore.errors import InputError
from mricore.protocol import Fold, split_fold

from .config import SegmentConfig
from .data import TEACHER_LABEL, TEACHER_ZONES


def config_cases(cfg: SegmentConfig) -> list:
    """The expert and silver cases a config names (data.root / data.files, only data.datasets if set);
    the teacher datalist's are added by the caller (`teacher_datalist`)."""
    from mricore.datasets import load_dataset

    cases = load_dataset(cfg.data.root, cfg.data.files)
    return [c for c in cases if c.dataset in cfg.data.datasets] if cfg.data.datasets else cases


def teacher_datalist(cfg: SegmentConfig, fold: int | str) -> str | None:
    """`data.teacher` for `fold`: a `{fold}` in the path names the fold's own labels (segment.pseudo)."""
    return cfg.data.teacher.replace("{fold}", str(fold)) if cfg.data.teacher else None


def resolve_split(cfg: SegmentConfig, cases, fold: int | str) -> Fold:
    """Fold `fold` of the expert-labelled cases under mricore.protocol (unstratified outer folds; the
    inner split under train.selection inner), with silver-only and teacher cases added to training,
    except any study of a patient the fold holds out or validates on (patient ids compared across
    datasets: a second study of a held-out patient must not teach the fold what it is scored on).
    Patients in data.exclude_patients take no part at all. Raises InputError when no case has the
    expert or a silver label."""
    excluded = set(cfg.data.exclude_patients)
    cases = [c for c in cases if c.patient_id not in excluded]
    expert = [c for c in cases if cfg.data.label in c.labels]
    silver = [c for c in cases if cfg.data.label not in c.labels and (
        (cfg.data.silver_label and cfg.data.silver_label in c.labels) or TEACHER_LABEL in c.labels
        or TEACHER_ZONES in c.labels)]
    if not expert and not silver:
        raise InputError(cfg.data.root, f"no case has label '{cfg.data.label}'", 0, "check data.root and data.label")
    split = split_fold(cfg.data, expert, fold, inner=cfg.train.selection == "inner")
    kept_out = {c.patient_id for c in split.held_out + split.inner}
    return replace(split, train=split.train + [c for c in silver if c.patient_id not in kept_out])
