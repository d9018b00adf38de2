"""Partial-label Dice + CE (segment.losses): the teacher's whole glands train "gland" without a zone."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from mricore.datasets import load_dataset
from segment.data import GLAND_UNKNOWN, load_items
from segment.folds import resolve_split
from segment.losses import PartialDiceCE
from segment_helpers import tiny_config


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 3, 24, 24, generator=g), torch.randint(0, 3, (3, 1, 24, 24), generator=g)


@pytest.mark.parametrize("kw", [{}, {"weight": torch.tensor([1.0, 2.0, 3.0])}, {"lambda_ce": 0.5}])
def test_equals_monai_dice_ce_when_every_zone_is_known(kw):
    logits, y = _batch()
    expect = DiceCELoss(to_onehot_y=True, softmax=True, **kw)(logits, y)
    got = PartialDiceCE(**kw)(logits, y)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)


def test_gland_unknown_voxels_ask_for_gland_not_for_a_zone():
    logits, y = _batch(1)
    y[:, :, 4:16, 4:16] = GLAND_UNKNOWN
    unknown = (y[:, 0] == GLAND_UNKNOWN)[:, None]
    loss = PartialDiceCE()
    base = loss(logits, y)
    # Swapping TZ and PZ where the zone is unknown changes nothing ...
    swapped = torch.where(unknown, logits[:, [0, 2, 1]], logits)
    torch.testing.assert_close(loss(swapped, y), base)
    # ... calling those voxels background costs more, calling them gland (either zone) costs less.
    bg = torch.where(unknown, torch.tensor([9.0, -9.0, -9.0])[None, :, None, None], logits)
    gland = torch.where(unknown, torch.tensor([-9.0, 9.0, -9.0])[None, :, None, None], logits)
    assert loss(bg, y) > base > loss(gland, y)
    # Swapping a KNOWN voxel's zones does change the loss.
    known_swap = torch.where(~unknown, logits[:, [0, 2, 1]], logits)
    assert not torch.allclose(loss(known_swap, y), base)


def test_teacher_cases_only_ever_train_and_enter_as_gland_unknown(data_dir, tmp_path):
    """A teacher datalist (T2W + a teacher's whole gland): every fold trains on it, none holds it out,
    and its label map is 0 / GLAND_UNKNOWN."""
    case = data_dir / "prostatex" / "ProstateX-0003"
    z = nib.load(case / "zones_ai.nii.gz")
    nib.save(nib.Nifti1Image((np.asarray(z.dataobj) > 0).astype(np.uint8), z.affine), tmp_path / "wg.nii.gz")
    (tmp_path / "datalist.json").write_text(json.dumps([
        {"patient_id": "T1", "case_id": "T1", "T2W": str(case / "t2.nii.gz"), "wg_teacher": "wg.nii.gz"}]))
    cfg = tiny_config(data_dir, tmp_path / "runs", data__teacher=str(tmp_path / "datalist.json"),
                      data__datasets="[prostate158, i2cvb]")
    cases = [c for c in load_dataset(cfg.data.root) if c.dataset in cfg.data.datasets] + load_dataset(cfg.data.teacher)
    for fold in range(cfg.data.folds):
        split = resolve_split(cfg, cases, fold)
        assert "T1" in [c.case_id for c in split.train] and "T1" not in [c.case_id for c in split.held_out]
    item = load_items([cases[-1]], cfg.preprocess, cfg.data.label, cfg.data.silver_label)[0]
    assert set(np.unique(item.label)) == {0, GLAND_UNKNOWN} and item.silver


def test_teacher_needs_the_multiclass_scheme(data_dir, tmp_path):
    from mricore.errors import ConfigError

    with pytest.raises(ConfigError, match="multiclass"):
        tiny_config(data_dir, tmp_path, data__teacher=str(tmp_path / "x.json"), model__label_scheme="regions")
