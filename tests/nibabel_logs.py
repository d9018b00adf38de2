"""nibabel logs header fixes ("pixdim[1,2,3] should be non-zero; setting 0 dims to 1") through a handler
of its own, bound to the stderr of import time: under pytest that is not the stream a test captures, so
a line it prints would slip past a one-line check. `to_current_stderr` points it at whatever sys.stderr
is when a record is written (capsys and capfd alike)."""

from __future__ import annotations

import logging
import sys


class _CurrentStderr:
    def write(self, text):
        sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()


def to_current_stderr(monkeypatch) -> None:
    """For the rest of the test, nibabel's log handlers write to the current sys.stderr."""
    for handler in logging.getLogger("nibabel.global").handlers:
        monkeypatch.setattr(handler, "stream", _CurrentStderr())
