"""Typed user errors and the one place that turns them into a one-line message and exit code 2.

A user error names the input, the rule, the value received and the fix. Bugs keep their traceback.
"""

from __future__ import annotations

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


def run_cli(main: Callable[[], int | None]) -> int:
    """Call `main`; turn a UserError into one line on stderr and exit code 2."""
    try:
        return int(main() or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
