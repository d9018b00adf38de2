"""The limits of the review checks (mricore.review), how the fitted ones are fitted, and where they are stored.

Two kinds of limit:
- acquisition facts and margins (slice tilt, voxel size, field of view, gland-volume margin, ...): code
  defaults of `ReviewConfig`, each with its reason;
- fitted limits (`FITTED`: the content limits of the input checks and the member-disagreement,
  entropy and PZ/TZ-intensity limits of the output checks): measured on real studies, so they have
  no code default. They are stored once, in the `review:` section of the bundled ensemble's
  ensemble.yaml, and written there only by `write_limits` (`make review-limits`). A config that
  leaves one out takes the bundle's (ensemble.config); with none anywhere the check reports n/a,
  "not calibrated", and never decides the verdict.

Fitting (`fit_limits`): on the rows bench/qa_bench.py measures (every study and corrupted variant run
through the bundle: its half, kind, whole-gland failure and review features), each fitted limit is
the most extreme value among the uncorrupted, non-failing studies of the calibration half, with a
10 % margin.

    python -m mricore.review_limits bench/results/qa_bench.json --config ensemble/models/default/ensemble.yaml --force
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

MARGIN = 1.1  # a fitted limit is 10 % beyond the most extreme normal study
# Fitted limit -> (review feature it bounds, "max" | "min").
FITTED = {"min_dark_fraction": ("dark_fraction", "min"), "min_sharpness": ("sharpness", "min"),
          "max_noise": ("noise", "max"), "max_nonuniformity": ("nonuniformity", "max"),
          "max_disagreement": ("disagreement", "max"), "max_entropy": ("entropy", "max"),
          "min_pz_tz_intensity": ("pz_tz_intensity", "min")}
NOT_CALIBRATED = "not calibrated"


@dataclass(frozen=True)
class ReviewConfig:
    """Limits of the checks. Geometry limits are acquisition facts; the fitted limits (`FITTED`) are
    None here and come from the bundle's ensemble.yaml (module docstring)."""

    max_tilt_deg: float = 45.0          # slice normal vs superior axis; beyond: not an axial series (reject)
    max_inplane_mm: float = 1.25        # coarser: a diffusion/ADC grid, not a T2W (reject)
    max_slice_mm: float = 6.0           # thicker slices: review
    min_fov_mm: float = 80.0            # in-plane field of view: review below
    slab_mm: float = 20.0               # through-plane coverage below this: a slab, volume checks n/a
    min_dark_fraction: float | None = None    # fitted: share of body voxels darker than half the median
    min_sharpness: float | None = None        # fitted: lag-1 / lag-2 in-plane difference
    max_noise: float | None = None            # fitted: lag-1 difference / body IQR
    max_nonuniformity: float | None = None    # fitted: left-right mean intensity ratio
    volume_margin: float = 1.5          # gland volume within [min / m, max * m] of the reference maps
    tz_share_margin: float = 0.1        # TZ share of the gland within [min - m, max + m] of the reference
    max_removed_fraction: float = 0.1   # share of gland voxels outside the largest component
    max_slice_gaps: int = 0
    max_hole_fraction: float = 0.05
    min_border_mm: float = 3.0          # gland to the in-plane edge of the field of view
    min_pz_midgland: float = 0.5        # share of mid-gland slices holding PZ
    min_pz_posterior_mm: float = 0.0    # PZ centroid posterior of the TZ centroid by at least this
    min_pz_tz_intensity: float | None = None  # fitted: median T2W in PZ / in TZ (PZ is the bright zone)
    max_disagreement: float | None = None     # fitted: mean share of members disagreeing, gland region
    max_entropy: float | None = None          # fitted: mean normalised entropy in the gland region

    def validate(self, where: str = "review"):
        for name in ("max_inplane_mm", "max_slice_mm", "min_fov_mm", "slab_mm", "volume_margin",
                     "max_noise", "max_nonuniformity", "min_pz_tz_intensity"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{where}: review.{name}", "must be positive", value, f"set review.{name} above 0, or null")
        for name in ("min_dark_fraction", "min_sharpness", "max_removed_fraction", "max_hole_fraction",
                     "min_pz_midgland", "max_disagreement", "max_entropy"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"{where}: review.{name}", "must be in [0, 1]", value, f"set review.{name} between 0 and 1, or null")


def has_outcome(row: dict) -> bool:
    """Whether a measured row has a known outcome: a failure flag, and not an uncorrupted Philips study
    (another vendor, judged only against its own map: reported, left out of the rates and the fit)."""
    return row["failure"] is not None and not (row["kind"] == "normal" and row["case"].startswith("philips/"))


def calibration_set(rows: list[dict], half: str) -> list[dict]:
    """The rows a fit on `half` uses: uncorrupted ("normal") studies of that half that did not fail."""
    return [r for r in rows if r["half"] == half and r["kind"] == "normal" and has_outcome(r) and not r["failure"]]


def fit_limits(rows: list[dict], half: str = "A", margin: float = MARGIN) -> dict[str, float]:
    """Every `FITTED` limit from the measured `rows` ({"case", "half", "kind", "failure", "features"}
    each): the largest value of its feature in `calibration_set(rows, half)` times `margin` for a
    "max" limit, the smallest divided by it for a "min" one, to 4 decimals. Studies without the
    feature (no PZ or TZ) are skipped.

    Raises ConfigError when the calibration set has no value of a feature (nothing to fit on)."""
    normal = calibration_set(rows, half)
    limits = {}
    for field, (feature, kind) in FITTED.items():
        values = [r["features"][feature] for r in normal if r["features"].get(feature) is not None]
        if not values:
            raise ConfigError(f"calibration half {half}", f"no uncorrupted non-failing study has {feature}",
                              f"{len(normal)} studies", "measure more studies (bench/qa_bench.py)")
        limits[field] = round(max(values) * margin if kind == "max" else min(values) / margin, 4)
    return limits


def _split_header(text: str) -> tuple[str, str]:
    """The leading comment lines of a YAML file and the rest."""
    lines = text.splitlines(keepends=True)
    n = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    return "".join(lines[:n]), "".join(lines[n:])


def write_limits(config: str | Path, limits: dict[str, float], force: bool = False) -> Path:
    """Write fitted `limits` into the `review:` section of the YAML config `config` (atomically; other
    keys and the leading comment lines stay; comments below them are not kept: the bundle's
    ensemble.yaml, written by `ensemble pack`, has none).

    Raises ConfigError for a limit that is not fitted or out of range, InputError for a missing file,
    OutputExistsError when the file holds another value for a limit and `force` is not given."""
    import yaml

    from .config import from_dict
    from .errors import InputError, OutputExistsError
    from .outputs import write_text

    path = Path(config)
    if not path.is_file():
        raise InputError(path, "config file not found", "nothing at that path", "pack the ensemble first (make bundle-pack)")
    if unknown := sorted(set(limits) - set(FITTED)):
        raise ConfigError(f"{path}: review", "only fitted limits are written", unknown, f"use {sorted(FITTED)}")
    header, body = _split_header(path.read_text())
    data = yaml.safe_load(body) or {}
    review = dict(data.get("review") or {})
    changed = sorted(k for k, v in limits.items() if review.get(k) is not None and review[k] != v)
    if changed and not force:
        raise OutputExistsError(path, "holds other fitted review limits", changed, "pass --force to replace them")
    review.update(limits)
    from_dict(ReviewConfig, review, str(path), prefix="review.")  # checked before anything is written
    data["review"] = review
    return write_text(header + yaml.safe_dump(data, sort_keys=False), path, force=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m mricore.review_limits ROWS --config YAML`: fit and write (exit 2 on a user error)."""
    from .errors import InputError, run_cli

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", type=Path, help="measured rows: a JSON with a 'rows' list (bench/qa_bench.py writes one)")
    ap.add_argument("--config", type=Path, required=True, help="the ensemble.yaml to write the limits into")
    ap.add_argument("--half", default="A", help="calibration half (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="replace limits the config already holds")
    args = ap.parse_args(argv)

    def run() -> int:
        if not args.rows.is_file():
            raise InputError(args.rows, "measured rows not found", "nothing at that path", "measure them first: make review-bench")
        rows = json.loads(args.rows.read_text())
        limits = fit_limits(rows["rows"] if isinstance(rows, dict) else rows, args.half)
        write_limits(args.config, limits, force=args.force)
        print(f"review limits (half {args.half}) written into {args.config}: {limits}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
