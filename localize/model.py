"""A lesion classifier with everything needed to run it on one study: preprocessing, tiling over the
gland, covariates, scoring. Built from a model folder (kind "lesion_classifier") or from a config.

The network returns logits; `lesion_probability` is the one place they become probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mricore.classifiers import DEFAULT_CAM_LAYER, build_classifier
from mricore.config import from_dict
from mricore.errors import InputError
from mricore.modelfolder import load_weights, read_model
from mricore.preprocess import Prepared, PreprocessSpec, prepare_label, preprocess
from mricore.volume import Volume

from .config import CLINICAL, COMPUTED, CandidateConfig, ModelConfig
from .patches import Tiles, extract, tile_gland

KIND = "lesion_classifier"


def lesion_probability(logits: torch.Tensor, prior_logit: float = 0.0) -> torch.Tensor:
    """(N, 1) logits -> (N,) float32 lesion probabilities. `prior_logit` undoes the class prior that
    training imposed (balanced batches or a positive weight see lesions as often as the rest): it is
    log(population odds) - log(training odds), so the probabilities are calibrated to how rare lesion
    tiles are (model.json `training.prior_logit`)."""
    return torch.sigmoid(logits.float()[:, 0] + prior_logit)


@dataclass
class CaseTiles:
    """One study on the working grid: preprocessed image, zones, tiles, patches and covariates."""

    prepared: Prepared
    zones: np.ndarray         # (I, J, K) uint8 on the working grid
    tiles: Tiles
    patches: np.ndarray       # (n, C, pi, pj[, pk]) float32
    covariates: np.ndarray    # (n, n_covariates) float32


class LesionModel:
    def __init__(self, net: torch.nn.Module, model_cfg: ModelConfig, cand: CandidateConfig, spec: PreprocessSpec,
                 meta: dict | None = None, name: str = ""):
        self.net, self.model_cfg, self.cand, self.spec = net, model_cfg, cand, spec
        self.meta, self.name = meta or {}, name

    @classmethod
    def build(cls, model_cfg: ModelConfig, cand: CandidateConfig, spec: PreprocessSpec) -> "LesionModel":
        net = build_classifier(model_cfg.name, cand.spatial_dims, len(spec.channels), 1,
                               len(covariate_columns(model_cfg.covariates)), model_cfg.width, model_cfg.dropout,
                               model_cfg.encoder_args)
        return cls(net, model_cfg, cand, spec)

    @classmethod
    def load(cls, folder: str | Path) -> "LesionModel":
        """The CNN of a model folder (a zone_stats_lr folder loads as localize.baseline.ZoneStatsModel:
        use load_lesion_model for either)."""
        folder = Path(folder)
        meta = read_model(folder, KIND)
        where = f"{folder}/model.json"
        m = cls.build(from_dict(ModelConfig, meta.model, where, "model."),
                      from_dict(CandidateConfig, meta.candidates, where, "candidates."), meta.preprocess)
        try:
            m.net.load_state_dict(load_weights(folder))
        except (RuntimeError, TypeError) as e:
            raise InputError(folder / "weights.pt", "weights do not match the architecture in model.json",
                             str(e).splitlines()[0][:120], "re-export the model folder") from None
        m.net.eval()
        m.meta, m.name = meta.to_dict(), folder.name  # as model.json holds it (localize.predict reads it)
        return m

    @property
    def prior_logit(self) -> float:
        """The training prior to undo (model.json training.prior_logit; 0 for a model in training)."""
        return float((self.meta.get("training") or {}).get("prior_logit", 0.0))

    @property
    def cam_layer(self) -> str:
        return self.model_cfg.cam_layer or DEFAULT_CAM_LAYER[self.model_cfg.name.lower()]

    def tiles_for(self, image: Volume, zones: Volume, clinical: dict | None = None,
                  stride: list[int] | None = None) -> CaseTiles:
        """Preprocess a study and tile its gland. `zones` must lie on the image's grid; `clinical` is the
        case's row of the clinical table (None: every clinical covariate missing); `stride` overrides
        the tiling step (training tiles densely, candidates.train_stride)."""
        prep = preprocess(image, self.spec)
        z = prepare_label(zones, prep)
        tiles = tile_gland(z, self.cand.patch, stride or self.cand.stride)
        cov = covariates(self.model_cfg.covariates, zones, tiles, clinical)
        return CaseTiles(prep, z, tiles, extract(prep.array, tiles), cov)

    @torch.inference_mode()
    def score(self, patches: np.ndarray, cov: np.ndarray, batch: int = 64) -> np.ndarray:
        """(n, C, ...) patches -> (n,) lesion probabilities, in eval mode (the caller restores train mode)."""
        self.net.eval()
        out = []
        for s in range(0, len(patches), batch):
            x = torch.from_numpy(patches[s:s + batch])
            c = torch.from_numpy(cov[s:s + batch]) if cov.shape[1] else None
            out.append(lesion_probability(self.net(x, c), self.prior_logit).numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def labelled_cases(data, channels: list[str]) -> list[tuple]:
    """(case, zone-map key) of every case of `data` (a DataConfig) in its datasets with the lesion
    label, a zone map (the first of data.zones present) and the channels: the cases training uses,
    in load order (so folds made from them are the same everywhere)."""
    from mricore.datasets import load_dataset

    out = []
    for c in load_dataset(data.root):
        if data.datasets and c.dataset not in data.datasets:
            continue
        zkey = next((k for k in data.zones if k in c.labels), None)
        if data.label in c.labels and zkey is not None and all(ch in c.images for ch in channels):
            out.append((c, zkey))
    return out


def patient_splits(data, items: list[dict]) -> list[dict]:
    """Patient-level folds of `items` (dicts with "case" and "positive"), stratified by lesion presence:
    the one split of localize train, the baseline and the benches."""
    from mricore.errors import ConfigError
    from mricore.splits import make_splits

    n_pat = len({i["case"].patient_id for i in items})
    if data.folds > n_pat:
        raise ConfigError("data.folds", f"needs at most {n_pat} (patients with labels)", data.folds, "lower it")
    return make_splits([i["case"] for i in items], data.folds, data.split_seed, positive=[i["positive"] for i in items])


def fold_split(data, items: list[dict], fold) -> tuple[list[dict] | None, list[dict], list[dict]]:
    """(splits, training items, held-out items) of one fold; fold 'all' holds nothing out."""
    from mricore.errors import ConfigError

    if fold == "all":
        return None, items, []
    splits = patient_splits(data, items)
    if not 0 <= int(fold) < len(splits):
        raise ConfigError("--fold", f"must be in 0..{len(splits) - 1} or 'all'", fold, "")
    held = set(splits[int(fold)]["val"])
    return (splits, [i for i in items if i["case"].case_id not in held],
            [i for i in items if i["case"].case_id in held])


def load_lesion_model(folder: str | Path):
    """A model folder of kind lesion_classifier: the CNN (LesionModel) or the zone-statistics baseline."""
    from .baseline import NAME, ZoneStatsModel

    meta = read_model(folder, KIND)
    return ZoneStatsModel.load(folder, meta) if meta.model.get("name") == NAME else LesionModel.load(folder)


def covariate_columns(names: list[str]) -> list[str]:
    """The head's covariate inputs: each name, and after each clinical one its `<name>_missing` flag."""
    return [c for n in names for c in ((n, f"{n}_missing") if n in CLINICAL else (n,))]


