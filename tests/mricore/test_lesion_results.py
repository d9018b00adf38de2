"""mricore.lesion_results: the `localize predict` folder's writer, reader and finder. Synthetic and fast."""

import json

import nibabel as nib
import numpy as np
import pytest

from mricore.errors import InputError, OutputExistsError
from mricore.lesion_results import (check_lesion_case, find_lesion_predictions, read_lesion_case,
                                    write_lesion_case)
from mricore.results import LESION_FILES, LESION_GRADCAM_FILES, LESION_JSON
from mricore.volume import Volume

AFFINE = np.diag([0.5, 0.5, 2.0, 1.0])


def _write(folder, case_id="c1", explain=None, **kw):
    image = Volume(np.zeros((1, 4, 4, 2), np.float32), AFFINE, ["T2W"], case_id)
    prob = np.zeros((4, 4, 2), np.float64)
    prob[1, 1, 0] = 0.8
    labels = (prob > 0.5).astype(np.int64)
    record = {"case_id": case_id, "model": {"name": "m"}, "patient_score": 0.8,
              "candidates": [{"label": 1, "score": 0.8}], **kw}
    return write_lesion_case(folder, image, prob, labels, record, explain)


def test_writes_every_file_on_the_image_grid_with_the_record_last(tmp_path):
    r = _write(tmp_path / "o", started=None)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted(LESION_FILES)
    prob = nib.load(str(tmp_path / "o" / LESION_FILES[0]))
    cand = nib.load(str(tmp_path / "o" / LESION_FILES[1]))
    assert prob.get_data_dtype() == np.float32 and cand.get_data_dtype() == np.uint16
    assert np.allclose(prob.affine, AFFINE) and cand.shape == (4, 4, 2)
    assert read_lesion_case(tmp_path / "o") == r


def test_explain_files_and_seconds_go_into_the_record(tmp_path):
    def heat_map(stage):
        for name in LESION_GRADCAM_FILES:
            (stage / name).write_bytes(b"x")
        return {"files": list(LESION_GRADCAM_FILES)}

    image = Volume(np.zeros((1, 2, 2, 2), np.float32), AFFINE, ["T2W"], "c1")
    r = write_lesion_case(tmp_path, image, np.zeros((2, 2, 2)), np.zeros((2, 2, 2)),
                          {"case_id": "c1"}, heat_map, started=0.0)
    assert r["explain"] == {"files": list(LESION_GRADCAM_FILES)} and r["seconds"] > 0
    assert list(r)[-2:] == ["explain", "seconds"]
    assert all((tmp_path / n).is_file() for n in LESION_GRADCAM_FILES)


def test_a_rerun_without_explain_removes_the_old_heat_map(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / LESION_GRADCAM_FILES[0]).write_bytes(b"old")
    _write(out)
    assert not (out / LESION_GRADCAM_FILES[0]).exists()


def test_a_failed_write_leaves_nothing(tmp_path):
    def broken(stage):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        _write(tmp_path / "o", explain=broken)
    assert not (tmp_path / "o").exists() and not list(tmp_path.iterdir())


def test_existing_outputs_need_force(tmp_path):
    _write(tmp_path)
    with pytest.raises(OutputExistsError):
        check_lesion_case(tmp_path, explain=False, force=False)
    check_lesion_case(tmp_path, explain=False, force=True)
    check_lesion_case(tmp_path / "new", explain=True, force=False)


def test_finder_reads_one_folder_or_a_folder_of_them(tmp_path):
    _write(tmp_path / "one", case_id="a")
    assert find_lesion_predictions(tmp_path / "one") == {"a": tmp_path / "one"}
    _write(tmp_path / "batch" / "x", case_id="b")
    _write(tmp_path / "batch" / "y", case_id="c")
    (tmp_path / "batch" / ".staging").mkdir()  # hidden folders are not predictions
    (tmp_path / "batch" / ".staging" / LESION_JSON).write_text("{}")
    assert find_lesion_predictions(tmp_path / "batch") == {"b": tmp_path / "batch" / "x",
                                                           "c": tmp_path / "batch" / "y"}


BAD_FOLDERS = {  # what is under the folder -> words of the one-line error
    "missing folder": (None, "does not exist"),
    "empty folder": ({}, "no lesion.json"),
    "lesion.json not JSON": ({"a": "{"}, "not valid JSON"),
    "lesion.json a list": ({"a": "[]"}, "must hold case_id"),
    "lesion.json without candidates": ({"a": json.dumps({"case_id": "a", "model": {}, "patient_score": 0})},
                                       "missing candidates"),
}


@pytest.mark.parametrize("name", BAD_FOLDERS)
def test_finder_errors(tmp_path, name):
    files, words = BAD_FOLDERS[name]
    pred = tmp_path / "pred"
    if files is not None:
        pred.mkdir()
        for sub, text in files.items():
            (pred / sub).mkdir()
            (pred / sub / LESION_JSON).write_text(text)
    with pytest.raises(InputError, match=words):
        find_lesion_predictions(pred)


def test_one_case_in_two_folders_is_an_error(tmp_path):
    _write(tmp_path / "x", case_id="a")
    _write(tmp_path / "y", case_id="a")
    with pytest.raises(InputError, match="one prediction folder per case"):
        find_lesion_predictions(tmp_path)


def test_reader_names_the_missing_file(tmp_path):
    with pytest.raises(InputError, match="must hold lesion.json"):
        read_lesion_case(tmp_path)
