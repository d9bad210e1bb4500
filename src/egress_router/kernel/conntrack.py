"""Cut the connections of removed rules, and count the live ones, through ctnetlink.

Replacing the ruleset does not touch established connections: their NAT
binding lives in the connection tracking table. That is what keeps a kept
rule's long-lived stream flowing across a reload, and also what would let a
connection of a *removed* rule keep using a destination that was taken away.
So after a reload the waiting container deletes the conntrack entries of every
removed rule (original destination port, NAT destination and its port). The
next packet of such a connection is then seen as new: refused (TCP reset) or
sent to the fallback, whose host answers with a reset, so the client learns at
once. (Until the cut, the forward chain already drops their packets: it lets
established redirected packets through only while their port is in the map.)

An edit may remove 10,000 rules, so the cut is one pass: one dump of the
table through a ctnetlink socket, matched here against the removed rules (a
set lookup per entry), then one delete message per matching entry, sent in
batches on the same socket. The ``conntrack`` tool would need one process
(and one dump of the whole table) per rule; pyroute2's conntrack module
would add about 20 MiB to the long-running process. The protocol is small:
``nlmsghdr`` + ``nfgenmsg`` + nested attributes, of which only the two tuples,
the status and the TCP state are read; a delete sends the original tuple's
attribute back as the kernel wrote it.

The live-connection count of the namespace comes from
``/proc/sys/net/netfilter/nf_conntrack_count``: one read, whatever the size.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from egress_router.core import config
from egress_router.kernel import errors

NETLINK_NETFILTER = 12
_NLMSG = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")
_ATTR = struct.Struct("=HH")
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_DUMP = 0x300
_CTNETLINK = 1 << 8  # NFNL_SUBSYS_CTNETLINK
_CT_GET = _CTNETLINK | 1
_CT_DELETE = _CTNETLINK | 2
_CTA_TUPLE_ORIG = 1
_CTA_TUPLE_REPLY = 2
_CTA_STATUS = 3
_CTA_PROTOINFO = 4
_CTA_TUPLE_IP = 1
_CTA_TUPLE_PROTO = 2
_CTA_PROTO_NUM = 1
_CTA_PROTO_SRC_PORT = 2
_CTA_PROTO_DST_PORT = 3
_CTA_PROTOINFO_TCP = 1
_CTA_PROTOINFO_TCP_STATE = 1
_IPS_DST_NAT = 1 << 5
_TCP_TIME_WAIT = 7
_TCP_CLOSE = 8
_PROTOS = {6: "tcp", 17: "udp", 132: "sctp"}
_NUMBERS = {name: number for number, name in _PROTOS.items()}
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_BATCH = 256  # delete messages per send
COUNT_PATH = Path("/proc/sys/net/netfilter/nf_conntrack_count")
TIMEOUT = 5.0


class ConntrackError(errors.KernelError):
    """The conntrack table could not be read or changed; the message says what and what to do."""

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


Target = tuple[int, str, int, config.IPAddress, int]  # family, proto, port, address, remote port


@dataclass(frozen=True)
class Cut:
    """Which flows an edit took away: removed rules, and removed fallbacks' unclaimed ports.

    ``targets`` are exact (family, protocol, local port, destination, remote
    port); a flow to one of ``fallbacks`` (family, address) is cut unless its
    (family, protocol, port) is one of ``kept`` (a rule of the new
    configuration now owns that port).
    """

    targets: frozenset[Target] = frozenset()
    fallbacks: frozenset[tuple[int, config.IPAddress]] = frozenset()
    kept: frozenset[tuple[int, str, int]] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.targets or self.fallbacks)

    def families(self) -> list[int]:
        return sorted({t[0] for t in self.targets} | {f[0] for f in self.fallbacks})

    def ports(self, family: int) -> frozenset[tuple[int, int]] | None:
        """(protocol number, local port) of every flow it may match (None: any port)."""
        if any(f[0] == family for f in self.fallbacks):
            return None
        return frozenset((_NUMBERS[t[1]], t[2]) for t in self.targets if t[0] == family)

    def matches(self, flow: Flow) -> bool:
        key = (flow.family, flow.proto, flow.port, flow.destination, flow.remote_port)
        if key in self.targets:
            return True
        return (flow.family, flow.destination) in self.fallbacks and (
            flow.family, flow.proto, flow.port
        ) not in self.kept


class Conntrack(Protocol):
    """The conntrack operations the waiting container needs."""

    def cut(self, selection: Cut) -> int:
        """Delete the entries of the flows ``selection`` matches; how many were deleted."""
        ...

    def flows(self, family: int) -> Iterator[Flow]: ...

    def count(self) -> int | None:
        """Entries in this namespace's table (None: unknown), without listing them."""
        ...


