"""The candidate log: every recipe or bundle ever compared on the 5 expert patients, from the committed JSONs.

One row per comparison the 5 expert-labelled patients served: the bundle generations, each candidate
put to a rule (bench/candidate_cv.py; the rules and outcomes in bench/selection_cv.py), each ablation row
(bench/bundle_ablations.py) and the scale probe. The commit is the one that added the row's JSON (or, for
an ablation, the first commit whose bench/results/bundle_ablations.json holds it; for a JSON that records
its machine, the commit it was measured on); a bundle generation names the commit that shipped it.

    python -m bench.candidate_log   # writes docs/candidates.md (also part of `make results`)
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from bench.common import RESULTS, ROOT, parser
from bench.selection_cv import DECISIONS, RECIPES, RULES, ZONES, mean_diffs, per_case

OUT = ROOT / "docs" / "candidates.md"
# Bundle generations: name, its `ensemble evaluate --cv` JSON, the commit that shipped it, how it was chosen.
GENERATIONS = (
    ("first (honest protocol)", "bundle_previous_cv.json", "05e3b69", "retrained under the fixed schedule"),
    ("second", "bundle_stop21_cv.json", "b365ea6", "planned step (locator, teacher, augmentation)"),
    ("third", "bundle_stop22_cv.json", "beb93a2", "planned step (training loss still falling)"),
    ("fourth", "bundle_stop24_cv.json", "f3cbd5f", "planned step (training loss still falling)"),
    ("fifth (shipped)", RECIPES["fifth"][0], "849ce96", "rules f048d3c and 5285396"),
)
# The whole-slice comparisons (rule 5285396), candidate_cv JSONs not in DECISIONS.
WS_RULE = f"{RULES['none_more_than_0.005_lower']} (5285396)"
WHOLE_SLICE_ROWS = (
    ("whole slices, the fourth's members", "whole_slice_cv.json", WS_RULE, "passed; shipped with the fifth"),
    ("2.5D DynUNet on whole slices", "dynunet25d_ws_cv.json", "f048d3c and 5285396 (rows 12, 15)",
     "shipped: the fifth bundle (849ce96)"),
    ("windows, the fifth's members (signs turned in the rule)", "whole_slice_off_cv.json", WS_RULE,
     "passed: whole slices ship"),
)
# What became of ablations that bore on a default (the rest are measurements, not choices).
ABLATION_OUTCOME = {
    "shipped_minus_one_stage": "two stages kept on other grounds (off-centre glands)",
    "shipped_minus_tta": "flip TTA stays off",
    "shipped_minus_n4": "N4 stays off by default",
}


def git(*args: str) -> str:
    r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


@lru_cache(maxsize=None)
def added_in(name: str) -> str:
    """The commit that added bench/results/<name> (the JSON's own machine commit if it records one)."""
    path = RESULTS / name
    m = json.loads(path.read_text()).get("machine")
    if isinstance(m, dict) and m.get("commit"):
        return m["commit"]
    log = git("log", "--diff-filter=A", "--format=%h", "--", str(path.relative_to(ROOT))).splitlines()
    return log[-1] if log else "uncommitted"


@lru_cache(maxsize=None)
def ablation_commits() -> dict:
    """{comparison: the first commit whose bundle_ablations.json holds it}."""
    rel = "bench/results/bundle_ablations.json"
    first: dict = {}
    for h in git("log", "--reverse", "--format=%h", "--", rel).splitlines():
        text = git("show", f"{h}:{rel}")
        for key in (json.loads(text).get("comparisons", {}) if text else {}):
            first.setdefault(key, h)
    return first


def means(scores: dict) -> str:
    return " / ".join(f"{sum(scores[z].values()) / len(scores[z]):.3f}" for z in ZONES)


def signed(x: float) -> str:
    """+0.012, -0.004, 0.000 (no signed zero)."""
    s = f"{x:+.3f}"
    return "0.000" if s in ("+0.000", "-0.000") else s


def diffs(d: dict) -> str:
    """WG / TZ / PZ of {zone: difference} or of bundle_ablations' {zone: {mean_diff}}."""
    return " / ".join(signed(d[z]["mean_diff"] if isinstance(d[z], dict) else d[z]) for z in ZONES)


def minus_bundle(file: str) -> str:
    """The candidate's mean paired difference to the bundle it was measured against (its JSON's
    `bundle` column; the fourth bundle's report for a plain `ensemble evaluate` summary)."""
    cand = per_case(file, "ensemble")
    try:
        base = per_case(file, "bundle")
    except KeyError:
        base = per_case(RECIPES["fourth"][0], "ensemble")
    return diffs(mean_diffs(cand, base, sorted(cand["WG"])))


def rows() -> list[list[str]]:
    """Every comparison: [kind, name, JSON, commit, rule fixed before, WG / TZ / PZ, minus baseline, shipped]."""
    out = []
    for name, file, commit, how in GENERATIONS:
        shown = str(Path(file).relative_to(ROOT)) if Path(file).is_absolute() else file
        out.append(["bundle", name, shown, commit, how, means(per_case(file, "ensemble")), "", "yes"])
    for d in DECISIONS:
        file = RECIPES[d.candidate][0]
        out.append(["candidate", d.name, file, added_in(file), f"{RULES[d.rule]} ({d.rule_commit})",
                    means(per_case(file, "ensemble")), minus_bundle(file), d.outcome])
    for name, file, rule, outcome in WHOLE_SLICE_ROWS:
        out.append(["candidate", name, file, added_in(file), rule,
                    means(per_case(file, "ensemble")), minus_bundle(file), outcome])
    ab = json.loads((RESULTS / "bundle_ablations.json").read_text())["comparisons"]
    first = ablation_commits()
    for key, comp in ab.items():
        if key.endswith("_bundle"):
            continue  # the bundle generations, rows above
        a = " / ".join(f"{comp[z]['a_mean']:.3f}" for z in ZONES)
        out.append(["ablation", key.replace("_minus_", " minus "), "bundle_ablations.json",
                    first.get(key, added_in("bundle_ablations.json")), "none (a measurement)", a, diffs(comp),
                    ABLATION_OUTCOME.get(key, "n/a")])
    out.append(["probe", "the fourth bundle at in-plane scales 0.6-1.2x", "scale_probe.json",
                added_in("scale_probe.json"), "none (a diagnostic)", "", "", "n/a (shaped the scale candidates)"])
    return out + finetune_rows() + ssl_rows()


def finetune_rows() -> list[list[str]]:
    """The one-fold fine-tune arms of bench/finetune_probe.py, one JSON per fold (each scored on that fold's
    held-out patients)."""
    out = []
    for path in sorted(RESULTS.glob("finetune_probe*.json")):
        fp = json.loads(path.read_text())
        control = fp["arms"].get("control")
        for arm in ("control", "coil", "shapes"):
            if arm not in fp["arms"]:
                continue
            a = fp["arms"][arm]
            held = a["held_out_mean"]
            minus = diffs({z: held[z] - control["held_out_mean"][z] for z in ZONES}) if control and arm != "control" else ""
            outcome = ("baseline of the arms" if arm == "control" else
                       "passed on this fold" if fp["passes"].get(arm) else "failed its rule")
            out.append(["probe", f"fold {fp['fold']} DynUNet fine-tune: {arm} (held-out n = {len(a['held_out'])}; "
                        f"Case00 WG {a['case00_wg']:.3f})", path.name, added_in(path.name),
                        fp["rule"].get(arm, "none (the control arm)") + " (53de675)",
                        " / ".join(f"{held[z]:.3f}" for z in ZONES), minus, outcome])
    return out


def ssl_rows() -> list[list[str]]:
    """bench/ssl_probe.py: scratch and SSL at each number of expert training patients (pooled orders)."""
    path = RESULTS / "ssl_probe.json"
    if not path.exists():
        return []
    sp, out = json.loads(path.read_text()), []
    for n, p in sp["pooled"].items():
        for arm in ("scratch", "ssl"):
            minus = diffs({z: p["ssl"][z] - p["scratch"][z] for z in ZONES}) if arm == "ssl" else ""
            outcome = ("baseline of the arms" if arm == "scratch" else
                       "passed its rule" if sp["passes"]["helps_at_n"][n] else "failed its rule")
            what = "full CV, expert + silver" if n == "cv" else f"{n} expert patient(s)"
            out.append(["probe", f"SSL probe, DynUNet on {what}: {arm} (held-out rows = {p[arm]['rows']})",
                        path.name, added_in(path.name),
                        sp["rule"]["helps_at_n"] if arm == "ssl" else "none (the scratch arm)",
                        " / ".join(f"{p[arm][z]:.3f}" for z in ZONES), minus, outcome])
    return out


def count() -> dict:
    """{kind: rows} and the total: how many comparisons the 5 expert patients have served."""
    kinds: dict = {}
    for r in rows():
        kinds[r[0]] = kinds.get(r[0], 0) + 1
    return {**kinds, "total": sum(kinds.values())}


def render() -> str:
    n = count()
    lines = ["# Candidate log", "",
             "Generated by `make results` (`python -m bench.candidate_log`) from bench/results/*.json and git; "
             "do not edit.", "",
             f"The 5 expert-labelled patients have served **{n['total']} comparisons**: {n['bundle']} bundle "
             f"generations, {n['candidate']} candidates put to a rule fixed before their score, "
             f"{n['ablation']} ablation rows and {n['probe']} probes. Figures are cross-validated mean DSC (n = 5; "
             "WG / TZ / PZ); \"minus baseline\" is the paired mean difference to the bundle it was measured "
             "against (for an ablation, its row a minus row b). The plain and selection-corrected figures of "
             "the shipped recipe are in docs/RESULTS.md.", "",
             "| # | kind | name | JSON | commit | rule fixed before | WG / TZ / PZ | minus baseline | shipped |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {i} | " + " | ".join(r) + " |" for i, r in enumerate(rows(), 1)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.parse_args(argv)
    from mricore.outputs import write_text

    write_text(render(), OUT)
    print(f"wrote {OUT.relative_to(ROOT)} ({count()['total']} comparisons)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
