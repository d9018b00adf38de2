"""Quality checks (mricore.qa): every check passes on a real case and fails on a corrupted copy of it.

Input checks run on real T2W studies and real ADC/DWI/sagittal series; output checks run on the
expert zone map of prostate158/001 (a real map) and copies of it broken one way at a time, so each
test isolates one check without a network.
"""

from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml

from mricore import review
from mricore.config import from_dict
from mricore.io import read_label, read_nifti
from mricore.review_limits import FITTED

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "ensemble/models/default/ensemble.yaml"
# The shipped limits: the fitted ones live only in the bundle's ensemble.yaml (mricore.review_limits).
CFG = from_dict(review.ReviewConfig, yaml.safe_load(BUNDLE.read_text())["review"], str(BUNDLE))
CASE = "prostate158/001"


def verdicts(checks) -> dict:
    return {c.name: c.verdict for c in checks}


@pytest.fixture(scope="module")
def t2(data_dir):
    return read_nifti(data_dir / CASE / "t2.nii.gz", "T2W")


@pytest.fixture(scope="module")
def zones(data_dir):
    return read_label(data_dir / CASE / "zones.nii.gz", "zones")


def input_verdicts(array, affine) -> dict:
    return verdicts(review.input_checks(review.input_features(array, affine), CFG))


def out_verdicts(label, affine, t2w, **kw) -> dict:
    args = {"entropy": 0.3, "disagreement": 0.1, **kw}
    return verdicts(review.output_checks(review.output_features(label, affine, t2w=t2w, **args), CFG))


# ----------------------------------------------------------------------------- input

@pytest.mark.parametrize("case", ["prostate158/001", "prostate158/021", "prostatex/ProstateX-0002",
                                  "unlabelled/Prostate3T-03-0001"])
def test_real_axial_t2w_passes_every_input_check(data_dir, case):
    v = read_nifti(data_dir / case / "t2.nii.gz", "T2W")
    got = input_verdicts(v.array[0], v.affine)
    assert set(got.values()) == {"ok"}, got


def test_sagittal_series_is_rejected_by_its_slice_normal(data_dir):
    from mricore.dicom import read_dicom_series

    folder = next((data_dir / "dicom/ProstateX-0000").glob("*t2tsesag*"))
    v = read_dicom_series(folder, "T2W")
    got = input_verdicts(v.array[0], v.affine)
    assert got["slice_tilt_deg"] == "reject"


def test_adc_on_its_own_grid_is_rejected_by_its_resolution(data_dir):
    v = read_nifti(data_dir / "prostatex/ProstateX-0000/adc.nii.gz", "T2W")
    assert input_verdicts(v.array[0], v.affine)["inplane_mm"] == "reject"


def test_dwi_on_the_t2_grid_is_rejected_by_its_content(data_dir, t2):
    """prostate158's DWI shares the T2 grid exactly: only the voxels can tell it is not a T2W."""
    v = read_nifti(data_dir / CASE / "dwi.nii.gz", "T2W")
    assert v.same_grid(t2)
    got = input_verdicts(v.array[0], v.affine)
    assert got["dark_fraction"] == got["sharpness"] == "reject"
    assert got["inplane_mm"] == got["slice_tilt_deg"] == "ok"


def test_adc_resampled_onto_the_t2_grid_is_caught(data_dir):
    from mricore.align import resample_to

    t2x = read_nifti(data_dir / "prostatex/ProstateX-0000/t2.nii.gz", "T2W")
    adc = resample_to(read_nifti(data_dir / "prostatex/ProstateX-0000/adc.nii.gz", "T2W"), t2x)
    got = input_verdicts(adc.array[0], adc.affine)
    assert "ok" not in (got["dark_fraction"], got["sharpness"])


def test_thick_slices_and_small_field_of_view_need_review(t2):
    x, aff = t2.array[0], t2.affine.copy()
    aff[:3, 2] *= 3
    assert input_verdicts(x[:, :, ::3], aff)["slice_mm"] == "review"
    assert input_verdicts(x[60:180, 60:180], t2.affine)["fov_mm"] == "review"  # 120 px x 0.47 mm = 56 mm


