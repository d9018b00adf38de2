"""`segment evaluate`: real Prostate158 references (cropped around the gland, world position kept),
predictions written as `segment predict` would, the report folder, and every bad input via main(argv)."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mricore.metrics import dice, distance_metrics
from segment.cli import main
from segment.evaluate import evaluate

CASES = ("001", "021")


def _crop_save(src, dst, lo, hi, label):
    img = nib.load(str(src))
    arr = np.asarray(img.dataobj)[lo[0]:hi[0], lo[1]:hi[1], :]
    aff = img.affine.copy()
    aff[:3, 3] = (img.affine @ np.r_[lo[0], lo[1], 0, 1.0])[:3]  # keep every voxel's world position
    out = nib.Nifti1Image(arr.astype(np.uint8 if label else np.float32), aff)
    out.header.set_qform(aff, 1)
    out.header.set_sform(aff, 1)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, str(dst))
    return out


@pytest.fixture(scope="module")
def setup(data_dir, tmp_path_factory):
    """refs/<case>/{t2,zones}.nii.gz cropped to +-24 mm around the gland; preds/<case>.nii.gz: 001 is the
    reference itself, 021 the reference with its PZ eroded by one voxel in-plane."""
    root = tmp_path_factory.mktemp("evaluate")
    for c in CASES:
        src = data_dir / "prostate158" / c
        z = np.asarray(nib.load(str(src / "zones.nii.gz")).dataobj)
        centre = np.argwhere(z > 0).mean(0).round().astype(int)
        lo, hi = centre[:2] - 55, centre[:2] + 55
        _crop_save(src / "t2.nii.gz", root / "refs" / c / "t2.nii.gz", lo, hi, label=False)
        ref = _crop_save(src / "zones.nii.gz", root / "refs" / c / "zones.nii.gz", lo, hi, label=True)
        pred = np.asarray(ref.dataobj).copy()
        if c == "021":
            pz = pred == 2
            pred[pz & ~ndimage.binary_erosion(pz, structure=np.ones((3, 3, 1)))] = 0
        (root / "preds").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(pred, ref.affine, ref.header), str(root / "preds" / f"{c}.nii.gz"))
    return root


def test_report_from_real_references(setup, tmp_path):
    html = evaluate(setup / "preds", setup / "refs", tmp_path / "rep", progress=False)
    assert html.exists()
    with open(tmp_path / "rep" / "metrics.csv") as f:
        rows = {(r["case_id"], r["zone"]): r for r in csv.DictReader(f)}
    assert set(rows) == {(c, z) for c in CASES for z in ("WG", "TZ", "PZ")}
    assert float(rows[("001", "WG")]["dsc"]) == 1.0 and float(rows[("001", "PZ")]["hd95"]) == 0.0
    # 021: recompute from the files with the library functions.
    ref = np.asarray(nib.load(str(setup / "refs" / "021" / "zones.nii.gz")).dataobj)
    pred_img = nib.load(str(setup / "preds" / "021.nii.gz"))
    pred = np.asarray(pred_img.dataobj)
    assert float(rows[("021", "PZ")]["dsc"]) == pytest.approx(dice(pred == 2, ref == 2))
    assert float(rows[("021", "PZ")]["dsc"]) < 0.9
    spacing = pred_img.header.get_zooms()[:3]
    assert float(rows[("021", "PZ")]["hd95"]) == pytest.approx(distance_metrics(pred == 2, ref == 2, spacing)["hd95"])
    doc = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert doc["summary"]["preds"]["PZ"]["dsc"]["n"] == 2
    assert doc["settings"]["label"] == "zones" and doc["settings"]["cases_evaluated"] == list(CASES)
    assert html.read_text().count("<img ") >= 7 + 2  # 7 metric plots + overlays (2 distinct cases)


def test_cli_ok_and_refuses_overwrite(setup, tmp_path, capsys):
    argv = ["evaluate", "--pred", str(setup / "preds"), "--ref", str(setup / "refs"), "-o", str(tmp_path / "r")]
    assert main(argv) == 0
    assert "report.html" in capsys.readouterr().out
    before = (tmp_path / "r" / "metrics.csv").read_text()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--force" in err and "Traceback" not in err
    assert (tmp_path / "r" / "metrics.csv").read_text() == before
    assert main(argv + ["--force"]) == 0


def _bad(setup, tmp_path, capsys, pred, ref=None, label="zones", match=""):
    out = tmp_path / "out"
    code = main(["evaluate", "--pred", str(pred), "--ref", str(ref or setup / "refs"), "--label", label, "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err
    assert match in err
    assert not out.exists()  # nothing written


def test_missing_prediction_folder(setup, tmp_path, capsys):
    _bad(setup, tmp_path, capsys, tmp_path / "nope", match="prediction folder does not exist")


def test_prediction_path_is_a_file(setup, tmp_path, capsys):
    _bad(setup, tmp_path, capsys, setup / "preds" / "001.nii.gz", match="must be a folder")


def test_empty_prediction_folder(setup, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _bad(setup, tmp_path, capsys, tmp_path / "empty", match="no <case>.nii.gz predictions")


def test_no_matching_case(setup, tmp_path, capsys):
    d = tmp_path / "other"
    d.mkdir()
    (d / "999.nii.gz").write_bytes((setup / "preds" / "001.nii.gz").read_bytes())
    _bad(setup, tmp_path, capsys, d, match="no prediction matches")


def test_label_key_absent(setup, tmp_path, capsys):
    _bad(setup, tmp_path, capsys, setup / "preds", label="lesion", match="label 'lesion'")


def test_missing_reference_dataset(setup, tmp_path, capsys):
    _bad(setup, tmp_path, capsys, setup / "preds", ref=tmp_path / "nowhere", match="dataset path does not exist")


@pytest.mark.parametrize("change", ["shape", "affine"])
def test_prediction_on_another_grid(setup, tmp_path, capsys, change):
    d = tmp_path / "moved"
    d.mkdir()
    img = nib.load(str(setup / "preds" / "001.nii.gz"))
    arr, aff = np.asarray(img.dataobj), img.affine.copy()
    if change == "shape":
        arr = arr[:-2]
    else:
        aff[:3, 3] += 1.5  # shifted by 1.5 mm: same shape, different place
    nib.save(nib.Nifti1Image(arr, aff), str(d / "001.nii.gz"))
    _bad(setup, tmp_path, capsys, d, match="must lie on the reference grid")


def _dsc_rows(rep):
    with open(rep / "metrics.csv") as f:
        return {(r["case_id"], r["zone"]): float(r["dsc"]) for r in csv.DictReader(f)}


def test_ensemble_batch_layout_and_flat_nnunet_references(setup, tmp_path):
    """Predictions as `ensemble predict DATASET` lays them out (<case>/zones.nii.gz) and references as
    an nnU-Net labelsTr-style flat folder of <case>.nii.gz give the same numbers as the usual layout."""
    import shutil

    batch, flat = tmp_path / "batch", tmp_path / "labelsTr"
    flat.mkdir()
    for c in CASES:
        (batch / c).mkdir(parents=True)
        shutil.copy(setup / "preds" / f"{c}.nii.gz", batch / c / "zones.nii.gz")
        shutil.copy(setup / "refs" / c / "zones.nii.gz", flat / f"{c}.nii.gz")
    (batch / "summary.csv").write_text("case_id,status\n")
    evaluate(setup / "preds", setup / "refs", tmp_path / "usual", progress=False)
    evaluate(batch, setup / "refs", tmp_path / "from_batch", progress=False)
    evaluate(setup / "preds", flat, tmp_path / "from_flat", progress=False)
    usual = _dsc_rows(tmp_path / "usual")
    assert _dsc_rows(tmp_path / "from_batch") == usual == _dsc_rows(tmp_path / "from_flat")

