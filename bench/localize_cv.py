"""Lesion localisation on the real expert lesion masks: CNN versus a logistic-regression baseline, with
and without clinical covariates, under one patient-level cross-validation.

Cases: every case of `configs/localize/lesion_t2w_2d.yaml`'s datasets (ProstateX, Prostate158) with an
expert lesion mask and a zone map (expert `zones`, else the AI `zones_ai`). Folds: the ones `localize
train` makes (patient-level, stratified by lesion presence, `data.split_seed`); each model sees the
same held-out patients, which decide nothing.

Models (`--models`, default all):
- `cnn`: the config as is (`localize train` per fold, weights chosen on an inner split of the training
  patients; `localize predict` on each held-out case; patient score = highest lesion probability).
- `cnn_clinical`: the same plus age, PSA, PSA density (reported and from the zone map's own gland
  volume) from `prostatex/clinical.csv`, each with a missing indicator (Prostate158 has no table).
- `lr`, `lr_clinical`: `configs/localize/lesion_zone_lr.yaml` (localize.baseline: zone-wise T2W/ADC
  statistics and a logistic regression), through the same commands.

Prints and writes bench/results/localize_cv.json: per model the patient AUC with a patient-level
bootstrap 95 % CI, sensitivity/specificity at the Youden point, per-case scores, and the folds.

    python -m bench.localize_cv [--models lr lr_clinical cnn cnn_clinical] [--runs runs/localize_cv]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, ROOT, add_data, parser, write_result
from localize.config import LocalizeConfig
from mricore.config import load_config

CONFIG = ROOT / "configs/localize/lesion_t2w_2d.yaml"
LR_CONFIG = ROOT / "configs/localize/lesion_zone_lr.yaml"
CLINICAL_COVARIATES = ["age", "psa", "psa_density", "psa_density_predicted"]
MODELS = ("lr", "lr_clinical", "cnn", "cnn_clinical")


def real_cases(cfg: LocalizeConfig) -> list[dict]:
    """The cases `localize train` would use, in its order, with lesion presence and zone map."""
    from localize.folds import labelled_cases
    from mricore.datasets import read_ref

    out = []
    for c, zkey in labelled_cases(cfg.data, ["T2W"]):
        lesion = read_ref(c.labels[cfg.data.label], cfg.data.label, c.case_id)
        out.append({"case": c, "zones_key": zkey, "positive": bool(lesion.array.any())})
    return out


def folds_of(cfg: LocalizeConfig, cases: list[dict]) -> list[list[str]]:
    """Held-out case ids per fold, exactly as localize train makes them."""
    from mricore.protocol import fold_splits

    return [list(s["val"]) for s in fold_splits(cfg.data, [c["case"] for c in cases], [c["positive"] for c in cases])]


def with_site_check(result: dict, cases: list[dict]) -> dict:
    """Adds the AUC within each dataset holding both classes: here every negative patient is a ProstateX
    study, so a model can separate the classes by site alone; the within-ProstateX AUC cannot."""
    from mricore.metrics import roc_auc

    label = {c["case"].case_id: int(c["positive"]) for c in cases}
    within = {}
    for ds in sorted({c["case"].dataset for c in cases}):
        ids = [c["case"].case_id for c in cases if c["case"].dataset == ds and c["case"].case_id in result["scores"]]
        y = [label[i] for i in ids]
        if 0 < sum(y) < len(y):
            within[ds] = {"auc": roc_auc([result["scores"][i] for i in ids], y), "n_pos": sum(y), "n_neg": len(y) - sum(y)}
    return {**result, "auc_within_dataset": within}


def auc_with_ci(scores: list[float], labels: list[int], n_boot: int = 2000, seed: int = 0) -> dict:
    """Patient AUC, its patient-level bootstrap 95 % CI (resamples holding both classes), and the
    sensitivity / specificity at the Youden point."""
    from mricore.metrics import patient_level, roc_auc

    s, y = np.asarray(scores, float), np.asarray(labels, int)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(s), len(s))
        if 0 < y[i].sum() < len(i):
            boots.append(roc_auc(s[i], y[i]))
    pl = patient_level(s, y)
    return {"auc": roc_auc(s, y), "auc_ci95": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]
            if boots else [float("nan")] * 2, "youden_sensitivity": pl["youden_sensitivity"],
            "youden_specificity": pl["youden_specificity"], "n_pos": int(y.sum()), "n_neg": int(len(y) - y.sum())}



def full_path(config: Path, cfg_sets: list[str], cases: list[dict], folds: list[list[str]], runs: Path, name: str,
              clinical_path: str | None) -> dict:
    """The full localisation path per fold: `localize train`, `localize predict` on the held-out cases."""
    from localize.predict import predict
    from localize.train import train

    sets = [f"name={name}", f"output_dir={runs}", *cfg_sets]
    if clinical_path:
        base = load_config(LocalizeConfig, config, cfg_sets).model.covariates
        sets += [f"data.clinical={clinical_path}", f"model.covariates={json.dumps([*base, *CLINICAL_COVARIATES])}"]
    cfg = load_config(LocalizeConfig, config, sets)
    by_id = {c["case"].case_id: c for c in cases}
    scores, selection = {}, []
    for k, held in enumerate(folds):
        model = train(cfg, k, force=True)
        meta = json.loads((model / "model.json").read_text())
        if sorted(meta["validation"]["cases"]) != sorted(held):
            raise SystemExit(f"fold {k}: localize train held out {meta['validation']['cases']}, expected {held}")
        selection.append(meta["selection"])
        for cid in held:
            c = by_id[cid]["case"]
            r = predict(str(model), [str(c.images["T2W"].path)], str(c.labels[by_id[cid]["zones_key"]].path),
                        str(runs / name / "pred" / cid), force=True, clinical=clinical_path)
            scores[cid] = r["patient_score"]
    ids = sorted(scores)
    return {"scores": {c: scores[c] for c in ids}, "selection": selection, "overrides": sets[2:],
            **auc_with_ci([scores[c] for c in ids], [int(by_id[c]["positive"]) for c in ids])}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--runs", default=str(ROOT / "runs/localize_cv"))
    add_data(ap)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)
    from localize.covariates import read_clinical

    sets = [f"data.root={args.data}", *args.overrides]
    cfg = load_config(LocalizeConfig, CONFIG, sets)
    clinical_path = str(args.data / "prostatex/clinical.csv")
    clinical = read_clinical(clinical_path)
    cases = real_cases(cfg)
    folds = folds_of(cfg, cases)
    out = {"what": "lesion detection per patient on the real expert lesion masks: patient-level cross-validation, "
                   "the same folds for every model (held-out patients decide nothing)",
           "command": "python -m bench.localize_cv (every model; each model's entry names its own run)",
           "config": str(CONFIG.relative_to(ROOT)),
           "n_cases": len(cases), "n_positive": sum(c["positive"] for c in cases),
           "folds": [{"fold": k, "held_out": h} for k, h in enumerate(folds)],
           "clinical": {"table": "prostatex/clinical.csv", "covariates": CLINICAL_COVARIATES,
                        "cases_with_values": sorted(c["case"].case_id for c in cases if c["case"].case_id in clinical),
                        "missing": "value 0 (the centre) plus a <name>_missing indicator"},
           "site_confound": "every lesion-free patient is a ProstateX study and every Prostate158 case has a lesion, "
                            "so the pooled AUC can be won by telling the sites apart; auc_within_dataset "
                            "(ProstateX: 3 with, 3 without) cannot",
           "models": {}}
    previous = RESULTS / "localize_cv.json"
    if previous.exists():  # models not rerun keep their last figures (same folds are checked)
        old = json.loads(previous.read_text())
        if old.get("folds") == out["folds"]:
            out["models"] = old.get("models", {})
    for m in args.models:
        t0 = time.perf_counter()
        config = LR_CONFIG if m.startswith("lr") else CONFIG
        r = full_path(config, sets, cases, folds, Path(args.runs), m, clinical_path if m.endswith("_clinical") else None)
        r = with_site_check(r, cases)
        out["models"][m] = {**r, "command": f"python -m bench.localize_cv --models {m}",
                            "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps({"model": m, "auc": r["auc"], "auc_ci95": r["auc_ci95"], "n_pos": r["n_pos"],
                          "n_neg": r["n_neg"], "within": r["auc_within_dataset"]}))
    write_result(out, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
