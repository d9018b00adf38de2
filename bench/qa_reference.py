"""The gland reference distribution for the output checks (mricore.qa): volume and TZ share of every
expert zone map that covers a whole gland, written to mricore/gland_reference.json (shipped with the
package) and bench/results/qa_reference.json.

Sources: the 30 zonal MSD Task05 maps (`msd_labels/`, images absent: shape references only) and the
expert zones of `prostate158/`. The I2CVB slabs (3-5 slices) are partial glands and PROMISE12 has no
zones, so neither is used.

    .venv/bin/python bench/qa_reference.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mricore.io import read_label, write_json  # noqa: E402
from mricore.qa import REFERENCE, gland_statistics  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data"))
    args = ap.parse_args()
    data = Path(args.data)
    paths = sorted((data / "msd_labels").glob("prostate_*.nii.gz")) + sorted(data.glob("prostate158/*/zones.nii.gz"))
    if not paths:
        sys.exit(f"{data}: no msd_labels/ or prostate158/ zone maps; fix: pass --data ../shared/data")
    maps = []
    for p in paths:
        v = read_label(p)
        s = gland_statistics(v.array[0], v.affine)
        case = p.name.split(".")[0] if p.parent.name == "msd_labels" else f"prostate158/{p.parent.name}"
        maps.append({"case": case, "WG_ml": round(s["WG_ml"], 2), "TZ_share": round(s["TZ_share"], 4)})
    vols = np.array([m["WG_ml"] for m in maps])
    shares = np.array([m["TZ_share"] for m in maps])
    out = {"sources": "MSD Task05 labelsTr (30 zonal maps, CC-BY-SA 4.0) and Prostate158 expert zones (reader 1)",
           "command": "python bench/qa_reference.py",
           "n": len(maps),
           "WG_ml": {"min": float(vols.min()), "median": float(np.median(vols)), "max": float(vols.max())},
           "TZ_share": {"min": float(shares.min()), "median": float(np.median(shares)), "max": float(shares.max())},
           "maps": maps}
    write_json(out, REFERENCE)
    write_json(out, ROOT / "bench/results/qa_reference.json")
    print(f"{len(maps)} maps: WG {vols.min():.1f}-{vols.max():.1f} mL (median {np.median(vols):.1f}), "
          f"TZ share {shares.min():.2f}-{shares.max():.2f} (median {np.median(shares):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
