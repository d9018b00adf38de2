"""Our bundled ensemble next to the peer TAPS (PyPI lavlab-taps 1.1.2, one whole-gland SegResNet) on the
same real studies, each tool as a fresh process per case, as a user runs it.

Measured per case and tool: whole-gland (WG) volume in mL; wall seconds and peak RSS of the process
(GNU /usr/bin/time -v: start-up, imports and model loading included); connected components of the WG
(26-connectivity: one is the gland, more are stray islands). Then, per case:
- WG DSC against the expert gland where there is one (prostate158 and i2cvb zones > 0, promise12 wg);
- WG agreement DSC, ours vs TAPS, on every case, labelled or not;
- prostatex: DSC of each tool against the AI zones (zones_ai > 0), a silver reference (agreement with
  another model, not accuracy), and the radiologist-reported volume from prostatex/clinical.csv.
Summary: for the expert cases mean and median WG DSC per tool and, per case, whether ours beats TAPS;
mean and median agreement per dataset; median and max wall seconds and peak GB per tool.

Outputs are cached, so a rerun pays only for what is new:
- TAPS: runs/taps/<dataset>/<case>/wg.nii.gz, time.txt (stderr, ending with /usr/bin/time's report),
  log.txt (stdout); reused unless --rerun;
- ours: runs/peer_taps/ours/<dataset>/<case>/zones.nii.gz, time.txt, log.txt, config.txt; reused
  unless --rerun-ours or the case was run with another ensemble config.
Cached times are those of the run that made the map: on a shared machine, compare them with care.

--teacher DIR does only this instead: runs TAPS (cached) on the studies with neither expert nor silver
labels (unlabelled/, philips/) and writes DIR/datalist.json with their whole glands as "wg_teacher"
labels (mricore.datasets.load_datalist), the teacher data of the bundle (`make bundle`).

    bash bench/setup_peers.sh      # makes .venv-taps/bin/taps (CPU only)
    python -m bench.peer_accuracy [--cases prostate158/001 ...] [--config ensemble/models/default/onnx/ensemble.yaml]
        [--set n4=true] [--teacher runs/teacher] [--rerun] [--rerun-ours] [--out JSON]

Prints a table and writes bench/results/peer_taps.json (or --out). (Speed and memory of several tools
on one study: bench/peer_speed.py.)
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.common import (BUNDLE, ENSEMBLE, RESULTS, ROOT, TAPS, add_data, add_out, command, parse_time, parser,
                          write_result)

TAPS_CACHE = ROOT / "runs" / "taps"  # the layout of the shell loop that filled it first
OURS_CACHE = ROOT / "runs" / "peer_taps" / "ours"
TEACHER_DATASETS = ("unlabelled", "philips")  # studies with neither expert nor silver labels
TOOLS = ("ours", "taps")


def default_cases(data: Path) -> list[str]:
    cases = ["prostate158/001", "prostate158/002", "prostate158/021", "promise12/Case00"]
    cases += [f"philips/Philips-0{i}" for i in range(1, 5)]
    for ds in ("unlabelled", "prostatex"):  # every study with a T2W (PICAI-10000_1000000 has none)
        cases += [f"{ds}/{p.parent.name}" for p in sorted((data / ds).glob("*/t2.nii.gz"))]
    return cases


def run_timed(cmd: list[str], folder: Path) -> None:
    """Run `cmd` under /usr/bin/time -v: stdout to folder/log.txt, stderr and time's report to folder/time.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "log.txt", "w") as out, open(folder / "time.txt", "w") as err:
        rc = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=out, stderr=err).returncode
    if rc:
        head = (folder / "time.txt").read_text().split("\tCommand being timed")[0].strip().splitlines()
        why = next((ln for ln in reversed(head) if not ln.startswith("Command exited")), f"exit status {rc}")
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({why.strip()[:200]}); see {folder / 'time.txt'}")


def read_time(path: Path) -> dict:
    t = parse_time(path.read_text())
    return {"wall_s": round(t["wall_s"], 2), "peak_rss_gb": round(t["peak_rss_gb"], 3)}


# TAPS writes out.nii.gz, or, when its own checks object, out_cleaned.nii.gz (it removed parts) or
# out_abnormal.nii.gz (it flags the map): the first that exists is its answer.
TAPS_OUTPUTS = ("wg.nii.gz", "wg_cleaned.nii.gz", "wg_abnormal.nii.gz")


