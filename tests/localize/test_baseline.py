"""localize.baseline (zone_stats_lr): features, the fit, and the same train / predict / evaluate commands
as the CNN on real ProstateX cases."""

import json

import numpy as np
import pytest
import yaml

from localize.baseline import STATS, fit, probability, zone_features
from localize.cli import main
from mricore.metrics import roc_auc
from mricore.volume import Volume


def _study(dark_pz: bool) -> tuple[Volume, Volume]:
    z = np.zeros((1, 20, 20, 4), np.uint8)
    z[0, 4:16, 4:10] = 1
    z[0, 4:16, 10:16] = 2
    t2 = np.full((1, 20, 20, 4), 100.0, np.float32)
    if dark_pz:
        t2[0, 11:14, 11:14, 1:3] = 30.0
    aff = np.diag([0.5, 0.5, 3.0, 1.0])
    return Volume(t2, aff, ("T2W",)), Volume(z, aff, ("zones",), kind="label")


def test_zone_features_measure_each_zone():
    image, zones = _study(dark_pz=True)
    f = zone_features(image, zones)
    assert set(f) == {1, 2} and set(f[1]) == set(STATS)
    assert f[1]["volume_ml"] == pytest.approx(12 * 6 * 4 * 0.75 / 1000)
    assert f[2]["t2_p5"] < f[1]["t2_p5"] == pytest.approx(1.0)  # the dark PZ spot, relative to the gland median
    assert f[1]["adc_missing"] == 1.0 and f[2]["is_pz"] == 1.0


def test_fit_separates_separable_zones_and_stores_tensors():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(20), np.zeros(20)]
    x = rng.normal(size=(40, 3)) + y[:, None] * [2.0, 0.0, 0.0]
    w = fit(x, y, c=1.0)
    assert set(w) == {"mean", "scale", "weight", "bias"} and w["weight"].shape == (3,)
    assert roc_auc(probability(w, x), y) > 0.9 and float(w["weight"][0]) > 0


@pytest.fixture(scope="module")
def lr_model(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lr")
    cfg = {"name": "lr", "output_dir": str(root / "runs"), "model": {"name": "zone_stats_lr"},
           "data": {"root": str(data_dir), "datasets": ["prostatex"], "folds": 2}}
    (root / "lr.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(root / "lr.yaml"), "--fold", "0"]) == 0
    return root, root / "runs" / "lr" / "fold_0"


def test_lr_trains_predicts_and_evaluates_through_the_commands(lr_model, data_dir, capsys):
    root, model = lr_model
    meta = json.loads((model / "model.json").read_text())
    assert meta["model"]["name"] == "zone_stats_lr" and set(meta["training"]["coefficients"]) >= set(STATS)
    held = meta["validation"]["cases"]
    for cid in held:
        case = data_dir / "prostatex" / cid
        assert main(["predict", "--model", str(model), "--zones", str(case / "zones_ai.nii.gz"),
                     str(case / "t2.nii.gz"), "-o", str(root / "pred" / cid)]) == 0
        out = json.loads((root / "pred" / cid / "lesion.json").read_text())
        assert set(out["zone_probability"]) == {"TZ", "PZ"}
        assert out["patient_score"] == pytest.approx(max(out["zone_probability"].values()), abs=1e-6)
        assert all(c["zone"] in ("TZ", "PZ") and c["score"] >= 0.5 for c in out["candidates"])
    assert main(["evaluate", "--pred", str(root / "pred"), "--ref", str(data_dir), "-o", str(root / "ev")]) == 0
    assert json.loads((root / "ev" / "localize.json").read_text())["n_cases"] == len(held)


def test_lr_refuses_gradcam_in_one_line(lr_model, data_dir, capsys):
    root, model = lr_model
    case = data_dir / "prostatex" / "ProstateX-0000"
    rc = main(["predict", "--model", str(model), "--zones", str(case / "zones_ai.nii.gz"), str(case / "t2.nii.gz"),
               "-o", str(root / "x"), "--explain"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "Grad-CAM needs a CNN" in err[0]
    assert not (root / "x" / "lesion.json").exists()
