"""Run nftables transactions (the ``nft`` binary), and a fake for unit tests.

The router never edits rules one by one: every change is a whole transaction
passed to ``nft -f``, first checked (``nft -c``, which the kernel validates
without committing) and then applied, so a failure leaves the previous
ruleset in place.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any, Protocol

from egress_router import ruleset

NFT_TIMEOUT = 30.0


class NftError(RuntimeError):
    """``nft`` refused a transaction; nothing of it was committed."""


class Nft(Protocol):
    """The nftables operations the engine needs."""

    def run(self, script: str, *, check_only: bool = False) -> None: ...

    def list_table(self) -> dict[str, Any] | None:
        """``nft -j list table`` of our table, or None when it does not exist."""
        ...

    def list_table_text(self, *, stateless: bool = False) -> str | None:
        """``nft list table`` of our table as text (``stateless``: ``-s``), or None."""
        ...


@dataclass
class FakeNft:
    """Keeps the last applied script; ``fail`` makes every run raise (to test rollbacks)."""

    applied: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    fail: str | None = None

    def run(self, script: str, *, check_only: bool = False) -> None:
        if self.fail is not None:
            raise NftError(self.fail)
        (self.checked if check_only else self.applied).append(script)

    def list_table(self) -> dict[str, Any] | None:
        return {"script": self.applied[-1]} if self.applied else None

    def list_table_text(self, *, stateless: bool = False) -> str | None:
        return self.applied[-1] if self.applied else None


class NftCommand:
    """The ``nft`` binary in the current network namespace."""

    def __init__(self, binary: str = "nft") -> None:
        found = shutil.which(binary)
        self._binary = found or binary

    def _exec(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self._binary, *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=NFT_TIMEOUT,
                check=False,
            )
        except FileNotFoundError:
            raise NftError(
                f"cannot run {self._binary!r}: not installed; install the nftables package "
                "or set EGRESS_ROUTER_BACKEND=iptables"
            ) from None
        except subprocess.TimeoutExpired:
            raise NftError(f"cannot run nft: no answer within {NFT_TIMEOUT:g}s") from None

    def run(self, script: str, *, check_only: bool = False) -> None:
        args = ["-c", "-f", "-"] if check_only else ["-f", "-"]
        done = self._exec(args, stdin=script)
        if done.returncode != 0:
            verb = "check" if check_only else "apply"
            raise NftError(f"cannot {verb} the nftables ruleset: {done.stderr.strip()}")

    def list_table(self) -> dict[str, Any] | None:
        done = self._exec(["-j", "list", "table", ruleset.TABLE_FAMILY, ruleset.TABLE])
        if done.returncode != 0:
            return None
        parsed: dict[str, Any] = json.loads(done.stdout)
        return parsed

    def list_table_text(self, *, stateless: bool = False) -> str | None:
        """``nft list table`` of our table as text (``stateless``: without counter values).

        Text rather than JSON: for 10,000 rules it is a few hundred kilobytes
        of one string instead of tens of thousands of Python objects, which
        matters to the long-running ``wait`` process that reads it every few
        seconds. None when the table does not exist.
        """
        args = ["-s"] if stateless else []
        done = self._exec([*args, "list", "table", ruleset.TABLE_FAMILY, ruleset.TABLE])
        if done.returncode != 0:
            if "No such file or directory" in done.stderr:
                return None
            raise NftError(f"cannot list the nftables table: {done.stderr.strip()}")
        return done.stdout