def test_noise_and_bias_field_need_review(t2, rng):
    x = t2.array[0]
    med = float(np.median(x[x > 0.1 * np.percentile(x, 99.5)]))
    noisy = np.abs(x + rng.normal(0, 0.35 * med, x.shape) + 1j * rng.normal(0, 0.35 * med, x.shape))
    assert input_verdicts(noisy.astype(np.float32), t2.affine)["noise"] == "review"
    # A left-right ramp, 4x from one side to the other (voxel axis i points left-right here).
    lr = int(np.argmax(np.abs(t2.affine[0, :2])))
    ramp = np.linspace(np.log(0.5), np.log(2.0), x.shape[lr], dtype=np.float32)
    biased = x * np.exp(np.expand_dims(ramp, [a for a in range(3) if a != lr]))
    assert input_verdicts(biased, t2.affine)["nonuniformity"] == "review"


# ----------------------------------------------------------------------------- output

def test_expert_map_passes_every_output_check(t2, zones):
    got = out_verdicts(zones.array[0], zones.affine, t2.array[0])
    assert set(got.values()) == {"ok"}, got


def test_no_gland_needs_review(t2, zones):
    got = out_verdicts(np.zeros_like(zones.array[0]), zones.affine, t2.array[0])
    assert got["gland_ml"] == "review"


def test_tiny_gland_and_missing_tz_need_review(t2, zones):
    z = zones.array[0].copy()
    k = int(np.flatnonzero(z.any(axis=(0, 1))).mean())
    z[:, :, :k] = 0
    z[:, :, k + 1:] = 0  # one slice of gland: ~3 mL
    assert out_verdicts(z, zones.affine, t2.array[0])["gland_ml"] == "review"
    z = zones.array[0].copy()
    z[z == 1] = 2  # no TZ
    got = out_verdicts(z, zones.affine, t2.array[0])
    assert got["tz_share"] == "review" and got["pz_posterior_mm"] == "review"


