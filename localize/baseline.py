"""An interpretable baseline, `model.name: zone_stats_lr`: zone-wise intensity statistics and a logistic
regression, trained and run by the same `localize train / predict / evaluate` commands as the CNN.

One sample per patient and zone (TZ, PZ). Its features, on the T2W grid:
- T2W mean, standard deviation, 5th and 25th percentiles, divided by the gland's median (scanners with
  other gains compare); the zone's volume in mL;
- ADC mean and 10th percentile where the study has an ADC (else 0 with `adc_missing` = 1);
- `is_pz`, and the configured covariates (localize.config; a clinical one with its missing indicator).
Label: the zone holds at least `candidates.positive_min_voxels` lesion voxels. A standardised L2
logistic regression (balanced class weights, C = `model.c`) is fitted on the fold's training patients;
its held-out patients are scored once. The fit is stored as tensors (mean, scale, weight, bias) in
weights.pt, so the model folder is like any other; `coefficients` in model.json say which feature
pushes a zone towards "lesion".

Prediction paints each zone with its probability (lesion_probability.nii.gz) and makes each zone at or
above `candidates.threshold` one candidate: localisation to the zone, not to the lesion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mricore.volume import Volume
from mricore.zones import CLASS_NAMES

from .config import KIND, CandidateConfig, ModelConfig
from .covariates import case_covariates, covariate_columns, gland_volume_ml, read_clinical
from .folds import labelled_cases, split_items

NAME = "zone_stats_lr"
ZONES = (1, 2)
STATS = ("t2_mean", "t2_sd", "t2_p5", "t2_p25", "volume_ml", "adc_mean", "adc_p10", "adc_missing", "is_pz")


def zone_features(image: Volume, zones: Volume) -> dict[int, dict[str, float]]:
    """zone code -> STATS of that zone, for a study whose channels (T2W, optional ADC) share the zones' grid."""
    z = zones.array[0]
    t2 = image.channel("T2W")
    gland = z > 0
    ref = float(np.median(t2[gland])) if gland.any() else 1.0
    ref = ref if ref > 0 else 1.0
    adc = image.channel("ADC") if "ADC" in image.channels else None
    out = {}
    for k in ZONES:
        m = z == k
        v = t2[m] / ref if m.any() else np.zeros(1)
        a = adc[m] if adc is not None and m.any() else None
        out[k] = {"t2_mean": float(v.mean()), "t2_sd": float(v.std()), "t2_p5": float(np.percentile(v, 5)),
                  "t2_p25": float(np.percentile(v, 25)), "volume_ml": float(m.sum() * zones.voxel_volume_ml),
                  "adc_mean": float(a.mean()) if a is not None else 0.0,
                  "adc_p10": float(np.percentile(a, 10)) if a is not None else 0.0,
                  "adc_missing": float(a is None), "is_pz": float(k == 2)}
    return out


def feature_names(covariates: list[str]) -> list[str]:
    return [*STATS, *[c for c in covariate_columns(covariates) if c != "zone_pz"]]


def zone_rows(image: Volume, zones: Volume, covariates: list[str], clinical: dict | None) -> dict[int, np.ndarray]:
    """zone code -> feature vector (feature_names order): the zone's STATS, then the case's covariates."""
    stats = zone_features(image, zones)
    extra = list(case_covariates(covariates, gland_volume_ml(zones), clinical).values())  # is_pz stands for zone_pz
    return {k: np.array([stats[k][s] for s in STATS] + extra, np.float64) for k in ZONES}


def fit(x: np.ndarray, y: np.ndarray, c: float) -> dict:
    """Standardised L2 logistic regression (scikit-learn, balanced class weights) as tensors."""
    import torch
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    lr = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit((x - mean) / scale, y)
    t = lambda a: torch.as_tensor(np.asarray(a, np.float32))  # noqa: E731
    return {"mean": t(mean), "scale": t(scale), "weight": t(lr.coef_[0]), "bias": t(lr.intercept_)}


def probability(weights: dict, x: np.ndarray) -> np.ndarray:
    """(n, F) features -> (n,) lesion probabilities of the fitted regression."""
    w = {k: v.numpy().astype(np.float64) for k, v in weights.items()}
    z = ((x - w["mean"]) / w["scale"]) @ w["weight"] + w["bias"][0]
    return 1.0 / (1.0 + np.exp(-z))


