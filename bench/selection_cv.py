"""The recipe as chosen, scored honestly: every selection on the 5 expert patients replayed with each patient left out.

The 5 expert-labelled patients scored every candidate (bench/candidate_cv.py) and so also chose among
them: the shipped bundle's plain cross-validated figure is the score of the recipe that won on those
same patients, optimistic by the choice. Here, for each patient, every decision that was made on
their per-case CV scores is made again, in the order the commits made it and by the rule fixed for
it, on the other four patients only; the recipe that comes out of the last decision is scored on the
patient left out. The mean over the 5 patients is the figure for "the recipe as chosen" (an outer
loop over the selection; nothing is retrained: it reads the committed per-case DSC).

A decision made on other grounds than the CV scores (a veto, such as runs lost before packing or a
cost) is kept as it was in every replay. A candidate defined as "the bundle plus a change" can only be
replayed against the bundle it was measured on: if a replay holds another bundle at that point, the
change was never measured on it and the incumbent stays. What the committed JSONs cannot replay is
listed in the output (`not_replayed`).

    python -m bench.selection_cv   # reads bench/results/*_cv.json, writes bench/results/selection_cv.json
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.common import BUNDLE, RESULTS, add_out, command, parser, write_result
from mricore.stats import paired_difference

ZONES = ("WG", "TZ", "PZ")
SHIPPED = "fifth"  # the recipe the real history ends at (the bundle in ensemble/models/default)

# recipe -> (JSON holding its per-case DSC, the column that is this recipe)
RECIPES = {
    "fourth": ("bundle_stop24_cv.json", "ensemble"),
    "member3d": ("member3d_cv.json", "ensemble"),
    "selftrained_bundle": ("bundle_selftrained_candidate_cv.json", "ensemble"),
    "selftrained_dynunet": ("selftrained_dynunet_cv.json", "ensemble"),
    "scale_dynunet": ("scale_dynunet_cv.json", "ensemble"),
    "scale_all": ("scale_all_cv.json", "ensemble"),
    "scale_tta": ("scale_tta_cv.json", "ensemble"),
    "dynunet25d": ("dynunet25d_cv.json", "ensemble"),
    "fourth_ws": ("whole_slice_cv.json", "ensemble"),
    "fifth": (str(BUNDLE / "cv_evaluate.json"), "ensemble"),
}

# How each rule judges candidate-minus-incumbent CV means per zone (the rule fixed before the score).
RULES = {
    "no_zone_lower_one_higher": "ships only if no zone's CV mean is lower and at least one is higher",
    "no_zone_lower": "ships only if no zone's CV mean is lower",
    "none_more_than_0.005_lower": "ships if no zone's CV mean is more than 0.005 below the same members on windows",
}


@dataclass(frozen=True)
class Decision:
    """One choice the 5 patients made, as the commits record it."""
    name: str        # the candidate's name (its JSON's --name)
    candidate: str   # its recipe (RECIPES)
    against: str     # the recipe it was measured against
    rule: str        # RULES key
    rule_commit: str  # where the rule was committed before the score
    outcome: str     # what happened (commit messages)
    relative: bool = False  # the candidate is "the bundle plus a change": measured only on `against`
    veto: str | None = None  # a reason outside the rule that kept a passing candidate out
    hold: bool = False       # the veto was a cost that a later step (whole slices) removed


# In commit order (git log -- bench/results). The whole-slice step is WHOLE_SLICE below.
DECISIONS = (
    Decision("member3d", "member3d", "fourth", "no_zone_lower_one_higher", "969ca66",
             "not shipped (54372af)", relative=True),
    Decision("selftrained_bundle", "selftrained_bundle", "fourth", "no_zone_lower", "b3457ac",
             "passed; not packed (6ba166b, 7ae0c68)", veto="its runs were lost before packing"),
    Decision("selftrained_dynunet", "selftrained_dynunet", "fourth", "no_zone_lower_one_higher", "c149b34",
             "not shipped (5069985)"),
    Decision("scale_dynunet", "scale_dynunet", "fourth", "no_zone_lower_one_higher", "e1e43ed",
             "not shipped (53d5439)"),
    Decision("scale_all", "scale_all", "fourth", "no_zone_lower_one_higher", "af0f824",
             "not shipped (39bb9de)"),
    Decision("scale_tta", "scale_tta", "fourth", "no_zone_lower_one_higher", "67970cc",
             "not shipped (575d0eb)", relative=True),
    Decision("dynunet25d", "dynunet25d", "fourth", "no_zone_lower_one_higher", "f048d3c",
             "passed; held back (157a115), shipped on whole slices (849ce96)",
             veto="PROMISE12 Case00 and 1.6-1.8x the time per study", hold=True),
)
# Whole slices (rule 5285396, for the bundle and for the held candidate): recipe on windows ->
# (its whole-slice recipe, JSON, whole-slice column, windows column).
WHOLE_SLICE = {
    "fourth": ("fourth_ws", "whole_slice_cv.json", "ensemble", "bundle"),
    "dynunet25d": ("fifth", "whole_slice_off_cv.json", "bundle", "ensemble"),
}
NOT_REPLAYED = [
    "the bundle generations before the fourth (bundle_previous/stop21/stop22/stop24_cv.json): planned steps "
    "taken whatever they scored (card notes), so no CV decision to replay",
    "bundle_ablations.json (one stage, margin, flip TTA, N4, teacher, schedules, DynUNet variants, self-training): "
    "it keeps per-variant summaries and paired differences, not per-case DSC, and no rule was fixed for them; "
    "the defaults they kept (two stages, flip TTA and N4 off) are taken as they are",
    "which candidates were tried at all: each was proposed after earlier scores were seen (the scale candidates "
    "after bench/scale_probe.py on prostate158/001); no replay can undo that",
    "whole_slice_cv.json and whole_slice_off_cv.json record candidate_cv's default rule under `rule`, not the "
    "0.005 tolerance of 5285396 that decided; the replay applies 5285396",
]


def per_case(recipe_or_file: str, column: str) -> dict:
    """{zone: {case: DSC}} of one column of a committed JSON: an `ensemble evaluate --cv` summary
    (per_case_dsc[zone][model][case]) or a candidate_cv result (per_case_dsc[zone][case][model])."""
    path = Path(recipe_or_file)
    d = json.loads((path if path.is_absolute() else RESULTS / path).read_text())["per_case_dsc"]
    if column in d["WG"]:
        return {z: dict(d[z][column]) for z in ZONES}
    return {z: {c: v[column] for c, v in d[z].items()} for z in ZONES}


def scores(recipe: str) -> dict:
    return per_case(*RECIPES[recipe])


def mean_diffs(a: dict, b: dict, cases: list[str]) -> dict:
    """Per zone, mean over `cases` of a - b (4 decimals)."""
    return {z: round(sum(a[z][c] - b[z][c] for c in cases) / len(cases), 4) for z in ZONES}


def passes(rule: str, diffs: dict) -> bool:
    if rule == "no_zone_lower_one_higher":
        return all(d >= 0 for d in diffs.values()) and any(d > 0 for d in diffs.values())
    if rule == "no_zone_lower":
        return all(d >= 0 for d in diffs.values())
    return all(d >= -0.005 for d in diffs.values())


def decide(dec: Decision, state: dict, cases: list[str]) -> dict:
    """Replay one decision on `cases`, updating state {incumbent, held}; the step's record."""
    step = {"decision": dec.name, "incumbent": state["incumbent"]}
    if dec.relative and state["incumbent"] != dec.against:
        return {**step, "verdict": "not replayable", "note": f"a change to {dec.against}, never measured on "
                f"{state['incumbent']}: the incumbent stays"}
    base = scores(state["incumbent"])
    if state["incumbent"] == dec.against and dec.candidate != "selftrained_bundle":
        base = per_case(RECIPES[dec.candidate][0], "bundle")  # the scores its rule saw (candidate_cv's column)
    diffs = mean_diffs(scores(dec.candidate), base, cases)
    ok = passes(dec.rule, diffs)
    step.update(diffs=diffs, verdict="passes" if ok else "fails")
    if ok and dec.veto:
        step["note"] = f"kept out: {dec.veto}" + (" (held until whole slices)" if dec.hold else "")
        if dec.hold:
            state["held"] = dec.candidate
    elif ok:
        state["incumbent"] = dec.candidate
    return step