def taps_output(folder: Path) -> Path | None:
    return next((folder / n for n in TAPS_OUTPUTS if (folder / n).exists()), None)


def taps_map(case: str, data: Path, rerun: bool) -> Path:
    folder = TAPS_CACHE / case
    if rerun or taps_output(folder) is None:
        for n in TAPS_OUTPUTS:
            (folder / n).unlink(missing_ok=True)
        run_timed([str(TAPS), "segment", str(data / case / "t2.nii.gz"), str(folder / "wg.nii.gz"), "--device", "cpu"], folder)
    out = taps_output(folder)
    if out is None:
        raise RuntimeError(f"TAPS wrote none of {TAPS_OUTPUTS} in {folder}")
    return out


def ours_map(case: str, data: Path, config: Path | None, rerun: bool, sets: list[str] = ()) -> Path:
    """Our map of `case`, cached per config; runs with --set overrides have their own cache folder."""
    cache = OURS_CACHE.with_name("ours_" + "_".join(sets).replace("=", "-")) if sets else OURS_CACHE
    folder = cache / case
    key = (os.path.relpath(config, ROOT) if config else "bundled default") + "".join(f" --set {s}" for s in sets)
    if rerun or not (folder / "zones.nii.gz").exists() or not (folder / "config.txt").exists() \
            or (folder / "config.txt").read_text() != key:
        (folder / "config.txt").unlink(missing_ok=True)  # a failed run leaves no valid cache entry
        cmd = [str(ENSEMBLE), "predict", str(data / case / "t2.nii.gz"), "-o", str(folder), "--force"]
        run_timed(cmd + (["--config", str(config)] if config else []) + [a for s in sets for a in ("--set", s)], folder)
        (folder / "config.txt").write_text(key)
    return folder / "zones.nii.gz"


def dsc(pred: np.ndarray, ref: np.ndarray) -> float:
    from mricore.metrics import dice

    if pred.shape != ref.shape:
        raise RuntimeError(f"grids differ: {pred.shape} vs {ref.shape}")
    return round(float(dice(pred, ref)), 4)


def reference(folder: Path) -> tuple[str | None, np.ndarray | None]:
    """('expert' or 'silver', WG mask) from the case folder's labels, or (None, None)."""
    from mricore.io import read_label

    for name, kind in (("zones.nii.gz", "expert"), ("wg.nii.gz", "expert"), ("zones_ai.nii.gz", "silver")):
        if (folder / name).exists():
            return kind, read_label(folder / name).array[0] > 0
    return None, None


def reported_volumes(data: Path) -> dict:
    path = data / "prostatex" / "clinical.csv"
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        return {r["case_id"]: float(r["prostate_volume_ml"]) for r in csv.DictReader(f) if r.get("prostate_volume_ml")}


def measure(case: str, args, run_taps: bool, reported: dict) -> dict:
    from scipy import ndimage

    from mricore.errors import UserError
    from mricore.io import read_label

    kind, ref = reference(args.data / case)
    row, masks = {"reference": kind}, {}
    for tool in TOOLS if run_taps else ("ours",):
        try:
            path = (ours_map(case, args.data, args.config, args.rerun_ours, args.set) if tool == "ours"
                    else taps_map(case, args.data, args.rerun))
            label = read_label(path)
            mask = masks[tool] = label.array[0] > 0
            row[tool] = {"wg_ml": round(float(mask.sum()) * label.voxel_volume_ml, 1), **read_time(path.parent / "time.txt"),
                         "components": int(ndimage.label(mask, np.ones((3, 3, 3)))[1])}
            if kind:
                row[tool][f"wg_dsc_{kind}"] = dsc(mask, ref)
            if tool == "taps" and path.name != "wg.nii.gz":
                row[tool]["taps_flag"] = path.name.split("_")[1].split(".")[0]  # cleaned / abnormal
        except (RuntimeError, UserError) as e:
            print(f"{case}: {tool}: {e}", flush=True)
            row[tool] = {"error": str(e)}
    if len(masks) == 2:
        row["agreement_wg_dsc"] = dsc(masks["ours"], masks["taps"])
    dataset, name = case.split("/")
    if dataset == "prostatex" and name in reported:
        row["reported_volume_ml"] = reported[name]
    return row