def train_baseline(cfg, fold, force: bool = False) -> Path:
    """`localize train` for zone_stats_lr: one fit per fold (no epochs, nothing to choose)."""
    from mricore.config import to_dict
    from mricore.datasets import load_case, read_ref
    from mricore.errors import InputError
    from mricore.metrics import roc_auc
    from mricore.modelfolder import ModelMeta, run_folder, start_run, write_model

    run_dir, _ = run_folder(cfg.output_dir, cfg.name, fold, False, force)
    clinical = read_clinical(cfg.data.clinical)
    items = []
    for c, zkey in labelled_cases(cfg.data, ["T2W"]):
        channels = ["T2W"] + (["ADC"] if "ADC" in cfg.preprocess.channels and "ADC" in c.images else [])
        image, lesion, _ = load_case(c, channels, cfg.data.label)
        zones = read_ref(c.labels[zkey], zkey, c.case_id)
        rows = zone_rows(image, zones, cfg.model.covariates, clinical.get(c.case_id))
        labels = {k: int(np.count_nonzero((lesion.array[0] > 0) & (zones.array[0] == k))
                         >= cfg.candidates.positive_min_voxels) for k in ZONES}
        items.append({"case": c, "rows": rows, "labels": labels, "positive": bool(lesion.array.any())})
    if not items:
        raise InputError(cfg.data.root, f"no case has '{cfg.data.label}' and a zone map {cfg.data.zones}", 0,
                         "check data.root, data.datasets and data.zones")
    split = split_items(cfg.data, items, fold, inner=False)
    splits, tr, held = split.splits, split.train, split.held_out
    x = np.array([i["rows"][k] for i in tr for k in ZONES])
    y = np.array([i["labels"][k] for i in tr for k in ZONES])
    if not 0 < y.sum() < len(y):
        raise InputError(cfg.data.root, "training zones must hold both lesion and lesion-free zones",
                         f"{int(y.sum())} of {len(y)}", "add cases or use more folds' worth of patients")
    weights = fit(x, y, cfg.model.c)
    names = feature_names(cfg.model.covariates)
    validation = None
    if held:
        s = [float(max(probability(weights, np.array([i["rows"][k] for k in ZONES])))) for i in held]
        validation = {"split": f"fold {fold} of {cfg.data.folds} (patient-level, stratified by lesion presence); "
                               "held out: scored once after fitting, used for no decision",
                      "cases": [i["case"].case_id for i in held],
                      "patient_auc": roc_auc(s, [int(i["positive"]) for i in held])}
    start_run(run_dir, cfg, splits)
    meta = ModelMeta(KIND, to_dict(cfg.model), cfg.preprocess, name=cfg.name, fold=fold,
                     candidates=to_dict(cfg.candidates), outputs="lesion probability per zone (logistic regression "
                     "on zone statistics); each zone at or above the threshold is one candidate",
                     patch_label=f">= {cfg.candidates.positive_min_voxels} '{cfg.data.label}' voxels in the zone",
                     selection={"rule": "none: one closed-form fit on the fold's training patients", "cases": []},
                     validation=validation,
                     training={"patients": len({i["case"].patient_id for i in tr}), "zones": int(len(y)),
                               "lesion_zones": int(y.sum()), "features": names,
                               "coefficients": dict(zip(names, map(float, weights["weight"].tolist())))})
    write_model(run_dir, meta, weights)
    print(f"{NAME}: fitted on {len(tr)} patients ({int(y.sum())} of {len(y)} zones with a lesion)")
    return run_dir


class ZoneStatsModel:
    """A fitted zone_stats_lr folder: `zone_map` paints each zone with its lesion probability."""

    def __init__(self, weights: dict, model_cfg, cand, spec, meta: dict, name: str):
        self.weights, self.model_cfg, self.cand, self.spec, self.meta, self.name = (
            weights, model_cfg, cand, spec, meta, name)

    @classmethod
    def load(cls, folder: str | Path, meta) -> "ZoneStatsModel":
        from mricore.config import from_dict
        from mricore.errors import InputError
        from mricore.modelfolder import load_weights

        folder = Path(folder)
        where = f"{folder}/model.json"
        w = load_weights(folder)
        n = len(feature_names(meta.model.get("covariates", [])))
        if set(w) != {"mean", "scale", "weight", "bias"} or w["weight"].shape != (n,):
            raise InputError(folder / "weights.pt", f"{NAME} weights must be mean, scale, weight ({n}), bias",
                             sorted(w), "re-export the model folder")
        return cls(w, from_dict(ModelConfig, meta.model, where, "model."),
                   from_dict(CandidateConfig, meta.candidates, where, "candidates."), meta.preprocess,
                   meta.to_dict(), folder.name)

    def zone_map(self, image: Volume, zones: Volume, clinical: dict | None) -> tuple[np.ndarray, dict[str, float]]:
        """(I, J, K) map with each zone painted with its probability, and {zone name: probability}."""
        rows = zone_rows(image, zones, self.model_cfg.covariates, clinical)
        z = zones.array[0]
        prob = np.zeros(z.shape, np.float32)
        per_zone = {}
        for k in ZONES:
            p = float(probability(self.weights, rows[k][None])[0]) if (z == k).any() else 0.0
            per_zone[CLASS_NAMES[k]] = p
            prob[z == k] = p
        return prob, per_zone

    def candidates(self, prob: np.ndarray, zones: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        """Each zone whose probability reaches candidates.threshold is one candidate."""
        from .candidates import describe, label_candidates

        found = [describe(zones == k, float(prob[zones == k].max()), zones, affine) for k in ZONES
                 if (zones == k).any() and prob[zones == k].max() >= self.cand.threshold]
        return label_candidates(found, prob.shape)
