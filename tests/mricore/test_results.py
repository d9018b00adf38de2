"""mricore.results: the zones.json record, the zone-volume rule, the case-folder writer and reader, the
three prediction layouts, and the case file names kept in that one module. Synthetic and fast."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from mricore import results
from mricore.errors import InputError
from mricore.results import ZonesRecord, find_predictions, read_case, write_case, zone_volumes_ml
from mricore.volume import Volume

ROOT = Path(__file__).resolve().parents[2]
AFFINE = np.diag([0.5, 0.5, 2.0, 1.0])  # 0.5 µL voxels


def _record(**kw) -> ZonesRecord:
    return ZonesRecord(case_id="c1", inputs=["t2.nii.gz"], grid={"shape": [4, 4, 2]},
                       volume_ml={"WG": 0.003, "TZ": 0.002, "PZ": 0.001}, **kw)


def _write(folder: Path, case_id: str = "c1", **kw) -> ZonesRecord:
    label = np.zeros((4, 4, 2), np.uint8)
    label[0, :2, 0], label[1, 0, 0] = 1, 2
    image = Volume(np.zeros((1, 4, 4, 2), np.float32), AFFINE, ["T2W"], case_id)
    record = ZonesRecord(case_id=case_id, inputs=[], grid=results.grid_record(image),
                         volume_ml=zone_volumes_ml(label, image.voxel_volume_ml), **kw)
    return write_case(folder, image, label, record)


def test_record_round_trip_keeps_every_field_and_writes_the_version_first(tmp_path):
    r = _record(method="mean", review={"verdict": "ok", "reasons": [], "score": 0.0, "checks": []},
                timings_s={"network": {"a": 1.0}})
    d = r.to_dict()
    assert next(iter(d)) == "schema_version" and d["schema_version"] == results.SCHEMA_VERSION
    assert "uncertainty" not in d  # None fields are not written
    assert ZonesRecord.from_dict(json.loads(json.dumps(d))) == r


def test_a_file_without_schema_version_is_read_as_version_1():
    d = _record().to_dict()
    del d["schema_version"]
    assert ZonesRecord.from_dict(d).schema_version == 1


def test_zone_volume_rule_on_a_small_array():
    label = np.zeros((3, 3, 3), np.uint8)
    label[0, :2] = 1   # 6 TZ voxels
    label[2, 0] = 2    # 3 PZ voxels
    # voxel 1/3 µL: WG = 9 voxels = 0.003 mL, each zone rounded to 3 decimals (1 µL)
    assert zone_volumes_ml(label, 1 / 3000) == {"WG": 0.003, "TZ": 0.002, "PZ": 0.001}


def test_write_case_lists_its_files_and_reads_back(tmp_path):
    written = _write(tmp_path / "out", timings_s={"read": 0.1})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [results.ZONES_JSON, results.ZONES_NII]
    assert list(written.outputs) == [results.ZONES_NII] and "write" in written.timings_s
    assert written.volume_ml == {"WG": 0.002, "TZ": 0.001, "PZ": 0.001}
    assert read_case(tmp_path / "out") == written


# The three layouts a reader finds, each with the case ids it yields.
def test_find_predictions_in_a_case_folder(tmp_path):
    _write(tmp_path / "one", case_id="A7")
    assert find_predictions(tmp_path / "one") == {"A7": tmp_path / "one" / results.ZONES_NII}


def test_find_predictions_in_a_batch(tmp_path):
    for cid in ("p1", "p2"):
        _write(tmp_path / "batch" / cid, case_id=cid)
    assert sorted(find_predictions(tmp_path / "batch")) == ["p1", "p2"]


def test_find_predictions_in_a_flat_folder_leaves_out_probability_and_gradcam_maps(tmp_path):
    for name in ("p1.nii.gz", "p2.nii", "p1_prob.nii.gz", "p1_gradcam_TZ.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    assert sorted(find_predictions(tmp_path)) == ["p1", "p2"]


# Each bad case folder: one line naming the file, the rule and the fix.
BAD = {
    "missing zones.json": (None, "must hold zones.json"),
    "unknown schema version": ({"schema_version": 99}, "schema version must be 1..2"),
    "unknown field": ({"volumes_ml": {}}, "unknown field 'volumes_ml'; fix: did you mean 'volume_ml'?"),
    "not JSON": ("{", "not valid JSON"),
}


@pytest.mark.parametrize("change, message", BAD.values(), ids=BAD.keys())
def test_a_bad_case_folder_is_a_one_line_input_error(tmp_path, change, message):
    folder = tmp_path / "case"
    _write(folder)
    path = folder / results.ZONES_JSON
    if change is None:
        path.unlink()
    elif isinstance(change, str):
        path.write_text(change)
    else:
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(InputError) as e:
        read_case(folder)
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError):  # the finder reads the record the same way
        find_predictions(folder)


# Other folders' files that share a case file's name: the ensemble folder's config (written by
# `ensemble pack`/`export`, read by ensemble.config) and the evaluation report page (mricore.report).
OTHER_FOLDERS: dict = {}  # modules allowed a case file name of their own (none)


def _literals(path: Path) -> set[str]:
    """The string constants of a module's code (docstrings left out: prose may name files)."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs}


def test_case_file_names_are_literals_in_results_only():
    found = {}
    for pkg in ("mricore", "segment", "ensemble", "localize"):
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            hits = _literals(path) & set(results.CASE_FILES) - OTHER_FOLDERS.get(rel, set())
            if hits and rel != "mricore/results.py":
                found[rel] = sorted(hits)
    assert not found, f"case file names outside mricore/results.py: {found}"
