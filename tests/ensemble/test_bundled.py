"""The bundled default ensemble (ensemble/models/default) loads and gives plausible zones on real studies.

Floors, measured when the bundle was packed (see its MODEL_CARD.md and bench/results/peer_taps.json):
- prostate158/001, expert zones: the full bundle scored WG DSC 0.935, TZ 0.907 (the bundles before,
  0.940 / 0.922, 0.835 / 0.819 and 0.763 / 0.759). Only the three fold-0 members held this case out (the
  other six trained on it), so this is a regression floor, not an accuracy claim; the cross-validated
  figures (WG 0.591 on this case) are in the model card. Floor: WG >= 0.90, TZ >= 0.88.
- The same study in a field of view 75 mm wider on one side (zero padding, the affine moved with it),
  so the gland lies about 37 mm off its centre: the locator finds the gland and the members segment
  around it, so the zones stay within 0.02 DSC of the unmoved study's (a 100 mm crop around the
  image centre would cut the gland).
- PROMISE12 Case00 (endorectal coil, another site; never trained on): WG DSC 0.420 (the bundles
  before: 0.002, 0.413, 0.396, 0.481; the target was 0.80). Floor 0.40.
- Prostate3T-03-0001 (no expert labels; its TAPS gland was a teacher label in training, zones
  unknown): gland 41.1 mL; plausible adult range asserted (15-150 mL), both zones present, one gland.
"""

import json

import nibabel as nib
import numpy as np
import pytest
import yaml
from scipy import ndimage

from ensemble.cli import main
from ensemble.config import BUNDLED
from mricore.metrics import dice

pytestmark = pytest.mark.skipif(not BUNDLED.exists(), reason="bundled ensemble not packed (run `make bundle`)")
PAD = 160  # voxels of 0.47 mm added on one side: the gland lies about 37 mm off the new centre


def _run(t2, out):
    assert main(["predict", str(t2), "-o", str(out)]) == 0  # no --config: the bundled ensemble
    return json.loads((out / "zones.json").read_text()), nib.load(out / "zones.nii.gz")


@pytest.fixture(scope="module")
def expert_case_run(data_dir, tmp_path_factory):
    """One bundled prediction of prostate158/001, shared by the tests below (about 5 s on 2 cores)."""
    return _run(data_dir / "prostate158" / "001" / "t2.nii.gz", tmp_path_factory.mktemp("bundled") / "out")


def test_bundled_members_and_locator_all_run_on_a_t2w_study(expert_case_run):
    side, _ = expert_case_run
    used = [m["member"] for m in side["members_used"]]
    listed = yaml.safe_load(BUNDLED.read_text())
    assert len(used) == len(listed["members"]) >= 3 and not side["members_skipped"]
    assert all(str(BUNDLED.parent) in m["path"] for m in side["members_used"])
    assert listed["locator"] and side["locator"]["used"] and 30 < side["locator"]["gland_ml"] < 120


def test_bundled_zones_on_expert_case_above_floor(data_dir, expert_case_run):
    case = data_dir / "prostate158" / "001"
    _, img = expert_case_run
    t2 = nib.load(case / "t2.nii.gz")
    assert img.shape == t2.shape and np.allclose(img.affine, t2.affine, atol=1e-6)
    pred = np.asarray(img.dataobj)
    ref = np.asarray(nib.load(case / "zones.nii.gz").dataobj)
    assert dice(pred > 0, ref > 0) >= 0.90
    assert dice(pred == 1, ref == 1) >= 0.88


def test_bundled_zones_follow_an_off_centre_gland(data_dir, expert_case_run, tmp_path):
    case = data_dir / "prostate158" / "001"
    t2 = nib.load(case / "t2.nii.gz")
    aff = t2.affine.copy()
    aff[:3, 3] -= aff[:3, 0] * PAD
    moved = np.pad(np.asarray(t2.dataobj, np.float32), [(PAD, 0), (0, 0), (0, 0)])
    nib.save(nib.Nifti1Image(moved, aff), tmp_path / "t2.nii.gz")
    side, img = _run(tmp_path / "t2.nii.gz", tmp_path / "out")
    assert side["locator"]["used"]
    ref = np.asarray(nib.load(case / "zones.nii.gz").dataobj)
    here = np.asarray(img.dataobj)[PAD:]
    there = np.asarray(expert_case_run[1].dataobj)
    for z in (1, 2):
        assert abs(dice(here == z, ref == z) - dice(there == z, ref == z)) <= 0.02
    assert not np.asarray(img.dataobj)[:PAD].any()


def test_bundled_gland_on_an_endorectal_coil_study_never_trained_on(data_dir, tmp_path):
    case = data_dir / "promise12" / "Case00"
    _, img = _run(case / "t2.nii.gz", tmp_path / "out")
    ref = np.asarray(nib.load(case / "wg.nii.gz").dataobj)
    assert dice(np.asarray(img.dataobj) > 0, ref > 0) >= 0.40


def test_bundled_zones_plausible_on_unseen_study(data_dir, tmp_path):
    side, img = _run(data_dir / "unlabelled" / "Prostate3T-03-0001" / "t2.nii.gz", tmp_path / "out")
    pred = np.asarray(img.dataobj)
    vml = float(np.abs(np.linalg.det(img.affine[:3, :3]))) / 1000.0
    assert 15.0 <= (pred > 0).sum() * vml <= 150.0
    assert (pred == 1).any() and (pred == 2).any()
    assert ndimage.label(pred > 0)[1] == 1  # largest-component post-processing: one gland
    assert abs(side["volume_ml"]["WG"] - (pred > 0).sum() * vml) < 0.01