def cross_validated(config: Path | None, rows: dict) -> dict:
    """Ours as cross-validated (each expert case scored only by the members of the fold that held it
    out: the bundle's cv_evaluate.json, from `ensemble evaluate --cv`) next to TAPS on the same case.
    The whole bundle has seen most expert cases in training, so its own row above is not a result."""
    folder = config.parent if config else BUNDLE
    path = next((p for p in (folder / "cv_evaluate.json", folder.parent / "cv_evaluate.json") if p.exists()), None)
    if path is None:
        return {"skipped": "no cv_evaluate.json beside the ensemble config"}
    cv = json.loads(path.read_text())["per_case_dsc"]["WG"]["ensemble"]
    out = {}
    for case, r in rows.items():
        name = case.split("/")[1]
        if name in cv and "wg_dsc_expert" in r.get("taps", {}):
            ours, taps = round(float(cv[name]), 4), r["taps"]["wg_dsc_expert"]
            out[case] = {"ours_cv": ours, "taps": taps, "ours_beats_taps": ours > taps}
    return {"source": os.path.relpath(path, ROOT), "cases": out}


def plausible_volumes() -> dict:
    """WG volume range (mL) of the expert glands the review checks use (mricore/gland_reference.json:
    the MSD maps and the Prostate158 maps; mricore.gland_reference)."""
    from mricore.gland_reference import load_reference

    ref = load_reference()
    return {"min_ml": ref["WG_ml"]["min"], "max_ml": ref["WG_ml"]["max"], "n": ref["n"], "source": "mricore/gland_reference.json"}


def stats(values: list) -> dict | None:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return {"mean": round(float(np.mean(v)), 4), "median": round(float(np.median(v)), 4), "n": len(v)} if v else None


def summarise(rows: dict) -> dict:
    expert = {c: r for c, r in rows.items() if r["reference"] == "expert"}
    dsc_of = lambda r, t, k: r.get(t, {}).get(k)  # noqa: E731
    agree = {}
    for c, r in rows.items():
        if "agreement_wg_dsc" in r:
            agree.setdefault(c.split("/")[0], []).append(r["agreement_wg_dsc"])
    cost = {t: {k: [r[t][k] for r in rows.values() if k in r.get(t, {})] for k in ("wall_s", "peak_rss_gb")} for t in TOOLS}
    return {
        "note": "expert_wg_dsc and ours_beats_taps score the bundle as shipped, whose members trained on the "
                "expert-labelled cases (prostate158, i2cvb) in 2 of 3 folds: only promise12 is unseen there; "
                "cross_validated_vs_taps has the honest figures for prostate158",
        "expert_wg_dsc": {t: stats([dsc_of(r, t, "wg_dsc_expert") for r in expert.values()]) for t in TOOLS},
        "ours_beats_taps": {c: dsc_of(r, "ours", "wg_dsc_expert") > dsc_of(r, "taps", "wg_dsc_expert") for c, r in expert.items()
                            if dsc_of(r, "ours", "wg_dsc_expert") is not None and dsc_of(r, "taps", "wg_dsc_expert") is not None},
        "silver_wg_dsc": {t: stats([dsc_of(r, t, "wg_dsc_silver") for r in rows.values()]) for t in TOOLS},
        "agreement_wg_dsc": {d: stats(v) for d, v in agree.items()},
        "cost": {t: {"wall_s_median": round(float(np.median(c["wall_s"])), 2), "wall_s_max": max(c["wall_s"]),
                     "peak_rss_gb_median": round(float(np.median(c["peak_rss_gb"])), 3), "peak_rss_gb_max": max(c["peak_rss_gb"]),
                     "n": len(c["wall_s"])} for t, c in cost.items() if c["wall_s"]},
    }


def table(rows: dict) -> str:
    def pair(r, key, fmt):  # "ours/TAPS"
        return "/".join(format(r[t][key], fmt) if key in r.get(t, {}) else "-" for t in TOOLS)
    line = "{:30} {:>11} {:>10} {:>10} {:>5} {:>6} {:>12} {:>6} {:>8}".format
    lines = [line("case (ours/TAPS)", "WG mL", "wall s", "peak GB", "cc", "ref", "WG DSC", "agree", "reported")]
    for c, r in rows.items():
        agree, rep = r.get("agreement_wg_dsc"), r.get("reported_volume_ml")
        lines.append(line(c, pair(r, "wg_ml", ".1f"), pair(r, "wall_s", ".1f"), pair(r, "peak_rss_gb", ".2f"),
                          pair(r, "components", "d"), r["reference"] or "-", pair(r, f"wg_dsc_{r['reference']}", ".3f"),
                          "-" if agree is None else f"{agree:.3f}", "-" if rep is None else f"{rep:.0f}"))
    return "\n".join(lines)


