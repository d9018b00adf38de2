"""`ensemble pack` (bundle folders) and `ensemble evaluate --cv` (cross-validated scoring)."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from ensemble.cli import main
from ensemble.evaluate import cv_groups
from ensemble.members import read_members

CASE = "prostatex/ProstateX-0000"


def _as_fold(src, dst, name, fold, val_cases, inner_cases=()):
    """A copy of a member folder that claims to be fold `fold` of config `name`, holding out `val_cases`
    and choosing its epoch on `inner_cases` (training patients)."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "model.json").read_text())
    meta.update(name=name, fold=fold, validation={"cases": val_cases, "WG_mean": 0.5, "TZ_mean": 0.4,
                                                    "PZ_mean": 0.3, "WG_n": 1, "TZ_n": 1, "PZ_n": 1},
                selection={"rule": "inner", "cases": list(inner_cases)})
    (dst / "model.json").write_text(json.dumps(meta))
    return dst


def test_pack_writes_fp16_bundle_that_predicts_like_its_members(data_dir, members, tmp_path, capsys):
    out = tmp_path / "bundle"
    src = [members["t2_a"], members["t2_b"]]
    assert main(["pack", *map(str, src), "-o", str(out)]) == 0
    cfg = (out / "ensemble.yaml").read_text()
    assert "t2_a_foldall" in cfg and "t2_b_foldall" in cfg
    sd = torch.load(out / "t2_a_foldall" / "weights.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    assert "research only" in (out / "MODEL_CARD.md").read_text()
    # Same zones as the fp32 members (fp16 rounding may flip a handful of boundary voxels).
    case = data_dir / CASE / "t2.nii.gz"
    plain = tmp_path / "plain.yaml"
    plain.write_text("members: [" + ", ".join(str(p) for p in src) + "]\n")
    assert main(["predict", str(case), "--config", str(out / "ensemble.yaml"), "-o", str(tmp_path / "a")]) == 0
    assert main(["predict", str(case), "--config", str(plain), "-o", str(tmp_path / "b")]) == 0
    a = np.asarray(nib.load(tmp_path / "a" / "zones.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "b" / "zones.nii.gz").dataobj)
    assert (a != b).mean() < 1e-3


def test_pack_refuses_existing_folder_without_force(members, tmp_path, capsys):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["pack", str(members["t2_a"]), "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_pack_missing_cv_report_writes_nothing(members, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["pack", str(members["t2_a"]), "-o", str(out), "--cv-report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ensemble evaluate --cv" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]


def test_pack_unknown_method(members, tmp_path, capsys):
    assert main(["pack", str(members["t2_a"]), "-o", str(tmp_path / "b"), "--method", "median"]) == 2
    assert "mean" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_pack_writes_settings_and_rejects_bad_ones(members, tmp_path, capsys):
    from ensemble.config import load_ensemble_config

    out = tmp_path / "b"
    assert main(["pack", str(members["t2_a"]), "-o", str(out), "--set", "whole_slice=true", "--set", "tta=true"]) == 0
    cfg = load_ensemble_config(out / "ensemble.yaml")
    assert cfg.whole_slice is True and cfg.tta is True and cfg.members[0].endswith("t2_a_foldall")
    capsys.readouterr()
    for bad, says in [("whole_slise=true", "whole_slice"), ("tta_scales=[2.0]", "1.0"), ("members=[x]", "--locator")]:
        assert main(["pack", str(members["t2_a"]), "-o", str(tmp_path / "c"), "--set", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err
        assert not (tmp_path / "c").exists()


def test_cv_groups_score_each_case_with_the_members_that_held_it_out(members, tmp_path):
    # case4 chose f0's epoch (inner split of fold 0's training patients): f0 saw it, so it cannot score it.
    f0 = _as_fold(members["t2_a"], tmp_path / "a0", "arch_a", 0, ["case1", "case2"], inner_cases=["case4"])
    f1 = _as_fold(members["t2_a"], tmp_path / "a1", "arch_a", 1, ["case3"])
    g0 = _as_fold(members["t2_b"], tmp_path / "b0", "arch_b", 0, ["case1", "case2"])
    groups = cv_groups(read_members([f0, f1, g0]), ["case1", "case3", "case4"])
    assert groups == {"case1": [0, 2], "case3": [1]}  # case2 not asked for; case4 held out by nobody


def test_evaluate_cv_names_members_by_config_and_pools_folds(data_dir, members, tmp_path, capsys):
    cid = "ProstateX-0000"
    f0 = _as_fold(members["t2_a"], tmp_path / "m" / "a0", "arch_a", 0, [cid])
    f1 = _as_fold(members["t2_a"], tmp_path / "m" / "a1", "arch_a", 1, ["someone-else"])
    g0 = _as_fold(members["t2_b"], tmp_path / "m" / "b0", "arch_b", 0, [cid])
    cfg = tmp_path / "cv.yaml"
    cfg.write_text(f"members: [{f0}, {f1}, {g0}]\n")
    out = tmp_path / "report"
    assert main(["evaluate", "--config", str(cfg), "--cv", "--ref", str(data_dir / CASE), "--label", "zones_ai",
                 "-o", str(out)]) == 0
    summary = json.loads((out / "evaluate.json").read_text())
    assert summary["cross_validated"] and summary["n_cases"] == 1
    assert summary["folds"] == {cid: ["0"]}
    assert set(summary["zones"]["WG"]["dsc"]) == {"ensemble", "arch_a", "arch_b"}
    assert summary["zones"]["WG"]["dsc"]["ensemble"]["n"] + summary["zones"]["WG"]["dsc"]["ensemble"]["n_excluded"] == 1


def test_evaluate_cv_without_held_out_cases_is_one_line_error(data_dir, members, tmp_path, capsys):
    cfg = tmp_path / "cv.yaml"
    cfg.write_text(f"members: [{members['t2_a']}]\n")  # trained on 'all': holds out nothing
    assert main(["evaluate", "--config", str(cfg), "--cv", "--ref", str(data_dir / CASE), "--label", "zones_ai",
                 "-o", str(tmp_path / "r")]) == 2
    assert "validation case" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_pack_appends_notes_and_rejects_missing_notes(members, tmp_path, capsys):
    notes = tmp_path / "notes.md"
    notes.write_text("## Ablation\n\nsilver helped in 5 of 5 cases\n")
    out = tmp_path / "bundle"
    assert main(["pack", str(members["t2_a"]), "-o", str(out), "--notes", str(notes)]) == 0
    assert (out / "MODEL_CARD.md").read_text().rstrip().endswith("silver helped in 5 of 5 cases")
    assert "max_disagreement:" in (out / "ensemble.yaml").read_text()  # the review limits travel with it
    assert main(["pack", str(members["t2_a"]), "-o", str(tmp_path / "b2"), "--notes", str(tmp_path / "no.md")]) == 2
    assert not (tmp_path / "b2").exists()


def test_pack_and_export_carry_the_locator(data_dir, members, tmp_path):
    """`pack --locator` copies stage one into the bundle; `export` converts it with the members; both
    bundles run it before their members (zones.json names it)."""
    out = tmp_path / "bundle"
    assert main(["pack", str(members["t2_b"]), "--locator", str(members["t2_a"]), "-o", str(out)]) == 0
    import yaml

    cfg = yaml.safe_load((out / "ensemble.yaml").read_text())
    assert cfg["locator"] == "locator" and (out / "locator" / "weights.pt").exists()
    assert cfg["members"] == ["t2_b_foldall"]
    assert "## Stage one: the locator" in (out / "MODEL_CARD.md").read_text()
    assert main(["export", "--config", str(out / "ensemble.yaml"), "-o", str(tmp_path / "onnx")]) == 0
    assert (tmp_path / "onnx" / "locator" / "model.onnx").exists()
    assert yaml.safe_load((tmp_path / "onnx" / "ensemble.yaml").read_text())["locator"] == "locator"
    case = data_dir / CASE / "t2.nii.gz"
    for name, config in (("torch", out / "ensemble.yaml"), ("onnx", tmp_path / "onnx" / "ensemble.yaml")):
        assert main(["predict", str(case), "--config", str(config), "-o", str(tmp_path / f"out_{name}")]) == 0
        side = json.loads((tmp_path / f"out_{name}" / "zones.json").read_text())
        assert side["locator"]["used"] or "no gland" in side["locator"]["reason"]
        assert side["timings_s"]["locator"] > 0


def test_card_gives_each_members_held_out_dsc_at_the_inference_crop():
    """The card's per-member table takes each member's own held-out cases from model.json and their DSC at
    the crop the member gets in `ensemble predict` from cv_evaluate.json (its family's per-case rows)."""
    from ensemble.card import render_card
    from mricore.modelfolder import read_model

    folder = Path(__file__).resolve().parents[2] / "ensemble" / "models" / "default"
    cv = json.loads((folder / "cv_evaluate.json").read_text())
    card = render_card(folder)
    for name in ("unet2d_long_fold0", "dynunet2d_long_fold2"):
        meta = read_model(folder / name, "segmenter")
        row = next(ln for ln in card.splitlines() if ln.startswith(f"| {name} |") and "at inference" not in ln
                   and ln.count("|") == 6)
        for zone, cell in zip(("WG", "TZ", "PZ"), row.split("|")[2:5]):
            want = np.mean([cv["per_case_dsc"][zone][meta.name][c] for c in meta.validation["cases"]])
            assert cell.strip() == f"{want:.3f} (n={len(meta.validation['cases'])})", (name, zone, row)
        assert row.split("|")[5].strip() == " / ".join(f"{meta.validation[z + '_mean']:.3f}" for z in ("WG", "TZ", "PZ"))