def whole_slices(state: dict, cases: list[str]) -> dict:
    """Rule 5285396: whole slices ship if no zone falls more than 0.005 below windows, for the incumbent
    and for the held candidate; then the held candidate ships on whole slices."""
    step = {"decision": "whole_slice", "incumbent": state["incumbent"]}
    checked = [r for r in (state["incumbent"], state.get("held")) if r]
    if missing := [r for r in checked if r not in WHOLE_SLICE]:
        return {**step, "verdict": "not replayable", "note": f"whole slices never scored for {missing[0]}: "
                "it stays on windows"}
    diffs = {}
    for r in checked:
        _, file, ws, win = WHOLE_SLICE[r]
        diffs[r] = mean_diffs(per_case(file, ws), per_case(file, win), cases)
    ok = all(passes("none_more_than_0.005_lower", d) for d in diffs.values())
    step.update(diffs=diffs, verdict="passes" if ok else "fails")
    if ok:
        state["incumbent"] = WHOLE_SLICE[state.pop("held", None) or state["incumbent"]][0]
    return step


def replay(cases: list[str]) -> tuple[str, list[dict]]:
    """Every decision on `cases`: the recipe chosen and the trace."""
    state: dict = {"incumbent": "fourth", "held": None}
    trace = [decide(d, state, cases) for d in DECISIONS]
    trace.append(whole_slices(state, cases))
    return state["incumbent"], trace


