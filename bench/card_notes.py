"""The model card's notes with every measured figure read from its JSON: no figure in prose is typed by hand.

configs/bundle/MODEL_CARD_NOTES.md is prose written by people; each figure that a JSON holds is written as
a placeholder, which `make results` (bench.figures) replaces before the notes join the card:

    {{FILE:PATH|SPEC}}

- FILE: a JSON in bench/results (`scale_all_cv.json`); a name with a `/` is a path from the repository
  root instead (`ensemble/models/default/cv_evaluate.json`).
- PATH: dotted keys into the JSON, a list index being a number (`comparisons.ensemble_minus_bundle.WG.ci.0`);
  a key that holds dots itself is matched whole (`cases.001.dsc.0.6.WG`, the factor "0.6" of scale_probe.json).
  It ends at a figure: a number, a string or a bool.
- SPEC: a Python format spec (`+.3f`, `.0%`, `.1f`; `+z.3f` prints -0.0 as +0.000); without `|SPEC` the
  value is printed as str() gives it (counts such as `improved`).

Example, with bench/results/scale_all_cv.json holding {"comparisons": {"ensemble_minus_bundle": {"WG":
{"mean_diff": 0.0057, "ci": [-0.0011, 0.0145], "improved": 4}}}}:

    WG {{scale_all_cv.json:comparisons.ensemble_minus_bundle.WG.mean_diff|+.3f}}
    ({{scale_all_cv.json:comparisons.ensemble_minus_bundle.WG.ci.0|+.3f}}, ...,
    {{scale_all_cv.json:comparisons.ensemble_minus_bundle.WG.improved}} of 5)
    -> WG +0.006 (-0.001, ..., 4 of 5)

A missing file, key or index, a path that stops at a table, a value its SPEC cannot format, or a `{{` that
is no placeholder raises NotesError (a user error) naming the placeholder, the file and the key: a figure is
never left blank. Nothing here computes (no differences, no signs turned): a figure that needs arithmetic
belongs in the bench that writes the JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench.common import RESULTS, ROOT
from mricore.errors import InputError

# {{FILE:PATH}} or {{FILE:PATH|SPEC}}; FILE and PATH hold no braces, colons or bars.
PLACEHOLDER = re.compile(r"\{\{([^{}:|]+):([^{}:|]+)(?:\|([^{}]*))?\}\}")


class NotesError(InputError):
    """A placeholder in the notes names a file, key or format that its JSON does not have."""


def _load(name: str, token: str, cache: dict, results: Path) -> object:
    """The JSON that FILE `name` names (read once per `cache`)."""
    if name not in cache:
        path = (ROOT / name) if "/" in name else (results / name)
        try:
            cache[name] = json.loads(path.read_text())
        except (OSError, ValueError) as e:  # missing, unreadable or not JSON: the same fix
            raise NotesError(token, f"its file {name} ({path}) must be a readable JSON", f"{type(e).__name__}: {e}",
                             "name a JSON in bench/results (or a path from the repository root), or re-run "
                             "its bench") from e
    return cache[name]


def lookup(data: object, path: str, token: str, name: str) -> object:
    """The value at dotted `path` in `data`: a key per step, a number indexing a list. A key that itself
    holds dots (scale_probe.json's factor "0.6") is matched whole: the shortest run of steps that is a key.

    Raises NotesError naming `token`, the file `name` and the first step that is missing."""
    steps, here, i = path.split("."), data, 0
    while i < len(steps):
        if isinstance(here, dict):
            j = next((j for j in range(i + 1, len(steps) + 1) if ".".join(steps[i:j]) in here), None)
            if j is not None:
                here, i = here[".".join(steps[i:j])], j
                continue
        elif isinstance(here, list) and steps[i].isdigit() and int(steps[i]) < len(here):
            here, i = here[int(steps[i])], i + 1
            continue
        have = f"keys {sorted(here)[:12]}" if isinstance(here, dict) else \
            f"a list of {len(here)}" if isinstance(here, list) else repr(here)
        raise NotesError(token, f"{name} has no {'.'.join(steps[:i + 1])!r}", f"there: {have}",
                         "correct the placeholder's path, or re-run the bench that writes that key")
    return here


def value(token: str, cache: dict | None = None, results: Path = RESULTS) -> str:
    """One placeholder `{{FILE:PATH|SPEC}}` formatted from its JSON (str() without a SPEC).

    Raises NotesError (a user error, exit 2) for a malformed placeholder, a missing file or key, or a value
    the SPEC cannot format."""
    m = PLACEHOLDER.fullmatch(token)
    if not m:
        raise NotesError(token, "a placeholder is {{FILE:DOTTED.PATH|SPEC}}", fix="see bench/card_notes.py")
    name, path, spec = (g.strip() if g else g for g in m.groups())
    got = lookup(_load(name, token, {} if cache is None else cache, results), path, token, name)
    if got is None or isinstance(got, (dict, list)):  # a path cut short would print a table into the card
        raise NotesError(token, f"{name}:{path} must end at a number or a string", f"{type(got).__name__}",
                         "extend the path to the figure itself")
    if spec is None:
        return str(got)
    try:
        return format(got, spec)
    except (TypeError, ValueError) as e:
        raise NotesError(token, f"{name}:{path} is {got!r}, which format spec {spec!r} cannot format", str(e),
                         "use a spec for that type, e.g. '.3f' for a number") from e


def resolve(text: str, results: Path = RESULTS) -> str:
    """`text` with every placeholder replaced by its formatted value; each JSON is read once. `results` is
    where a FILE without a `/` lies (bench/results; a test passes its own folder).

    Raises NotesError for the first placeholder that does not resolve, and for a `{{` left unmatched (a
    placeholder typed wrong would otherwise reach the card as is)."""
    rest = PLACEHOLDER.sub("", text)
    if "{{" in rest:
        bad = rest[rest.index("{{"):][:80]
        raise NotesError(bad, "a placeholder is {{FILE:DOTTED.PATH|SPEC}}", fix="correct it (see bench/card_notes.py)")
    cache: dict = {}
    return PLACEHOLDER.sub(lambda m: value(m.group(0), cache, results), text)


def placeholders(text: str) -> list[str]:
    """Every placeholder in `text`, in order of appearance (repeats kept)."""
    return [m.group(0) for m in PLACEHOLDER.finditer(text)]
