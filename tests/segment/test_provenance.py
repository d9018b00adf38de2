"""Which studies a model folder learnt from (segment.provenance), on the shipped bundle's real folders."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from mricore.datasets import load_dataset
from mricore.errors import InputError
from segment.provenance import seen_studies, teacher_path, training_fold

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "ensemble" / "models" / "default"
PROSTATEX = {f"ProstateX-{n}" for n in ("0000", "0002", "0003", "0004", "0005", "0176")}


def made_up_teacher(data_dir, patient: str):
    """A teacher-labelled second study of `patient` in another dataset (its files are never read)."""
    case = next(c for c in load_dataset(data_dir) if c.case_id == patient)
    return replace(case, case_id=f"{patient}_second", dataset="elsewhere_teacher", labels={"wg_teacher": case.images["T2W"]})


def copy_member(tmp_path: Path, name: str = "unet2d_long_fold0", **data) -> Path:
    """The member's description (not its weights) in tmp_path, with `data` keys of its config changed."""
    dest = tmp_path / name
    dest.mkdir()
    for f in ("model.json", "splits.json"):
        shutil.copy(BUNDLE / name / f, dest / f)
    (dest / "weights.pt").touch()  # read_model asks only that it exists
    cfg = yaml.safe_load((BUNDLE / name / "config.yaml").read_text())
    cfg["data"].update(data)
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


@pytest.mark.parametrize("member, seen, held_out", [
    # fold 0 holds out Prostate158 001 and 021; the silver ProstateX studies train every fold
    ("unet2d_long_fold0", {"002", "Patient_52209036", "Patient_68619"}, {"001", "021"}),
    # fold 2 holds out one I2CVB patient, another family of the same fold gives the same answer
    ("dynunet2d_long_fold2", {"001", "002", "021", "Patient_68619"}, {"Patient_52209036"}),
])
def test_a_fold_member_saw_its_training_patients_and_not_its_held_out_ones(data_dir, member, seen, held_out):
    got = seen_studies(BUNDLE / member, ROOT, teacher=[])
    assert set(got) == seen | PROSTATEX
    assert not set(got) & (held_out | {"Case00"})  # PROMISE12 is in no member's datasets
    assert got["ProstateX-0000"] == ["prostatex/ProstateX-0000 (zones_ai)"]
    assert got["002"] == ["prostate158/002 (zones)"]


def test_a_second_study_of_a_held_out_patient_is_seen_only_by_the_folds_that_train_the_patient(data_dir):
    # Patient ids are compared across datasets: a teacher study of 001 elsewhere never trains fold 0.
    twin = made_up_teacher(data_dir, "001")
    assert "001" not in seen_studies(BUNDLE / "unet2d_long_fold0", ROOT, teacher=[twin])
    assert seen_studies(BUNDLE / "unet2d_long_fold1", ROOT, teacher=[twin])["001"] == [
        "prostate158/001 (zones)", "elsewhere_teacher/001_second (wg_teacher)"]


def test_excluded_patients_take_no_part_in_any_dataset(data_dir, tmp_path):
    # A calibration-fold member (data.exclude_patients) never sees an excluded patient: not its silver
    # study, not a teacher study of it elsewhere; the others train as before (the folds are unchanged).
    twin = made_up_teacher(data_dir, "ProstateX-0002")
    member = copy_member(tmp_path, exclude_patients=["ProstateX-0002", "ProstateX-0176"])
    got = seen_studies(member, ROOT, teacher=[twin])
    assert set(got) == (PROSTATEX - {"ProstateX-0002", "ProstateX-0176"}) | {"002", "Patient_52209036", "Patient_68619"}
    before = seen_studies(BUNDLE / "unet2d_long_fold0", ROOT, teacher=[twin])
    assert before["ProstateX-0002"][-1] == "elsewhere_teacher/ProstateX-0002_second (wg_teacher)" and "002" in before


def test_the_locator_trained_on_silver_and_teacher_studies_only(data_dir):
    _, fold = training_fold(BUNDLE / "locator", ROOT, teacher=[made_up_teacher(data_dir, "Case00")])
    assert fold.held_out == [] and fold.splits is None  # fold 'all'
    assert {c.patient_id for c in fold.train} == PROSTATEX | {"Case00"}


def test_the_teacher_path_is_relative_to_base_and_names_its_fold(tmp_path):
    # A packed member's config is repository-relative (ensemble pack), not relative to its folder.
    assert teacher_path(BUNDLE / "unet2d_long_fold0", ROOT) == ROOT / "runs" / "teacher" / "datalist.json"
    # Self-training members name one datalist per fold.
    folder = copy_member(tmp_path, teacher=str(tmp_path / "fold_{fold}" / "datalist.json"))
    assert teacher_path(folder, ROOT) == tmp_path / "fold_0" / "datalist.json"
    assert teacher_path(copy_member(tmp_path, "dynunet2d_long_fold1", teacher=None), ROOT) is None


def test_a_missing_teacher_datalist_is_an_input_error(data_dir, tmp_path):
    folder = copy_member(tmp_path, teacher=str(tmp_path / "absent" / "datalist.json"))
    with pytest.raises(InputError, match="teacher datalist"):
        training_fold(folder, ROOT)
    assert seen_studies(folder, ROOT, teacher=[])  # given the teacher's studies, it answers


def test_a_teacher_datalist_is_read_when_present(data_dir, tmp_path):
    t2 = data_dir / "promise12" / "Case00" / "t2.nii.gz"
    rows = [{"patient_id": "Case00", "case_id": "Case00", "dataset": "promise12_teacher", "T2W": str(t2), "wg_teacher": str(t2)}]
    (tmp_path / "datalist.json").write_text(json.dumps(rows))
    folder = copy_member(tmp_path, teacher=str(tmp_path / "datalist.json"))
    assert seen_studies(folder, ROOT)["Case00"] == ["promise12_teacher/Case00 (wg_teacher)"]


def test_splits_the_data_no_longer_give_are_an_input_error(data_dir, tmp_path):
    folder = copy_member(tmp_path)
    splits = json.loads((folder / "splits.json").read_text())
    splits[0]["train"], splits[0]["val"] = splits[0]["val"], splits[0]["train"]
    (folder / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(InputError, match="no longer give the folds"):
        training_fold(folder, ROOT, teacher=[])


def test_a_folder_without_config_is_an_input_error(tmp_path):
    folder = copy_member(tmp_path)
    (folder / "config.yaml").unlink()
    with pytest.raises(InputError, match="no config.yaml"):
        training_fold(folder, ROOT, teacher=[])
