"""mricore.timing.Timer: stages keep their listed order, repeated blocks add up, sub-keys nest, a
raising block is still timed."""

import pytest

from mricore import timing
from mricore.timing import Timer


@pytest.fixture
def clock(monkeypatch):
    """perf_counter stepping 1 s per call, so every timed block lasts exactly 1 s."""
    ticks = iter(range(1000))
    monkeypatch.setattr(timing.time, "perf_counter", lambda: float(next(ticks)))


def test_listed_stages_keep_their_order_and_start_at_zero(clock):
    t = Timer("a", "b", "c")
    with t("c"):
        pass
    assert list(t.seconds) == ["a", "b", "c"] and t.seconds == {"a": 0.0, "b": 0.0, "c": 1.0}


def test_repeated_blocks_add_up_and_sub_keys_nest(clock):
    t = Timer("net", "other")
    for name in ("x", "y", "x"):
        with t("net", name):
            pass
    with t("other"):
        pass
    with t("other"):
        pass
    assert t.seconds == {"net": {"x": 2.0, "y": 1.0}, "other": 2.0}


def test_a_raising_block_is_timed(clock):
    t = Timer()
    with pytest.raises(ValueError):
        with t("late"):
            raise ValueError
    assert t.seconds == {"late": 1.0}


def test_rounded_is_a_rounded_copy():
    t = Timer("a")
    t.seconds.update(a=1.234567, b={"m": 0.000049})
    assert t.rounded(4) == {"a": 1.2346, "b": {"m": 0.0}}
    assert t.seconds["a"] == 1.234567