@dataclass
class FakeConntrack:
    """Records cuts; ``table`` is what `flows` yields."""

    table: list[Flow] = field(default_factory=list)
    cuts: list[Cut] = field(default_factory=list)

    def cut(self, selection: Cut) -> int:
        self.cuts.append(selection)
        before = len(self.table)
        self.table = [f for f in self.table if not selection.matches(f)]
        return before - len(self.table)

    def flows(self, family: int) -> Iterator[Flow]:
        return iter([f for f in self.table if f.family == family])

    def count(self) -> int | None:
        return len(self.table)


# ---------------------------------------------------------------------- the wire format


def _attrs(data: bytes | memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in ``data[start:end]``."""
    while start + 4 <= end:
        size, kind = _ATTR.unpack_from(data, start)
        if size < 4:
            return
        yield kind & 0x3FFF, start + 4, start + size
        start += (size + 3) & ~3


def _tuple(data: bytes | memoryview, start: int, end: int) -> tuple[bytes, bytes, int, int, int]:
    """(source, destination, protocol number, source port, destination port) of a tuple."""
    src = dst = b""
    proto = sport = dport = 0
    for kind, a, b in _attrs(data, start, end):
        if kind == _CTA_TUPLE_IP:
            for ip_kind, c, d in _attrs(data, a, b):
                if ip_kind in (1, 3):  # CTA_IP_V4_SRC, CTA_IP_V6_SRC
                    src = bytes(data[c:d])
                elif ip_kind in (2, 4):
                    dst = bytes(data[c:d])
        elif kind == _CTA_TUPLE_PROTO:
            for p_kind, c, _d in _attrs(data, a, b):
                if p_kind == _CTA_PROTO_NUM:
                    proto = data[c]
                elif p_kind == _CTA_PROTO_SRC_PORT:
                    sport = (data[c] << 8) | data[c + 1]
                elif p_kind == _CTA_PROTO_DST_PORT:
                    dport = (data[c] << 8) | data[c + 1]
    return src, dst, proto, sport, dport


def parse_entry(
    data: bytes | memoryview, start: int, end: int, family: int,
    ports: frozenset[tuple[int, int]] | None = None,
) -> tuple[Flow, bytes] | None:
    """The `Flow` of one ``IPCTNL_MSG_CT_NEW`` message body and its original-tuple attribute.

    None unless it is a redirected (DNAT) TCP, UDP or SCTP connection, and,
    given ``ports`` ((protocol number, local port) pairs), one to such a port:
    the cheap test first, since a cut looks at every entry of the table.
    ``start`` is where the attributes begin (after the nfgenmsg).
    """
    orig = reply = None
    status = 0
    tcp_state = -1
    for kind, a, b in _attrs(data, start, end):
        if kind == _CTA_STATUS:
            status = struct.unpack_from("!I", data, a)[0]
            if not status & _IPS_DST_NAT:
                return None  # the router's own traffic, the HTTP port
        elif kind == _CTA_TUPLE_ORIG:
            orig = (a, b)
        elif kind == _CTA_TUPLE_REPLY:
            reply = (a, b)
        elif kind == _CTA_PROTOINFO:
            for p_kind, c, d in _attrs(data, a, b):
                if p_kind == _CTA_PROTOINFO_TCP:
                    for t_kind, e, _f in _attrs(data, c, d):
                        if t_kind == _CTA_PROTOINFO_TCP_STATE:
                            tcp_state = data[e]
    if orig is None or reply is None or not status & _IPS_DST_NAT:
        return None
    o_src, _o_dst, proto, _o_sport, port = _tuple(data, *orig)
    if ports is not None and (proto, port) not in ports:
        return None
    r_src, r_dst, _r_proto, remote, _r_dport = _tuple(data, *reply)
    name = _PROTOS.get(proto)
    if name is None or not r_src:
        return None
    live = not (name == "tcp" and tcp_state in (_TCP_TIME_WAIT, _TCP_CLOSE))
    orig_raw = bytes(data[orig[0] - 4:orig[1]])  # the attribute, header included
    source = ipaddress.ip_address(r_dst) if r_dst and r_dst != o_src else None
    flow = Flow(family, name, port, ipaddress.ip_address(r_src), remote, live, source)
    return flow, orig_raw


def _message(kind: int, flags: int, seq: int, family: int, body: bytes = b"") -> bytes:
    nfgen = _NFGEN.pack(_AF[family], 0, 0)
    return _NLMSG.pack(_NLMSG.size + len(nfgen) + len(body), kind, flags, seq, 0) + nfgen + body


class CtNetlink:
    """The conntrack table of the current network namespace, through a ctnetlink socket."""

    def __init__(self, count_path: Path = COUNT_PATH) -> None:
        self._count_path = count_path

    @staticmethod
    def _socket() -> socket.socket:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as err:
            raise ConntrackError(f"cannot open a ctnetlink socket: {err}") from None
        sock.settimeout(TIMEOUT)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        return sock

    def _dump(
        self, sock: socket.socket, family: int, ports: frozenset[tuple[int, int]] | None = None
    ) -> Iterator[tuple[Flow, bytes]]:
        try:
            sock.send(_message(_CT_GET, _NLM_F_REQUEST | _NLM_F_DUMP, 1, family))
            while True:
                data = sock.recv(1 << 17)
                offset = 0
                while offset + _NLMSG.size <= len(data):
                    length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
                    if length < _NLMSG.size:
                        return
                    if kind == _NLMSG_DONE:
                        return
                    if kind == _NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, offset + _NLMSG.size)[0]
                        if code:
                            name = errno.errorcode.get(code, code)
                            raise ConntrackError(f"cannot list the conntrack table: {name}")
                        return
                    if kind & 0xFF == 0:  # IPCTNL_MSG_CT_NEW: one entry
                        start = offset + _NLMSG.size + _NFGEN.size
                        entry = parse_entry(data, start, offset + length, family, ports)
                        if entry is not None:
                            yield entry
                    offset += (length + 3) & ~3
        except TimeoutError:
            raise ConntrackError(
                f"cannot list the conntrack table: no answer in {TIMEOUT:g}s"
            ) from None
        except OSError as err:
            raise ConntrackError(f"cannot list the conntrack table: {err}") from None

    def flows(self, family: int) -> Iterator[Flow]:
        with self._socket() as sock:
            for flow, _raw in self._dump(sock, family):
                yield flow

    def cut(self, selection: Cut) -> int:
        cut = 0
        with self._socket() as sock:
            for family in selection.families():
                ports = selection.ports(family)
                doomed = [
                    raw for flow, raw in self._dump(sock, family, ports) if selection.matches(flow)
                ]
                for first in range(0, len(doomed), _BATCH):
                    cut += self._delete(sock, family, doomed[first:first + _BATCH], first)
        return cut

    def _delete(self, sock: socket.socket, family: int, tuples: list[bytes], seq: int) -> int:
        """Send one batch of deletes (one message each, acknowledged); how many succeeded."""
        flags = _NLM_F_REQUEST | _NLM_F_ACK
        batch = b"".join(
            _message(_CT_DELETE, flags, seq + 2 + i, family, raw) for i, raw in enumerate(tuples)
        )
        deleted = 0
        try:
            sock.send(batch)
            answered = 0
            while answered < len(tuples):
                data = sock.recv(1 << 16)
                offset = 0
                while offset + _NLMSG.size <= len(data):
                    length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
                    if length < _NLMSG.size:
                        break
                    if kind == _NLMSG_ERROR:
                        answered += 1
                        code = -struct.unpack_from("=i", data, offset + _NLMSG.size)[0]
                        if code == 0:
                            deleted += 1
                        elif code != errno.ENOENT:  # gone meanwhile: nothing to cut
                            raise ConntrackError(
                                "cannot delete conntrack entries: "
                                f"{errno.errorcode.get(code, code)}"
                            )
                    offset += (length + 3) & ~3
        except TimeoutError:
            raise ConntrackError(
                f"cannot delete conntrack entries: no answer in {TIMEOUT:g}s"
            ) from None
        except OSError as err:
            raise ConntrackError(f"cannot delete conntrack entries: {err}") from None
        return deleted

    def count(self) -> int | None:
        try:
            return int(self._count_path.read_text())
        except (OSError, ValueError):
            return None  # no conntrack module loaded yet: nothing tracked


# The name `status` and older callers know.
ConntrackTool = CtNetlink


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
