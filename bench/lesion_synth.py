"""Synthetic-lesion benchmark on real anatomy: does the localisation path learn when the signal exists?

Base studies: every real T2W study here without an expert lesion mask or with a csPCa-negative one
(ProstateX-0003, -0004, -0176 with their AI zones; PROMISE12 Case00, the Prostate3T and ProstateX
unlabelled studies and the Philips studies with zones predicted by the bundled ensemble), one patient
each. Each gets `--variants` copies with 0-2 synthetic lesions (localize.synth: ellipsoids of 0.1-2 mL
in PZ or TZ, partial-volume edges, texture; ADC darkened too where the study has one), seeded, the
same lesions at every contrast. Written under --out (never into ../shared/data) with a datalist that
keeps every copy of a study in one patient, so patient-level folds never split a study.

For each contrast: `localize train` on 3 patient-level folds (weights chosen on inner splits of the
training patients), `localize predict` on every held-out case, `localize evaluate` (patient AUC,
sensitivity/specificity at the Youden point, lesion sensitivity at 0.5/1/2 false positives per case),
and Grad-CAM faithfulness on the top patch of each held-out case with a lesion (deletion and insertion
areas against random orders). At the default contrast also: a classifier on the bundled DynUNet
segmenter's encoder, transferred (freeze then unfreeze) versus from scratch, at several numbers of
training patients; with `--pretrained` (issue 37 item 2) also from the encoder of a `segment pretrain`
folder (masked-image reconstruction, no labels). RULE for that arm, fixed before its first score: the
pre-trained encoder helps the classifier if its patient AUC is at least scratch's + 0.05 at every
training-set size run. Prints and writes bench/results/lesion_synth.json.

    python -m bench.lesion_synth [--out runs/lesion_synth] [--contrasts 0 0.1 0.2 0.4]
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import BUNDLE, RESULTS, ROOT, add_data, parser, write_result
from ensemble.config import load_ensemble_config
from localize.config import LocalizeConfig
from localize.synth import crop_around, draw_lesions, insert
from mricore.config import load_config
from mricore.io import read_label, read_nifti, write_nifti
from mricore.modelfolder import read_model
from mricore.outputs import write_json

CONFIG = ROOT / "configs/localize/lesion_t2w_2d.yaml"
# The bundle's first 2D DynUNet member (one slice in, as the classifier's patches): its encoder is the
# transfer-learning source.
SEGMENTER = next(Path(m) for m in load_ensemble_config(BUNDLE / "ensemble.yaml").members
                 if (net := read_model(m).model)["name"] == "dynunet" and not net.get("context"))
DEFAULT_CONTRAST = 0.6
LESION_COUNTS, LESION_ODDS = (0, 1, 2), (0.4, 0.4, 0.2)


def base_studies(data: Path, cache: Path) -> list[dict]:
    """(patient, t2, zones, adc or None) volumes of every usable base study, read once (T2W and zones
    cropped to the gland and 30 mm around it); predicted zones cached in `cache`."""
    from ensemble.cli import main as ensemble

    bases = [{"patient": p, "folder": data / "prostatex" / p, "zones": data / "prostatex" / p / "zones_ai.nii.gz"}
             for p in ("ProstateX-0003", "ProstateX-0004", "ProstateX-0176")]
    for sub in ("promise12", "unlabelled", "philips"):
        for f in sorted((data / sub).iterdir()):
            if (f / "t2.nii.gz").exists():
                bases.append({"patient": f.name, "folder": f, "zones": cache / f.name / "zones.nii.gz"})
    for b in bases:
        if not b["zones"].exists():
            if ensemble(["predict", str(b["folder"] / "t2.nii.gz"), "-o", str(b["zones"].parent), "--force"]) != 0:
                raise SystemExit(f"ensemble predict failed on {b['folder']}")
        zones = read_label(b["zones"], "zones", b["patient"])
        gland = zones.array[0] > 0  # the gland and 30 mm around it: smaller files, same anatomy
        b["t2"] = crop_around(read_nifti(b["folder"] / "t2.nii.gz", "T2W", b["patient"]), gland)
        b["zones"] = crop_around(zones, gland)
        adc = b["folder"] / "adc.nii.gz"
        b["adc"] = read_nifti(adc, "ADC", b["patient"]) if adc.exists() else None
    return bases


def build(bases: list[dict], contrast: float, out: Path, seed: int, variants: int) -> Path:
    """Write the synthetic cases of one contrast and their datalist; return the datalist path."""
    rows, lesions = [], {}
    for bi, b in enumerate(bases):
        t2, zones, adc = b["t2"], b["zones"], b["adc"]
        for v in range(variants):
            rng = np.random.default_rng([seed, bi, v])
            drawn = draw_lesions(zones, int(rng.choice(LESION_COUNTS, p=LESION_ODDS)), rng)
            cid = f"{b['patient']}_v{v}"
            d = out / cid
            new_t2, mask = insert(t2, zones, drawn, contrast, np.random.default_rng([seed, bi, v, 1]))
            row = {"patient_id": b["patient"], "case_id": cid, "T2W": f"{cid}/t2.nii.gz", "ADC": "",
                   "zones": f"{cid}/zones.nii.gz", "lesion": f"{cid}/lesion.nii.gz"}
            write_nifti(new_t2.array[0], t2, d / "t2.nii.gz", force=True)
            write_nifti(zones.array[0], zones, d / "zones.nii.gz", dtype=np.uint8, force=True)
            write_nifti(mask, t2, d / "lesion.nii.gz", dtype=np.uint8, force=True)
            if adc is not None:
                new_adc, _ = insert(adc, zones, drawn, contrast, np.random.default_rng([seed, bi, v, 2]))
                write_nifti(new_adc.array[0], adc, d / "adc.nii.gz", force=True)
                row["ADC"] = f"{cid}/adc.nii.gz"
            rows.append(row)
            lesions[cid] = {"lesions": [les.to_dict() for les in drawn], "mask_ml": float(mask.sum() * t2.voxel_volume_ml)}
    path = out / "datalist.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    write_json(lesions, out / "lesions.json")
    return path


def _cfg(datalist: Path, runs: Path, name: str, sets: list[str]) -> LocalizeConfig:
    """The localisation config on a synthetic datalist, with `sets` (the bench's overrides) last."""
    return load_config(LocalizeConfig, CONFIG, [f"name={name}", f"output_dir={runs}", f"data.root={datalist}",
                                                "data.datasets=[]", "data.zones=[zones]", "data.inner_val=2", *sets])


def held_out(model_dir: Path, cases: dict, held: list[str]):
    """(model, case id, tiles, patch probabilities, has a lesion) for each held-out case of a fold."""
    from localize.model import LesionModel
    from mricore.datasets import load_case, read_ref

    model = LesionModel.load(model_dir)
    for cid in held:
        c = cases[cid]
        image, lesion, _ = load_case(c, model.spec.channels, "lesion")
        ct = model.tiles_for(image, read_ref(c.labels["zones"], "zones", cid))
        yield model, cid, ct, model.score(ct.patches, ct.covariates), bool(lesion.array.any())


def faithfulness_of(model_dir: Path, cases: dict, held: list[str]) -> list[dict]:
    """Grad-CAM deletion/insertion on the top patch of every held-out case that has a lesion."""
    from localize.predict import top_patch_faithfulness

    out = []
    for model, cid, ct, scores, positive in held_out(model_dir, cases, held):
        if not positive:
            continue
        f = top_patch_faithfulness(model, ct, scores, model.cam_layer)
        out.append({"case_id": cid, "top_score": float(scores.max()), **{k: f["curves"][k] for k in (
            "deletion_area", "insertion_area", "random_deletion_area", "random_insertion_area",
            "better_deletion", "better_insertion")}})
    return out


def cross_validate(datalist: Path, runs: Path, name: str, sets: list[str], explain: bool = True) -> dict:
    """The full path: train on each fold, predict the held-out cases, evaluate them together."""
    from localize.evaluate import evaluate
    from localize.predict import predict
    from localize.train import train
    from mricore.datasets import load_dataset

    cfg = _cfg(datalist, runs, name, sets)
    cases = {c.case_id: c for c in load_dataset(datalist)}
    pred, faith, folds = runs / name / "pred", [], []
    t0 = time.perf_counter()
    for k in range(cfg.data.folds):
        model_dir = train(cfg, k, force=True)
        meta = json.loads((model_dir / "model.json").read_text())
        held = meta["validation"]["cases"]
        folds.append({"fold": k, "held_out": held, "selection": meta["selection"], "training": meta["training"]})
        for cid in held:
            c = cases[cid]
            predict(str(model_dir), [str(c.images["T2W"].path)], str(c.labels["zones"].path), str(pred / cid),
                    force=True)
        if explain:
            faith += faithfulness_of(model_dir, cases, held)
    summary = evaluate(str(pred), str(datalist), str(runs / name / "report"), force=True)
    wg = summary["patient_level"]["WG"]
    out = {"n_cases": summary["n_cases"], "n_patients": len({c.patient_id for c in cases.values()}),
           "patient_auc": wg["auc"], "youden_sensitivity": wg["youden_sensitivity"],
           "youden_specificity": wg["youden_specificity"], "n_pos": wg["n_pos"], "n_neg": wg["n_neg"],
           "lesion_sensitivity_at_fp_per_case": summary["lesion_level"]["WG"]["sensitivity_at_fp_per_case"],
           "n_lesions": summary["lesion_level"]["WG"]["n_lesions"], "lesion_ap": summary["lesion_level"]["WG"]["ap"],
           "folds": folds, "overrides": sets, "seconds": round(time.perf_counter() - t0, 1)}
    if explain:
        n = len(faith)
        out["gradcam"] = {"n_cases": n, "top_patch": "highest-scoring patch of each held-out case with a lesion",
                          "deletion_better_than_random": sum(f["better_deletion"] for f in faith) / max(n, 1),
                          "insertion_better_than_random": sum(f["better_insertion"] for f in faith) / max(n, 1),
                          **{f"mean_{k}": float(np.mean([f[k] for f in faith])) if n else float("nan") for k in (
                              "deletion_area", "random_deletion_area", "insertion_area", "random_insertion_area")},
                          "cases": faith}
    return out


def transfer(datalist: Path, runs: Path, sizes: list[int], epochs: int, contrast: float,
             pretrained: Path | None = None) -> list[dict]:
    """dynunet_encoder from scratch versus from the bundled segmenter's encoder (frozen for the first
    third of the epochs), at several numbers of training patients per fold, both on the same fixed
    schedule (last epoch); patient AUC of the held-out cases (patient score = highest patch probability)."""
    from localize.train import train
    from mricore.datasets import load_dataset
    from mricore.metrics import roc_auc

    seg = read_model(SEGMENTER).model
    arch = ["model.name=dynunet_encoder", "model.width=1.0", "model.cam_layer=null", "train.lr=0.001",
            f"model.encoder_args={json.dumps({'channels': seg['channels'], 'strides': seg['strides'], 'norm': seg['norm']})}",
            f"train.epochs={epochs}", "train.selection=fixed"]
    init = {"scratch": [], "segmenter": [f"train.init_from={SEGMENTER}", f"train.freeze_encoder_epochs={epochs // 3}"]}
    if pretrained is not None:  # the same transfer schedule from the self-supervised encoder
        init["pretrain"] = [f"train.init_from={pretrained}", f"train.freeze_encoder_epochs={epochs // 3}"]
    cases = {c.case_id: c for c in load_dataset(datalist)}
    rows = []
    for n in sizes:
        for how, extra in init.items():
            cfg = _cfg(datalist, runs, f"transfer_c{contrast:g}_{how}_{n}", [*arch, *extra, f"data.max_train_patients={n}"])
            scores, labels, t0, n_train = [], [], time.perf_counter(), []
            for k in range(cfg.data.folds):
                model_dir = train(cfg, k, force=True)
                meta = json.loads((model_dir / "model.json").read_text())
                n_train.append(meta["training"]["patients"])
                for _, _, _, p, positive in held_out(model_dir, cases, meta["validation"]["cases"]):
                    scores.append(float(p.max()))
                    labels.append(int(positive))
            rows.append({"init": how, "max_train_patients": n, "patient_auc": roc_auc(scores, labels),
                         "n_cases": len(scores), "n_pos": int(sum(labels)), "training_patients_per_fold": n_train,
                         "distinct_scores": len(set(scores)), "scores": scores,
                         "transfer": meta["training"]["transfer"], "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "transfer"}))
    return rows


def pretrain_passes(rows: list[dict]) -> dict:
    """The docstring's RULE per contrast: pretrain AUC >= scratch + 0.05 at every size."""
    out = {}
    for c in sorted({r["contrast"] for r in rows}):
        auc = {(r["init"], r["max_train_patients"]): r["patient_auc"] for r in rows if r["contrast"] == c}
        sizes = sorted({n for _, n in auc})
        out[str(c)] = bool(all(auc[("pretrain", n)] >= auc[("scratch", n)] + 0.05 for n in sizes))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    add_data(ap)
    ap.add_argument("--out", default=str(ROOT / "runs/lesion_synth"))
    ap.add_argument("--contrasts", type=float, nargs="+", default=[0.0, 0.3, DEFAULT_CONTRAST, 0.9])
    ap.add_argument("--variants", type=int, default=6, help="synthetic copies of each base study")
    ap.add_argument("--sizes", type=int, nargs="+", default=[3, 10], help="training patients (transfer)")
    ap.add_argument("--transfer-epochs", type=int, default=8)
    ap.add_argument("--transfer-contrasts", type=float, nargs="+", default=[0.9])
    ap.add_argument("--pretrained", type=Path, default=None, help="segment pretrain folder: a third transfer arm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--parts", nargs="+", default=["sweep", "transfer"], choices=["sweep", "transfer"],
                    help="run these parts; the others keep their figures from the last bench/results JSON")
    args = ap.parse_args(argv)
    out, t0 = Path(args.out), time.perf_counter()
    bases = base_studies(args.data, out / "zones")
    result = {"what": "synthetic lesions in real anatomy; localisation trained and evaluated on patient-level "
                      "folds (weights chosen on inner splits of the training patients)",
              "config": str(CONFIG.relative_to(ROOT)),
              "base_studies": [b["patient"] for b in bases], "variants_per_study": args.variants, "seed": args.seed,
              "lesions_per_case": dict(zip(map(str, LESION_COUNTS), LESION_ODDS)), "default_contrast": DEFAULT_CONTRAST,
              "contrast": "fractional darkening of T2W (and ADC) inside the lesion: 0.6 = 60 % darker", "by_contrast": []}
    path = RESULTS / "lesion_synth.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    for part, key in (("sweep", "by_contrast"), ("transfer", "transfer")):
        if part not in args.parts and key in old:
            result[key] = old[key]
    for c in (args.contrasts if "sweep" in args.parts else []):
        tb = time.perf_counter()
        datalist = build(bases, c, out / f"data_c{c:g}", args.seed, args.variants)
        row = {"contrast": c, "build_seconds": round(time.perf_counter() - tb, 1),
               **cross_validate(datalist, out / "runs", f"c{c:g}", args.overrides)}
        result["by_contrast"].append(row)
        print(json.dumps({k: row[k] for k in ("contrast", "patient_auc", "lesion_sensitivity_at_fp_per_case", "seconds")}
                         | {"gradcam_deletion_better": row["gradcam"]["deletion_better_than_random"]}))
    if "transfer" in args.parts:
        old_t = old.get("transfer", {})
        kept = [{"contrast": r.get("contrast", old_t.get("contrast")), **r} for r in old_t.get("rows", [])]
        kept = [r for r in kept if r["contrast"] not in args.transfer_contrasts]  # other contrasts' rows stay
        rows = []
        for c in args.transfer_contrasts:
            datalist = out / f"data_c{c:g}" / "datalist.csv"
            if not datalist.exists():
                build(bases, c, datalist.parent, args.seed, args.variants)
            rows += [{"contrast": c, **r} for r in transfer(datalist, out / "runs", args.sizes, args.transfer_epochs, c,
                                                            args.pretrained)]
        result["transfer"] = {"segmenter": str(SEGMENTER.relative_to(ROOT)),
                              "rows": sorted(kept + rows, key=lambda r: (r["contrast"], r["max_train_patients"]))}
        if args.pretrained is not None:
            result["transfer"] |= {"pretrained": str(args.pretrained), "pretrain_passes": pretrain_passes(rows)}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    # The command without --data / --out (this machine's folders); the run's own folders are under --out.
    result["command"] = ("python -m bench.lesion_synth --parts " + " ".join(args.parts)
                         + (f" --contrasts {' '.join(map(str, args.contrasts))}" if "sweep" in args.parts else "")
                         + (f" --transfer-contrasts {' '.join(map(str, args.transfer_contrasts))}"
                            if "transfer" in args.parts else "")
                         + (f" --pretrained {args.pretrained}" if args.pretrained is not None else ""))
    write_result(result, path)
    print(f"wrote bench/results/lesion_synth.json ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
