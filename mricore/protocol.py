"""The cross-validation protocol of `segment train` and `localize train`, in one place.

- **Outer split, by patient.** The labelled cases are dealt to `data.folds` folds by patient id (all
  cases of a patient, whatever dataset holds them, land in one fold), after a seeded shuffle,
  optionally stratified by a per-case flag (localize: lesion presence; a patient is positive when any
  of its cases is). Or the folds come from a user's `data.splits_file`, checked on load and against
  the cases. Fold `all` holds nothing out.
- **Inner split, from training patients only.** Under `train.selection: inner`, `data.inner_val` of the
  fold's training patients (seeded by split_seed and fold) leave training and choose the epoch
  (`Selection`). The held-out patients are scored once, after training, and decide nothing.
- **splits.json**: `[{fold, train: [case ids], val: [case ids]}]`, written with every model folder.

The `data` arguments are a command's data config section (segment.config.DataConfig,
localize.config.DataConfig): they share the fields `folds`, `split_seed`, `splits_file` and
`inner_val`, whose rules `validate_protocol` checks at load.

Example:
    >>> fold = split_fold(cfg.data, cases, 0, inner=True)
    >>> fold.train, fold.inner, fold.held_out   # lists of the given cases
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, InputError
from .outputs import read_json, write_json


def validate_protocol(data, where) -> None:
    """The protocol's rules on a data config section (called from its `validate`)."""
    if data.folds < 2:
        raise ConfigError(where, "data.folds must be >= 2", data.folds, "e.g. data.folds: 5")
    if data.inner_val < 1:
        raise ConfigError(where, "data.inner_val must be >= 1 (patients)", data.inner_val,
                          "or set train.selection: fixed to train without an inner split")


@dataclass(frozen=True)
class Fold:
    """One fold's cases (in the order they were given). `train` trains the weights; `inner` chooses the
    epoch under train.selection inner (empty otherwise); `held_out` is scored once at the end and never
    decides anything (empty for fold 'all'); `splits` are every fold's ids, saved as splits.json (None
    for fold 'all')."""
    train: list
    inner: list
    held_out: list
    splits: list[dict] | None


def split_fold(data, cases: list, fold: int | str, inner: bool, positive: list[bool] | None = None) -> Fold:
    """Fold `fold` (an index or 'all') of `cases` (objects with case_id and patient_id) under the protocol.

    `positive` (one flag per case) stratifies the outer folds and the inner draw; `inner` draws the
    inner-validation patients from the fold's training patients.
    Raises ConfigError (bad fold, too few patients for the folds or the inner split) or InputError
    (duplicate case ids, a splits file that is malformed or does not fit the cases).
    """
    twice = sorted(i for i, n in Counter(c.case_id for c in cases).items() if n > 1)
    if twice:
        raise InputError(data.root, "two studies share a case id (splits name cases by id)", twice[:3],
                         "restrict data.datasets, or give the studies distinct case_id values in a datalist")
    splits, train, held_out = None, list(cases), []
    if fold != "all":
        splits = fold_splits(data, cases, positive)
        if not 0 <= int(fold) < len(splits):
            raise ConfigError("--fold", f"must be in 0..{len(splits) - 1} or 'all'", fold, "pass --fold 0, or --fold all")
        train, held_out = check_fold(splits[int(fold)], cases, int(fold), data.splits_file or "the generated splits")
    chosen: set[str] = set()
    if inner:
        flags = None if positive is None else _patient_flags([c.patient_id for c in cases], positive)
        chosen = inner_patients([c.patient_id for c in train], data.inner_val, data.split_seed, fold, flags)
    return Fold([c for c in train if c.patient_id not in chosen], [c for c in train if c.patient_id in chosen],
                held_out, splits)


def fold_splits(data, cases: list, positive: list[bool] | None = None) -> list[dict]:
    """Every fold of `cases`: `data.splits_file` (checked by load_splits) or a seeded patient-level
    k-fold (make_splits with data.folds and data.split_seed)."""
    if data.splits_file:
        return load_splits(data.splits_file)
    n_pat = len({c.patient_id for c in cases})
    if n_pat < data.folds:
        raise ConfigError("data.folds", f"needs at least as many labelled patients ({n_pat})", data.folds,
                          f"set --set data.folds={max(2, n_pat)} or use --fold all")
    return make_splits(cases, data.folds, data.split_seed, positive)


def check_fold(split: dict, cases: list, fold: int, where) -> tuple[list, list]:
    """(training cases, held-out cases) of one fold of a split, checked: every id is one of `cases`,
    the held-out list is not empty, no patient is on both sides. `where` names the split's source."""
    by_id = {c.case_id: c for c in cases}
    unknown = [i for i in list(split["train"]) + list(split["val"]) if i not in by_id]
    if unknown:
        raise InputError(where, f"fold {fold} names case ids that are not in the dataset (its labelled cases)",
                         unknown[:3], "regenerate the splits for this data.root and data.datasets")
    if not split["val"]:
        raise InputError(where, f"fold {fold} has no held-out (val) cases", "[]",
                         "give every fold held-out cases, or train with --fold all")
    train, held_out = [by_id[i] for i in split["train"]], [by_id[i] for i in split["val"]]
    both = sorted({c.patient_id for c in train} & {c.patient_id for c in held_out})
    if both:
        raise InputError(where, f"fold {fold} has a patient in both train and val", both[:3],
                         "split by patient: move all cases of a patient to one side")
    return train, held_out


def _patient_flags(patients: list[str], positive: list[bool]) -> dict[str, bool]:
    """patient id -> True when any of its cases is positive (`patients`: one id per case)."""
    out: dict[str, bool] = {}
    for p, y in zip(patients, positive):
        out[p] = out.get(p, False) or bool(y)
    return out


