"""A member trained with N4 in its preprocessing (preprocess.n4) is given corrected T2W in prediction,
corrected once per case however many members share it, and not again when the ensemble itself
corrects the input (ensemble config n4)."""

import json
import shutil

import pytest

import mricore.bias
from ensemble import engine
from ensemble.config import EnsembleConfig
from ensemble.members import read_members
from mricore.io import read_nifti

CASE = "prostatex/ProstateX-0000"


@pytest.fixture(scope="module")
def n4_members(members, tmp_path_factory):
    """Two copies of a tiny member whose model.json says it was trained with N4, and the plain one."""
    out = tmp_path_factory.mktemp("n4_members")
    for name in ("n4_a", "n4_b"):
        shutil.copytree(members["t2_b"], out / name)
        meta = json.loads((out / name / "model.json").read_text())
        meta["preprocess"]["n4"] = True
        (out / name / "model.json").write_text(json.dumps(meta))
    return read_members([out / "n4_a", out / "n4_b", members["t2_b"]])


@pytest.mark.parametrize("ensemble_n4", [False, True])
def test_n4_members_get_one_correction_per_case(monkeypatch, data_dir, n4_members, ensemble_n4):
    calls, real = [], mricore.bias.n4_correct

    def counted(image, spacing):
        calls.append(image.shape)
        return real(image, spacing)
    monkeypatch.setattr(mricore.bias, "n4_correct", counted)
    image = read_nifti(data_dir / CASE / "t2.nii.gz", "T2W")
    assert [m.spec.n4 for m in n4_members] == [True, True, False]
    cfg = EnsembleConfig(members=[str(m.path) for m in n4_members], n4=ensemble_n4)
    res = engine.run_ensemble(image, n4_members, cfg)
    assert len(calls) == 1 and calls[0] == image.shape  # on the input grid, once
    assert res.info["preprocessing_passes"] == 2        # the N4 members share a pass; the plain one has its own
    assert (res.info["timings_s"]["n4"] > 0) == ensemble_n4
