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

from .baseline import NAME, ZoneStatsModel
from .config import KIND, CandidateConfig, ModelConfig
from .covariates import covariate_columns, covariates
from .patches import Tiles, extract, tile_gland


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


def load_lesion_model(folder: str | Path):
    """A model folder of kind lesion_classifier: the CNN (LesionModel) or the zone-statistics baseline."""
    meta = read_model(folder, KIND)
    return ZoneStatsModel.load(folder, meta) if meta.model.get("name") == NAME else LesionModel.load(folder)
