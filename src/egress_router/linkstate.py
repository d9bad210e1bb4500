"""Read the router's links, addresses and routes back from the kernel, and find drift.

The waiting container checks every few seconds that the kernel still holds
what `plan.plan_interfaces` asked for: someone may have taken the macvlan
down, deleted the default route or the reserved address. pyroute2, which
executes the plan, costs about 20 MiB of resident memory once imported,
while reading three netlink dumps needs one socket and `struct`. So this
module speaks just enough rtnetlink to *read* (``RTM_GETLINK``,
``RTM_GETADDR`` and ``RTM_GETROUTE`` dumps) and nothing to write.

`CheckedNetlink` puts the two together behind the engine's `netlink.Netlink`
protocol: a step that already holds is skipped, and a step that must change
is executed by `netlink.PyrouteNetlink` in a short-lived child process
(``python -m egress_router.linkstate``), so the long-running process never
loads pyroute2 at all. Changes are rare (start-up, repairs); a child costs
a few tenths of a second each time, and nothing in between.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egress_router import config, netlink, plan

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_GETROUTE = 26
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10
IFF_UP = 0x1
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_TABLE = 15
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
MAIN_TABLE = 254

_NLMSG = struct.Struct("=IHHII")
_RTATTR = struct.Struct("=HH")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_VERSION = {socket.AF_INET: 4, socket.AF_INET6: 6}
_DUMP_ATTEMPTS = 3
_RECV_SIZE = 65536


class ReadError(OSError):
    """The kernel did not answer a netlink dump (the message says which)."""


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    up: bool
    mac: str


@dataclass(frozen=True)
class Address:
    index: int
    interface: config.IPInterface
    scope: int


@dataclass(frozen=True)
class Route:
    family: int
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: config.IPAddress | None
    oif: int | None
    table: int
    kind: int


@dataclass(frozen=True)
class Snapshot:
    """Links, addresses and main-table routes of the current network namespace."""

    links: tuple[Link, ...]
    addresses: tuple[Address, ...]
    routes: tuple[Route, ...]

    def link(self, name: str) -> Link | None:
        return next((link for link in self.links if link.name == name), None)


def _attributes(data: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            return
        yield kind & 0x3FFF, data[offset + _RTATTR.size : offset + length]
        offset += (length + 3) & ~3


def parse_messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, flags, payload) of each netlink message in one datagram."""
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            return
        yield kind, flags, data[offset + _NLMSG.size : offset + length]
        offset += (length + 3) & ~3


def parse_link(payload: bytes) -> Link:
    _family, _type, index, flags, _change = _IFINFO.unpack_from(payload)
    name = ""
    mac = ""
    for kind, value in _attributes(payload, _IFINFO.size):
        if kind == IFLA_IFNAME:
            name = value.split(b"\0", 1)[0].decode(errors="replace")
        elif kind == IFLA_ADDRESS:
            mac = ":".join(f"{b:02x}" for b in value)
    return Link(index, name, bool(flags & IFF_UP), mac)


def parse_address(payload: bytes) -> Address | None:
    family, prefixlen, _flags, scope, index = _IFADDR.unpack_from(payload)
    if family not in _VERSION:
        return None
    found: dict[int, bytes] = dict(_attributes(payload, _IFADDR.size))
    # IPv4 point-to-point links put the peer in IFA_ADDRESS; IFA_LOCAL is ours.
    raw = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
    if raw is None:
        return None
    address = ipaddress.ip_address(raw)
    return Address(index, ipaddress.ip_interface(f"{address}/{prefixlen}"), scope)


def parse_route(payload: bytes) -> Route | None:
    family, dst_len, _src, _tos, table, _proto, _scope, kind, _flags = _RTMSG.unpack_from(payload)
    if family not in _VERSION:
        return None
    found: dict[int, bytes] = dict(_attributes(payload, _RTMSG.size))
    if RTA_TABLE in found:
        table = struct.unpack("=I", found[RTA_TABLE])[0]
    dst_raw = found.get(RTA_DST)
    version = _VERSION[family]
    base = ipaddress.ip_address(dst_raw) if dst_raw else ipaddress.ip_address(
        "0.0.0.0" if version == 4 else "::"
    )
    gateway = ipaddress.ip_address(found[RTA_GATEWAY]) if RTA_GATEWAY in found else None
    oif = struct.unpack("=i", found[RTA_OIF])[0] if RTA_OIF in found else None
    return Route(
        version, ipaddress.ip_network(f"{base}/{dst_len}"), gateway, oif, table, kind
    )


