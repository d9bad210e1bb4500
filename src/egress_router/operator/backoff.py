"""How long a resource whose reconcile failed waits before the next try.

client-go's workqueue rate limiter in miniature: the delay doubles with every consecutive
failure of one resource, from `BASE` up to `CAP`, with up to 10 % jitter so that many resources
failing together (the API server restarting) do not come back in one burst; a success forgets
the resource. A failing resource is retried forever at the cap — the process never exits for
an API error, so there is no crash loop.

Pure: the random source is an argument.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable

BASE = 0.5
CAP = 60.0
JITTER = 0.1


class Backoff:
    """Per-key exponential delays."""

    def __init__(
        self, base: float = BASE, cap: float = CAP, rand: Callable[[], float] = random.random
    ) -> None:
        self.base = base
        self.cap = cap
        self._rand = rand
        self._failures: dict[Hashable, int] = {}

    def failures(self, key: Hashable) -> int:
        return self._failures.get(key, 0)

    def fail(self, key: Hashable) -> float:
        """Count a failure of ``key``; the seconds to wait before its next try."""
        count = self._failures.get(key, 0) + 1
        self._failures[key] = count
        delay = min(self.cap, self.base * 2 ** min(count - 1, 32))
        return float(delay * (1 + JITTER * self._rand()))

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)
