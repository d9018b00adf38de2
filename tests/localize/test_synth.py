"""Synthetic lesions prove the localisation path learns: on real anatomy (ProstateX-0003 and its AI
zones, cropped) a lesion classifier trained through `localize train` and scored through `localize
predict` separates cases with an inserted lesion far above chance, and sits exactly at chance when the
inserted contrast is zero (then every case is the same image, so no label can leak through)."""

import csv
from pathlib import Path

import numpy as np
import pytest

from localize.synth import Lesion, crop_around, draw_lesions, insert, occupancy
from mricore.io import read_label, read_nifti, write_nifti

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BASE = DATA / "prostatex" / "ProstateX-0003"
pytestmark = pytest.mark.skipif(not BASE.exists(), reason=f"real data folder {BASE} is absent")


def _base():
    t2, zones = read_nifti(BASE / "t2.nii.gz", "T2W"), read_label(BASE / "zones_ai.nii.gz", "zones")
    gland = zones.array[0] > 0
    t2, zones = crop_around(t2, gland, 8.0), crop_around(zones, gland, 8.0)
    return t2, zones


def test_occupancy_is_the_ellipsoid_volume_on_any_grid():
    sphere = Lesion((0.0, 0.0, 0.0), (5.0, 5.0, 5.0), ((1, 0, 0), (0, 1, 0), (0, 0, 1)), 1, 0.5236)
    for spacing in ((0.5, 0.5, 3.0), (1.0, 1.0, 1.0)):
        aff = np.diag([*spacing, 1.0])
        aff[:3, 3] = -20.0
        occ = occupancy(sphere, tuple(int(40 / s) for s in spacing), aff)
        assert occ.sum() * np.prod(spacing) / 1000 == pytest.approx(4 / 3 * np.pi * 125 / 1000, rel=0.03)
        assert 0 < occ.min() + 1 and occ.max() == 1.0 and ((occ > 0) & (occ < 1)).any()  # partial volume


def test_insert_darkens_only_the_lesion_inside_its_zone_and_keeps_the_grid():
    t2, zones = _base()
    rng = np.random.default_rng(3)
    lesions = draw_lesions(zones, 2, rng)
    new, mask = insert(t2, zones, lesions, 0.5, np.random.default_rng(4))
    assert new.same_grid(t2) and mask.any()
    inside = {les.zone for les in lesions}
    assert set(np.unique(zones.array[0][mask > 0])) <= inside          # confined to the lesions' zones
    changed = new.array[0] != t2.array[0]
    assert not changed[zones.array[0] == 0].any()                       # nothing outside the gland moves
    ratio = new.array[0][mask > 0].sum() / t2.array[0][mask > 0].sum()
    assert 0.35 < ratio < 0.75                                          # about 50 % darker on average
    same, _ = insert(t2, zones, lesions, 0.0, np.random.default_rng(4))
    assert np.array_equal(same.array, t2.array)                         # contrast 0 changes nothing


def _dataset(root: Path, contrast: float, n: int = 16) -> Path:
    t2, zones = _base()
    rows = []
    for v in range(n):
        rng = np.random.default_rng([7, v])
        lesions = draw_lesions(zones, 1 - v % 2, rng, volume_ml=(0.5, 2.0))
        new, mask = insert(t2, zones, lesions, contrast, np.random.default_rng([7, v, 1]))
        d = root / f"v{v:02d}"
        write_nifti(new.array[0], t2, d / "t2.nii.gz")
        write_nifti(zones.array[0], zones, d / "zones.nii.gz", dtype=np.uint8)
        write_nifti(mask, t2, d / "lesion.nii.gz", dtype=np.uint8)
        rows.append({"patient_id": f"v{v:02d}", "T2W": f"v{v:02d}/t2.nii.gz", "zones": f"v{v:02d}/zones.nii.gz",
                     "lesion": f"v{v:02d}/lesion.nii.gz"})
    with (root / "datalist.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / "datalist.csv"


def _held_out_auc(tmp_path: Path, contrast: float) -> float:
    import json

    from localize.config import LocalizeConfig
    from localize.predict import predict
    from localize.train import train
    from mricore.config import load_config
    from mricore.datasets import load_dataset
    from mricore.metrics import roc_auc

    datalist = _dataset(tmp_path / "data", contrast)
    sets = [f"output_dir={tmp_path / 'runs'}", f"data.root={datalist}", "data.datasets=[]", "data.zones=[zones]",
            "data.folds=2", "train.selection=fixed", "train.epochs=8", "train.iters_per_epoch=40",
            "model.width=0.125", "model.covariates=[]", "model.dropout=0.0"]
    cfg = load_config(LocalizeConfig, Path(__file__).resolve().parents[2] / "configs/localize/lesion_t2w_2d.yaml", sets)
    model = train(cfg, 0, force=True)
    held = json.loads((model / "model.json").read_text())["validation"]["cases"]
    cases = {c.case_id: c for c in load_dataset(datalist)}
    scores, labels = [], []
    for cid in held:
        c = cases[cid]
        r = predict(str(model), [str(c.images["T2W"].path)], str(c.labels["zones"].path), str(tmp_path / "pred" / cid))
        scores.append(r["patient_score"])
        labels.append(int(read_label(c.labels["lesion"].path).array.any()))
    assert 0 < sum(labels) < len(labels)
    return roc_auc(scores, labels)


def test_the_classifier_learns_a_visible_lesion_and_nothing_without_one(tmp_path):
    assert _held_out_auc(tmp_path / "visible", 0.8) >= 0.9
    assert _held_out_auc(tmp_path / "absent", 0.0) == 0.5
