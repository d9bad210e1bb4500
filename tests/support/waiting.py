"""Polling until something holds, bounded in time: the one `eventually` of the tests."""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> float:
    """Poll ``check`` until it is true, at most ``timeout`` seconds; the seconds it took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout:g}s"
        time.sleep(interval)
    return time.monotonic() - started
