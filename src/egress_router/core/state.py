"""One model of what a network namespace holds: a `Snapshot` of links, addresses, routes, rules.

`wait` repairs, `status` reports and CNI CHECK fails from the same comparison
(`egress_router.core.drift`), and that comparison reads only this model: whoever reads the kernel
(``egress_router.kernel.observe``, here or inside a pod's namespace; a test building one by hand)
fills a `Snapshot`, and nothing downstream knows whether it came from ``ip -j``, pyroute2 or a
fixture. Plain frozen data, so a snapshot taken in a forked child travels back through a pipe.

The kernel's constants that the model speaks in (the main table, the forwarding sysctls and their
paths) are spelled here once.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from egress_router.core import config, plan

MAIN_TABLE = 254
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0

#: (priority, iif, src, table, suppress the default routes) of one policy rule.
RuleKey = tuple[int, str | None, str | None, int, bool]


def forwarding_sysctl(family: int) -> str:
    """The sysctl that switches forwarding on for ``family``."""
    return plan.EnableForwarding(family).sysctl


def forwarding_path(family: int) -> str:
    """Where ``forwarding_sysctl(family)`` lives under /proc (per network namespace)."""
    return "/proc/sys/" + forwarding_sysctl(family).replace(".", "/")


@dataclass(frozen=True)
class Link:
    """A network interface; ``kind``/``mode`` as ``ip -d`` names them (None: a plain link)."""

    index: int
    name: str
    up: bool
    mac: str
    mtu: int = 0
    kind: str | None = None
    mode: str | None = None  # the macvlan mode
    parent: int | None = None  # the index of the link it sits on (may be in another namespace)


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
    """What one network namespace holds, as far as the router cares.

    ``rules`` are the policy rules in our priority range, ``forwarding`` the
    sysctl of each family read (True: on), ``table`` the ``nft list table``
    text of our table (None: absent, or not read).
    """

    links: tuple[Link, ...]
    addresses: tuple[Address, ...]
    routes: tuple[Route, ...]
    rules: tuple[tuple[int, RuleKey], ...] = ()  # (family, rule)
    forwarding: tuple[tuple[int, bool], ...] = ()
    table: str | None = None
    # The hardening sysctls of every link (`plan.hardening_keys`) as (key, value), "missing"
    # when a key is absent, keys of a family the kernel lacks left out; None: not observed
    # (a snapshot built by hand), then they are not checked.
    sysctls: tuple[tuple[str, str], ...] | None = None

    def link(self, name: str) -> Link | None:
        return next((link for link in self.links if link.name == name), None)

    def forwarding_on(self, family: int) -> bool:
        return dict(self.forwarding).get(family, False)


def pod_return_rules(step: plan.KeepPodReturnPath, pod_addresses: list[str]) -> list[RuleKey]:
    """The rules of `plan.KeepPodReturnPath`: (priority, iif, src, table, suppress default)."""
    base = plan.RULE_PRIORITY
    rules: list[RuleKey] = [
        (base, step.egress_ifname, None, MAIN_TABLE, True),
        (base + 1, step.egress_ifname, None, plan.POD_TABLE, False),
    ]
    for address in pod_addresses:
        rules += [
            (base + 2, None, address, MAIN_TABLE, True),
            (base + 3, None, address, plan.POD_TABLE, False),
        ]
    return rules


def describe_rule(family: int, rule: RuleKey) -> str:
    """A policy rule as the ``ip rule`` command that makes it."""
    return f"ip {'-6 ' if family == 6 else ''}rule add {rule_selector(rule)}"


def rule_selector(rule: RuleKey) -> str:
    """A policy rule as ``ip rule`` arguments (what `describe_rule` and ``ip -batch`` say)."""
    priority, iif, src, table, suppress = rule
    parts = [f"priority {priority}"]
    if iif is not None:
        parts.append(f"iif {iif}")
    if src is not None:
        parts.append(f"from {src}")
    parts.append("lookup main" if table == MAIN_TABLE else f"lookup {table}")
    if suppress:
        parts.append("suppress_prefixlength 0")
    return " ".join(parts)
