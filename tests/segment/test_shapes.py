"""Expert shapes into training pairs (segment.shapes, segment.shape_qc, segment.shape_pairs): one real
donor warped onto one real label-only map with coarse settings (seconds), the pair's layout, the fold
guard on the donor's patient id, and bad input."""

import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest

from mricore.datasets import load_dataset
from mricore.errors import InputError, OutputExistsError
from mricore.io import read_label, read_nifti
from segment.cli import main
from segment.folds import resolve_split
from segment.shape_pairs import choose_donors, coding_problem, datalist_row, find_donors, find_targets, make_pairs
from segment.shape_qc import jacobian_determinant, verdict
from segment.shapes import ShapeSettings, register_shape
from segment_helpers import tiny_config

COARSE = ShapeSettings(grid_mm=3.0, affine_iterations=40, demons_iterations=20)
TARGET = "msd_labels/prostate_00.nii.gz"   # MSD grid, RAS affine: unlike the LPS donors
DONOR = "prostate158/021"                 # expert zones, axis-aligned 0.4 x 0.4 x 3 mm


@pytest.fixture(scope="module")
def warped(data_dir):
    target = read_label(data_dir / TARGET, "zones", "prostate_00")
    image = read_nifti(data_dir / DONOR / "t2.nii.gz", "T2W", "021")
    zones = read_label(data_dir / DONOR / "zones.nii.gz", "zones", "021")
    out, facts = register_shape(image, zones, target, COARSE)
    return target, out, facts


@pytest.fixture(scope="module")
def pairs(data_dir, tmp_path_factory):
    """make_pairs over one zonal map and one gland-only map, with the Prostate158 and I2CVB donors."""
    tmp = tmp_path_factory.mktemp("shapes")
    labels = tmp / "labels"
    labels.mkdir()
    (labels / "prostate_00.nii.gz").symlink_to(data_dir / TARGET)
    (labels / "Prostate3T-01-0019.nii.gz").symlink_to(data_dir / "nci_isbi_labels/Prostate3T-01-0019.nii.gz")
    qc = make_pairs([labels], [data_dir / "prostate158", data_dir / "i2cvb"], tmp / "out", settings=COARSE,
                    log=lambda *_: None)
    return tmp, qc


def test_registration_brings_the_donor_zones_onto_the_target(warped):
    _, _, facts = warped
    dsc = facts.dsc
    for zone in ("WG", "TZ", "PZ"):
        assert dsc["deformable"][zone] > dsc["identity"][zone]       # better than scanner coordinates
    assert dsc["deformable"]["WG"] > dsc["affine"]["WG"] > 0.6       # the field adds to the affine
    assert dsc["deformable"]["TZ"] > 0.75 and dsc["deformable"]["PZ"] > 0.5
    assert 0.3 < facts.affine_scale < 3


def test_the_warped_image_lies_on_the_target_grid(warped):
    target, out, facts = warped
    assert out.shape == target.shape and np.array_equal(out.affine, target.affine)
    assert out.array.dtype == np.float32 and out.array.max() > 100   # real texture, not an empty warp
    j = facts.jacobian
    assert j["min"] <= j["median"] <= j["max"] and 0 <= j["out_of_range"] <= 1
    assert facts.jacobian_map.array.shape[0] == 1 and np.isfinite(facts.jacobian_map.array).all()


def test_jacobian_of_known_fields():
    zero = np.zeros((3, 6, 6, 6), np.float32)
    assert np.allclose(jacobian_determinant(zero), 1.0)
    grow = zero.copy()
    grow[0] = 0.5 * np.arange(6)[:, None, None]           # s_z = z / 2: 1.5 x along z
    assert np.allclose(jacobian_determinant(grow), 1.5)
    fold = zero.copy()
    fold[1] = -2.0 * np.arange(6)[None, :, None]          # s_y = -2 y: the y axis reversed
    assert (jacobian_determinant(fold) < 0).all()


def test_a_swapped_coding_is_caught_by_anatomy(data_dir):
    zones = read_label(data_dir / TARGET, "zones")
    lab = zones.array[0]
    assert coding_problem(lab, zones.affine) == ""                        # converted: 1 TZ, 2 PZ
    swapped = np.choose(lab, [0, 2, 1]).astype(np.uint8)                  # the MSD source coding
    assert "swapped" in coding_problem(swapped, zones.affine)


def test_verdict_names_each_broken_rule():
    ok = {"jacobian": {"box_folds": 0.0, "folds": 0.0, "out_of_range": 0.0},
          "dsc": {"deformable": {"TZ": 0.95, "PZ": 0.9}}}
    assert verdict(ok) == []
    bad = {"jacobian": {"box_folds": 0.01, "folds": 0.0, "out_of_range": 0.5},
           "dsc": {"deformable": {"TZ": 0.95, "PZ": float("nan")}}}
    reasons = verdict(bad)
    assert [r.split(":")[0].split(" ")[0] for r in reasons] == ["fold", "stretch", "PZ"]


