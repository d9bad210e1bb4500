"""CHECK: compare the pod's kernel state with what the configuration and ``prevResult`` promise.

Upstream's plugin answers CHECK with "fine" whatever the state; a runtime
that relies on CHECK then never learns that someone deleted the router's
table or its default route. Here the observed state (read inside the pod's
namespace) and the expected state (built from the configuration, the ADD
result and the ruleset the engine would apply) are plain data, and
`differences` names every mismatch in words a person can act on.

The expected ruleset is not compared with our own rendering but with
``nft list table`` of that rendering applied in a scratch namespace: both
sides then come from the same nft binary, so formatting, element order and
normalisation agree and only real differences remain.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass

from egress_router.core import config, listing

MAX_REPORTED = 20



@dataclass(frozen=True)
class LinkState:
    """The macvlan as the kernel reports it."""

    name: str
    kind: str | None
    mode: str | None
    mtu: int
    mac: str
    up: bool
    parent_index: int | None


@dataclass(frozen=True)
class Route:
    """A main-table route out of the macvlan; ``gateway`` None means on-link."""

    dst: str
    gateway: str | None = None

    def describe(self, ifname: str) -> str:
        dst = "default" if self.dst in ("0.0.0.0/0", "::/0") else self.dst
        via = f" via {self.gateway}" if self.gateway else ""
        family = "-6 " if ":" in self.dst else ""
        return f"ip {family}route {dst}{via} dev {ifname}"


@dataclass(frozen=True)
class Observed:
    """What the pod's namespace holds (read by the kernel layer, compared here)."""

    link: LinkState | None
    pod_interface: bool
    addresses: tuple[str, ...] = ()
    routes: tuple[Route, ...] = ()
    forwarding: tuple[tuple[int, str], ...] = ()
    ruleset: str | None = None


@dataclass(frozen=True)
class Expected:
    """What CHECK wants to find."""

    ifname: str
    pod_interface: str
    mode: str
    addresses: tuple[config.IPInterface, ...]
    routes: tuple[Route, ...]
    families: tuple[int, ...]
    ruleset: str
    mtu: int | None = None
    mac: str | None = None
    parent_index: int | None = None
    master: str | None = None


def expected_routes(cfg: config.Config) -> tuple[Route, ...]:
    """The routes the interface plan installs: gateway host route and default route, per family."""
    routes: list[Route] = []
    for source in cfg.sources:
        gateway = cfg.gateway(source.family)
        assert gateway is not None  # check_families guarantees it
        routes.append(Route(f"{gateway}/{gateway.max_prefixlen}"))
        routes.append(Route("0.0.0.0/0" if source.family == 4 else "::/0", str(gateway)))
    return tuple(routes)


def _comparable(text: str) -> dict[str, tuple[list[str], set[str]]]:
    """Each block's statements in order and its elements as a set, without counter values."""
    return {
        key: (
            [listing.strip_counters(line) for line in block.lines],
            {listing.strip_counters(e) for e in block.elements},
        )
        for key, block in listing.parse_table(text).blocks.items()
    }


def ruleset_differences(expected: str, observed: str | None, table: str) -> list[str]:
    """Every difference between two ``nft list table`` texts, in nft's own words."""
    if observed is None:
        return [f"nftables table {table} is missing"]
    want = _comparable(expected)
    have = _comparable(observed)
    found: list[str] = []
    for key, (lines, elements) in want.items():
        if key not in have:
            found.append(f"nftables {key} is missing")
            continue
        other_lines, other_elements = have[key]
        missing = Counter(lines) - Counter(other_lines)
        extra = Counter(other_lines) - Counter(lines)
        found += [f"nftables {key}: missing {line!r}" for line in missing.elements()]
        found += [f"nftables {key}: unexpected {line!r}" for line in extra.elements()]
        if not missing and not extra and lines != other_lines:
            found.append(f"nftables {key}: the rules are in a different order")
        found += [
            f"nftables {key}: missing element {e!r}"
            for e in sorted(elements - other_elements)
        ]
        found += [
            f"nftables {key}: unexpected element {e!r}"
            for e in sorted(other_elements - elements)
        ]
    found += [f"nftables {key} is unexpected" for key in have if key not in want]
    return found


def differences(expected: Expected, observed: Observed, table: str) -> list[str]:
    """Everything that differs, most fundamental first; empty when the pod is as configured."""
    ifname = expected.ifname
    found: list[str] = []
    if expected.master is not None and expected.parent_index is None:
        found.append(f"master interface {expected.master!r} no longer exists on the node")
    if not observed.pod_interface:
        found.append(f"pod interface {expected.pod_interface!r} is missing")
    link = observed.link
    if link is None:
        found.append(f"interface {ifname!r} is missing from the container")
    else:
        if link.kind != "macvlan":
            found.append(f"interface {ifname!r} is a {link.kind or 'plain'} link, not a macvlan")
        elif link.mode != expected.mode:
            found.append(f"macvlan {ifname!r} is in {link.mode} mode, expected {expected.mode}")
        if expected.mac and link.mac.lower() != expected.mac.lower():
            found.append(
                f"interface {ifname!r} has MAC {link.mac}, but ADD reported {expected.mac}"
            )
        if expected.mtu is not None and link.mtu != expected.mtu:
            found.append(f"interface {ifname!r} has MTU {link.mtu}, expected {expected.mtu}")
        if (
            expected.parent_index is not None
            and link.parent_index is not None
            and link.parent_index != expected.parent_index
        ):
            found.append(f"macvlan {ifname!r} is not on master {expected.master!r}")
        if not link.up:
            found.append(f"interface {ifname!r} is down")
        have = {ipaddress.ip_interface(a) for a in observed.addresses}
        for address in dict.fromkeys(expected.addresses):
            if address not in have:
                found.append(f"address {address.with_prefixlen} is missing from {ifname!r}")
        for address in sorted(have, key=str):
            if address.version in expected.families and address not in expected.addresses:
                found.append(f"unexpected address {address.with_prefixlen} on {ifname!r}")
        for route in expected.routes:
            if route not in observed.routes:
                found.append(f"route missing: {route.describe(ifname)}")
    forwarding = dict(observed.forwarding)
    for family in expected.families:
        if forwarding.get(family) != "1":
            name = "net.ipv4.ip_forward" if family == 4 else "net.ipv6.conf.all.forwarding"
            found.append(f"forwarding is off ({name}={forwarding.get(family, '?')})")
    found += ruleset_differences(expected.ruleset, observed.ruleset, table)
    return found


def summarise(found: list[str]) -> str:
    """One line for the CNI error's ``msg``: the first differences and how many more."""
    shown = "; ".join(found[:MAX_REPORTED])
    more = len(found) - MAX_REPORTED
    return shown + (f"; and {more} more" if more > 0 else "")
