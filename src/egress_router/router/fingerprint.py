"""Whether our rules in the kernel are still those of the last apply: generation, fingerprint.

Reading 10,000 rules back after every kernel event would cost a second each time. The kernel
counts committed nftables transactions (the generation, `nft.generation`): as long as it has
not moved since our rules last matched, nothing can have changed them. When it moves, a
fingerprint of our table as listed (`engine.Firewall.fingerprint`) decides; that fingerprint
is taken once per apply, deferred to idle time (`settle`) and, in the loop, listed in a
background thread at the lowest priority, kept only if no commit came while nft listed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from egress_router.kernel import errors
from egress_router.kernel.memory import HEAP
from egress_router.router import capacity, engine

log = logging.getLogger(__name__)

SETTLE_AFTER = 2.0  # seconds after an apply before its fingerprint is taken (in the background)


class Edges(Protocol):
    """What the check reads of the kernel (the router's `reconciler.Edges`)."""

    @property
    def firewall(self) -> engine.Firewall: ...

    @property
    def generation(self) -> Callable[[], int | None]: ...


class OurRules:
    """The fingerprint and generation our rules were last seen at, and the checks on them."""

    def __init__(self, kernel: Edges, lock: threading.RLock,
                 clock: Callable[[], float]) -> None:
        self.kernel = kernel
        self._lock = lock  # the router's: kernel work of the loop and of this thread apart
        self._clock = clock
        self.expected: str | None = None  # fingerprint of our rules right after the last apply
        self._verified: int | None = None  # nftables generation at which they last matched
        self._settling: threading.Thread | None = None  # `settle` in the background
        self._applied_at = float("-inf")  # when the last apply was made (clock)

    def remember(self, before: int | None = None, *, applied: bool = False) -> None:
        """Note that our rules are those just committed.

        ``applied``: by an apply, not a repair; the background fingerprint then waits
        `SETTLE_AFTER`, for edits that come in a row.

        Listing 10,000 rules back (the fingerprint) takes a second, so it is
        deferred to `settle`, idle work of the loop; until then the nftables
        generation says whether anything was committed after ours. ``before``:
        the generation read right before our one transaction. Anything but
        ``before + 1`` now means another commit came in between (one that may
        have deleted our table a moment after we wrote it): then nothing is
        taken as verified, and the next check applies the rules again, instead
        of trusting a generation that already counts the deletion.
        """
        if applied:
            self._applied_at = self._clock()
        generation = self.kernel.generation()
        if generation is None:  # no generation to go by: fingerprint now
            self.expected = self.kernel.firewall.fingerprint()
            self._verified = None
            return
        self.expected = None
        if before is not None and generation != before + 1:
            log.info("another nftables commit came with ours (generation %d -> %d); "
                     "checking our rules again", before, generation)
            self._verified = None
            return
        self._verified = generation

    def generation_before(self) -> int | None:
        """The generation before a commit of ours, when that commit is one transaction."""
        if self.kernel.firewall.name != engine.NftablesFirewall.name:
            return None  # iptables: one restore per family, several commits
        return self.kernel.generation()

    def settle(self, *, background: bool = False) -> bool:
        """Take the fingerprint the last apply deferred, if it is still due; True if taken.

        ``background`` (the loop): list the table in a thread of its own, not
        holding the lock, and keep the fingerprint only if no commit came in the
        meantime. At 10,000 rules the listing takes nft one to two seconds, which
        an edit arriving right after the last one would otherwise wait for; and
        only `SETTLE_AFTER` seconds after the last apply, so that it does not
        compete for the CPU with edits that come in a row. Returns False at once.
        """
        if self.expected is not None or self._verified is None:
            return False
        if background:
            if self._clock() - self._applied_at < SETTLE_AFTER:
                return False
            if self._settling is None or not self._settling.is_alive():
                self._settling = threading.Thread(
                    target=self._settle_from, args=(self._verified,), name="settle", daemon=True
                )
                self._settling.start()
            return False
        with self._lock:
            before = self.kernel.generation()
            if before != self._verified:
                return False  # a commit came first: `match` says no: re-applied to be sure
            fingerprint = self.kernel.firewall.fingerprint()
            if self.kernel.generation() == before:
                self.expected = fingerprint
        HEAP.release()
        return True

    def _settle_from(self, token: int) -> None:
        capacity.become_idle_work()  # the fingerprint's nft too
        try:
            if self.kernel.generation() != token:
                return
            fingerprint = self.kernel.firewall.fingerprint()
        except errors.KernelError as err:
            log.debug("cannot take the fingerprint of our rules: %s", err)
            return
        with self._lock:
            # Still the apply it was taken for, and nothing committed while nft listed it.
            if self.expected is None and self._verified == token == self.kernel.generation():
                self.expected = fingerprint
        del fingerprint
        HEAP.release()

    def match(self) -> bool:
        """Whether our rules in the kernel are still those of the last apply."""
        generation = self.kernel.generation()
        if generation is not None and generation == self._verified:
            return True  # no nftables commit at all since they last matched
        if self.expected is None:
            return False  # committed over before we could take their fingerprint
        matches = self.kernel.firewall.fingerprint() == self.expected
        self._verified = generation if matches else None
        return matches
