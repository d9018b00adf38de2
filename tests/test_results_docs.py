"""Figures are generated, never typed: the committed README block, docs/RESULTS.md, docs/candidates.md
and the model card equal a fresh `make results` (bench.figures) from bench/results/*.json, and the
selection-corrected CV (bench/selection_cv.py) replays the recorded history."""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _full_history() -> bool:
    r = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() == "false"


@pytest.mark.skipif(not _full_history(), reason="the candidate log's commits come from git history (none here)")
def test_committed_figure_pages_equal_a_fresh_generation():
    from bench.figures import outputs, stale

    old = [str(p.relative_to(ROOT)) for p in stale(outputs())]
    assert not old, f"stale: {old}; run `make results` and commit the result"


def test_the_staleness_check_flags_a_hand_edited_figure(tmp_path):
    from bench.figures import results_md, stale

    text = results_md()
    page = tmp_path / "RESULTS.md"
    page.write_text(text.replace("| WG | 0.832 |", "| WG | 0.850 |", 1))  # a figure typed over
    assert "| WG | 0.832 |" in text  # the plain CV row the edit changed
    assert stale({page: text}) == [page]
    page.write_text(text)
    assert stale({page: text}) == []


def test_readme_without_its_markers_is_refused():
    from bench.figures import readme

    with pytest.raises(ValueError, match="figures:begin"):
        readme("# a README with no generated block\n")


def test_selection_replay_reproduces_the_history_and_the_committed_figures():
    from bench.selection_cv import SHIPPED, figures, replay, scores

    patients = sorted(scores(SHIPPED)["WG"])
    assert len(patients) == 5
    assert replay(patients)[0] == SHIPPED  # on all 5 patients the decisions end at the shipped bundle
    got = figures(patients)
    committed = json.loads((ROOT / "bench" / "results" / "selection_cv.json").read_text())
    assert got["plain"] == committed["plain_cv"]["mean"]
    assert got["corrected"] == committed["selection_corrected_cv"]["mean"]
    assert {p: r["recipe"] for p, r in got["rows"].items()} == {
        p: r["recipe"] for p, r in committed["selection_corrected_cv"]["per_case"].items()}


def test_a_left_out_patient_never_enters_its_own_replay():
    from bench.selection_cv import replay

    patients = ["001", "002", "021", "Patient_52209036", "Patient_68619"]
    for p in patients:
        recipe, trace = replay([c for c in patients if c != p])
        # the same decisions on the same four patients, whatever the fifth scored: replaying twice agrees,
        # and a replay on four patients differs from the full one where the fifth patient tipped a rule
        assert replay([c for c in patients if c != p])[0] == recipe
        assert all(s["verdict"] in ("passes", "fails", "not replayable") for s in trace)
    assert replay([c for c in patients if c != "001"])[0] != replay(patients)[0]  # 001 tipped dynunet25d's TZ


@pytest.mark.parametrize("rule, diffs, ok", [
    ("no_zone_lower_one_higher", {"WG": 0.01, "TZ": 0.0, "PZ": 0.002}, True),   # none lower, one higher
    ("no_zone_lower_one_higher", {"WG": 0.0, "TZ": 0.0, "PZ": 0.0}, False),     # none higher
    ("no_zone_lower_one_higher", {"WG": 0.05, "TZ": -0.0001, "PZ": 0.1}, False),  # one lower
    ("no_zone_lower", {"WG": 0.0, "TZ": 0.0, "PZ": 0.0}, True),                 # ties pass
    ("none_more_than_0.005_lower", {"WG": -0.005, "TZ": 0.0, "PZ": 0.01}, True),  # at the tolerance
    ("none_more_than_0.005_lower", {"WG": -0.0051, "TZ": 0.0, "PZ": 0.01}, False),  # beyond it
])
def test_rules(rule, diffs, ok):
    from bench.selection_cv import passes

    assert passes(rule, diffs) is ok


def test_candidate_log_counts_its_rows():
    from bench.candidate_log import count, render, rows

    n = count()
    assert n["total"] == len(rows()) == sum(v for k, v in n.items() if k != "total")
    assert f"**{n['total']} comparisons**" in render()
    assert n["candidate"] >= 10 and n["bundle"] == 5


def test_the_shipped_review_limits_are_the_out_of_sample_half_a_fit():
    # The fitted limits in the bundle's ensemble.yaml and its ONNX export's are fit_limits on half A of the
    # rows bench/qa_oos.py measured, where every study was mapped by members and a locator that never saw it.
    import yaml

    from mricore.review_limits import FITTED, fit_limits

    oos = json.loads((ROOT / "bench" / "results" / "qa_oos.json").read_text())
    assert not oos["left_out"] and all(s["members"] and s["locator_out_of_sample"] for s in oos["studies"].values())
    assert oos["n_studies"] == 23 and oos["shipped_from_this_run"]
    fitted = fit_limits(oos["rows"], "A")
    assert fitted == oos["calibrate_A_test_B"]["calibration"]["limits"]
    for path in ("ensemble.yaml", "onnx/ensemble.yaml"):
        review = yaml.safe_load((ROOT / "ensemble" / "models" / "default" / path).read_text())["review"]
        assert {k: review[k] for k in FITTED} == fitted, path
