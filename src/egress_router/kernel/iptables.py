"""Run iptables-restore for the compatibility backend, and a fake for unit tests.

Some clusters still need xtables rules (tooling that reads ``iptables-save``,
kernels without nf_tables NAT). The payload replaces our own chains in one
``iptables-restore --noflush`` per family; the built-in chains only get our
jumps, added once. Nothing is ever flushed and then filled.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from egress_router.core import ruleset
from egress_router.kernel import errors

IPT_TIMEOUT = 30.0
_SAVE = {4: "iptables-save", 6: "ip6tables-save"}
_RESTORE = {4: "iptables-restore", 6: "ip6tables-restore"}


class IptablesError(errors.KernelError):
    """iptables-restore refused the payload (its table was not committed), or could not run."""

    default_kind = errors.Kind.IPTABLES_REFUSED


class Iptables(Protocol):
    """The xtables operations the engine needs."""

    def save(self, family: int, table: str) -> str: ...

    def restore(self, family: int, payload: str, *, test: bool = False) -> None: ...

    def delete_chains(self, family: int) -> None: ...


@dataclass
class FakeIptables:
    """Records payloads; ``saved`` is what ``save`` returns."""

    saved: dict[int, str] = field(default_factory=lambda: {4: "", 6: ""})
    restored: list[tuple[int, str]] = field(default_factory=list)
    tested: list[tuple[int, str]] = field(default_factory=list)
    fail: str | None = None

    def save(self, family: int, table: str) -> str:
        return self.saved.get(family, "")

    def restore(self, family: int, payload: str, *, test: bool = False) -> None:
        if self.fail is not None:
            raise IptablesError(self.fail)
        (self.tested if test else self.restored).append((family, payload))

    def delete_chains(self, family: int) -> None:
        return None


class IptablesCommand:
    """iptables-save / iptables-restore (and the ip6 variants) in the current namespace."""

    def _exec(self, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        binary = shutil.which(argv[0])
        if binary is None:
            raise IptablesError(
                f"cannot run {argv[0]!r}: not installed; install the iptables package "
                "or use EGRESS_ROUTER_BACKEND=nftables", errors.Kind.TOOL_MISSING,
            )
        try:
            return subprocess.run(
                [binary, *argv[1:]],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=IPT_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise IptablesError(
                f"cannot run {argv[0]}: no answer in {IPT_TIMEOUT:g}s", errors.Kind.TIMED_OUT
            ) from None
        except OSError as err:
            raise IptablesError(f"cannot run {argv[0]}: {err.strerror or err}") from None

    @staticmethod
    def _absent(family: int) -> bool:
        # A kernel without IPv6 (ipv6.disable=1): no ip6tables, and nothing of it to protect.
        return family == 6 and not Path("/proc/sys/net/ipv6").is_dir()

    def save(self, family: int, table: str) -> str:
        if self._absent(family):
            return ""
        done = self._exec([_SAVE[family], "-t", table])
        if done.returncode != 0:
            raise IptablesError(f"cannot read {table} table: {done.stderr.strip()}")
        return done.stdout

    def restore(self, family: int, payload: str, *, test: bool = False) -> None:
        if self._absent(family):
            return
        argv = [_RESTORE[family], "--noflush", "-w", "10"]
        if test:
            argv.append("--test")
        done = self._exec(argv, stdin=payload)
        if done.returncode != 0:
            verb = "check" if test else "apply"
            raise IptablesError(
                f"cannot {verb} the IPv{family} iptables rules: {done.stderr.strip()}"
            )

    def delete_chains(self, family: int) -> None:
        binary = _SAVE[family].replace("-save", "")
        for table, _builtin, ours in ruleset.IPT_JUMPS:
            # Succeeds only when the chain exists and is empty: a missing chain is fine.
            self._exec([binary, "-w", "10", "-t", table, "-X", ours])
