"""The configuration as the router holds it: rules, sources, gateways, modes, and their text form.

Frozen values built only by the parsers of this package. The model also writes itself back
in the grammar it was read from (`Source.text`, `Destinations.lines`): the one writer that
renders a ConfigMap, the CNI configuration's environment for ``wait`` and the Kubernetes
objects, so that what is written is what the parser reads.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from dataclasses import dataclass, field

from egress_router.core.config.settings import Settings as HASettings
from egress_router.core.config.variables import (
    DEFAULT_ANNOUNCE_COUNT,
    DEFAULT_ANNOUNCE_INTERVAL,
    DEFAULT_EGRESS_INTERFACE,
    DEFAULT_POD_INTERFACE,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Proto(enum.Enum):
    """Transport protocols the router redirects."""

    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"


class Mode(enum.Enum):
    """What the entry point does after validation (``EGRESS_ROUTER_MODE``).

    The one enum of modes: `environment.load_config` accepts every member's value (and names
    them all in its error), so adding a mode is a member here plus what the entry point does
    with it (``cli.py``, where the mode is dispatched) and a line in docs/architecture.md.
    """

    INIT = "init"
    LEGACY = "legacy"
    UNIT_TEST = "unit-test"
    # Upstream's proxy pods: the network set-up only (address, routes, announcements,
    # sysctls, the one-way door) and no redirect; the main container is the proxy.
    HTTP_PROXY = "http-proxy"
    DNS_PROXY = "dns-proxy"

    @property
    def redirects(self) -> bool:
        """Whether the router redirects (reads EGRESS_DESTINATION); not in the proxy modes."""
        return self not in (Mode.HTTP_PROXY, Mode.DNS_PROXY)


class Backend(enum.Enum):
    """Which kernel interface programs the data path (``EGRESS_ROUTER_BACKEND``)."""

    NFTABLES = "nftables"
    IPTABLES = "iptables"


def _rule_text(port: int, proto: Proto, target: str, remote_port: int) -> str:
    remote = f" {remote_port}" if remote_port != port else ""
    return f"{port} {proto.value} {target}{remote}"


# slots: a configuration may hold 10,000 rules for as long as the router runs.
@dataclass(frozen=True, slots=True)
class PortRule:
    """Redirect connections to local ``port``/``proto`` to ``address``:``remote_port``."""

    port: int
    proto: Proto
    address: IPAddress
    remote_port: int
    line: int = field(default=0, compare=False)
    host: str | None = None  # set when ``address`` is an answer for this DNS name

    @property
    def family(self) -> int:
        return self.address.version

    @property
    def text(self) -> str:
        """The rule as a destination line writes it (the remote port only when it differs)."""
        return _rule_text(self.port, self.proto, str(self.address), self.remote_port)


@dataclass(frozen=True)
class Fallback:
    """Redirect every other port of one family to the same port on ``address``."""

    address: IPAddress
    line: int = field(default=0, compare=False)
    host: str | None = None  # set when ``address`` is an answer for this DNS name

    @property
    def family(self) -> int:
        return self.address.version


@dataclass(frozen=True, slots=True)
class NamedRule:
    """A port rule whose destination is a DNS name, resolved when the rules are applied.

    It becomes one `PortRule` per address of the answer (``host`` set) in
    every family the router has a source for.
    """

    port: int
    proto: Proto
    host: str
    remote_port: int
    line: int = field(default=0, compare=False)

    @property
    def text(self) -> str:
        """The rule as a destination line writes it (the remote port only when it differs)."""
        return _rule_text(self.port, self.proto, self.host, self.remote_port)


@dataclass(frozen=True)
class NamedFallback:
    """A fallback whose destination is a DNS name; it must be the only fallback."""

    host: str
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Destinations:
    """The parsed ``EGRESS_DESTINATION``: port rules, then at most one fallback a family."""

    rules: tuple[PortRule, ...]
    fallbacks: tuple[Fallback, ...] = ()
    named: tuple[NamedRule, ...] = ()
    named_fallbacks: tuple[NamedFallback, ...] = ()

    def families(self) -> frozenset[int]:
        return frozenset(r.family for r in self.rules) | frozenset(
            f.family for f in self.fallbacks
        )

    def fallback(self, family: int) -> Fallback | None:
        return next((f for f in self.fallbacks if f.family == family), None)

    def rules_of(self, family: int) -> tuple[PortRule, ...]:
        return self._by_family.get(family, ())

    @functools.cached_property
    def _by_family(self) -> dict[int, tuple[PortRule, ...]]:
        # One pass for both families, kept: the renderers ask for each several times an
        # edit, and at 10,000 rules every pass costs 10,000 property calls.
        found: dict[int, list[PortRule]] = {}
        for rule in self.rules:
            found.setdefault(rule.address.version, []).append(rule)
        return {family: tuple(rules) for family, rules in found.items()}

    def lines(self) -> list[str]:
        """The rules in the destination grammar, normalised: in line order, fallbacks last.

        The one writer of the grammar `grammar.parse_destinations` reads: rules by address and
        by DNS name alike, the remote port only where it differs from the local one.
        """
        owners: list[PortRule | NamedRule] = sorted(
            (*self.rules, *self.named), key=lambda r: r.line
        )
        lines = [rule.text for rule in owners]
        lines += [str(f.address) for f in self.fallbacks]
        lines += [f.host for f in self.named_fallbacks]
        return lines

    def hosts(self) -> tuple[str, ...]:
        """The DNS names to resolve, each once, in order of appearance."""
        names = [n.host for n in self.named] + [f.host for f in self.named_fallbacks]
        return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Source:
    """The reserved address; ``on_link`` when a prefix length was given (subnet route wanted)."""

    interface: IPInterface
    on_link: bool

    @property
    def address(self) -> IPAddress:
        return self.interface.ip

    @property
    def family(self) -> int:
        return self.interface.version

    @property
    def text(self) -> str:
        """The source as ``EGRESS_SOURCE`` writes it: with ``/len`` only when one was given."""
        return self.interface.with_prefixlen if self.on_link else str(self.address)


@dataclass(frozen=True)
class Config:
    """Everything the router needs, validated and normalised."""

    sources: tuple[Source, ...]
    gateways: tuple[IPAddress, ...]
    destinations: Destinations
    mode: Mode = Mode.LEGACY
    backend: Backend = Backend.NFTABLES
    pod_interface: str = DEFAULT_POD_INTERFACE
    egress_interface: str = DEFAULT_EGRESS_INTERFACE
    debug: bool = False
    announce_count: int = DEFAULT_ANNOUNCE_COUNT
    announce_interval: float = DEFAULT_ANNOUNCE_INTERVAL
    http_port: int = 0  # the wait container's HTTP port, accepted on the pod interface; 0: none
    # Host routes via the pod's own gateway for what the router itself must reach on the
    # cluster side (its resolvers): (address, gateway). Found at run time, not configured.
    pod_routes: tuple[tuple[IPAddress, IPAddress], ...] = ()
    ha: HASettings | None = None  # EGRESS_ROUTER_HA=vrrp: keepalived owns the reserved address

    def families(self) -> tuple[int, ...]:
        return tuple(sorted({s.family for s in self.sources}))

    def source(self, family: int) -> Source | None:
        """The first (primary) source address of ``family``."""
        return next((s for s in self.sources if s.family == family), None)

    def pool(self, family: int) -> tuple[Source, ...]:
        """Every source address of ``family``: SNAT spreads connections over them."""
        return tuple(s for s in self.sources if s.family == family)

    def gateway(self, family: int) -> IPAddress | None:
        return next((g for g in self.gateways if g.version == family), None)


