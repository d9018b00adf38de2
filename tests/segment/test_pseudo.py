"""Self-training labels (segment.pseudo): a teacher's whole gland split into zones where an ensemble is
confident, per fold, entering training as partial labels."""

import json

import nibabel as nib
import numpy as np
import pytest

from mricore.datasets import load_dataset
from mricore.errors import InputError, OutputExistsError
from segment.cli import main
from segment.data import GLAND_UNKNOWN, TEACHER_ZONES, load_items
from segment.folds import resolve_split, teacher_datalist
from segment.pseudo import pseudo_zones, write_pseudo_labels
from segment_helpers import tiny_config

CASE = "prostatex/ProstateX-0003"  # silver zones stand in for a teacher's gland and an ensemble's zones


def test_zones_only_where_confident_and_only_inside_the_teachers_gland():
    prob = np.zeros((5, 1, 1, 3), np.float32)
    prob[:, 0, 0] = [[0.0, 0.95, 0.05],   # TZ, confident
                     [0.0, 0.05, 0.95],   # PZ, confident
                     [0.6, 0.37, 0.03],   # mostly background, but the gland's share is TZ at 0.925: TZ
                     [0.0, 0.6, 0.4],     # not confident: zone unknown
                     [0.0, 0.99, 0.01]]   # confident TZ outside the teacher's gland: background
    gland = np.array([True, True, True, True, False])[:, None, None]
    assert pseudo_zones(prob, gland, 0.9)[:, 0, 0].tolist() == [1, 2, 1, GLAND_UNKNOWN, 0]
    assert pseudo_zones(prob, gland, 0.96)[:, 0, 0].tolist() == [GLAND_UNKNOWN, GLAND_UNKNOWN, GLAND_UNKNOWN,
                                                                  GLAND_UNKNOWN, 0]


@pytest.fixture()
def teacher(data_dir, tmp_path):
    """A teacher datalist (one study, its gland) and an ensemble's probabilities on it: confident zones
    except in the gland's first half along i, where TZ and PZ are even."""
    z = nib.load(data_dir / CASE / "zones_ai.nii.gz")
    zones = np.asarray(z.dataobj).astype(np.uint8)
    nib.save(nib.Nifti1Image((zones > 0).astype(np.uint8), z.affine), tmp_path / "wg.nii.gz")
    (tmp_path / "teacher.json").write_text(json.dumps([{"patient_id": "T1", "case_id": "T1", "dataset": "x_teacher",
                                                        "T2W": str(data_dir / CASE / "t2.nii.gz"),
                                                        "wg_teacher": "wg.nii.gz"}]))
    prob = np.eye(3, dtype=np.float32)[zones] * 0.9 + 0.1 / 3
    half = zones.shape[0] // 2
    prob[:half, ..., 1:] = np.where(zones[:half, ..., None] > 0, 0.45, prob[:half, ..., 1:])
    (tmp_path / "pred" / "T1").mkdir(parents=True)
    nib.save(nib.Nifti1Image(prob, z.affine), tmp_path / "pred" / "T1" / "probabilities.nii.gz")
    return tmp_path, zones, half


def test_writes_a_zone_datalist_that_trains_in_every_fold_as_partial_labels(teacher, data_dir):
    tmp, zones, half = teacher
    out = tmp / "pseudo" / "fold_0"
    rc = main(["pseudo-label", "--predictions", str(tmp / "pred"), "--teacher", str(tmp / "teacher.json"),
               "-o", str(out)])
    assert rc == 0
    got = np.asarray(nib.load(out / "T1_zones_teacher.nii.gz").dataobj)
    assert np.array_equal(got[half:], zones[half:])                                    # confident: the zones
    assert set(np.unique(got[:half][zones[:half] > 0])) == {GLAND_UNKNOWN}            # even: unknown
    assert not got[zones == 0].any()
    share = json.loads((out / "pseudo_labels.json").read_text())["share_of_gland"][0]
    assert 0 < share["unknown"] < 1 and abs(share["TZ"] + share["PZ"] + share["unknown"] - 1) < 1e-3

    cfg = tiny_config(data_dir, tmp / "runs", data__teacher=str(tmp / "pseudo" / "fold_{fold}" / "datalist.json"),
                      data__datasets="[prostate158, i2cvb]")
    assert teacher_datalist(cfg, 0) == str(out / "datalist.json")
    extra = load_dataset(teacher_datalist(cfg, 0))
    assert [c.case_id for c in extra] == ["T1"] and TEACHER_ZONES in extra[0].labels
    cases = [c for c in load_dataset(cfg.data.root) if c.dataset in cfg.data.datasets] + extra
    for fold in range(cfg.data.folds):
        split = resolve_split(cfg, cases, fold)
        assert "T1" in [c.case_id for c in split.train] and "T1" not in [c.case_id for c in split.held_out]
    item = load_items(extra, cfg.preprocess, cfg.data.label, cfg.data.silver_label)[0]
    assert set(np.unique(item.label)) == {0, 1, 2, GLAND_UNKNOWN} and item.silver


def test_bad_inputs_are_named_and_nothing_is_written(teacher):
    tmp, _, _ = teacher
    args = dict(predictions=tmp / "pred", teacher=tmp / "teacher.json", out=tmp / "o")
    with pytest.raises(InputError, match="min-conf|more than half"):
        write_pseudo_labels(**args, min_conf=0.5)
    with pytest.raises(InputError, match="T1"):
        write_pseudo_labels(tmp / "nothing", args["teacher"], args["out"])
    img = nib.load(tmp / "pred" / "T1" / "probabilities.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[1:], img.affine), tmp / "pred" / "T1" / "probabilities.nii.gz")
    with pytest.raises(InputError, match="grid"):
        write_pseudo_labels(**args)
    assert not (tmp / "o").exists() and not list(tmp.glob(".o.*"))
    (tmp / "o").mkdir()
    with pytest.raises(OutputExistsError):
        write_pseudo_labels(**args)
