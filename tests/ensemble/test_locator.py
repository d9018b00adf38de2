"""Two stages (ensemble.engine.locate): the locator's gland centres the members' crops and bounds the
output; without a locator, or when it finds nothing, the ensemble runs in one stage."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from ensemble import engine
from ensemble.config import EnsembleConfig
from ensemble.members import read_members
from mricore.io import read_label, read_nifti
from mricore.preprocess import PreprocessSpec, gland_centre
from mricore.volume import Volume

CASE = "prostatex/ProstateX-0000"
PAD = 160  # voxels (80 mm) added before voxel 0 along i: the gland lies 40 mm off the FOV centre


def _padded(vol: Volume) -> Volume:
    aff = vol.affine.copy()
    aff[:3, 3] -= aff[:3, 0] * PAD
    return Volume(np.pad(vol.array, [(0, 0), (PAD, 0), (0, 0), (0, 0)]), aff, vol.channels, vol.case_id, kind=vol.kind)


@pytest.fixture(scope="module")
def off_centre(data_dir):
    image = _padded(read_nifti(data_dir / CASE / "t2.nii.gz", "T2W"))
    gland = _padded(read_label(data_dir / CASE / "zones_ai.nii.gz")).array[0] > 0
    return image, gland


@pytest.fixture(scope="module")
def gland_member(members, tmp_path_factory):
    """The tiny 100 mm member, told to crop around the gland (preprocess crop_centre: gland)."""
    dst = tmp_path_factory.mktemp("gland_member") / "m"
    shutil.copytree(members["t2_b"], dst)
    meta = json.loads((dst / "model.json").read_text())
    meta["preprocess"]["crop_centre"] = "gland"
    (dst / "model.json").write_text(json.dumps(meta))
    return read_members([dst])


STUB_SPEC = PreprocessSpec(target_spacing=[None, None, None], crop_mm=None)  # the input grid (LPS) itself


def _stub(label: np.ndarray):
    """A locator whose probabilities are the one-hot of `label`, on the input grid."""
    onehot = np.stack([label == 0, label == 1, label == 2]).astype(np.float32)
    seg = SimpleNamespace(probabilities=lambda array, tta_flip=None: onehot)
    return SimpleNamespace(name="stub", channels=["T2W"], spec=STUB_SPEC, segmenter=seg)


def _run(monkeypatch, image, used, locator_label, margin=10.0, **settings):
    """run_ensemble with the stub locator (and any other EnsembleConfig `settings`); the crop centres
    the members' preprocessing was given."""
    centres = []
    real = engine.preprocess

    def recorded(img, spec, centre=None):
        if spec is not STUB_SPEC:
            centres.append(centre)
        return real(img, spec, centre)
    monkeypatch.setattr(engine, "preprocess", recorded)
    monkeypatch.setattr(engine, "read_locator", lambda path: _stub(locator_label))
    cfg = EnsembleConfig(members=[str(m.path) for m in used], locator="stub", locator_margin_mm=margin, **settings)
    return engine.run_ensemble(image, used, cfg), centres


def test_members_are_centred_on_the_located_gland_and_nothing_lies_beyond_the_margin(monkeypatch, off_centre, gland_member):
    image, gland = off_centre
    res, centres = _run(monkeypatch, image, gland_member, gland.astype(np.uint8))
    np.testing.assert_allclose(centres[0], gland_centre(gland, image.affine))
    assert res.info["locator"]["used"] and res.info["locator"]["gland_ml"] > 10
    idx = np.argwhere(gland)
    grow = np.ceil(10.0 / np.asarray(image.spacing)).astype(int)
    lo, hi = np.maximum(idx.min(0) - grow, 0), idx.max(0) + grow
    ii, jj, kk = np.indices(image.shape)
    inside = ((ii >= lo[0]) & (ii <= hi[0]) & (jj >= lo[1]) & (jj <= hi[1]) & (kk >= lo[2]) & (kk <= hi[2]))
    assert not res.label[~inside].any() and not res.member_labels[:, ~inside].any()
    np.testing.assert_array_equal(res.prob[0][~inside], 1.0)
    assert (~inside).any() and inside.any()


def test_one_stage_when_the_locator_finds_nothing_or_is_absent(monkeypatch, off_centre, gland_member):
    image, gland = off_centre
    res, centres = _run(monkeypatch, image, gland_member, np.zeros(gland.shape, np.uint8))
    assert centres == [None] and not res.info["locator"]["used"]
    assert "no gland" in res.info["locator"]["reason"]
    res = engine.run_ensemble(image, gland_member, EnsembleConfig(members=[str(gland_member[0].path)]))
    assert res.info["locator"] == {"used": False}


def test_without_a_margin_the_locator_only_centres(monkeypatch, off_centre, gland_member):
    image, gland = off_centre
    res, centres = _run(monkeypatch, image, gland_member, gland.astype(np.uint8), margin=None)
    np.testing.assert_allclose(centres[0], gland_centre(gland, image.affine))
    assert res.info["locator"]["used"] and res.info["locator"]["margin_mm"] is None


def test_multiscale_tta_averages_passes_on_the_input_voxels(monkeypatch, off_centre, gland_member):
    """tta_scales: one pass per factor, each crop centred on the located gland's voxel (not its world
    point: the rescaled copy moves it), averaged; a repeated factor changes nothing."""
    image, gland = off_centre
    located = gland.astype(np.uint8)
    res1, _ = _run(monkeypatch, image, gland_member, located)
    twice, _ = _run(monkeypatch, image, gland_member, located, tta_scales=[1.0, 1.0])
    np.testing.assert_allclose(twice.prob, res1.prob, atol=1e-6)
    multi, centres = _run(monkeypatch, image, gland_member, located, tta_scales=[0.8, 1.0])
    voxels = [np.linalg.solve(grid.affine, np.append(c, 1.0))[:3]  # each centre as a voxel of its pass's grid
              for grid, c in zip([image.inplane_scaled(0.8), image], centres)]
    np.testing.assert_allclose(voxels[0], voxels[1], atol=1e-6)
    np.testing.assert_array_equal(multi.member_labels, res1.member_labels)  # member maps: factor 1
    assert multi.prob.shape == res1.prob.shape and not np.allclose(multi.prob, res1.prob, atol=1e-3)
    np.testing.assert_allclose(multi.prob.sum(0), 1.0, atol=1e-4)


@pytest.mark.parametrize("scales", [[0.8], [1.0, 0.1], [1.0, "x"]])
def test_tta_scales_need_one_and_sane_factors(scales):
    from mricore.errors import ConfigError

    with pytest.raises(ConfigError, match="tta_scales"):
        EnsembleConfig(members=["m"], tta_scales=scales).validate()
