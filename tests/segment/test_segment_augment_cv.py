"""`segment augment` writes case folders the loader reads back; `segment train --cv` writes the
cross-validation summary. Both tiny, on the real cases."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from mricore.datasets import load_dataset, load_case
from segment.cli import main
from segment.data import load_items
from segment.augment import augment_volume
from segment.config import AugmentConfig
from segment_helpers import DEFAULT_CONFIG, tiny_config, tiny_overrides


def _sets(data_dir, out, **extra):
    return [a for s in tiny_overrides(data_dir, out, **extra) for a in ("--set", s)]


def test_augment_writes_case_folders_the_loader_reads(data_dir, tmp_path, capsys):
    out = tmp_path / "aug"
    sets = _sets(data_dir, tmp_path / "runs", data__datasets="[i2cvb]", augment__elastic_p=1.0)
    assert main(["augment", "--config", str(DEFAULT_CONFIG), *sets, "--copies", "2", "-o", str(out)]) == 0
    cases = load_dataset(out)
    assert sorted(c.case_id for c in cases) == ["Patient_52209036_aug0", "Patient_52209036_aug1",
                                                "Patient_68619_aug0", "Patient_68619_aug1"]
    src = nib.load(data_dir / "i2cvb" / "Patient_68619" / "t2.nii.gz")
    copy = out / "i2cvb_aug" / "Patient_68619_aug0"
    for name in ("t2.nii.gz", "zones.nii.gz"):  # same grid and affine as the source case
        img = nib.load(copy / name)
        assert img.shape == src.shape
        np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
    z = np.asarray(nib.load(copy / "zones.nii.gz").dataobj)
    assert z.dtype == np.uint8 and set(np.unique(z)) <= {0, 1, 2} and (z > 0).any()
    # the datalist keeps the source patient, so cross-validation on copies still splits by patient
    dl = load_dataset(out / "datalist.csv")
    assert {c.patient_id for c in dl} == {"Patient_52209036", "Patient_68619"}
    cfg = tiny_config(data_dir, tmp_path)
    assert len(load_items(dl, cfg.preprocess, "zones")) == 4
    capsys.readouterr()
    # refuses to overwrite
    assert main(["augment", "--config", str(DEFAULT_CONFIG), *sets, "--copies", "1", "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["augment", "--config", str(DEFAULT_CONFIG), *sets, "--copies", "1", "-o", str(out), "--force"]) == 0
    assert len(load_dataset(out)) == 2


def test_augment_volume_uses_one_draw_for_image_and_label(data_dir):
    cases = [c for c in load_dataset(data_dir / "i2cvb")]
    image, label, _ = load_case(cases[0], ["T2W"], "zones")
    cfg = AugmentConfig(elastic_p=1.0, rotate_p=1.0, flip_p=0.0, gamma_p=0, contrast_p=0, brightness_p=0,
                        noise_p=0, bias_p=0)
    lab = label.array[0]
    # an image made from the label, deformed with the same draw, rounds back to the deformed label
    img, out = augment_volume(np.random.default_rng(0), cfg, lab[None].astype(np.float32) * 100 + 1, lab)
    agree = np.mean(np.rint((img[0] - 1) / 100).clip(0, 2) == out)
    assert agree > 0.97 and not np.array_equal(out, lab)


def test_copies_must_be_positive(data_dir, tmp_path, capsys):
    out = tmp_path / "aug"
    assert main(["augment", "--config", str(DEFAULT_CONFIG), *_sets(data_dir, tmp_path), "--copies", "0",
                 "-o", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not out.exists()


def test_cross_validation_writes_the_summary(data_dir, tmp_path):
    sets = _sets(data_dir, tmp_path / "runs", data__folds=2)
    assert main(["train", "--config", str(DEFAULT_CONFIG), "--cv", *sets]) == 0
    cv = tmp_path / "runs" / "zonal_t2w_2d" / "cv"
    s = json.loads((cv / "summary.json").read_text())
    assert s["n_cases"] == 5 and len(s["folds"]) == 2  # every expert case validated exactly once
    assert sorted(c for f in s["folds"] for c in f["val"]) == sorted(
        ["001", "002", "021", "Patient_52209036", "Patient_68619"])
    for z in ("WG", "TZ", "PZ"):
        d = s["zones"][z]["dsc"]
        assert d["n"] + d["n_excluded"] == 5 and {"mean", "median", "ci_low", "ci_high"} <= d.keys()
    assert s["config"]["data"]["folds"] == 2 and "patient-level" in s["split"]
    assert (cv / "summary.csv").read_text().startswith("zone,metric,")
    assert len((cv / "per_case.csv").read_text().strip().splitlines()) == 6
    assert len(list((cv / "predictions").glob("*.nii.gz"))) == 5
