"""A fold's cases under the cross-validation protocol: training, inner validation, held out.

Expert-labelled cases are split by patient (a user `splits_file`, checked, or a seeded stratified
k-fold); silver-only cases only ever train. Under `train.selection: inner` an inner-validation set of
`data.inner_val` expert patients is drawn from the fold's training patients: it chooses the epoch.
The held-out patients are scored once after training and decide nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


from mricore.errors import ConfigError, InputError
from mricore.splits import inner_patients, load_splits, make_splits

from .config import SegmentConfig
from .data import TEACHER_LABEL, TEACHER_ZONES


@dataclass
class Split:
    """One fold's cases. `held_out` never decides anything (scored once at the end); `inner` picks the
    epoch under train.selection inner; `train` includes silver-only cases."""
    train: list
    inner: list
    held_out: list
    splits: list | None


def teacher_datalist(cfg: SegmentConfig, fold: int | str) -> str | None:
    """`data.teacher` for `fold`: a `{fold}` in the path names the fold's own labels (segment.pseudo)."""
    return cfg.data.teacher.replace("{fold}", str(fold)) if cfg.data.teacher else None


def resolve_split(cfg: SegmentConfig, cases, fold: int | str) -> Split:
    """Expert-labelled cases are split by patient; silver-only and teacher cases only ever train.

    Outer split: `data.splits_file` or a seeded patient-level k-fold. Inner split (train.selection
    inner): `data.inner_val` expert patients drawn (seeded by split_seed and fold) from the fold's
    training patients; they leave the training set.
    """
    expert = [c for c in cases if cfg.data.label in c.labels]
    silver = [c for c in cases if cfg.data.label not in c.labels and (
        (cfg.data.silver_label and cfg.data.silver_label in c.labels) or TEACHER_LABEL in c.labels
        or TEACHER_ZONES in c.labels)]
    if not expert and not silver:
        raise InputError(cfg.data.root, f"no case has label '{cfg.data.label}'", 0, "check data.root and data.label")
    splits = None
    if fold == "all":
        train, held_out = list(expert), []
    else:
        if cfg.data.splits_file:
            splits = load_splits(cfg.data.splits_file)
        else:
            n_pat = len({c.patient_id for c in expert})
            if n_pat < cfg.data.folds:
                raise ConfigError("data.folds", f"needs at least as many expert-labelled patients ({n_pat})",
                                  cfg.data.folds, f"set --set data.folds={max(2, n_pat)} or use --fold all")
            splits = make_splits(expert, cfg.data.folds, cfg.data.split_seed)
        if not 0 <= int(fold) < len(splits):
            raise ConfigError("--fold", f"must be in 0..{len(splits) - 1} or 'all'", fold, "")
        train, held_out = fold_cases(cfg, splits[int(fold)], cases, int(fold))
    inner = []
    if cfg.train.selection == "inner":
        chosen = inner_patients([c.patient_id for c in train], cfg.data.inner_val, cfg.data.split_seed, fold)
        inner = [c for c in train if c.patient_id in chosen]
        train = [c for c in train if c.patient_id not in chosen]
    return Split(train + silver, inner, held_out, splits)


def fold_cases(cfg: SegmentConfig, s: dict, cases, fold: int) -> tuple[list, list]:
    """Training and held-out expert cases of one fold of a split, checked: every id known, the held-out
    list not empty, no patient on both sides."""
    where = cfg.data.splits_file or "the generated splits"
    by_id = {c.case_id: c for c in cases}
    unknown = [i for i in list(s["train"]) + list(s["val"]) if i not in by_id]
    if unknown:
        raise InputError(where, f"fold {fold} names case ids that are not in the dataset", unknown[:3],
                         "regenerate the splits for this data.root and data.datasets")
    if not s["val"]:
        raise InputError(where, f"fold {fold} has no held-out (val) cases", "[]",
                         "give every fold held-out cases, or train with --fold all")
    train, held_out = [by_id[i] for i in s["train"]], [by_id[i] for i in s["val"]]
    both = sorted({c.patient_id for c in train} & {c.patient_id for c in held_out})
    if both:
        raise InputError(where, f"fold {fold} has a patient in both train and val", both[:3],
                         "split by patient: move all cases of a patient to one side")
    return train, held_out
