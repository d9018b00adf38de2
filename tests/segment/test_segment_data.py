"""The prefetch thread that overlaps batch sampling with the training step."""

import time

import pytest

from segment.data import Prefetch


def test_prefetch_keeps_order_and_ends():
    assert list(Prefetch(iter(range(50)), depth=2)) == list(range(50))


def test_prefetch_reraises_the_sampler_error_in_the_training_thread():
    def batches():
        yield 1
        raise ValueError("bad sample")

    it = iter(Prefetch(batches()))
    assert next(it) == 1
    with pytest.raises(ValueError, match="bad sample"):
        next(it)


def test_leaving_the_loop_early_stops_the_thread():
    p = Prefetch(iter(range(10_000)), depth=1)
    for b in p:
        if b == 3:
            break
    p._thread.join(timeout=2)
    assert not p._thread.is_alive()


def test_prefetch_runs_ahead_of_the_consumer():
    produced = []

    def batches():
        for i in range(3):
            produced.append(i)
            yield i

    it = iter(Prefetch(batches(), depth=2))
    assert next(it) == 0
    time.sleep(0.3)  # while the "step" runs, the thread has already made the next batches
    assert produced == [0, 1, 2]
