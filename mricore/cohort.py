"""A cohort goes on past a failing case, in every command that runs one (`ensemble predict DATASET`,
`segment predict DATASET`).

Any exception of a case (a UserError, or a bug such as a stray non-DICOM file read by a writer) marks
that case failed: its summary row gets a one-line reason, and the traceback goes to the case's log file
`OUT/logs/<case_id>.log`, beside summary.csv (a failed case leaves no case folder of its own). A case
that succeeds on a re-run loses the log of its earlier failure. SIGINT and SIGTERM still end the whole
run (they are not Exceptions). The command ends with exit code 2 when any case failed (`failures`).

Resuming (`ensemble predict DATASET -o OUT --resume`): the case folders are the journal. A case folder
is renamed into place whole, zones.json included (mricore.results.write_case), so one that exists with
a readable zones.json is complete, whatever killed the run (SIGKILL included); a failed or unfinished
case has no folder. `finished_case` reads a complete one back, after checking it came from the same
run (its saved resolved config equals this run's); `clear_staging` removes what a SIGKILL left half
written. The summary is written once, at the end, from every case's row: re-reading the case folders
at resume rebuilds it, so a kill needs no summary of its own (a partial one could pass for complete).
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    from .results import ZonesRecord

LOGS = "logs"


def case_log(out: str | Path, case_id: str) -> Path:
    """The log file of a case of the cohort written into `out`."""
    return Path(out) / LOGS / f"{case_id}.log"


def failed_row(out: str | Path, case_id: str, error: Exception) -> dict:
    """The summary row of a failed case, {"case_id", "status": "failed", "error": one line}; the
    exception with its traceback is written to `case_log` (atomically)."""
    from .errors import without_paths
    from .outputs import write_text

    log = case_log(out, case_id)  # paths cut to their last part, in the log as in the summary
    write_text(without_paths("".join(traceback.format_exception(error))), log)
    if isinstance(error, UserError):
        reason = without_paths(str(error))
    else:  # a bug: its type and first line; the log has the rest
        first = without_paths((str(error).strip().splitlines() or [""])[0])[:200]
        reason = f"{type(error).__name__}: {first} (traceback in {LOGS}/{log.name})"
    return {"case_id": case_id, "status": "failed", "error": reason}


def succeeded(out: str | Path, case_id: str) -> None:
    """A case done: the log of an earlier failed run of it, if any, goes."""
    case_log(out, case_id).unlink(missing_ok=True)


def failures(out: str | Path, rows: list[dict]) -> UserError | None:
    """The one-line error a cohort ends with when any row failed (None when none did): how many, the
    first reason, and where to look."""
    from .results import SUMMARY_CSV

    failed = [r for r in rows if r["status"] != "ok"]
    if not failed:
        return None
    return UserError(out, f"{len(failed)} of {len(rows)} cases failed (nothing kept of them; the others are "
                     "complete)", failed[0]["error"], f"see {Path(out) / SUMMARY_CSV} and {Path(out) / LOGS}/")


def finished_case(folder: str | Path, config: dict, config_name: str,
                  wanted: dict[str, bool] | None = None) -> "ZonesRecord | None":
    """For a resume: the zones.json record of the complete case folder `folder`, None when there is no
    such folder (the case is still to run). "The same run" means the same resolved config: the
    `config_name` file of the folder (ensemble.yaml) must hold `config` (a plain dict, as
    mricore.config.to_dict gives), and each optional output in `wanted` (file name -> written by this
    run) must be present or absent as this run would leave it.

    Raises OutputExistsError (one line, naming the first difference and the fix --force) when the
    folder is not a complete case folder or came from another config."""
    import yaml

    from .errors import OutputExistsError
    from .results import ZONES_JSON, read_case

    folder = Path(folder)
    if not folder.exists():
        return None
    fix = "pass --force (without --resume) to recompute every case, or choose another -o"
    if not (folder / ZONES_JSON).is_file() or not (folder / config_name).is_file():
        raise OutputExistsError(folder, "--resume: not a complete case folder", f"no {ZONES_JSON} or "
                                f"{config_name}", f"move it away, {fix}")
    record = read_case(folder)
    try:
        theirs = yaml.safe_load((folder / config_name).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise OutputExistsError(folder / config_name, "--resume: not a readable config", type(e).__name__,
                                fix) from None
    diff = first_difference(theirs, yaml.safe_load(yaml.safe_dump(config)))
    for name, written in (wanted or {}).items():
        if diff is None and (name in record.outputs) != written:
            diff = (name, "written" if name in record.outputs else "absent", "written" if written else "absent")
    if diff is not None:
        key, was, now = diff
        raise OutputExistsError(folder, "--resume: this case was made by another run", f"'{key}' {was!r} "
                                f"there, {now!r} now", f"{fix} (or resume with the first run's options)")
    return record


def first_difference(a, b, key: str = "") -> tuple[str, object, object] | None:
    """The first dotted key where two plain values (YAML/JSON: dicts, lists, scalars) differ, with its
    value in each (None where absent); None when they are equal. Example:
    first_difference({"m": {"x": 1}}, {"m": {"x": 2}}) == ("m.x", 1, 2)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            d = first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
            if d is not None:
                return d
        return None
    return None if a == b else (key or "(the whole file)", a, b)


def clear_staging(out: str | Path, case_ids: list[str]) -> None:
    """Remove what a killed run (SIGKILL: no clean-up ran) left half written of these cases in `out`:
    their hidden staging and set-aside folders (mricore.outputs.staged_dir) and temporary logs. The
    caller makes sure no other process is writing them."""
    import glob
    import shutil

    out = Path(out)
    for c in map(glob.escape, case_ids):
        for p in [*out.glob(f".{c}.staging-*"), *out.glob(f".{c}.old-*"), *(out / LOGS).glob(f".{c}.log.*")]:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
