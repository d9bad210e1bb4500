"""Active/standby HA, the pure part: the variables, the advert source, keepalived's config.

Two replicas of one Deployment share one configuration; exactly one of them
holds the reserved address(es). Debian's keepalived (VRRPv3) decides which:
a trusted, long-lived implementation of an election that must be right, not
something to re-invent. This module knows everything about it that needs no
kernel: parsing ``EGRESS_ROUTER_HA``/``EGRESS_HA_VRID``, deriving the
per-replica link-local advert source from the interface's MAC (identical
configuration, yet unique addresses on the L2), rendering keepalived's
configuration, and reading what keepalived and its peers say (notify FIFO
lines, VRRP advertisements).

Why a link-local advert source and not the reserved address itself: the
standby must keep an IPv4 address on the egress interface, because removing
the last one flushes every IPv4 route on it (the default route must survive
a standby period), and keepalived without an IPv4 address stays in FAULT.
And two masters advertising from the same address (a healed partition) can
never tell who wins; distinct sources break the tie by address (RFC 9568).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from egress_router.core import config
from egress_router.core.config.environment import check_ha_sources as check_sources
from egress_router.core.config.settings import (
    ADVERT_INTERVAL,
    LINK_LOCAL,
    PRIORITY,
    HAMode,
    Settings,
    parse_mode,
    parse_settings,
    parse_vrid,
)
from egress_router.core.config.variables import ENV_HA, ENV_VRID
from egress_router.core.digest import sha256

# The HA variables and settings are parsed with the rest of the configuration
# (core/config/settings.py); they are named here too, where the rest of HA is.
__all__ = [
    "ADVERT_INTERVAL",
    "CANDIDATES",
    "CLASH_WINDOW",
    "ENV_HA",
    "ENV_VRID",
    "INSTANCE",
    "LINK_LOCAL",
    "PRIORITY",
    "VRRP_GROUP4",
    "VRRP_PROTO",
    "Advert",
    "HAMode",
    "Notice",
    "Paths",
    "Role",
    "Settings",
    "advert_candidates",
    "check_sources",
    "clash",
    "clash_error",
    "describe",
    "keepalived_argv",
    "parse_advert",
    "parse_mac",
    "parse_mode",
    "parse_notify",
    "parse_settings",
    "parse_vrid",
    "render_keepalived",
]

INSTANCE = "egress_router"
VRRP_PROTO = 112
VRRP_GROUP4 = ipaddress.IPv4Address("224.0.0.18")
CANDIDATES = 8  # link-local addresses tried in turn when a probe finds one taken
CLASH_WINDOW = 0.35  # seconds of listening for another group's adverts: > 3 of a 0.1 s pair


class Role(enum.Enum):
    """What this replica is doing, as ``/readyz``, ``status`` and metrics report it."""

    STARTING = "starting"  # keepalived not (yet) reporting a state
    ACTIVE = "active"  # holds and announces the reserved address(es)
    STANDBY = "standby"  # data path ready, no address; takes over when the active falls silent
    FAULT = "fault"  # keepalived cannot take part (interface down, no IPv4 address)
    STOPPED = "stopped"


_KEEPALIVED_ROLES = {
    "MASTER": Role.ACTIVE,
    "BACKUP": Role.STANDBY,
    "FAULT": Role.FAULT,
    "STOP": Role.STOPPED,
    "DELETED": Role.STOPPED,
}


# ---------------------------------------------------------------------- the advert source


def parse_mac(text: str) -> bytes:
    parts = text.strip().split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def advert_candidates(
    mac: bytes, count: int = CANDIDATES
) -> tuple[ipaddress.IPv4Interface, ...]:
    """Link-local addresses for the interface with ``mac``, first choice first.

    RFC 3927 seeds the choice with the MAC so that a host picks the same
    address every time and two hosts rarely pick the same one; the range
    excludes 169.254.0.0/24 and 169.254.255.0/24, which it reserves. A
    conflict found by an ARP probe moves on to the next candidate.
    """
    found: list[ipaddress.IPv4Interface] = []
    attempt = 0
    while len(found) < count:
        digest = sha256(b"egress-router-vrrp" + mac + struct.pack("!I", attempt))
        attempt += 1
        offset = int.from_bytes(digest[:4], "big") % (254 * 256)
        address = LINK_LOCAL.network_address + 256 + offset  # 169.254.1.0 .. 169.254.254.255
        candidate = ipaddress.IPv4Interface(f"{address}/16")
        if candidate not in found:
            found.append(candidate)
    return tuple(found)


# ---------------------------------------------------------------------- keepalived


@dataclass(frozen=True)
class Paths:
    """Where keepalived's files live: one private directory per router."""

    config: str
    fifo: str
    pidfile: str
    vrrp_pidfile: str