def write_teacher(folder: Path, cases: list[str], data: Path) -> int:
    from mricore.outputs import write_json

    folder, rows = folder.resolve(), []
    for case in cases:
        dataset, name = case.split("/")
        wg = TAPS_CACHE / case / "wg.nii.gz"  # only maps TAPS itself passes (no cleaned / abnormal ones)
        if dataset in TEACHER_DATASETS and wg.exists():
            rows.append({"patient_id": name, "case_id": name, "dataset": f"{dataset}_teacher",
                         "T2W": os.path.relpath((data / case / "t2.nii.gz").resolve(), folder), "wg_teacher": os.path.relpath(wg, folder)})
    write_json(rows, folder / "datalist.json")
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = parser(__doc__, allow_abbrev=False)
    add_data(ap)
    ap.add_argument("--cases", nargs="+", help="dataset/case, e.g. prostate158/001 (default: the list in the docstring)")
    ap.add_argument("--config", type=Path, help="ensemble config for `ensemble predict` (default: the bundled one)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override our ensemble config, e.g. --set n4=true (repeatable; own cache folder)")
    ap.add_argument("--rerun", action="store_true", help="rerun TAPS on cached cases")
    ap.add_argument("--rerun-ours", action="store_true", help="rerun ours on cached cases")
    ap.add_argument("--teacher", type=Path, help="only write TEACHER/datalist.json of TAPS maps (unlabelled/, philips/)")
    add_out(ap, RESULTS / "peer_taps.json")
    args = ap.parse_args(argv)
    cases = args.cases or default_cases(args.data)
    bad = [c for c in cases if c.count("/") != 1 or not (args.data / c / "t2.nii.gz").exists()]
    if bad or not ENSEMBLE.exists() or (args.config and not args.config.exists()):
        why = (f"no t2.nii.gz for {bad} under {args.data}: give dataset/case names" if bad else
               f"{ENSEMBLE} not found: make the project venv" if not ENSEMBLE.exists() else f"--config {args.config} not found")
        print(f"peer_accuracy: {why}", file=sys.stderr)
        return 2
    args.config = args.config.resolve() if args.config else None
    run_taps = TAPS.exists()
    if args.teacher:
        teach = [c for c in cases if c.split("/")[0] in TEACHER_DATASETS]
        missing = [c for c in teach if taps_output(TAPS_CACHE / c) is None]
        if missing and not run_taps:
            print(f"peer_accuracy: {TAPS} not found and no cached TAPS map for {missing[:2]}: run bash bench/setup_peers.sh",
                  file=sys.stderr)
            return 2
        for c in teach:
            taps_map(c, args.data, args.rerun)
        print(f"teacher datalist: {write_teacher(args.teacher, teach, args.data)} cases in {args.teacher / 'datalist.json'}")
        return 0
    if not run_taps:
        print(f"TAPS skipped: {TAPS} not found (run bash bench/setup_peers.sh)", flush=True)
    reported = reported_volumes(args.data)
    rows = {}
    for case in cases:
        rows[case] = measure(case, args, run_taps, reported)
        print(f"{case}: done", flush=True)
    out = {"command": command("peer_accuracy", argv, drop=("--data", "--out")),
           "ours": {"tool": "ensemble predict", "config": str(args.config) if args.config else "bundled default",
                    "set": args.set},
           "taps": {"tool": "lavlab-taps 1.1.2", "command": "taps segment t2.nii.gz out.nii.gz --device cpu"} if run_taps
           else {"skipped": f"{TAPS} not found: run bash bench/setup_peers.sh"},
           "notes": "silver = DSC vs AI zones_ai > 0 (agreement with another model, not accuracy); "
                    "reported_volume_ml = radiologist-reported (prostatex/clinical.csv); times as cached",
           "cases": rows, "summary": summarise(rows),
           "cross_validated_vs_taps": cross_validated(args.config, rows),
           "expert_wg_volume_range": plausible_volumes()}
    print(table(rows))
    write_result(out, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
