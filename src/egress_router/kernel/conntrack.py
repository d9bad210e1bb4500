"""Cut the connections of removed rules, and count the live ones, through conntrack.

Replacing the ruleset does not touch established connections: their NAT
binding lives in the connection tracking table, and the forward policy
accepts established packets. That is what keeps a kept rule's long-lived
stream flowing across a reload, and also what would let a connection of a
*removed* rule keep using a destination that was taken away. So after a
reload the waiting container deletes the conntrack entries of every removed
rule (original destination port, NAT destination and its port). The next
packet of such a connection is then seen as new: refused (TCP reset) or sent
to the fallback, whose host answers with a reset, so the client learns at once.

The ``conntrack`` tool (conntrack-tools) does the work rather than pyroute2's
conntrack support, which would add about 20 MiB to the long-running process.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from egress_router.core import config
from egress_router.kernel import errors

log = logging.getLogger(__name__)

CONNTRACK_TIMEOUT = 30.0
_FAMILY = {4: "ipv4", 6: "ipv6"}
_PAIR = re.compile(r"(src|dst|sport|dport)=(\S+)")
_STATE = re.compile(r"^\S+\s+\d+\s+\d+\s+([A-Z_]+)\s")
# Entries in these TCP states are on their way out, not live connections.
_ENDING = frozenset({"TIME_WAIT", "CLOSE"})


class ConntrackError(errors.KernelError):
    """The conntrack tool failed; the message says what and what to do."""

    default_kind = errors.Kind.CONNTRACK_FAILED


@dataclass(frozen=True)
class Flow:
    """One tracked connection that was redirected (DNAT), as the router sees it."""

    family: int
    proto: str
    port: int  # the router's port the client dialled
    destination: config.IPAddress  # where the router sent it
    remote_port: int
    live: bool  # False for TCP entries in TIME_WAIT or CLOSE
    source: config.IPAddress | None = None  # the address SNAT gave it (None: not source-NATed)


def parse_flow(line: str, family: int) -> Flow | None:
    """A `Flow` from one ``conntrack -L`` line, None unless it is a redirected TCP/UDP/SCTP flow."""
    words = line.split()
    if len(words) < 3 or words[0] not in ("tcp", "udp", "sctp"):
        return None
    pairs = _PAIR.findall(line)
    orig = {k: v for k, v in pairs[:4]}
    reply = {k: v for k, v in pairs[4:8]}
    try:
        orig_dst = ipaddress.ip_address(orig["dst"])
        reply_src = ipaddress.ip_address(reply["src"])
        port = int(orig["dport"])
        remote = int(reply["sport"])
    except (KeyError, ValueError):
        return None
    if orig_dst == reply_src and port == remote:
        return None  # not redirected (the router's own traffic, or the HTTP port)
    state = _STATE.match(line)
    live = not (words[0] == "tcp" and state is not None and state.group(1) in _ENDING)
    source = None
    if "dst" in reply and reply["dst"] != orig.get("src"):
        try:
            source = ipaddress.ip_address(reply["dst"])
        except ValueError:
            source = None
    return Flow(family, words[0], port, reply_src, remote, live, source)


class Conntrack(Protocol):
    """The conntrack operations the waiting container needs."""

    def cut(self, family: int, proto: config.Proto, port: int, address: config.IPAddress,
            remote_port: int) -> int:
        """Delete the entries of connections from local ``port`` to ``address:remote_port``."""
        ...

    def flows(self, family: int) -> Iterator[Flow]: ...


@dataclass
class FakeConntrack:
    """Records cuts; ``table`` is what `flows` yields."""

    table: list[Flow] = field(default_factory=list)
    cuts: list[tuple[int, str, int, str, int]] = field(default_factory=list)

    def cut(self, family: int, proto: config.Proto, port: int, address: config.IPAddress,
            remote_port: int) -> int:
        self.cuts.append((family, proto.value, port, str(address), remote_port))
        before = len(self.table)
        self.table = [
            f for f in self.table
            if (f.family, f.proto, f.port, f.destination, f.remote_port)
            != (family, proto.value, port, address, remote_port)
        ]
        return before - len(self.table)

    def flows(self, family: int) -> Iterator[Flow]:
        return iter([f for f in self.table if f.family == family])


class ConntrackTool:
    """``conntrack`` (conntrack-tools) in the current network namespace."""

    def __init__(self, binary: str = "conntrack") -> None:
        self._binary = shutil.which(binary) or binary

    def _missing(self) -> ConntrackError:
        return ConntrackError(
            f"cannot run {self._binary!r}: not installed; install conntrack-tools (Debian: "
            "conntrack) in the image, or connections of removed rules stay open until they end"
        )

    def cut(self, family: int, proto: config.Proto, port: int, address: config.IPAddress,
            remote_port: int) -> int:
        argv = [
            self._binary, "-D", "-f", _FAMILY[family], "-p", proto.value,
            "--orig-port-dst", str(port), "--dst-nat", str(address),
            "--reply-port-src", str(remote_port),
        ]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=CONNTRACK_TIMEOUT, check=False
            )
        except FileNotFoundError:
            raise self._missing() from None
        except subprocess.TimeoutExpired:
            raise ConntrackError(
                f"cannot delete conntrack entries: no answer in {CONNTRACK_TIMEOUT:g}s"
            ) from None
        found = re.search(r"(\d+) flow entries have been deleted", done.stderr)
        if found is None:
            raise ConntrackError(
                f"cannot delete conntrack entries of {proto.value} port {port}: "
                f"{done.stderr.strip() or f'exit status {done.returncode}'}"
            )
        return int(found.group(1))  # exit status 1 just means none matched

    def flows(self, family: int) -> Iterator[Flow]:
        try:
            proc = subprocess.Popen(
                [self._binary, "-L", "-f", _FAMILY[family]],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except FileNotFoundError:
            raise self._missing() from None
        assert proc.stdout is not None
        try:
            # Line by line: a busy router may track hundreds of thousands of flows.
            for line in proc.stdout:
                flow = parse_flow(line, family)
                if flow is not None:
                    yield flow
        finally:
            proc.stdout.close()
            try:
                proc.wait(CONNTRACK_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass(frozen=True)
class Stats:
    """The kernel's conntrack statistics for this network namespace, summed over CPUs."""

    counters: dict[str, int]  # insert_failed, drop, early_drop, ... (/proc/net/stat/nf_conntrack)
    entries: int  # nf_conntrack_count
    maximum: int | None  # nf_conntrack_max (None when unreadable)


def read_stats(proc: Path = Path("/proc")) -> Stats | None:
    """Read conntrack's counters without listing a single connection (None: no conntrack).

    ``/proc/net/stat/nf_conntrack`` has one line of hexadecimal columns per CPU under a
    header naming them; it exists per network namespace once conntrack is in use there.
    """
    try:
        text = (proc / "net/stat/nf_conntrack").read_text()
    except OSError:
        return None
    lines = text.split("\n")
    names = lines[0].split()
    totals = dict.fromkeys(names, 0)
    for line in lines[1:]:
        values = line.split()
        if len(values) != len(names):
            continue
        for name, value in zip(names, values, strict=True):
            totals[name] += int(value, 16)
    totals.pop("entries", None)  # per CPU a copy of the global count, not a counter

    def number(name: str) -> int | None:
        try:
            return int((proc / "sys/net/netfilter" / name).read_text())
        except (OSError, ValueError):
            return None

    return Stats(totals, number("nf_conntrack_count") or 0, number("nf_conntrack_max"))
