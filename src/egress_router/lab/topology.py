"""The lab's world as data: the address plan, the names of namespaces and links, `Lab`.

Everything the other lab modules (and the tests) agree on before anything runs: which
addresses the pod network, the physical network and the destinations use (the test address
plan of docs/architecture.md), what each namespace and interface is called, where a lab keeps
its state, and the seed configuration the demo applies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
)
from pathlib import Path
from typing import Any

from egress_router.core import state

# --------------------------------------------------------------------------- address plan
# The test address plan (docs/architecture.md, "Tests"); only ever configured inside the lab's
# namespaces.

POD_NET4 = IPv4Network("10.128.0.0/24")
POD_NET6 = IPv6Network("fd00:128::/64")
NODE_POD4 = IPv4Interface("10.128.0.1/24")  # cbr0, the pods' default gateway
NODE_POD6 = IPv6Interface("fd00:128::1/64")
ROUTER_POD4 = IPv4Interface("10.128.0.2/24")  # router pod eth0, what clients dial
ROUTER_POD6 = IPv6Interface("fd00:128::2/64")
CLIENT_POD4 = IPv4Interface("10.128.0.10/24")
CLIENT_POD6 = IPv6Interface("fd00:128::10/64")

PHYS_NET4 = IPv4Network("192.168.12.0/24")
PHYS_NET6 = IPv6Network("2001:db8:12::/64")
NODE_PHYS4 = IPv4Interface("192.168.12.10/24")  # node ens3
NODE_PHYS6 = IPv6Interface("2001:db8:12::10/64")
GATEWAY4 = IPv4Interface("192.168.12.1/24")  # gw lan0, the node's default gateway
GATEWAY6 = IPv6Interface("2001:db8:12::1/64")
EGRESS_SOURCE4 = IPv4Address("192.168.12.99")  # reserved source, configured by the product
EGRESS_SOURCE6 = IPv6Address("2001:db8:12::99")

EXT_NET4 = IPv4Network("203.0.113.0/24")
EXT_NET6 = IPv6Network("2001:db8:113::/64")
EXT_GATEWAY4 = IPv4Interface("203.0.113.1/24")  # gw wan0
EXT_GATEWAY6 = IPv6Interface("2001:db8:113::1/64")
DESTINATIONS4 = (
    IPv4Interface("203.0.113.25/24"),
    IPv4Interface("203.0.113.26/24"),
    IPv4Interface("203.0.113.27/24"),
)
DESTINATIONS6 = (
    IPv6Interface("2001:db8:113::25/64"),
    IPv6Interface("2001:db8:113::26/64"),
    IPv6Interface("2001:db8:113::27/64"),
)

DEFAULT_ENDPOINTS: tuple[str, ...] = (
    "tcp:203.0.113.25:80",
    "tcp:203.0.113.26:80",
    "tcp:203.0.113.26:443",
    "tcp:203.0.113.27:9000",
    "tcp:203.0.113.27:7000",
    "udp:203.0.113.25:53",
    "udp:203.0.113.27:9000",
    "tcp:[2001:db8:113::25]:80",
    "tcp:[2001:db8:113::26]:80",
    "tcp:[2001:db8:113::26]:443",
    "tcp:[2001:db8:113::27]:9000",
    "udp:[2001:db8:113::25]:53",
)

# --------------------------------------------------------------------------- names

ROLES = ("node", "client", "router", "gw", "ext")
BRIDGE = "cbr0"
NODE_NIC = "ens3"
POD_IF = "eth0"
MACVLAN_IF = "macvlan0"
MACVLAN_TMP = "mvtmp0"  # name in the node namespace before the move
CLIENT_VETH = "veth-client"  # node-side peers, enslaved to cbr0
ROUTER_VETH = "veth-router"
GW_LAN = "lan0"
GW_WAN = "wan0"
EXT_IF = "eth0"
DEFAULT_MTU = 1500

STATE_ROOT = Path("/run/egress-router-lab")
OWNER_FILE = "owner"
SERVER_PID_FILE = "server.pid"
SERVER_READY_FILE = "server.ready"
SERVER_OUTPUT_FILE = "server.out"
SERVED_LOG_FILE = "served.jsonl"

PREFIX_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,22}[a-z0-9])?$")
NO_MACVLAN = ("", "false")

IP_TIMEOUT = 10.0
SERVER_READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.02

NO_DAD = {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"}
FORWARDING_SYSCTLS = tuple(state.forwarding_sysctl(family) for family in (4, 6))
# Only the gateway routes. The node does not (see the module docstring); the
# router pod starts without forwarding, so the product has to enable it.
FORWARDING_ROLES = ("gw",)


class LabError(RuntimeError):
    """The lab could not be built, used or removed; the message says why."""


# --------------------------------------------------------------------------- the lab


@dataclass(frozen=True)
class Lab:
    """Handle on a lab: its prefix, and everything derived from it."""

    prefix: str

    def __post_init__(self) -> None:
        if not PREFIX_RE.match(self.prefix):
            raise LabError(
                f"cannot use lab prefix {self.prefix!r}: use 1-24 characters a-z, 0-9 and '-',"
                " starting with a letter"
            )

    @property
    def node(self) -> str:
        return f"{self.prefix}-node"

    @property
    def client(self) -> str:
        return f"{self.prefix}-client"

    @property
    def router(self) -> str:
        return f"{self.prefix}-router"

    @property
    def gw(self) -> str:
        return f"{self.prefix}-gw"

    @property
    def ext(self) -> str:
        return f"{self.prefix}-ext"

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(f"{self.prefix}-{role}" for role in ROLES)

    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / self.prefix

    @property
    def served_log(self) -> Path:
        return self.state_dir / SERVED_LOG_FILE


@dataclass(frozen=True)
class DialResult:
    """What one dial got back: the server's reply, or why there was none.

    ``error`` is None on success, else ``refused``, ``timeout``,
    ``unreachable``, ``reset``, ``closed``, ``bad-reply`` or an errno name.
    """

    proto: str
    target: str
    error: str | None = None
    detail: str = ""
    server: str | None = None
    peer: str | None = None
    data: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def server_ip(self) -> IPv4Address | IPv6Address | None:
        """The destination that answered, without its port."""
        return _host_of(self.server)

    @property
    def peer_ip(self) -> IPv4Address | IPv6Address | None:
        """The source address the destination saw, without its port."""
        return _host_of(self.peer)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], proto: str, target: str) -> DialResult:
        if obj.get("error"):
            return cls(proto, target, error=str(obj["error"]), detail=str(obj.get("detail", "")))
        return cls(
            proto,
            target,
            server=str(obj.get("server")),
            peer=str(obj.get("peer")),
            data=str(obj.get("data")),
        )


def _host_of(hostport: str | None) -> IPv4Address | IPv6Address | None:
    if not hostport:
        return None
    host = hostport.rpartition(":")[0].strip("[]")
    try:
        return ip_address(host)
    except ValueError:
        return None


# --------------------------------------------------------------------------- the demo

DEMO_ENV = {
    "EGRESS_SOURCE": f"{EGRESS_SOURCE4}/{PHYS_NET4.prefixlen}",
    "EGRESS_GATEWAY": str(GATEWAY4.ip),
    "EGRESS_DESTINATION": "\n".join(
        (
            "80 tcp 203.0.113.25",
            "8080 tcp 203.0.113.26 80",
            "8443 tcp 203.0.113.26 443",
            "53 udp 203.0.113.25",
            "203.0.113.27",
        )
    ),
    "EGRESS_ROUTER_MODE": "init",
}

# (proto, port dialled at the router, destination expected to answer)
DEMO_DIALS: tuple[tuple[str, int, str], ...] = (
    ("tcp", 80, "203.0.113.25:80"),
    ("tcp", 8080, "203.0.113.26:80"),
    ("tcp", 8443, "203.0.113.26:443"),
    ("tcp", 9000, "203.0.113.27:9000"),
    ("udp", 53, "203.0.113.25:53"),
    ("udp", 9000, "203.0.113.27:9000"),
)
