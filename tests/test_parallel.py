"""map_ordered: results in input order, bounded read-ahead, errors at their item's turn."""

from __future__ import annotations

import threading
import time

import pytest

from kface_cli.parallel import AHEAD_PER_WORKER, default_workers, map_ordered


def test_results_come_in_input_order_from_several_threads():
    threads = set()

    def slow_square(x: int) -> int:
        threads.add(threading.get_ident())
        time.sleep(0.02 if x % 3 == 0 else 0.001)  # early items finish last
        return x * x

    assert list(map_ordered(slow_square, range(20), workers=4)) == [x * x for x in range(20)]
    assert len(threads) > 1 and threading.get_ident() not in threads


def test_one_worker_runs_in_the_calling_thread():
    assert list(map_ordered(lambda _: threading.get_ident(), range(3), workers=1)) == [threading.get_ident()] * 3
    assert 1 <= default_workers() <= 8
    with pytest.raises(ValueError, match="at least 1"):
        list(map_ordered(abs, [1], workers=0))


def test_items_are_read_lazily_and_a_bounded_number_ahead():
    pulled = []

    def source():
        for i in range(100):
            pulled.append(i)
            yield i

    results = map_ordered(lambda x: x, source(), workers=2)
    assert next(results) == 0
    assert len(pulled) <= AHEAD_PER_WORKER * 2 + 1
    results.close()  # leaving early cancels what has not started
    assert len(pulled) < 100


def test_an_error_is_raised_at_its_items_turn():
    def fail_on_3(x: int) -> int:
        if x == 3:
            raise KeyError(x)
        return x

    got = []
    with pytest.raises(KeyError):
        for r in map_ordered(fail_on_3, range(10), workers=3):
            got.append(r)
    assert got == [0, 1, 2]


def test_a_single_item_runs_in_the_calling_thread():
    """One photo needs no thread, and its detector graphs stay cached in the caller's thread."""
    assert list(map_ordered(lambda _: threading.get_ident(), ["only"], workers=4)) == [threading.get_ident()]


def test_later_calls_reuse_the_threads():
    """Threads keep per-thread state (detector graphs): a new call must not make new threads."""

    def ident(_):
        time.sleep(0.01)
        return threading.current_thread()  # the object: a new thread may get an old one's ident

    first = set(map_ordered(ident, range(8), workers=2))
    second = set(map_ordered(ident, range(8), workers=2))
    assert len(first) == 2 and second <= first
