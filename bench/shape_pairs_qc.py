"""Expert shapes into training pairs, measured: every label-only zone map with a donor warped onto it (segment shape-pairs).

Runs `segment shape-pairs` over ../shared/data/msd_labels and nci_isbi_labels (90 zone maps) with the
expert donors (prostate158, i2cvb: zones) and the ProstateX silver donors (zones_ai), into
runs/shape_pairs (git-ignored; `--reuse` only re-reads its qc.json), and writes the QC figures:
accepted and rejected counts and why, the DSC of the warped donor zones and the Jacobian per pair and
their spread, seconds per pair, with the rule (segment.shape_qc) they were judged by.

    python -m bench.shape_pairs_qc --workers 2        # about 10 s a pair per worker
    python -m bench.shape_pairs_qc --reuse            # figures from an earlier run's qc.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, add_data, add_out, command, parser, write_result

RUN = ROOT / "runs" / "shape_pairs"
LABELS = ("msd_labels", "nci_isbi_labels")
DONORS = ("prostate158", "i2cvb", "prostatex")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    add_data(ap)
    add_out(ap, RESULTS / "shape_pairs_qc.json")
    ap.add_argument("--run", type=Path, default=RUN, help="output folder of the pairs (default runs/shape_pairs)")
    ap.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    ap.add_argument("--reuse", action="store_true", help="do not register: read RUN/qc.json")
    args = ap.parse_args(argv)
    from mricore.outputs import read_json

    from segment.shape_pairs import make_pairs

    start = time.perf_counter()
    if args.reuse:
        qc = read_json(args.run / "qc.json", "run without --reuse")
    else:
        qc = make_pairs([args.data / d for d in LABELS], [args.data / d for d in DONORS], args.run,
                        label_keys=("zones", "zones_ai"), workers=args.workers, force=True)
    pairs = [{k: r.get(k) for k in ("pair_id", "target", "donor", "donor_label", "accepted", "reasons", "dsc",
                                    "affine_scale", "jacobian", "seconds", "gland_ml")} for r in qc["pairs"]]
    result = {"command": command("shape_pairs_qc", argv if argv is not None else sys.argv[1:], drop=("--data", "--run")),
              "rule": qc["rule"], "settings": qc["settings"], "summary": qc["summary"],
              "donors": qc["donors"], "excluded_donors": qc["excluded_donors"], "pairs": pairs,
              "wall_seconds": None if args.reuse else round(time.perf_counter() - start, 1),
              "workers": None if args.reuse else args.workers}
    print(f"{qc['summary']['accepted']} of {qc['summary']['pairs']} pairs accepted; {write_result(result, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
