"""bench/card_notes.py: the model card's notes take every measured figure from its JSON (issue 35), and a
placeholder that does not resolve is an error naming it, never a blank."""

import json
import re
from pathlib import Path

import pytest

from bench.card_notes import PLACEHOLDER, NotesError, placeholders, resolve, value
from mricore.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
NOTES = ROOT / "configs" / "bundle" / "MODEL_CARD_NOTES.md"
CARD = ROOT / "ensemble" / "models" / "default" / "MODEL_CARD.md"


@pytest.fixture
def results(tmp_path):
    """A results folder with one JSON shaped like bench/results' (comparisons, per-factor keys, a machine)."""
    (tmp_path / "r.json").write_text(json.dumps({
        "comparisons": {"WG": {"mean_diff": 0.0057, "ci": [-0.0011, 0.0145], "improved": 4, "tie": -0.0}},
        "cases": {"001": {"dsc": {"0.6": {"WG": 0.6973}}}}, "machine": "2 CPUs", "wilcoxon_p": None}))
    return tmp_path


CASES = [
    ("{{r.json:comparisons.WG.mean_diff|+.3f}}", "+0.006"),  # a value with its format spec
    ("{{r.json:comparisons.WG.ci.0|+.3f}}", "-0.001"),       # a list index
    ("{{r.json:comparisons.WG.ci.1|.2%}}", "1.45%"),         # any Python format spec
    ("{{r.json:comparisons.WG.improved}}", "4"),             # no spec: str(), for counts
    ("{{r.json:comparisons.WG.tie|+z.3f}}", "+0.000"),       # 'z': no '-0.000'
    ("{{r.json:cases.001.dsc.0.6.WG|.3f}}", "0.697"),        # a key holding a dot ("0.6") matched whole
    ("{{r.json:machine}}", "2 CPUs"),                        # a string
    ("{{ r.json : comparisons.WG.improved }}", "4"),         # spaces around FILE and PATH are ignored
]


@pytest.mark.parametrize("token, want", CASES)
def test_a_placeholder_gives_its_json_value_formatted(results, token, want):
    assert value(token, results=results) == want


def test_resolve_replaces_every_placeholder_and_leaves_the_prose(results):
    text = ("WG {{r.json:comparisons.WG.mean_diff|+.3f}} ({{r.json:comparisons.WG.ci.0|+.3f}} to "
            "{{r.json:comparisons.WG.ci.1|+.3f}}, {{r.json:comparisons.WG.improved}} of 5 cases)")
    assert resolve(text, results) == "WG +0.006 (-0.001 to +0.015, 4 of 5 cases)"
    assert resolve("no figure here", results) == "no figure here"
    assert placeholders(text) == re.findall(r"\{\{[^}]*\}\}", text)


ILL_CASES = [
    ("{{missing.json:comparisons.WG.mean_diff|+.3f}}", "missing.json"),     # no such file
    ("{{r.json:comparisons.TZ.mean_diff|+.3f}}", "no 'comparisons.TZ'"),      # no such key: the first step named
    ("{{r.json:comparisons.WG.ci.2|+.3f}}", "no 'comparisons.WG.ci.2'"),      # a list index out of range
    ("{{r.json:comparisons.WG.ci.low|+.3f}}", "no 'comparisons.WG.ci.low'"),  # a key into a list
    ("{{r.json:comparisons.WG.improved.n}}", "no 'comparisons.WG.improved.n'"),  # a step past a figure
    ("{{r.json:comparisons.WG|.3f}}", "must end at a number or a string"),    # a path cut short: a table
    ("{{r.json:wilcoxon_p|.3f}}", "must end at a number or a string"),        # null is no figure
    ("{{r.json:machine|.3f}}", "cannot format"),                              # a spec for another type
    ("{{r.json comparisons.WG.improved}}", "a placeholder is"),               # no ':' between FILE and PATH
    ("{{r.json:comparisons.WG.improved", "a placeholder is"),                 # unclosed
]


@pytest.mark.parametrize("token, says", ILL_CASES)
def test_a_placeholder_that_does_not_resolve_is_a_user_error_naming_it(results, token, says):
    with pytest.raises(NotesError) as e:
        resolve(f"WG {token} in a sentence", results)
    assert token in str(e.value) and says in str(e.value)
    assert isinstance(e.value, UserError) and e.value.exit_code == 2  # one line, exit 2, no traceback


def test_a_file_that_is_not_json_is_named(results):
    (results / "broken.json").write_text("{not json")
    with pytest.raises(NotesError, match=r"broken\.json.*must be a readable JSON"):
        resolve("{{broken.json:a}}", results)


def test_a_path_with_a_slash_is_read_from_the_repository_root(results):
    # the bundle's own CV report lies beside the weights, not in bench/results
    got = value("{{ensemble/models/default/cv_evaluate.json:n_cases}}", results=results)
    assert got == str(json.loads((CARD.parent / "cv_evaluate.json").read_text())["n_cases"])


def test_every_placeholder_in_the_committed_notes_resolves():
    text = NOTES.read_text()
    assert len(placeholders(text)) > 200  # the notes' measured figures are placeholders, not typed
    out = resolve(text)
    assert "{{" not in out and "}}" not in out


def test_a_figure_typed_in_the_notes_names_its_record():
    """A three-decimal figure left outside the placeholders is a rule or a target, or it sits in a
    paragraph that says where it was recorded (no JSON behind it)."""
    rules = {"0.005", "0.001"}  # the whole-slice rule's tolerance; a learning rate
    for para in re.split(r"\n(?=- |\n|\*\*)", PLACEHOLDER.sub("@", NOTES.read_text())):
        typed = set(re.findall(r"(?<![\w.])[+-]?0\.\d{3}(?![\w.])", para)) - rules
        assert not typed or "no JSON kept" in " ".join(para.split()), f"typed {sorted(typed)} in: {para[:120]!r}"


def test_the_committed_card_carries_the_resolved_notes():
    assert resolve(NOTES.read_text()) in CARD.read_text(), "the card is stale: run `make results`"
