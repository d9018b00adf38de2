"""Self-supervised pre-training against training from scratch, with 1, 2 and 4 expert patients (issue 37, item 2).

Each arm trains the bundle's 2D DynUNet family on the same split for the same schedule
(configs/segment/ssl_probe_dynunet2d.yaml: expert patients only, 30 x 40 steps, last epoch kept):
- scratch: random initialisation;
- ssl: `--init-from` the masked-image pre-training of configs/segment/pretrain_dynunet2d.yaml (every
  tensor but the output head; its images include the held-out patients' T2W, never a label).
Splits (configs/segment/ssl_probe_splits/{A,B}{1,2,4}.json): two orders of the 5 expert patients; run An
trains on order A's first n patients and holds out the other 5 - n. Each run folder is scored as
bench/finetune_probe.py scores one: a one-member ensemble behind the shipped locator, as `ensemble predict`
runs it, on its held-out expert patients (WG / TZ / PZ DSC) and on PROMISE12 Case00 (WG, never trained on).

With `--cv`, also at full CV: the shipped members' 3 patient-level folds (their splits.json) with the
bundle's training data less the TAPS teacher glands (expert + silver ProstateX zones; the teacher is not on
this machine), same schedule, each fold scored on its held-out patients (5 rows in all).

RULE (fixed in this file before any run was scored; the full-CV arm added before any score too). At each n,
the held-out scores of orders A and B are pooled (one row per held-out patient per run: 8, 6 and 2 rows at
n = 1, 2, 4); at full CV the 5 held-out patients are:
- ssl helps at n (or at full CV) if its pooled mean of the three zones' DSC is at least scratch's + 0.03 and
  no zone's pooled mean is more than 0.02 below scratch's;
- ssl is worth training the bundle's families from if it helps at full CV (where run; else at n = 4, the
  nearest to the bundle's 3-4 expert patients per fold) and is more than 0.02 below scratch in no zone at
  any n or at full CV.
One family and a third of the bundle's schedule: no arm ships from this probe.

    python -m bench.ssl_probe --pretrained runs/ssl/pretrain --train [--cv]   # 12 (18) trainings, 2 at a time
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.common import RESULTS, ROOT, add_data, add_out, command, parser, run_side_by_side, write_result
from bench.finetune_probe import ZONES, score

CONFIG = ROOT / "configs" / "segment" / "ssl_probe_dynunet2d.yaml"
SPLITS = ROOT / "configs" / "segment" / "ssl_probe_splits"
RUNS = ROOT / "runs" / "ssl"
TAGS = ["A4", "B4", "A2", "B2", "A1", "B1"]  # training order: the rule's deciding n first
CV_TAGS = ["C0", "C1", "C2"]                 # full CV: fold k of the shipped members' splits
SHIPPED_SPLITS = ROOT / "ensemble" / "models" / "default" / "dynunet2d_long_fold0" / "splits.json"
CV_DATA = ["data.datasets=[prostate158,i2cvb,prostatex]", "data.silver_label=zones_ai"]
RULE = {"helps_at_n": "pooled mean of WG/TZ/PZ >= scratch + 0.03 and no zone's pooled mean below scratch - 0.02 "
                      "(the same at full CV)",
        "worth_it": "helps at full CV (where run; else at n = 4) and no zone below scratch - 0.02 at any n or at full CV"}


def fold_of(tag: str) -> int:
    return int(tag[1]) if tag in CV_TAGS else 0


def run_dir(arm: str, tag: str) -> Path:
    return RUNS / f"ssl_probe_{arm}_{tag}" / f"fold_{fold_of(tag)}"


def train_command(arm: str, tag: str, pretrained: Path) -> list[str]:
    splits = SHIPPED_SPLITS if tag in CV_TAGS else SPLITS / f"{tag}.json"
    cmd = [str(ROOT / ".venv" / "bin" / "segment"), "train", "--config", str(CONFIG), "--fold", str(fold_of(tag)),
           "--force", "--set", f"name=ssl_probe_{arm}_{tag}", "--set", f"data.splits_file={splits}"]
    cmd += [a for kv in (CV_DATA if tag in CV_TAGS else []) for a in ("--set", kv)]
    return cmd + (["--init-from", str(pretrained)] if arm == "ssl" else [])


def train_all(pretrained: Path, tags: list[str]) -> None:
    """Every run not trained yet, in `tags` order (the two arms of one split side by side), one thread each."""
    todo = [(arm, tag) for tag in tags for arm in ("scratch", "ssl") if not (run_dir(arm, tag) / "weights.pt").exists()]
    codes = run_side_by_side([(train_command(arm, tag, pretrained), RUNS / f"train_{arm}_{tag}.log") for arm, tag in todo])
    if failed := [f"{arm} {tag}" for (arm, tag), code in zip(todo, codes) if code]:
        raise SystemExit(f"trainings failed: {', '.join(failed)}; see {RUNS}/train_<arm>_<tag>.log")


def pooled(runs: dict, tags: list[str]) -> dict:
    """Per arm: the pooled held-out mean of each zone and of the three over the runs `tags`."""
    out = {}
    for arm in ("scratch", "ssl"):
        rows = [z for tag in tags for z in runs[arm][tag]["held_out"].values()]
        mean = {z: round(sum(r[z] for r in rows) / len(rows), 4) for z in ZONES}
        out[arm] = {**mean, "zones_mean": round(sum(mean.values()) / len(ZONES), 4), "rows": len(rows)}
    return out


def verdicts(by_n: dict) -> dict:
    """The RULE applied at each n, then to the whole."""
    def harms(p):
        return any(p["ssl"][z] < p["scratch"][z] - 0.02 for z in ZONES)
    helps = {n: bool(p["ssl"]["zones_mean"] >= p["scratch"]["zones_mean"] + 0.03 and not harms(p))
             for n, p in by_n.items()}
    deciding = "cv" if "cv" in by_n else "4"
    return {"helps_at_n": helps, "decided_by": deciding,
            "worth_it": bool(helps[deciding] and not any(harms(p) for p in by_n.values()))}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = parser(__doc__)
    ap.add_argument("--pretrained", type=Path, default=RUNS / "pretrain", help="segment pretrain output folder")
    ap.add_argument("--train", action="store_true", help="train the runs not trained yet (about 1 h on 2 cores)")
    ap.add_argument("--cv", action="store_true", help="also at full CV (6 more trainings, about 35 min)")
    add_data(ap)
    add_out(ap, RESULTS / "ssl_probe.json")
    args = ap.parse_args(argv)
    RUNS.mkdir(parents=True, exist_ok=True)
    tags = TAGS + (CV_TAGS if args.cv else [])
    if args.train:
        train_all(args.pretrained, tags)
    runs = {arm: {} for arm in ("scratch", "ssl")}
    for tag in tags:
        for arm in runs:
            runs[arm][tag] = score(run_dir(arm, tag), fold_of(tag), args.data, RUNS / "scores" / f"{arm}_{tag}")
            print(arm, tag, json.dumps(runs[arm][tag]), flush=True)
    by_n = {str(n): pooled(runs, [f"A{n}", f"B{n}"]) for n in (1, 2, 4)}
    if args.cv:
        by_n["cv"] = pooled(runs, CV_TAGS)
    result = {"command": command("ssl_probe", argv), "rule": RULE, "pretrained": str(args.pretrained),
              "runs": runs, "pooled": by_n, "passes": verdicts(by_n)}
    write_result(result, args.out)
    print(json.dumps(by_n, indent=1), "\npasses:", result["passes"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
