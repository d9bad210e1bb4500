"""Run nftables transactions (the ``nft`` binary), and a fake for unit tests.

The router never edits rules one by one: every change is a whole transaction
passed to ``nft -f``, first checked (``nft -c``, which the kernel validates
without committing) and then applied, so a failure leaves the previous
ruleset in place.
"""

from __future__ import annotations

import copy
import json
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from egress_router.core import listing, ruleset
from egress_router.kernel import errors

NFT_TIMEOUT = 30.0

_NETLINK_NETFILTER = 12
_NFT_MSG_GETGEN = (10 << 8) | 16  # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN
_NFT_MSG_NEWGEN = (10 << 8) | 15
_NFTA_GEN_ID = 1
_NLMSG = struct.Struct("=IHHII")


class NftError(errors.KernelError):
    """``nft`` refused a transaction (nothing of it was committed), or could not run."""

    default_kind = errors.Kind.NFT_REFUSED


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
    """nftables as a model of our table: each applied transaction changes it, as in the kernel.

    A whole replacement and an in-place update alike are applied to the model
    (`listing.apply_script`), and the listing is the model written back (`listing.dump`), so a
    test reads the whole table after any sequence of applies. ``applied`` and ``checked`` keep
    the scripts; ``fail`` makes every run raise (to test rollbacks).
    """

    applied: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    fail: str | None = None
    table: listing.Listing | None = None

    def run(self, script: str, *, check_only: bool = False) -> None:
        if self.fail is not None:
            raise NftError(self.fail)
        name = f"{ruleset.TABLE_FAMILY} {ruleset.TABLE}"
        try:
            after = listing.apply_script(copy.deepcopy(self.table), script, name)
        except (ValueError, KeyError) as err:  # what nft would refuse: nothing is committed
            raise NftError(f"cannot apply the transaction: {err}") from None
        if check_only:
            self.checked.append(script)
            return
        self.applied.append(script)
        self.table = after

    def list_table(self) -> dict[str, Any] | None:
        return {"script": self.applied[-1]} if self.table is not None and self.applied else None

    def list_table_text(self, *, stateless: bool = False) -> str | None:
        if self.table is None:
            return None
        text = listing.dump(self.table, f"{ruleset.TABLE_FAMILY} {ruleset.TABLE}")
        # As ``nft -s``: the same listing without counter values.
        return listing.strip_counters(text) if stateless else text

    def table_lines(self) -> Iterator[str]:
        return iter((self.list_table_text() or "").splitlines())


def is_installed(binary: str = "nft") -> bool:
    """Whether ``binary`` (``nft``) is on the PATH (CNI STATUS and ADD ask before anything else)."""
    return shutil.which(binary) is not None


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
                "or set EGRESS_ROUTER_BACKEND=iptables", errors.Kind.TOOL_MISSING,
            ) from None
        except subprocess.TimeoutExpired:
            raise NftError(
                f"cannot run nft: no answer within {NFT_TIMEOUT:g}s", errors.Kind.TIMED_OUT
            ) from None
        except OSError as err:
            raise NftError(f"cannot run {self._binary!r}: {err.strerror or err}") from None

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

    def table_lines(self) -> Iterator[str]:
        """``nft list table`` of our table, line by line as nft writes it (nothing if absent).

        For reading counters at every scrape without holding the whole listing.
        """
        try:
            proc = subprocess.Popen(
                [self._binary, "list", "table", ruleset.TABLE_FAMILY, ruleset.TABLE],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except FileNotFoundError:
            raise NftError(
                f"cannot run {self._binary!r}: not installed", errors.Kind.TOOL_MISSING
            ) from None
        except OSError as err:
            raise NftError(f"cannot run {self._binary!r}: {err.strerror or err}") from None
        assert proc.stdout is not None
        try:
            yield from proc.stdout
        finally:
            proc.stdout.close()
            try:
                proc.wait(NFT_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def generation() -> int | None:
    """The nftables generation of this network namespace, or None when it cannot be read.

    The kernel bumps it with every committed transaction, of any table (and
    iptables-nft commits are nftables transactions too). While it stays the
    same, nothing changed, so a drift check need not list a 10,000-element
    table (half a second of ``nft``) to know that. One netlink request.
    """
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER) as sock:
            sock.settimeout(2.0)
            body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)
            sock.send(_NLMSG.pack(_NLMSG.size + len(body), _NFT_MSG_GETGEN, 1, 1, 0) + body)
            data = sock.recv(4096)
    except OSError:
        return None
    if len(data) < _NLMSG.size + 4:
        return None
    length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data)
    if kind != _NFT_MSG_NEWGEN:
        return None
    offset = _NLMSG.size + 4  # nfgenmsg
    while offset + 4 <= min(length, len(data)):
        size, attr = struct.unpack_from("=HH", data, offset)
        if size < 4:
            break
        if attr & 0x3FFF == _NFTA_GEN_ID and size >= 8:
            generation: int = struct.unpack_from("!I", data, offset + 4)[0]
            return generation
        offset += (size + 3) & ~3
    return None
