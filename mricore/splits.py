"""Patient-level k-fold splits, stratified by label presence, saved to and read from JSON.

No patient is ever in two folds: all cases of a patient move together.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import ConfigError, InputError


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
    """[{fold, train: [case ids], val: [case ids]}] with folds made on patient ids."""
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


def save_splits(splits: list[dict], path: str | Path) -> Path:
    from .io import write_json

    return write_json(splits, path)


def load_splits(path: str | Path) -> list[dict]:
    """Read splits written by `save_splits`; reject a malformed file, a case in both train and val
    of a fold, and a case validated in two folds."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "splits file does not exist", None, "create it with make_splits/save_splits")
    try:
        splits = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(path, "not valid JSON", str(e), "regenerate the splits") from None
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
