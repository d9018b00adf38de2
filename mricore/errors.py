"""Typed user errors and the one place that turns them into a one-line message and exit code 2.

A user error names the input, the rule, the value received and the fix. Bugs keep their traceback.
"""

from __future__ import annotations

import re

import sys
from typing import Callable


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2, no traceback."""

    exit_code = 2

    def __init__(self, what: str, rule: str, got: object = None, fix: str = ""):
        self.what, self.rule, self.got, self.fix = str(what), rule, got, fix
        parts = [f"{self.what}: {rule}"]
        if got is not None:
            parts.append(f"got {got}")
        if fix:
            parts.append(f"fix: {fix}")
        super().__init__("; ".join(parts))


class ConfigError(UserError):
    """A config file or override breaks a rule (unknown key, wrong type, bad value)."""


class GeometryError(UserError):
    """Arrays that should share a grid do not, or a grid cannot be read."""


class InputError(UserError):
    """A missing, unreadable or invalid input file or folder."""


class OutputExistsError(UserError):
    """An output would be overwritten without --force."""


class WriteError(UserError):
    """An output could not be written (disk full, file size limit, permissions): nothing of it is left."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every `finally` (staging clean-up) runs."""


# Signals run_cli's handlers received. Python runs a handler between bytecodes, and when that happens
# inside a __del__ or a weakref callback (nibabel has them) the exception it raises is printed as
# "ignored" and lost; the run would then carry on and commit its outputs. `check_signals` raises it
# again at the points that commit outputs (mricore.outputs), and run_cli once more at the end.
_received: list[int] = []


def _on_signal(signum, frame):
    _received.append(signum)
    _raise_for(signum)


def _raise_for(signum: int):
    import signal

    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def _quiet_unraisable(previous):
    """sys.unraisablehook that drops run_cli's own signal exceptions (recorded in _received and raised
    again by check_signals) instead of printing them as "Exception ignored in ... Traceback"; anything
    else goes to `previous`."""
    def hook(unraisable):
        if not isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):
            previous(unraisable)
    return hook


def check_signals() -> None:
    """Raise KeyboardInterrupt or Terminated if run_cli's handlers saw SIGINT or SIGTERM (even one
    whose exception Python swallowed). Called before outputs are committed."""
    if _received:
        _raise_for(_received[-1])


def run_cli(main: Callable[[], int | None]) -> int:
    """Call `main`; turn a UserError into one line on stderr and exit code 2.

    SIGTERM and SIGINT unwind the stack like exceptions, so staged outputs and temporary files are
    removed before the process exits (143 and 130). Third-party chatter never reaches stderr as extra
    lines: Python warnings (numpy, MONAI) are silenced, and so are log records up to WARNING (nibabel
    logs header fixes such as "pixdim[1,2,3] should be non-zero" through its own handler; errors, such
    as the server's, still print), and mricore silences ITK where it imports SimpleITK: our one line is
    what the user reads. A path the operating system refuses (a name over 255 bytes, a symlink loop) is
    a user error too (`_path_error`).
    """
    import logging
    import signal
    import threading
    import warnings

    main_thread = threading.current_thread() is threading.main_thread()  # signals go to the main thread
    previous = {}
    unraisable = sys.unraisablehook
    if main_thread:
        _received.clear()
        sys.unraisablehook = _quiet_unraisable(unraisable)  # a signal inside a __del__: no traceback
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _on_signal)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where SIGINT is ignored
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, _on_signal)
    logging_off = logging.root.manager.disable
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.disable(max(logging.WARNING, logging_off))
            code = int(main() or 0)
        check_signals()  # a signal whose exception was swallowed still ends the run with its code
        return code
    except (UserError, OSError) as e:
        e = _path_error(e) if isinstance(e, OSError) else e
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: nothing of the unfinished case was kept", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated: nothing of the unfinished case was kept", file=sys.stderr)
        return 143
    finally:
        logging.disable(logging_off)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if main_thread:
            _received.clear()
            sys.unraisablehook = unraisable


def _path_error(error: OSError) -> UserError:
    """A path the OS refuses (name too long, symlink loop) as a UserError naming it; any other OSError
    is a bug, raised again with its traceback."""
    import errno

    rules = {errno.ENAMETOOLONG: ("a file name (path component) is longer than 255 bytes", "shorten the name"),
             errno.ELOOP: ("the path goes through a symlink loop", "fix or remove the looping link")}
    if error.errno not in rules or not error.filename:
        raise error
    path = str(error.filename)
    longest = max((len(part.encode()) for part in path.split("/")), default=0)
    rule, fix = rules[error.errno]
    return InputError(path if len(path) < 120 else path[:60] + "..." + path[-40:], rule,
                      f"{longest} bytes" if error.errno == errno.ENAMETOOLONG else error.strerror, fix)


# An absolute path inside a message (POSIX), e.g. "/data/Smith_John/t2.nii.gz".
_PATH = re.compile(r"(?<![\w.~])(/[^\s/;,'\"()]+)+/?")


def without_paths(message: str) -> str:
    """`message` with every absolute path cut to its last part, for what leaves the process (an HTTP
    answer) or the machine (a cohort's summary): folder names are often patients' names.
    Example: without_paths("error: /data/Smith_John/t2.nii.gz: bad") -> "error: t2.nii.gz: bad"."""
    from pathlib import PurePosixPath

    return _PATH.sub(lambda m: PurePosixPath(m.group()).name or "/", message)