def patient_folds(patients: list[str], positive: list[bool] | None = None, k: int = 5, seed: int = 0) -> list[list[str]]:
    """Assign unique patient ids to k folds; positives and negatives are dealt round-robin separately
    after a seeded shuffle, so every fold holds positives when there are at least k of them."""
    uniq = sorted(set(patients))
    if k < 2 or k > len(uniq):
        raise ConfigError("folds", f"k must be in 2..{len(uniq)} (number of patients)", k, "lower the fold count")
    pos = {p: False for p in uniq}
    if positive is not None:
        for p, y in zip(patients, positive):
            pos[p] = pos[p] or bool(y)
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    start = 0
    for group in ([p for p in uniq if pos[p]], [p for p in uniq if not pos[p]]):
        group = list(rng.permutation(group))
        for i, p in enumerate(group):
            folds[(start + i) % k].append(str(p))
        start = (start + len(group)) % k
    return [sorted(f) for f in folds]


def make_splits(cases, k: int = 5, seed: int = 0, positive=None) -> list[dict]:
    """[{fold, train: [case ids], val: [case ids]}] with folds made on patient ids (patient_folds);
    ids keep the order of `cases`."""
    patients = [c.patient_id for c in cases]
    folds = patient_folds(patients, positive, k, seed)
    out = []
    for i, f in enumerate(folds):
        fs = set(f)
        out.append({"fold": i,
                    "train": [c.case_id for c in cases if c.patient_id not in fs],
                    "val": [c.case_id for c in cases if c.patient_id in fs]})
    return out


def inner_patients(patients, n: int, seed: int, fold, positive: dict | None = None) -> set[str]:
    """The `n` patients of a fold's training patients that choose the epoch (inner validation).

    Seeded by (seed, fold), so a fold's inner split is reproducible. With `positive` ({patient: bool})
    positive patients are taken first, so inner cases hold both classes, but one always stays in
    training. Raises ConfigError when fewer than n + 1 patients are available.
    """
    uniq = sorted({str(p) for p in patients})
    if len(uniq) <= n:
        raise ConfigError("train.selection", f"inner needs more than data.inner_val={n} training patients in the "
                          "fold", len(uniq), "set --set train.selection=fixed (last epoch) or lower data.inner_val")
    rng = np.random.default_rng(seed * 1000 + (0 if fold == "all" else int(fold) + 1))
    if positive is None:
        order = list(rng.permutation(uniq))
    else:
        pos = list(rng.permutation([p for p in uniq if positive[p]]))
        neg = list(rng.permutation([p for p in uniq if not positive[p]]))
        order = pos[1:] + neg + pos[:1]
    return {str(p) for p in order[:n]}


def patient_subset(patients: list[str], positive: list[bool], n: int | None, seed: int, fold) -> set[str]:
    """`n` of the patients (learning curves; one id per case), positive ones in proportion (at least
    one), seeded by (seed, fold, n); every patient when n is None or not below their number."""
    flags = _patient_flags(patients, positive)
    if n is None or n >= len(flags):
        return set(flags)
    rng = np.random.default_rng([seed, 0 if fold == "all" else int(fold) + 1, n])
    pos = list(rng.permutation(sorted(p for p, v in flags.items() if v)))
    neg = list(rng.permutation(sorted(p for p, v in flags.items() if not v)))
    k = min(len(pos), max(1, round(n * len(pos) / len(flags)))) if pos else 0
    return set(pos[:k] + neg[:n - k])


class Selection:
    """Best epoch and early stopping on the inner split: an epoch improves when its score is finite and
    above the best so far; training stops after `patience` epochs without improvement."""

    def __init__(self, patience: int, best: float = float("-inf"), best_epoch: int = -1, bad: int = 0):
        self.patience, self.best, self.best_epoch, self.bad = patience, best, best_epoch, bad

    def update(self, score: float, epoch: int) -> bool:
        """Record epoch `epoch`'s inner score; True when it is the new best."""
        improved = bool(np.isfinite(score) and score > self.best)
        if improved:
            self.best, self.best_epoch, self.bad = float(score), epoch, 0
        else:
            self.bad += 1
        return improved

    @property
    def stop(self) -> bool:
        return self.bad >= self.patience


def save_splits(splits: list[dict], path: str | Path) -> Path:
    return write_json(splits, path)


def load_splits(path: str | Path) -> list[dict]:
    """Read splits written by `save_splits`; reject a malformed file, a case in both train and val
    of a fold, and a case validated in two folds."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "splits file does not exist", "nothing at that path", "create it with make_splits/save_splits")
    splits = read_json(path, "regenerate the splits")
    if not isinstance(splits, list) or not all(isinstance(s, dict) and {"train", "val"} <= set(s) for s in splits):
        raise InputError(path, "splits must be a list of {fold, train, val}", type(splits).__name__,
                         "regenerate the splits with make_splits/save_splits")
    validated: dict[str, int] = {}
    for i, s in enumerate(splits):
        overlap = set(s["train"]) & set(s["val"])
        if overlap:
            raise InputError(path, "a case is in both train and val", sorted(overlap)[:3], "regenerate the splits")
        for c in s["val"]:
            if c in validated:
                raise InputError(path, "a case is in the validation set of two folds",
                                 f"{c!r} in folds {validated[c]} and {i}", "regenerate the splits")
            validated[c] = i
    return splits


def parse_fold(value: str) -> int | str:
    """`--fold` as typed: a fold index, or 'all' (train on every labelled patient). Raises UserError."""
    from .errors import UserError

    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise UserError("--fold", "must be an integer or 'all'", repr(value), "e.g. --fold 0") from None
