"""mricore.protocol: the one cross-validation protocol of segment and localize. Patient-level k-fold
(stratified by label presence), patients grouped across datasets, the inner split from training
patients only, splits files (JSON round trip, checks), the learning-curve subset and the epoch
selection rule. Segment's and localize's use of it: tests/segment/test_segment_protocol.py and
tests/localize/test_train.py."""

import json
from types import SimpleNamespace

import pytest

from localize.config import DataConfig as LocalizeData
from mricore.config import from_dict
from mricore.datasets import Case, load_dataset
from mricore.errors import ConfigError, InputError
from mricore.protocol import (Selection, check_fold, inner_patients, load_splits, make_splits, patient_folds,
                              patient_subset, save_splits, split_fold)
from segment.config import DataConfig as SegmentData


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


def _data(**kw):
    """A data config section as both commands have it (folds, split_seed, splits_file, inner_val)."""
    return SimpleNamespace(**{"root": "data", "folds": 3, "split_seed": 0, "splits_file": None, "inner_val": 1, **kw})


def test_a_patient_with_studies_in_several_datasets_lands_in_one_fold():
    # P00 has a study in dataset a and one in dataset b (other case ids, same patient id).
    cases = [Case("a_P00", "P00", dataset="a"), Case("b_P00", "P00", dataset="b")] + [
        Case(f"a_P{p:02d}", f"P{p:02d}", dataset="a") for p in range(1, 9)]
    for positive in (None, [True, False] + [p % 2 == 0 for p in range(1, 9)]):
        for fold in range(3):
            f = split_fold(_data(), cases, fold, inner=True, positive=positive)
            for part in (f.train, f.inner, f.held_out):
                ids = {c.case_id for c in part}
                assert ("a_P00" in ids) == ("b_P00" in ids), (positive, fold)


def test_split_fold_is_the_generated_split_with_an_inner_split_from_training_patients():
    cases = _cases(n_patients=9)
    f = split_fold(_data(), cases, 1, inner=True)
    assert f.splits == make_splits(cases, 3, 0)
    assert {c.case_id for c in f.held_out} == set(f.splits[1]["val"])
    inner = {c.patient_id for c in f.inner}
    assert inner == inner_patients([c.patient_id for c in cases if c.case_id in f.splits[1]["train"]], 1, 0, 1)
    assert not inner & {c.patient_id for c in f.train + f.held_out}
    assert [c.case_id for c in f.train + f.inner] != [] and len(f.train + f.inner + f.held_out) == len(cases)


def test_fold_all_holds_nothing_out():
    f = split_fold(_data(), _cases(4), "all", inner=False)
    assert f.splits is None and f.held_out == [] and f.inner == [] and len(f.train) == 8


BAD_FOLDS = [
    (dict(folds=3), 3, ConfigError, "must be in 0..2"),                   # fold index out of range
    (dict(folds=5), 0, ConfigError, "needs at least as many"),           # more folds than patients
    (dict(inner_val=4), "all", ConfigError, "selection=fixed"),          # inner split needs a training patient
]


@pytest.mark.parametrize("data,fold,error,match", BAD_FOLDS)
def test_bad_fold_requests_are_refused(data, fold, error, match):
    with pytest.raises(error, match=match):
        split_fold(_data(**data), _cases(4), fold, inner=True)


def test_two_studies_with_one_case_id_are_refused():
    cases = [Case("X", "P0", dataset="a"), Case("X", "P0", dataset="b")] + _cases(4)
    with pytest.raises(InputError, match="share a case id"):
        split_fold(_data(), cases, 0, inner=False)


USER_SPLITS = [
    ({"train": ["a1", "b"], "val": ["a2"]}, "patient in both train and val"),   # a1, a2: one patient
    ({"train": ["b", "zzz"], "val": ["a1"]}, "not in the dataset"),            # unknown id, not dropped
    ({"train": ["a1", "b"], "val": []}, "no held-out"),                         # empty held-out list
]


@pytest.mark.parametrize("split,match", USER_SPLITS)
def test_a_splits_file_is_checked_against_the_cases(tmp_path, split, match):
    cases = [Case("a1", "A"), Case("a2", "A"), Case("b", "B")]
    with pytest.raises(InputError, match=match):
        check_fold(split, cases, 0, "s.json")
    (tmp_path / "s.json").write_text(json.dumps([{"fold": 0, **split}]))
    with pytest.raises(InputError, match=match):
        split_fold(_data(splits_file=str(tmp_path / "s.json")), cases, 0, inner=False)


def test_a_splits_file_replaces_the_generated_folds(tmp_path):
    cases = _cases(4)
    ids = [c.case_id for c in cases]
    user = [{"fold": 0, "train": ids[2:], "val": ids[:2]}, {"fold": 1, "train": ids[:2], "val": ids[2:]}]
    save_splits(user, tmp_path / "s.json")
    f = split_fold(_data(splits_file=str(tmp_path / "s.json")), cases, 0, inner=False)
    assert f.splits == user and [c.case_id for c in f.held_out] == ids[:2]


@pytest.mark.parametrize("cls", [SegmentData, LocalizeData])
@pytest.mark.parametrize("key,value,match", [
    ("folds", 1, "data.folds must be >= 2"),
    ("inner_val", 0, "data.inner_val must be >= 1"),
])
def test_both_commands_check_the_protocol_fields(cls, key, value, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(cls, {key: value}, "cfg.yaml", "data.")


def test_patient_subset_keeps_a_positive_patient_and_is_seeded():
    patients = [f"P{i}" for i in range(10)]
    positive = [i < 2 for i in range(10)]
    chosen = patient_subset(patients, positive, 3, seed=0, fold=1)
    assert len(chosen) == 3 and chosen & {"P0", "P1"}
    assert chosen == patient_subset(patients, positive, 3, seed=0, fold=1)
    assert patient_subset(patients, positive, None, 0, 1) == set(patients)
    assert patient_subset(patients, positive, 10, 0, 1) == set(patients)


SELECTIONS = [
    # (inner scores per epoch, patience, best epoch, epoch after which training stops or None)
    ([0.2, 0.5, 0.4, 0.3], 2, 1, 3),
    ([0.2, 0.5, 0.6, 0.7], 2, 3, None),
    ([float("nan"), 0.1, float("nan"), float("nan")], 2, 1, 3),  # NaN never improves
    ([0.3, 0.3], 1, 0, 1),                             # a tie is no gain
]


@pytest.mark.parametrize("scores,patience,best,stop", SELECTIONS)
def test_selection_keeps_the_best_inner_epoch_and_stops_after_patience(scores, patience, best, stop):
    sel, stopped = Selection(patience), None
    for epoch, s in enumerate(scores):
        sel.update(s, epoch)
        if sel.stop:
            stopped = epoch
            break
    assert sel.best_epoch == best and stopped == stop
