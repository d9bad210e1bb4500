"""Retry delays double up to the cap; the work queue holds a key once, at its earliest time."""

from __future__ import annotations

import threading

from egress_router.operator import backoff
from egress_router.operator.controller import Queue


def test_backoff_doubles_to_the_cap_and_forgets() -> None:
    b = backoff.Backoff(base=0.5, cap=4.0, rand=lambda: 0.0)
    assert [b.fail("k") for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.fail("other") == 0.5
    b.forget("k")
    assert b.failures("k") == 0
    assert b.fail("k") == 0.5


def test_backoff_jitter_is_bounded() -> None:
    b = backoff.Backoff(base=1.0, cap=60.0, rand=lambda: 1.0)
    assert b.fail("k") == 1.0 * (1 + backoff.JITTER)
    for _ in range(100):
        assert b.fail("k") <= 60.0 * (1 + backoff.JITTER)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_queue_holds_a_key_once_at_its_earliest_time() -> None:
    clock = Clock()
    q = Queue(clock)
    stop = threading.Event()
    q.add("a", delay=5)
    q.add("a", delay=10)  # later: ignored
    q.add("b")
    q.add("b")
    assert len(q) == 2
    assert q.get(stop, timeout=0) == "b"
    assert q.get(stop, timeout=0) is None  # a not due yet
    q.add("a", delay=1)  # earlier: wins
    clock.now += 1
    assert q.get(stop, timeout=0) == "a"
    clock.now += 10
    assert q.get(stop, timeout=0) is None  # the superseded entry is gone
    assert len(q) == 0


def test_queue_get_returns_when_stopped() -> None:
    q = Queue()
    stop = threading.Event()
    stop.set()
    assert q.get(stop, timeout=5) is None
