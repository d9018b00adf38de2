"""A cohort goes on past a failing case, in every command that runs one (`ensemble predict DATASET`,
`segment predict DATASET`).

Any exception of a case (a UserError, or a bug such as a stray non-DICOM file read by a writer) marks
that case failed: its summary row gets a one-line reason, and the traceback goes to the case's log file
`OUT/logs/<case_id>.log`, beside summary.csv (a failed case leaves no case folder of its own). A case
that succeeds on a re-run loses the log of its earlier failure. SIGINT and SIGTERM still end the whole
run (they are not Exceptions). The command ends with exit code 2 when any case failed (`failures`).
"""

from __future__ import annotations

import traceback
from pathlib import Path

from .errors import UserError

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
