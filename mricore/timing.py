"""One small stage timer: wall-clock seconds per named stage, summed over repeated entries.

    timer = Timer("preprocess", "network")   # stages listed up front keep their order (0.0 if unused)
    with timer("preprocess"): ...
    with timer("network", "unet2d"): ...     # a sub-key: seconds["network"]["unet2d"]
    timer.rounded(4)  # {"preprocess": 0.1234, "network": {"unet2d": 1.5}}
"""

from __future__ import annotations

import time
from contextlib import contextmanager


class Timer:
    """`seconds` is {stage: seconds} or, for stages timed with a sub-key, {stage: {sub: seconds}};
    time.perf_counter, so wall-clock time, including any time the block spends waiting."""

    def __init__(self, *stages: str):
        self.seconds: dict = dict.fromkeys(stages, 0.0)

    @contextmanager
    def __call__(self, stage: str, sub: str | None = None):
        """Time the block and add it to `stage` (or to `stage`'s `sub`), also when it raises."""
        start = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            if sub is None:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + spent
            else:  # a stage listed up front holds 0.0 until its first sub-key
                into = self.seconds.get(stage)
                if not isinstance(into, dict):
                    into = self.seconds[stage] = {}
                into[sub] = into.get(sub, 0.0) + spent

    def rounded(self, digits: int = 4) -> dict:
        """`seconds` rounded to `digits` decimals (a copy; sub-keys rounded too)."""
        return _rounded(self.seconds, digits)


def _rounded(t: dict, digits: int) -> dict:
    return {k: (_rounded(v, digits) if isinstance(v, dict) else round(v, digits)) for k, v in t.items()}
