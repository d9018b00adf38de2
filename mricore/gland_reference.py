"""The gland reference distribution behind the review's gland-volume and TZ-share checks (mricore.review):
volume and TZ share of every expert zone map that covers a whole gland. It ships as
mricore/gland_reference.json, which only `build_reference` writes (`make gland-reference`).

Sources: the 30 zonal MSD Task05 maps (`msd_labels/`, images absent: shape references only) and the
expert zones of `prostate158/`. The I2CVB slabs (3-5 slices) are partial glands and PROMISE12 has no
zones, so neither is used.

    python -m mricore.gland_reference --data ../shared/data [--out FILE] [--force]
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np

REFERENCE = Path(__file__).resolve().parent / "gland_reference.json"
SOURCES = "MSD Task05 labelsTr (30 zonal maps, CC-BY-SA 4.0) and Prostate158 expert zones (reader 1)"
COMMAND = "make gland-reference"  # recorded in the file: how to make it again


@functools.lru_cache(maxsize=4)
def load_reference(path: str | Path = REFERENCE) -> dict:
    """The gland reference distribution: {"maps": [{"case", "WG_ml", "TZ_share"}...], "sources": ...};
    read once per process, shared: treat it as read-only."""
    return json.loads(Path(path).read_text())


def gland_statistics(label: np.ndarray, affine: np.ndarray) -> dict:
    """Volume (mL) and TZ share of a zone map (I, J, K; 1 = TZ, 2 = PZ): the numbers the reference
    distribution holds. An empty map has TZ share 0."""
    vml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    wg, tz = int((label > 0).sum()), int((label == 1).sum())
    return {"WG_ml": wg * vml, "TZ_share": tz / wg if wg else 0.0}


def reference_maps(data: Path) -> list[tuple[str, Path]]:
    """(case name, zone map) of every source map under `data`, MSD first, each set in name order."""
    msd = [(p.name.split(".")[0], p) for p in sorted((data / "msd_labels").glob("prostate_*.nii.gz"))]
    p158 = [(f"prostate158/{p.parent.name}", p) for p in sorted(data.glob("prostate158/*/zones.nii.gz"))]
    return msd + p158


def build_reference(data: str | Path) -> dict:
    """The reference distribution of the zone maps under `data` (../shared/data): per map its case,
    WG volume (mL, 2 decimals) and TZ share (4 decimals), and min / median / max of each.

    Raises InputError when `data` holds no msd_labels/ or prostate158/ zone map."""
    from .errors import InputError
    from .io import read_label

    data = Path(data)
    paths = reference_maps(data)
    if not paths:
        raise InputError(data, "no msd_labels/ or prostate158/ zone maps", "neither folder", "pass --data ../shared/data")
    maps = []
    for case, p in paths:
        v = read_label(p)
        s = gland_statistics(v.array[0], v.affine)
        maps.append({"case": case, "WG_ml": round(s["WG_ml"], 2), "TZ_share": round(s["TZ_share"], 4)})

    def spread(key: str) -> dict:
        x = np.array([m[key] for m in maps])
        return {"min": float(x.min()), "median": float(np.median(x)), "max": float(x.max())}

    return {"sources": SOURCES, "command": COMMAND, "n": len(maps), "WG_ml": spread("WG_ml"),
            "TZ_share": spread("TZ_share"), "maps": maps}


def main(argv: list[str] | None = None) -> int:
    """`python -m mricore.gland_reference`: write the reference (exit 2 on a user error)."""
    from .errors import run_cli
    from .outputs import write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="the data folder (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=REFERENCE, help="file to write (default: the shipped one)")
    ap.add_argument("--force", action="store_true", help="replace an existing file")
    args = ap.parse_args(argv)

    def run() -> int:
        ref = build_reference(args.data)
        write_json(ref, args.out, force=args.force)
        w, t = ref["WG_ml"], ref["TZ_share"]
        print(f"{ref['n']} maps: WG {w['min']:.1f}-{w['max']:.1f} mL (median {w['median']:.1f}), "
              f"TZ share {t['min']:.2f}-{t['max']:.2f} (median {t['median']:.2f}); wrote {args.out}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
