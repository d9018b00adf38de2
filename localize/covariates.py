"""The lesion classifier's covariates: the head's input columns, per-case values from the zone map and
the clinical table, and the clinical table reader. Shared by the CNN (localize.model) and the
zone-statistics baseline (localize.baseline); names, centres and scales are in localize.config.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mricore.errors import InputError
from mricore.volume import Volume

from .config import CLINICAL, COMPUTED
from .patches import Tiles


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


def gland_volume_ml(zones: Volume) -> float:
    """The gland volume the covariates see, unrounded (mricore.results.mask_volume_ml rounds: fitted
    models depend on these exact numbers)."""
    return float(np.count_nonzero(zones.array[0]) * zones.voxel_volume_ml)


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
    per_case = case_covariates(names, gland_volume_ml(zones), clinical)
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
        raise InputError(path, "clinical table does not exist", "nothing at that path", "pass a CSV with a case_id column")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "case_id" not in rows[0]:
        raise InputError(path, "clinical table needs a case_id column", sorted(rows[0]),
                         "name the case column case_id (as in prostatex/clinical.csv)")
    return {r["case_id"]: r for r in rows}
