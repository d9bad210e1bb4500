"""Look before the first change: are the programs there, are the sysctls writable?

The engine checks what can be checked before it changes anything (no half-applied
router because ``iptables-restore`` is missing or ``/proc/sys`` is mounted read-only
half-way through a setup). Looking is a side effect of its own (``PATH`` lookups,
``access(2)`` on ``/proc/sys``), so it lives here, behind a Protocol with a Fake.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

PROC_SYS = Path("/proc/sys")


class Probe(Protocol):
    """What the engine's pre-flight asks the system."""

    def missing_programs(self, names: Iterable[str]) -> list[str]:
        """The programs of ``names`` that are not on ``PATH``."""
        ...

    def unwritable(
        self, keys: Iterable[str], wanted: Mapping[str, str] | None = None
    ) -> list[tuple[str, str]]:
        """(key, why) for the sysctls (``net/ipv4/ip_forward``) that cannot be written.

        A key that already holds its ``wanted`` value needs no write (the waiting
        container after the init container, in a pod with a read-only /proc/sys).
        """
        ...


class SystemProbe:
    """The real system: ``shutil.which`` and ``access(2)``."""

    def missing_programs(self, names: Iterable[str]) -> list[str]:
        return [name for name in dict.fromkeys(names) if shutil.which(name) is None]

    def unwritable(
        self, keys: Iterable[str], wanted: Mapping[str, str] | None = None
    ) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        for key in dict.fromkeys(keys):
            path = PROC_SYS / key
            parts = Path(key).parts
            # A family the kernel does not have at all (no /proc/sys/net/ipv6): the steps
            # skip its keys, there is nothing of it to protect.
            if len(parts) >= 2 and not (PROC_SYS / parts[0] / parts[1]).exists():
                continue
            if not path.exists():
                problems.append((key, "does not exist"))
            elif wanted and key in wanted and _value(path) == wanted[key]:
                continue
            elif not os.access(path, os.W_OK):
                # EROFS included: access(2) reports a read-only mount as not writable.
                problems.append((key, "is not writable (read-only /proc/sys?)"))
        return problems


def _value(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


@dataclass
class FakeProbe:
    """Answers from sets: ``missing`` programs, ``readonly`` sysctl keys (for unit tests)."""

    missing: set[str] = field(default_factory=set)
    readonly: set[str] = field(default_factory=set)
    asked: list[str] = field(default_factory=list)

    def missing_programs(self, names: Iterable[str]) -> list[str]:
        wanted = list(dict.fromkeys(names))
        self.asked += wanted
        return [name for name in wanted if name in self.missing]

    def unwritable(
        self, keys: Iterable[str], wanted: Mapping[str, str] | None = None
    ) -> list[tuple[str, str]]:
        asked = list(dict.fromkeys(keys))
        self.asked += asked
        return [(key, "is not writable (read-only /proc/sys?)") for key in asked
                if key in self.readonly]
