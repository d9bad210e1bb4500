"""The process heap: glibc told to give freed memory back, so ``wait`` stays small."""

from __future__ import annotations

import ctypes
from collections.abc import Callable


class Heap:
    """glibc's heap, told to give freed memory back to the kernel.

    After a 10,000-rule apply, reconcile or scrape, glibc keeps the freed
    megabytes for reuse; ``malloc_trim`` returns them, which in this process
    is the difference between ~46 and ~36 MiB resident. One arena: the HTTP
    threads would otherwise each get their own. No-ops without glibc.
    """

    M_ARENA_MAX = -8

    def __init__(self) -> None:
        self._trim: Callable[[int], object] | None = None
        try:
            libc = ctypes.CDLL(None)
            self._trim = libc.malloc_trim
            libc.mallopt(self.M_ARENA_MAX, 1)
        except (OSError, AttributeError):
            self._trim = None

    def release(self) -> None:
        if self._trim is not None:
            self._trim(0)





HEAP = Heap()