def test_gaps_holes_and_missing_mid_gland_pz_need_review(t2, zones):
    z = zones.array[0].copy()
    present = np.flatnonzero(z.any(axis=(0, 1)))
    mid = present[len(present) // 2]
    gap = z.copy()
    gap[:, :, mid] = 0
    assert out_verdicts(gap, zones.affine, t2.array[0])["slice_gaps"] == "review"
    from scipy import ndimage

    holes = z.copy()
    for k in present:
        inner = ndimage.binary_erosion(z[:, :, k] > 0, iterations=4)
        holes[:, :, k][inner] = 0
    assert out_verdicts(holes, zones.affine, t2.array[0])["hole_fraction"] == "review"
    no_pz = z.copy()
    third = len(present) // 3
    no_pz[:, :, present[third]:present[-third]][no_pz[:, :, present[third]:present[-third]] == 2] = 1
    assert out_verdicts(no_pz, zones.affine, t2.array[0])["pz_midgland"] == "review"


def test_gland_at_the_edge_of_the_field_of_view_needs_review(t2, zones):
    z = zones.array[0]
    i0 = int(np.argwhere(z > 0)[:, 0].min()) + 5  # crop through the gland
    got = out_verdicts(z[i0:], zones.affine, t2.array[0][i0:])  # affine origin irrelevant here
    assert got["border_mm"] == "review"


def test_anterior_posterior_header_flip_needs_review(t2, zones):
    """Same voxels, the affine flipped front to back: the expert PZ is now anterior of the TZ."""
    ap = max((0, 1), key=lambda a: abs(zones.affine[1, a]))
    f = np.eye(4)
    f[ap, ap], f[ap, 3] = -1, zones.shape[ap] - 1
    got = out_verdicts(zones.array[0], zones.affine @ f, t2.array[0])
    assert got["pz_posterior_mm"] == "review"


def test_swapped_zones_fail_the_t2_intensity_check(t2, zones):
    z = zones.array[0]
    swapped = np.where(z == 1, 2, np.where(z == 2, 1, 0)).astype(np.uint8)
    assert out_verdicts(swapped, zones.affine, t2.array[0])["pz_tz_intensity"] == "review"


def test_disagreement_entropy_and_removed_components_need_review(t2, zones):
    got = out_verdicts(zones.array[0], zones.affine, t2.array[0], disagreement=0.9, entropy=0.9,
                       removed_fraction=0.4)
    assert got["disagreement"] == got["entropy"] == got["removed_fraction"] == "review"
    z = zones.array[0].copy()
    z[:20, :20, :5] = 1  # a second blob far from the gland
    from mricore.zones import largest_component

    stats = largest_component(z)[1]
    assert stats["components"] == 2 and 0 < stats["removed_fraction"] < 0.5


def test_slab_skips_the_whole_gland_checks(data_dir):
    case = data_dir / "i2cvb/Patient_68619"
    z = read_label(case / "zones.nii.gz", "zones")
    t2v = read_nifti(case / "t2.nii.gz", "T2W")
    got = out_verdicts(z.array[0], z.affine, t2v.array[0])
    assert got["gland_ml"] == got["tz_share"] == got["pz_midgland"] == "n/a"
    assert "review" not in got.values() and "reject" not in got.values()


# ----------------------------------------------------------------------------- verdict

def test_verdict_is_the_worst_check_with_reasons_and_score():
    checks = [review._check("a", 1.0, 2.0, "max"), review._check("b", 3.0, 2.0, "max"),
              review._check("c", 0.5, 1.0, "min", "reject"), review._na("d", "n/a here")]
    v = review.verdict(checks)
    assert v["verdict"] == "reject" and v["score"] == pytest.approx(2.0)
    assert v["reasons"] == ["b 3 (expected <= 2)", "c 0.5 (expected >= 1)"]
    assert review.verdict(checks[:1])["verdict"] == "ok" and review.verdict(checks[:1])["score"] < 1
    # An input check that only asks for review sets the verdict, not the failure score; a reject counts.
    noisy_input = review.input_checks({"slice_tilt_deg": 0.0, "inplane_mm": 0.5, "slice_mm": 3.0, "fov_mm": 150.0,
                                   "coverage_mm": 60.0, "dark_fraction": 0.3, "sharpness": 0.7, "noise": 0.9,
                                   "nonuniformity": 1.0}, CFG)
    v = review.verdict(noisy_input + checks[:1])
    assert v["verdict"] == "review" and v["score"] < 1
    v = review.verdict(review.input_checks({"slice_tilt_deg": 90.0, "inplane_mm": 0.5, "slice_mm": 3.0, "fov_mm": 150.0,
                                    "coverage_mm": 60.0, "dark_fraction": 0.3, "sharpness": 0.7, "noise": 0.1,
                                    "nonuniformity": 1.0}, CFG))
    assert v["verdict"] == "reject" and v["score"] == pytest.approx(2.0)
    merged = review.merge(review.verdict(checks[:1], {"x": 1.0}), review.verdict(checks[1:2], {"y": 2.0}))
    assert merged["verdict"] == "review" and merged["features"] == {"x": 1.0, "y": 2.0}


def test_config_rejects_out_of_range_limits():
    from mricore.config import from_dict
    from mricore.errors import ConfigError

    with pytest.raises(ConfigError, match="review.max_entropy"):
        from_dict(review.ReviewConfig, {"max_entropy": 1.5}, "x.yaml")


def test_fitted_limits_are_stored_once_in_the_bundle():
    """No code default and no training-side copy: the bundle's ensemble.yaml holds every fitted limit."""
    assert set(FITTED) <= {f.name for f in fields(review.ReviewConfig)}
    assert all(getattr(review.ReviewConfig(), name) is None for name in FITTED)
    assert all(getattr(CFG, name) is not None for name in FITTED)
    for path in sorted((ROOT / "configs/ensemble").glob("*.yaml")):
        section = (yaml.safe_load(path.read_text()) or {}).get("review") or {}
        assert not set(section) & set(FITTED), path


def test_uncalibrated_limits_report_na_and_decide_nothing(data_dir, t2):
    """Without fitted limits the content checks are n/a: even a DWI given as T2W is not rejected by
    them (its geometry is a T2's), and the value is still shown."""
    v = read_nifti(data_dir / CASE / "dwi.nii.gz", "T2W")
    checks = {c.name: c for c in review.input_checks(review.input_features(v.array[0], v.affine), review.ReviewConfig())}
    for name in ("dark_fraction", "sharpness", "noise", "nonuniformity"):
        assert checks[name].verdict == "n/a" and checks[name].expected == "not calibrated"
        assert checks[name].value is not None and checks[name].excess == 0.0
    assert review.verdict(list(checks.values()))["verdict"] == "ok"
