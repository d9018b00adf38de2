"""mricore.splits: patient-level k-fold stratified by label presence, JSON round trip, overlap check."""

import json

import pytest

from mricore.datasets import Case, load_dataset
from mricore.errors import ConfigError, InputError
from mricore.splits import load_splits, make_splits, patient_folds, save_splits


def _cases(n_patients=10, per_patient=2):
    """Several cases (e.g. scans at two visits) per patient."""
    return [Case(f"P{p:02d}_v{v}", f"P{p:02d}") for p in range(n_patients) for v in range(per_patient)]


@pytest.mark.parametrize("k", [2, 3, 5])
def test_no_patient_in_two_folds_and_cases_move_together(k):
    cases = _cases()
    splits = make_splits(cases, k=k, seed=1)
    assert len(splits) == k
    patient = {c.case_id: c.patient_id for c in cases}
    seen_val = []
    for s in splits:
        train_p = {patient[c] for c in s["train"]}
        val_p = {patient[c] for c in s["val"]}
        assert not train_p & val_p
        assert sorted(s["train"] + s["val"]) == sorted(patient)      # every case, once
        for p in val_p:                                               # both visits together
            assert {f"{p}_v0", f"{p}_v1"} <= set(s["val"])
        seen_val += s["val"]
    assert sorted(seen_val) == sorted(patient)                        # each case validated once


POSITIVES = [
    # (n patients, positive patient indices, k): every fold must hold a positive when #pos >= k
    (10, [0, 3], 2),
    (10, [1, 4, 7], 3),
    (12, [0, 1, 2, 3, 4], 5),
    (7, [6, 5, 4], 3),
]


@pytest.mark.parametrize("n,pos,k", POSITIVES)
def test_every_fold_holds_positives_when_possible(n, pos, k):
    patients = [f"P{i}" for i in range(n)]
    positive = [i in pos for i in range(n)]
    for seed in range(5):
        folds = patient_folds(patients, positive, k=k, seed=seed)
        assert all(any(f"P{i}" in f for i in pos) for f in folds), (seed, folds)
        sizes = [len(f) for f in folds]
        assert max(sizes) - min(sizes) <= 1                            # balanced


def test_positive_patient_if_any_case_is_positive():
    # P0 has one negative and one positive scan: it is a positive patient, and the only one.
    folds = patient_folds(["P0", "P0", "P1", "P2", "P3"], [False, True, False, False, False], k=2, seed=0)
    assert sum("P0" in f for f in folds) == 1


def test_seed_changes_assignment_but_is_repeatable():
    patients = [f"P{i}" for i in range(20)]
    assert patient_folds(patients, k=4, seed=3) == patient_folds(patients, k=4, seed=3)
    assert patient_folds(patients, k=4, seed=3) != patient_folds(patients, k=4, seed=4)


@pytest.mark.parametrize("k", [1, 11])   # too few folds; more folds than patients
def test_bad_fold_count(k):
    with pytest.raises(ConfigError, match="k must be in 2..10"):
        patient_folds([f"P{i}" for i in range(10)], k=k)


def test_json_round_trip(tmp_path):
    splits = make_splits(_cases(), k=3)
    path = save_splits(splits, tmp_path / "splits.json")
    assert load_splits(path) == splits


def test_load_splits_rejects_overlap(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps([{"fold": 0, "train": ["a", "b"], "val": ["b", "c"]}]))
    with pytest.raises(InputError, match="both train and val") as e:
        load_splits(path)
    assert "'b'" in str(e.value)


BAD_SPLIT_FILES = [
    ([{"fold": 0, "train": ["a"], "val": ["b"]}, {"fold": 1, "train": ["c"], "val": ["b"]}],
     "validation set of two folds"),                                  # 'b' validated twice
    ({"train": ["a"], "val": ["b"]}, "list of"),                      # not a list of folds
    ([{"fold": 0, "train": ["a"]}], "list of"),                       # no val key
    ("{broken", "not valid JSON"),
]


@pytest.mark.parametrize("content,match", BAD_SPLIT_FILES)
def test_load_splits_rejects_malformed_files(tmp_path, content, match):
    path = tmp_path / "splits.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(InputError, match=match):
        load_splits(path)


def test_load_splits_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_splits(tmp_path / "nope.json")


def test_real_cases_split_by_patient_with_lesion_strata(data_dir):
    """The six ProstateX cases: 3 csPCa-positive (0000, 0002, 0005), 3 negative; 3 folds."""
    import numpy as np

    from mricore.io import read_label

    cases = load_dataset(data_dir / "prostatex")
    positive = [bool(np.any(read_label(c.labels["lesion"].path).array)) for c in cases]
    assert sum(positive) == 3
    splits = make_splits(cases, k=3, positive=positive)
    pos_ids = {c.case_id for c, p in zip(cases, positive) if p}
    assert all(len(pos_ids & set(s["val"])) == 1 for s in splits)
