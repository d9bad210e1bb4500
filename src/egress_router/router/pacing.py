"""Pacing of drift repairs: slow them down while something keeps undoing them.

Kernel change events make the router repair drift within milliseconds. Should
something fight it (a second controller, an operator's script in a loop), that
would become a busy loop of re-applies, each a second of CPU at 10,000 rules.
So repairs are counted over a window; past a number of repairing checks in it,
event-driven checks wait, the delay doubling with each further repairing check
up to the periodic interval, and back to none once the kernel state stays put.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

BACKOFF_WINDOW = 30.0  # seconds over which repairs are counted
BACKOFF_AFTER = 10  # reconciles that repaired something (in the window) before slowing down
BACKOFF_FIRST = 0.5  # the first delay, doubled with every further repairing reconcile


class Pacer:
    """How long event-driven repairs wait now (`backoff`), from the repairs of the window."""

    def __init__(self, cap: float, clock: Callable[[], float]) -> None:
        self.cap = cap  # the longest delay: the periodic check's interval
        self._clock = clock
        self._repaired: deque[float] = deque()  # when reconciles repaired something
        self.backoff = 0.0  # how long event-driven reconciles wait now (0: none)

    def note(self, repaired: int) -> float:
        """Count a check that repaired ``repaired`` things; the delay from now on."""
        now = self._clock()
        if repaired:
            self._repaired.append(now)
        while self._repaired and self._repaired[0] < now - BACKOFF_WINDOW:
            self._repaired.popleft()
        excess = len(self._repaired) - BACKOFF_AFTER
        backoff = min(self.cap, BACKOFF_FIRST * 2 ** (excess - 1)) if excess > 0 else 0.0
        if backoff and backoff != self.backoff:
            log.warning(
                "%d repairs in the last %gs: something keeps changing the router's kernel "
                "state; repairing at most every %gs until it stops (find what fights the router)",
                len(self._repaired), BACKOFF_WINDOW, backoff,
            )
        elif self.backoff and not backoff:
            log.info("the kernel state has stayed put: repairs follow changes at once again")
        self.backoff = backoff
        return backoff

    def fight(self) -> str:
        """What keeps the repairs slow, for /readyz ("" while they are not)."""
        if not self.backoff:
            return ""
        return (f"{len(self._repaired)} repairs in {BACKOFF_WINDOW:g}s: something keeps "
                f"changing the kernel state (repairs slowed to every {self.backoff:g}s)")
