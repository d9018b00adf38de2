"""The bundled default ensemble (ensemble/models/default) loads and gives plausible zones on real studies.

Floors, measured when the bundle was packed (see its MODEL_CARD.md):
- prostate158/001, expert zones: the full bundle (retrained 2026-11-30) scored WG DSC 0.88, TZ 0.83.
  Only the three fold-0 members held this case out (the other six trained on it), so this is a
  regression floor, not an accuracy claim; the cross-validated figures are in the model card (001:
  WG 0.58 by its fold-0 members). Floor: WG >= 0.65, TZ >= 0.65.
- Prostate3T-03-0001 (unlabelled, never seen in training): gland 43.1 mL; plausible adult range
  asserted (15-150 mL), both zones present, one connected gland.
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


def _run(t2, out):
    assert main(["predict", str(t2), "-o", str(out)]) == 0  # no --config: the bundled ensemble
    return json.loads((out / "zones.json").read_text()), nib.load(out / "zones.nii.gz")


@pytest.fixture(scope="module")
def expert_case_run(data_dir, tmp_path_factory):
    """One bundled prediction of prostate158/001, shared by the tests below (about 10 s on 2 cores)."""
    return _run(data_dir / "prostate158" / "001" / "t2.nii.gz", tmp_path_factory.mktemp("bundled") / "out")


def test_bundled_members_all_run_on_a_t2w_study(expert_case_run):
    side, _ = expert_case_run
    used = [m["member"] for m in side["members_used"]]
    listed = yaml.safe_load(BUNDLED.read_text())["members"]
    assert len(used) == len(listed) >= 3 and not side["members_skipped"]
    assert all(str(BUNDLED.parent) in m["path"] for m in side["members_used"])


def test_bundled_zones_on_expert_case_above_floor(data_dir, expert_case_run):
    case = data_dir / "prostate158" / "001"
    _, img = expert_case_run
    t2 = nib.load(case / "t2.nii.gz")
    assert img.shape == t2.shape and np.allclose(img.affine, t2.affine, atol=1e-6)
    pred = np.asarray(img.dataobj)
    ref = np.asarray(nib.load(case / "zones.nii.gz").dataobj)
    assert dice(pred > 0, ref > 0) >= 0.65
    assert dice(pred == 1, ref == 1) >= 0.65


def test_bundled_zones_plausible_on_unseen_study(data_dir, tmp_path):
    side, img = _run(data_dir / "unlabelled" / "Prostate3T-03-0001" / "t2.nii.gz", tmp_path / "out")
    pred = np.asarray(img.dataobj)
    vml = float(np.abs(np.linalg.det(img.affine[:3, :3]))) / 1000.0
    assert 15.0 <= (pred > 0).sum() * vml <= 150.0
    assert (pred == 1).any() and (pred == 2).any()
    assert ndimage.label(pred > 0)[1] == 1  # largest-component post-processing: one gland
    assert abs(side["volume_ml"]["WG"] - (pred > 0).sum() * vml) < 0.01