def test_pair_folder_layout_labels_and_patient_id(pairs, data_dir):
    tmp, qc = pairs
    out = tmp / "out"
    made = [r for r in qc["pairs"] if r["pair_id"]]
    assert len(made) == 1 and made[0]["donor_label"] == "zones"
    pid, donor = made[0]["pair_id"], made[0]["donor"]
    patients = {c.case_id: c.patient_id for c in load_dataset(data_dir / "prostate158")}
    assert made[0]["donor_patient"] == patients[donor]                       # the texture's patient
    t2, zones = nib.load(out / pid / "t2.nii.gz"), nib.load(out / pid / "zones.nii.gz")
    target = nib.load(data_dir / TARGET)
    assert np.array_equal(t2.affine, target.affine) and np.array_equal(zones.affine, target.affine)
    z = np.asarray(zones.dataobj)
    assert set(np.unique(z)) == {0, 1, 2} and np.array_equal(z, np.asarray(target.dataobj))
    skipped = [r for r in qc["pairs"] if r["pair_id"] is None]
    assert [r["target"] for r in skipped] == ["Prostate3T-01-0019"] and "PZ" in skipped[0]["reasons"][0]
    assert {e["case_id"] for e in qc["excluded_donors"]} == {"Patient_52209036", "Patient_68619"}  # slabs
    rows = json.loads((out / "datalist.json").read_text())
    assert rows == ([datalist_row(made[0])] if made[0]["accepted"] else [])
    assert list(out.glob("qc_sheet_*.png")) and (out / "qc.json").is_file()


def test_the_fold_guard_keeps_a_pair_out_with_its_donor(pairs, data_dir):
    tmp, qc = pairs
    made = [r for r in qc["pairs"] if r["pair_id"]][0]
    datalist = tmp / "out" / "guard.json"
    datalist.write_text(json.dumps([datalist_row(made)]))
    cfg = tiny_config(data_dir, tmp / "runs", data__teacher=str(datalist), data__datasets="[prostate158, i2cvb]")
    cases = [c for c in load_dataset(cfg.data.root) if c.dataset in cfg.data.datasets] + load_dataset(datalist)
    seen = set()  # whether the pair trains, per fold
    for fold in range(cfg.data.folds):
        split = resolve_split(cfg, cases, fold)
        kept_out = {c.patient_id for c in split.held_out + split.inner}
        trains = made["pair_id"] in [c.case_id for c in split.train]
        assert trains == (made["donor_patient"] not in kept_out)
        seen.add(trains)
    assert False in seen  # the donor is held out (or validates) in some fold: its pair is not trained on there


def test_donors_are_chosen_by_gland_volume_round_robin_on_ties(data_dir):
    donors, _ = find_donors([data_dir / "prostate158"], ("zones",))
    targets = find_targets([data_dir / "msd_labels" / f"prostate_{n:02d}.nii.gz" for n in (0, 1, 2, 4, 6, 7)])
    chosen = choose_donors(targets, donors, 1)
    for t, d in chosen:
        best = min(abs(np.log(x.gland_ml / t.gland_ml)) for x in donors)
        assert abs(np.log(d.gland_ml / t.gland_ml)) <= best + np.log(1.05) + 1e-9
    twins = [replace(donors[0], case_id=f"d{i}") for i in range(3)]          # three donors, one volume
    same = [replace(t, gland_ml=donors[0].gland_ml) for t in targets[:3]]
    assert [d.case_id for _, d in choose_donors(same, twins, 1)] == ["d0", "d1", "d2"]  # round robin
    assert choose_donors(same, twins, 1) == choose_donors(same, twins, 1)                 # deterministic


def test_bad_input_is_one_line_with_exit_2(pairs, tmp_path, capsys, data_dir):
    tmp, _ = pairs
    donors = str(data_dir / "prostate158")
    cases = [(["--labels", str(tmp_path / "none")], "does not exist"),
             (["--labels", str(tmp / "labels"), "--workers", "0"], "workers"),
             (["--labels", str(tmp / "labels")], "output exists")]  # the earlier run's OUT, without --force
    for args, message in cases:
        out = tmp / "out" if message == "output exists" else tmp_path / "o"
        assert main(["shape-pairs", *args, "--donors", donors, "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    bad = tmp_path / "bad"
    bad.mkdir()
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 3, np.uint8), np.eye(4)), bad / "x.nii.gz")
    with pytest.raises(InputError, match="0 background, 1 TZ, 2 PZ"):
        find_targets([bad])
    with pytest.raises(OutputExistsError):
        make_pairs([tmp / "labels"], [donors], tmp / "out", settings=COARSE, log=lambda *_: None)
    assert not (tmp_path / "o").exists()