def _quote(text: str) -> str:
    if any(c in text for c in '"\\\n') or not text.isprintable():
        raise ValueError(f"cannot put {text!r} in keepalived's configuration")
    return f'"{text}"' if " " in text else text


def render_keepalived(
    cfg: config.Config, settings: Settings, advert_source: ipaddress.IPv4Interface, paths: Paths
) -> str:
    """keepalived's configuration for this replica (the same on both but for the source).

    ``state BACKUP`` on both and ``nopreempt``: a replica that comes back never
    takes the address from the one holding it. No ``vrrp_strict``: it would
    install keepalived's own firewall rules next to ours. The IPv4 reserved
    address is the one the election is about; IPv6 ones are "excluded" (not
    carried in the IPv4 adverts) but move with it, without DAD, as the
    single-replica router adds them.
    """
    ifname = _quote(cfg.egress_interface)
    v4 = [s for s in cfg.sources if s.family == 4]
    v6 = [s for s in cfg.sources if s.family == 6]

    def address(source: config.Source, extra: str = "") -> str:
        interface = source.interface
        prefix = interface.network.prefixlen if source.on_link else interface.max_prefixlen
        return f"        {source.address}/{prefix} dev {ifname}{extra}"

    lines = [
        "# Written by egress-router (EGRESS_ROUTER_HA=vrrp); regenerated at every start.",
        "global_defs {",
        f"    router_id egress-router-{settings.vrid}",
        "    vrrp_version 3",
        f"    notify_fifo {_quote(paths.fifo)}",
        "    vrrp_garp_master_delay 1",
        "    vrrp_garp_master_repeat 3",
        "    vrrp_garp_lower_prio_repeat 1",
        "    vrrp_higher_prio_send_advert true",
        "    script_user root",
        "}",
        "",
        f"vrrp_instance {INSTANCE} {{",
        "    state BACKUP",
        "    nopreempt",
        f"    interface {ifname}",
        f"    virtual_router_id {settings.vrid}",
        f"    priority {settings.priority}",
        f"    advert_int {settings.advert_interval:g}",
        f"    mcast_src_ip {advert_source.ip}",
        "    virtual_ipaddress {",
        *(address(s) for s in v4),
        "    }",
    ]
    if v6:
        lines += [
            "    virtual_ipaddress_excluded {",
            *(address(s, " no_dad") for s in v6),
            "    }",
        ]
    lines += ["}", ""]
    return "\n".join(lines)


def keepalived_argv(binary: str, paths: Paths) -> list[str]:
    """Foreground, VRRP only, logging to stderr, private pid files (two labs, one /run)."""
    return [
        binary,
        "--dont-fork",
        "--log-console",
        "--log-detail",
        "--vrrp",
        f"--use-file={paths.config}",
        f"--pid={paths.pidfile}",
        f"--vrrp_pid={paths.vrrp_pidfile}",
    ]


@dataclass(frozen=True)
class Notice:
    """One line of keepalived's notify FIFO about our instance."""

    role: Role
    state: str
    priority: int


def parse_notify(line: str) -> Notice | None:
    """``INSTANCE "egress_router" MASTER 100`` -> Notice; None for other lines."""
    parts = line.split()
    if len(parts) < 3 or parts[0] != "INSTANCE" or parts[1].strip('"') != INSTANCE:
        return None
    role = _KEEPALIVED_ROLES.get(parts[2])
    if role is None:
        return None
    priority = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0
    return Notice(role, parts[2], priority)