def _dump(sock: socket.socket, kind: int, body: bytes, seq: int) -> list[tuple[int, bytes]]:
    request = _NLMSG.pack(_NLMSG.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    for _attempt in range(_DUMP_ATTEMPTS):
        sock.send(request + body)
        messages: list[tuple[int, bytes]] = []
        interrupted = False
        done = False
        while not done:
            data = sock.recv(_RECV_SIZE)
            if not data:
                raise ReadError(errno.EIO, "netlink socket closed during a dump")
            for msg_type, flags, payload in parse_messages(data):
                interrupted |= bool(flags & NLM_F_DUMP_INTR)
                if msg_type == NLMSG_DONE:
                    done = True
                    break
                if msg_type == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise ReadError(code, f"netlink dump refused: {os.strerror(code)}")
                    continue
                messages.append((msg_type, payload))
        if not interrupted:
            return messages
        seq += 1
        request = _NLMSG.pack(_NLMSG.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    raise ReadError(errno.EAGAIN, "netlink dump kept changing; try again")


def read_snapshot() -> Snapshot:
    """Dump links, addresses and main-table routes of the current network namespace."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
            sock.settimeout(5.0)
            sock.bind((0, 0))
            links = [
                parse_link(p)
                for t, p in _dump(sock, RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0), 1)
                if t == RTM_NEWLINK
            ]
            addresses = [
                a
                for t, p in _dump(sock, RTM_GETADDR, _IFADDR.pack(0, 0, 0, 0, 0), 2)
                if t == RTM_NEWADDR and (a := parse_address(p)) is not None
            ]
            routes = [
                r
                for family in (socket.AF_INET, socket.AF_INET6)
                for t, p in _dump(
                    sock, RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0), 3 + family
                )
                if t == RTM_NEWROUTE
                and (r := parse_route(p)) is not None
                and r.table == MAIN_TABLE
            ]
    except ReadError:
        raise
    except OSError as err:
        raise ReadError(
            err.errno or errno.EIO, f"cannot read links, addresses and routes: {err}"
        ) from None
    return Snapshot(tuple(links), tuple(addresses), tuple(routes))


def _forwarding(family: int) -> bool:
    path = (
        Path("/proc/sys/net/ipv4/ip_forward")
        if family == 4
        else Path("/proc/sys/net/ipv6/conf/all/forwarding")
    )
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return False


def problem(step: plan.Step, snapshot: Snapshot) -> str | None:
    """Why ``step`` does not hold in ``snapshot`` (None when it does)."""
    if isinstance(step, plan.EnableForwarding):
        return None if _forwarding(step.family) else f"{step.sysctl} is not 1"
    link = snapshot.link(step.ifname)
    if link is None:
        return f"interface {step.ifname} does not exist"
    if isinstance(step, plan.LinkUp):
        return None if link.up else f"interface {step.ifname} is down"
    if isinstance(step, plan.SetAddress):
        wanted = step.interface
        present = [
            a.interface
            for a in snapshot.addresses
            if a.index == link.index
            and a.interface.version == wanted.version
            and a.scope == RT_SCOPE_UNIVERSE
        ]
        if wanted not in present:
            return f"address {wanted} is missing on {step.ifname}"
        extra = [str(a) for a in present if a != wanted]
        return f"{step.ifname} has other addresses: {', '.join(extra)}" if extra else None
    return _route_problem(step, link, snapshot)


def _route_problem(step: plan.SetRoute, link: Link, snapshot: Snapshot) -> str | None:
    family = step.destination.version
    if step.is_default:
        defaults = [
            r
            for r in snapshot.routes
            if r.family == family and r.dst.prefixlen == 0 and r.kind == RTN_UNICAST
        ]
        good = [r for r in defaults if r.gateway == step.gateway and r.oif == link.index]
        if not good:
            return f"no IPv{family} default route via {step.gateway} dev {step.ifname}"
        if len(defaults) > 1:
            return f"{len(defaults) - 1} other IPv{family} default route(s)"
        return None
    found = any(
        r.dst == step.destination and r.oif == link.index and r.gateway == step.gateway
        for r in snapshot.routes
    )
    return None if found else f"route {step.destination} dev {step.ifname} is missing"


def drift(cfg: config.Config, snapshot: Snapshot | None = None) -> list[tuple[plan.Step, str]]:
    """The steps of the interface plan that the kernel does not hold, each with the reason."""
    snapshot = snapshot if snapshot is not None else read_snapshot()
    found: list[tuple[plan.Step, str]] = []
    for step in plan.plan_interfaces(cfg):
        reason = problem(step, snapshot)
        if reason is not None:
            found.append((step, reason))
    return found


def encode_step(step: plan.Step) -> dict[str, Any]:
    """A plan step as JSON-able data (for the child process)."""
    if isinstance(step, plan.EnableForwarding):
        return {"step": "forwarding", "family": step.family}
    if isinstance(step, plan.LinkUp):
        return {"step": "link", "ifname": step.ifname}
    if isinstance(step, plan.SetAddress):
        return {"step": "address", "ifname": step.ifname, "interface": str(step.interface)}
    gateway = None if step.gateway is None else str(step.gateway)
    return {"step": "route", "ifname": step.ifname, "destination": str(step.destination),
            "gateway": gateway}


def decode_step(data: dict[str, Any]) -> plan.Step:
    """The inverse of `encode_step`."""
    kind = data["step"]
    if kind == "forwarding":
        return plan.EnableForwarding(int(data["family"]))
    if kind == "link":
        return plan.LinkUp(str(data["ifname"]))
    if kind == "address":
        return plan.SetAddress(str(data["ifname"]), ipaddress.ip_interface(data["interface"]))
    gateway = data.get("gateway")
    return plan.SetRoute(
        str(data["ifname"]),
        ipaddress.ip_network(data["destination"]),
        None if gateway is None else ipaddress.ip_address(gateway),
    )


CHILD_TIMEOUT = 60.0


def apply_in_child(steps: Sequence[plan.Step]) -> None:
    """Execute ``steps`` in order through pyroute2 in a child process (same namespace).

    Raises `netlink.KernelRefusedError` with the child's message when a step
    fails; the steps after it are not attempted.
    """
    if not steps:
        return
    payload = json.dumps([encode_step(s) for s in steps])
    try:
        done = subprocess.run(
            [sys.executable, "-m", "egress_router.linkstate"],
            input=payload,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise netlink.KernelRefusedError(
            f"cannot run the interface helper ({sys.executable} -m egress_router.linkstate): {err}"
        ) from None
    if done.returncode != 0:
        message = done.stderr.strip().splitlines()
        raise netlink.KernelRefusedError(
            message[-1] if message else f"interface helper exit status {done.returncode}"
        )


def main() -> int:
    """The child: read steps as JSON on stdin, execute them, report the first failure."""
    writer = netlink.PyrouteNetlink()
    try:
        for data in json.load(sys.stdin):
            writer.apply(decode_step(data))
    except (netlink.KernelRefusedError, ValueError, KeyError) as err:
        print(err, file=sys.stderr)
        return 3
    return 0


class CheckedNetlink:
    """The engine's `netlink.Netlink`: reads here, changes through pyroute2 in a child."""

    def has_link(self, ifname: str) -> bool:
        return read_snapshot().link(ifname) is not None

    def link_info(self, ifname: str) -> tuple[int, str]:
        link = read_snapshot().link(ifname)
        if link is None:
            raise netlink.KernelRefusedError(
                f"cannot find interface {ifname!r} in this network namespace; "
                "check EGRESS_INTERFACE / EGRESS_POD_INTERFACE"
            )
        return link.index, link.mac

    def apply(self, step: plan.Step) -> None:
        snapshot = read_snapshot()
        if problem(step, snapshot) is None:
            return
        if not isinstance(step, plan.EnableForwarding) and snapshot.link(step.ifname) is None:
            raise netlink.KernelRefusedError(
                f"cannot {step.describe()}: interface {step.ifname} does not exist in this "
                "network namespace; the platform (or the CNI plugin) has to create it again"
            )
        if isinstance(step, plan.EnableForwarding):
            netlink.PyrouteNetlink().apply(step)  # a /proc write: no pyroute2 involved
            return
        apply_in_child([step])

    def prepare(self, steps: Sequence[plan.Step]) -> None:
        """Bring every drifted step but forwarding in place at once (one child).

        Forwarding is left to the engine, which switches it on only after the
        ruleset is in place.
        """
        snapshot = read_snapshot()
        apply_in_child([
            step for step in steps
            if not isinstance(step, plan.EnableForwarding)
            and snapshot.link(step.ifname) is not None  # a missing one: the engine says so
            and problem(step, snapshot) is not None
        ])


if __name__ == "__main__":
    sys.exit(main())