def clinical_value(name: str, row: dict | None, gland_ml: float) -> float:
    """A clinical covariate in its own unit, or NaN when the table has no (numeric) value for it."""
    def num(key):
        try:
            v = float((row or {}).get(key, ""))
        except ValueError:
            return float("nan")
        return v if np.isfinite(v) else float("nan")

    if name == "psa_density_predicted":
        return num("psa") / gland_ml if gland_ml > 0 else float("nan")
    return num(CLINICAL[name][2])


def case_covariates(names: list[str], gland_ml: float, clinical: dict | None) -> dict[str, float]:
    """The covariates that are one number per case (all but zone_pz), as the head sees them:
    (value - centre) * scale (localize.config); a missing clinical value is 0 with its indicator 1."""
    out = {}
    for name in names:
        if name in COMPUTED and name != "zone_pz":
            centre, scale = COMPUTED[name]
            out[name] = (gland_ml - centre) * scale
        elif name in CLINICAL:
            v = clinical_value(name, clinical, gland_ml)
            centre, scale, _ = CLINICAL[name]
            known = bool(np.isfinite(v))
            out[name], out[f"{name}_missing"] = ((v - centre) * scale if known else 0.0), float(not known)
    return out


def covariates(names: list[str], zones: Volume, tiles: Tiles, clinical: dict | None = None) -> np.ndarray:
    """(n_tiles, len(covariate_columns(names))) float32: the case's covariates (case_covariates) and
    zone_pz, 1 for a tile that is mostly PZ."""
    n = len(tiles.corners)
    per_case = case_covariates(names, float(np.count_nonzero(zones.array[0]) * zones.voxel_volume_ml), clinical)
    cols = [(tiles.zone == 2).astype(float) if c == "zone_pz" else np.full(n, per_case[c])
            for c in covariate_columns(names)]
    return np.stack(cols, 1).astype(np.float32) if cols else np.zeros((n, 0), np.float32)


def read_clinical(path: str | Path | None) -> dict[str, dict]:
    """case_id -> row of a clinical CSV (empty without a path)."""
    import csv

    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "clinical table does not exist", None, "pass a CSV with a case_id column")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "case_id" not in rows[0]:
        raise InputError(path, "clinical table needs a case_id column", sorted(rows[0]),
                         "name the case column case_id (as in prostatex/clinical.csv)")
    return {r["case_id"]: r for r in rows}
