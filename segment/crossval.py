"""`segment train --cv`: train every patient-level fold, predict each fold's held-out cases with that
fold's model (weights chosen on training patients only, see `train.selection`), and write the
cross-validation summary. Only outer held-out cases are scored.

Outputs in `output_dir/name/cv/`:
  predictions/<case>.nii.gz   uint8 zones on the case's original grid and affine
  per_case.csv                one row per validation case: fold, per-zone DSC/sensitivity/precision/HD95
  summary.json                per zone (WG, TZ, PZ): DSC mean, median, IQR, bootstrap 95 % CI, n and
                              n_excluded (mricore.stats.summarize); the split; the resolved config
  summary.csv                 one row per zone and metric

Metrics are computed on the original (expert) grid with mricore.metrics.zone_metrics, whose written
empty-mask rule applies (a zone empty in both reference and prediction is excluded and counted).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mricore.config import to_dict
from mricore.datasets import load_case, load_dataset
from mricore.errors import OutputExistsError
from mricore.io import write_nifti
from mricore.outputs import write_csv, write_json
from mricore.metrics import zone_metrics
from mricore.zones import ZONES
from mricore.stats import fmt, summarize

from .config import SegmentConfig
from .torch_segmenter import Segmenter
from .train import train

METRICS = ("dsc", "sensitivity", "precision", "hd95", "assd")


def cross_validate(cfg: SegmentConfig, force: bool = False, init_from: str | None = None,
                   progress: bool = True) -> dict:
    """Train folds 0..data.folds-1, score each fold's validation cases on their own grid, summarise.

    Returns the summary dict (also written to output_dir/name/cv/summary.json).
    Raises OutputExistsError when the cv folder exists and force is False (nothing is trained then).
    """
    cv_dir = Path(cfg.output_dir) / cfg.name / "cv"
    if cv_dir.exists() and any(cv_dir.iterdir()) and not force:
        raise OutputExistsError(cv_dir, "cross-validation output exists", "an existing file", "pass --force to redo it")
    cases = {c.case_id: c for c in load_dataset(cfg.data.root, cfg.data.files)}
    rows, folds = [], []
    for k in range(cfg.data.folds):
        model_dir = train(cfg, k, init_from=init_from, force=force, progress=progress)
        seg = Segmenter.load(model_dir)
        val_ids = (seg.meta.validation or {}).get("cases", [])
        folds.append({"fold": k, "model": str(model_dir), "val": val_ids, "best_epoch": seg.meta.best_epoch,
                      "selection": (seg.meta.selection or {}).get("rule")})
        for cid in val_ids:
            image, ref, _ = load_case(cases[cid], seg.channels, cfg.data.label, register=cfg.data.register)
            label = seg.predict(image).label
            write_nifti(label, image, cv_dir / "predictions" / f"{cid}.nii.gz", dtype=np.uint8, force=True)
            m = zone_metrics(label, ref.array[0], image.spacing)
            rows.append({"fold": k, "case_id": cid,
                         **{f"{z}_{name}": m[z][name] for z in ZONES for name in METRICS}})
    summary = {
        "name": cfg.name,
        "split": f"{cfg.data.folds}-fold patient-level cross-validation (split_seed {cfg.data.split_seed}) "
                 f"on expert '{cfg.data.label}' of {cfg.data.datasets or 'all datasets'}; "
                 "metrics on each case's original grid",
        "n_cases": len(rows),
        "folds": folds,
        "zones": {z: {name: summarize([r[f"{z}_{name}"] for r in rows]) for name in METRICS} for z in ZONES},
        "config": to_dict(cfg),
    }
    write_json(summary, cv_dir / "summary.json")
    write_csv(rows, cv_dir / "per_case.csv")
    write_csv([{"zone": z, "metric": name, **s} for z, d in summary["zones"].items() for name, s in d.items()],
               cv_dir / "summary.csv")
    for z in ZONES:
        print(f"{z} DSC: {fmt(summary['zones'][z]['dsc'])}")
    return summary