# ---------------------------------------------------------------------- advertisements


@dataclass(frozen=True)
class Advert:
    """A VRRP advertisement as seen on the wire (IPv4)."""

    source: ipaddress.IPv4Address
    version: int
    vrid: int
    priority: int
    interval: float  # seconds
    addresses: tuple[ipaddress.IPv4Address, ...]


def parse_advert(packet: bytes) -> Advert | None:
    """An IPv4 packet (header included, as a raw socket hands it) -> Advert, None if not VRRP."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != VRRP_PROTO:
        return None
    header = (packet[0] & 0x0F) * 4
    body = packet[header:]
    if len(body) < 8:
        return None
    version, kind = body[0] >> 4, body[0] & 0x0F
    if kind != 1 or version not in (2, 3):
        return None
    vrid, priority, count = body[1], body[2], body[3]
    # v3: 12 bits of centiseconds after 4 reserved bits; v2: whole seconds, after auth type.
    centis = struct.unpack("!H", body[4:6])[0] & 0x0FFF
    interval = centis / 100 if version == 3 else float(body[5])
    raw = body[8 : 8 + 4 * count]
    if len(raw) < 4 * count:
        return None
    addresses = tuple(
        ipaddress.IPv4Address(raw[i : i + 4]) for i in range(0, len(raw), 4)
    )
    source = ipaddress.IPv4Address(packet[12:16])
    return Advert(source, version, vrid, priority, interval, addresses)


def clash(advert: Advert, settings: Settings, cfg: config.Config) -> str | None:
    """Why ``advert`` shows another VRRP group using our VRID (None: our peer, or not our VRID)."""
    if advert.vrid != settings.vrid:
        return None
    ours = {s.address for s in cfg.sources if s.family == 4}
    if advert.version != 3:
        return f"{advert.source} sends VRRPv{advert.version} adverts for VRID {advert.vrid}"
    if set(advert.addresses) != ours:
        theirs = ", ".join(str(a) for a in advert.addresses) or "no address"
        return f"{advert.source} advertises VRID {advert.vrid} for {theirs}"
    return None


def foreign(advert: Advert, settings: Settings) -> str | None:
    """Why ``advert`` cannot come from the other replica of the pair (None: it may).

    For an advert of our VRID and our addresses (`clash` found nothing): both
    replicas advertise from a 169.254.0.0/16 address at the pair's priority, so
    another source or priority is a foreign VRRP speaker. VRRP has no
    authentication: one at a higher priority silences the pair (every replica
    yields to it and none holds the reserved address), as ARP spoofing would.
    """
    if advert.vrid != settings.vrid:
        return None
    if advert.source not in LINK_LOCAL:
        return (f"{advert.source} advertises VRID {advert.vrid} at priority {advert.priority} "
                "from outside the pair's 169.254.0.0/16")
    if advert.priority != settings.priority:
        return (f"{advert.source} advertises VRID {advert.vrid} at priority {advert.priority}, "
                f"not the pair's {settings.priority}")
    return None


def clash_error(reason: str, vrid: int, variable: str = ENV_VRID) -> config.ConfigError:
    return config.ConfigError(
        variable,
        f"another VRRP group on the egress network uses this VRID ({reason}); "
        f"pick a VRID no other pair uses (both replicas of a pair share one)",
        text=str(vrid),
    )


def describe(cfg: config.Config, settings: Settings) -> Sequence[str]:
    """The HA lines ``unit-test`` mode prints."""
    reserved = ", ".join(str(s.address) for s in cfg.sources)
    return (
        f"# HA: VRRPv3 VRID {settings.vrid} on {cfg.egress_interface}, advert every "
        f"{settings.advert_interval:g}s from a 169.254.0.0/16 address derived from its MAC",
        f"# HA: keepalived adds and announces {reserved} on the active replica only",
    )