def figures(patients: list[str]) -> dict:
    """The plain CV figure of the shipped recipe and the selection-corrected one, per zone and case."""
    shipped = scores(SHIPPED)
    chosen, rows = {}, {}
    for p in patients:
        recipe, trace = replay([c for c in patients if c != p])
        chosen[p] = {"recipe": recipe, "trace": trace}
        rows[p] = {"recipe": recipe, **{z: round(scores(recipe)[z][p], 4) for z in ZONES}}
    plain = {z: round(sum(shipped[z][p] for p in patients) / len(patients), 4) for z in ZONES}
    corrected = {z: round(sum(rows[p][z] for p in patients) / len(patients), 4) for z in ZONES}
    gap = {}
    for z in ZONES:  # corrected minus plain, paired by patient (mricore.stats)
        d = paired_difference([rows[p][z] for p in patients], [shipped[z][p] for p in patients])
        gap[z] = {"mean": round(d["mean"], 4), "ci": [round(d["ci_low"], 4), round(d["ci_high"], 4)], "n": d["n"],
                  "patients_lower": sum(rows[p][z] < round(shipped[z][p], 4) for p in patients)}
    return {"plain": plain, "corrected": corrected, "gap": gap, "rows": rows, "chosen": chosen,
            "shipped": {p: {z: round(shipped[z][p], 4) for z in ZONES} for p in patients}}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    add_out(ap, RESULTS / "selection_cv.json")
    args = ap.parse_args(argv)
    patients = sorted(scores(SHIPPED)["WG"])
    recipe_all, trace_all = replay(patients)
    f = figures(patients)
    out = {"command": command("selection_cv"),
           "what": "the shipped recipe's plain CV mean on the 5 expert patients (they also chose it) beside the "
                   "selection-corrected mean: for each patient, every decision replayed on the other four by its "
                   "rule, and the recipe chosen scored on the patient left out",
           "plain_cv": {"recipe": SHIPPED, "mean": f["plain"], "per_case": f["shipped"], "n": len(patients)},
           "selection_corrected_cv": {"mean": f["corrected"], "per_case": f["rows"], "n": len(patients),
                                      "folds_ending_at_shipped": sum(r["recipe"] == SHIPPED for r in f["rows"].values()),
                                      "minus_plain": f["gap"]},
           "rules": RULES, "decisions": [d.__dict__ for d in DECISIONS],
           "whole_slice_rule_commit": "5285396",
           "replay_on_all_patients": {"recipe": recipe_all, "reproduces_history": recipe_all == SHIPPED,
                                      "trace": trace_all},
           "replays": {p: c["trace"] for p, c in f["chosen"].items()},
           "recipes": {k: {"json": Path(v[0]).name, "column": v[1]} for k, v in RECIPES.items()},
           "not_replayed": NOT_REPLAYED}
    write_result(out, args.out)
    print("plain CV (shipped recipe, the choosers' own scores):", " ".join(f"{z} {v:.3f}" for z, v in f["plain"].items()))
    print("selection-corrected CV (recipe as chosen):        ", " ".join(f"{z} {v:.3f}" for z, v in f["corrected"].items()))
    for p, r in f["rows"].items():
        print(f"  left out {p}: chosen {r['recipe']}, " + " ".join(f"{z} {r[z]:.3f}" for z in ZONES))
    print("replay on all 5 reproduces the history:", recipe_all == SHIPPED)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
