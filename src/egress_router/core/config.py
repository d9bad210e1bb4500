"""Parse and validate the egress router's configuration.

Everything the router does starts from a `Config`; building one is the only
place where user input is judged. Parsing happens before any side effect, so
a bad variable or destination line is reported (variable, line number, the
offending text and what was expected) while the rules already in the kernel
keep working. The module is pure: its only I/O is reading the destination
file that the environment names.

The grammar is OpenShift's egress router (redirect mode), extended with IPv6,
SCTP, dual stack, comments anywhere and a destination file.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from egress_router.core import ha

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ENV_SOURCE = "EGRESS_SOURCE"
ENV_GATEWAY = "EGRESS_GATEWAY"
ENV_DESTINATION = "EGRESS_DESTINATION"
ENV_DESTINATION_FILE = "EGRESS_DESTINATION_FILE"
ENV_MODE = "EGRESS_ROUTER_MODE"
ENV_BACKEND = "EGRESS_ROUTER_BACKEND"
ENV_POD_INTERFACE = "EGRESS_POD_INTERFACE"
ENV_INTERFACE = "EGRESS_INTERFACE"
ENV_DEBUG = "EGRESS_ROUTER_DEBUG"
ENV_ANNOUNCE_COUNT = "EGRESS_ANNOUNCE_COUNT"
ENV_ANNOUNCE_INTERVAL = "EGRESS_ANNOUNCE_INTERVAL"
ENV_HTTP_PORT = "EGRESS_ROUTER_HTTP_PORT"
ENV_RECONCILE = "EGRESS_ROUTER_RECONCILE_SECONDS"
ENV_WATCH = "EGRESS_ROUTER_WATCH_SECONDS"
ENV_DNS_MIN_TTL = "EGRESS_ROUTER_DNS_MIN_TTL"
ENV_DNS_MAX_TTL = "EGRESS_ROUTER_DNS_MAX_TTL"
ENV_SAMPLE = "EGRESS_ROUTER_CONNTRACK_SAMPLE_SECONDS"
ENV_METRICS_RULES = "EGRESS_ROUTER_METRICS_RULES"
# CNI mode: the plugin's network configuration (JSON), read by `wait` instead of the variables
# above that it would repeat (egress_router.cni.netconf.router_environment).
ENV_CNI_CONFIG = "EGRESS_ROUTER_CNI_CONFIG"

DEFAULT_POD_INTERFACE = "eth0"
DEFAULT_EGRESS_INTERFACE = "macvlan0"
DEFAULT_ANNOUNCE_COUNT = 3
DEFAULT_ANNOUNCE_INTERVAL = 1.0
DEFAULT_HTTP_PORT = 9090
DEFAULT_RECONCILE = 10.0
DEFAULT_WATCH = 1.0
DEFAULT_DNS_MIN_TTL = 5.0
DEFAULT_DNS_MAX_TTL = 300.0
DEFAULT_SAMPLE = 30.0  # one conntrack pass (live connections, NAT port space) per this
DEFAULT_METRICS_RULES = 1000
# The destination file's size limit: 100,000 rules of up to 160 bytes each (a rule
# with an IPv6 address and a comment is about 70).
DESTINATION_FILE_LIMIT = 16 * 1024 * 1024

RULE_SYNTAX = "<port> <proto> <ip> [<remote_port>], or a last line <ip> (the fallback)"

# Interface names: the kernel's dev_valid_name() (1 to 15 bytes, IFNAMSIZ 16 with the
# NUL; not "." or ".."; no '/', ':' or whitespace), narrowed to what every consumer carries
# verbatim: nft strings ('"' ends one, '*' is a wildcard), iptables-restore tokens ('+' is
# a wildcard, quotes and '!' are syntax), ip(8) arguments (a leading '-' is an option).
IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")
IFNAME_MAX_BYTES = 15
IFNAME_CHARS = "ASCII letters, digits, '_', '-' and '.' (not first), at most 15"
# RFC 1123 labels; with re.fullmatch, so that no trailing newline slips through ("$" would).
HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# Every number is ASCII digits: int() and float() also take Unicode digits ('\u0661'),
# '_' separators, 'nan' and 'inf'. Nine digits bound int()'s work and every range we use.
_DIGITS = re.compile(r"[0-9]{1,9}")
_DECIMAL = re.compile(r"[0-9]{1,9}(?:\.[0-9]{0,9})?|\.[0-9]{1,9}")
# Only ASCII whitespace is trimmed: str.strip() would also eat U+2028, U+00A0 and friends.
_SPACE = " \t\r\n"
# A rule line (before its '#' comment) is printable ASCII and tabs: nothing else can be a
# port, protocol, address or host name, and nothing else is ever pasted into a ruleset.
_RULE_CHARS = re.compile(r"[\x20-\x7e\t]*")
_ASCII_LETTER = re.compile(r"[A-Za-z]")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


class ConfigError(ValueError):
    """A configuration the router refuses, before touching anything.

    ``variable`` names the input (an environment variable, a file, a CNI
    field), ``line`` the 1-based line of a multi-line value (or None), and
    ``text`` the offending text as the user wrote it.
    """

    def __init__(
        self, variable: str, cause: str, *, line: int | None = None, text: str | None = None
    ) -> None:
        self.variable = variable
        self.cause = cause
        self.line = line
        self.text = text
        where = variable if line is None else f"{variable} line {line}"
        shown = "" if text is None else f" {clip(text)!r}"
        super().__init__(f"cannot parse {where}{shown}: {cause}")


class Proto(enum.Enum):
    """Transport protocols the router redirects."""

    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"


class Mode(enum.Enum):
    """What the entry point does after validation (``EGRESS_ROUTER_MODE``)."""

    INIT = "init"
    LEGACY = "legacy"
    UNIT_TEST = "unit-test"


class Backend(enum.Enum):
    """Which kernel interface programs the data path (``EGRESS_ROUTER_BACKEND``)."""

    NFTABLES = "nftables"
    IPTABLES = "iptables"


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
    ha: ha.Settings | None = None  # EGRESS_ROUTER_HA=vrrp: keepalived owns the reserved address

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


def clip(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters for a message (a line may be megabytes long)."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


def describe_char(ch: str) -> str:
    """A character as a message shows it: ``'"' (U+0022)``, ``U+000A (a control character)``."""
    code = f"U+{ord(ch):04X}"
    if ch.isascii() and ch.isprintable():
        return f"{ch!r} ({code})"
    if not ch.isprintable():
        return f"{code} (a control or invisible character)"
    return f"{ch!r} ({code}, not ASCII)"


def ascii_number(text: str) -> int | None:
    """``text`` as a whole number when it is 1 to 9 ASCII digits (nothing else), else None."""
    return int(text) if _DIGITS.fullmatch(text) else None


def ascii_decimal(text: str) -> float | None:
    """``text`` as a number when it is ASCII digits with an optional fraction, else None."""
    return float(text) if _DECIMAL.fullmatch(text) else None


def strip_space(text: str) -> str:
    """``text`` without leading and trailing ASCII whitespace (and nothing else)."""
    return text.strip(_SPACE)


def split_lines(text: str) -> list[str]:
    """Lines as an editor numbers them: split at LF only (CRLF tolerated).

    ``str.splitlines`` also splits at VT, FF, FS, GS, RS, NEL, U+2028 and U+2029,
    which would make our line numbers disagree with the file's.
    """
    return [line.removesuffix("\r") for line in text.split("\n")]


def interface_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an interface name for the router (None: it can)."""
    if not name:
        return f"it is empty; expected a name such as eth0 ({IFNAME_CHARS})"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > IFNAME_MAX_BYTES:
        return (
            f"it is {size} bytes long and the kernel allows at most {IFNAME_MAX_BYTES} "
            "(IFNAMSIZ); use the interface's real name"
        )
    if name in (".", ".."):
        return f"the kernel refuses '.' and '..' as interface names; expected {IFNAME_CHARS}"
    for ch in name:
        if ch in "/:" or ch in " \t\n\v\f\r":
            return (
                f"it contains {describe_char(ch)}, which the kernel refuses in an interface "
                f"name; expected {IFNAME_CHARS}"
            )
    for index, ch in enumerate(name):
        if not (ch.isascii() and (ch.isalnum() or ch in "_.-")) or (index == 0 and ch in ".-"):
            where = "at the start" if index == 0 and ch in ".-" else ""
            return (
                f"it contains {describe_char(ch)}{' ' + where if where else ''}, which the "
                f"ruleset and ip(8) cannot carry verbatim; rename the interface to "
                f"{IFNAME_CHARS}"
            )
    assert IFNAME.fullmatch(name), name
    return None


def _strip_line(raw: str) -> str:
    return raw.split("#", 1)[0].strip(_SPACE)


_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def _unusable(address: IPAddress) -> str | None:
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_multicast:
        return "a multicast address"
    if address == _LIMITED_BROADCAST:
        return "the broadcast address"
    return None


def destination_problem(
    address: IPAddress,
    sources: tuple[Source, ...] = (),
    gateways: tuple[IPAddress, ...] = (),
    pod_networks: tuple[IPNetwork, ...] = (),
) -> str | None:
    """Why ``address`` cannot be a redirect destination (None: it can).

    One rule for literal destinations and DNS answers alike. What is refused and
    why (README, "Destinations the router refuses"): no host answers at the
    unspecified, loopback, multicast, broadcast, "this network" (0/8) and reserved
    (240/4, unassigned IPv6) addresses; a link-local address exists only on one
    link, not behind the gateway; an IPv4-mapped IPv6 address would bypass the
    IPv4 checks; the router's own source, the gateway, the egress subnet's network
    and broadcast addresses would make the router attack its own link; and the pod
    network (when known) is the side connections come from, never where they go.
    """
    bad = _unusable(address)
    if bad is not None:
        return f"{address} is {bad}"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return (
            f"{address} is an IPv4-mapped IPv6 address; write the IPv4 address "
            f"{address.ipv4_mapped} instead"
        )
    if address.is_link_local:
        return f"{address} is a link-local address, which no gateway forwards"
    if address in _THIS_NETWORK:
        return f"{address} is in 0.0.0.0/8 (\"this network\"), which no host answers"
    if address.is_reserved:
        return f"{address} is in a reserved range, which no host answers"
    for source in sources:
        if address == source.address:
            return f"{address} is the router's own source address (a redirect to itself)"
        network = source.interface.network
        if source.on_link and network.num_addresses > 2 and address.version == 4:
            if address == network.broadcast_address:
                return f"{address} is the broadcast address of the egress subnet {network}"
            if address == network.network_address:
                return f"{address} is the network address of the egress subnet {network}"
    if address in gateways:
        return f"{address} is the gateway, not a service behind it"
    for pod_network in pod_networks:
        if address in pod_network:
            return (
                f"{address} is in the pod network {pod_network}, where connections come from"
            )
    return None


def parse_address(
    text: str, variable: str, *, line: int | None = None, what: str = "address"
) -> IPAddress:
    """Parse one unicast IPv4 or IPv6 address, or raise a `ConfigError` naming it."""
    shown = text if line is None else None
    if "%" in text:
        # ipaddress keeps the zone verbatim, and str() pastes it back: any text at all.
        plain = text.partition("%")[0]
        raise ConfigError(
            variable,
            f"{what} {clip(text)!r} has a zone (%...); the router always uses its egress "
            f"interface, write {plain!r} without the zone",
            line=line,
            text=shown,
        )
    try:
        if not text.isascii():
            raise ValueError(text)
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(
            variable,
            f"invalid {what} {clip(text)!r}; expected an IPv4 address such as 203.0.113.25 "
            "or an IPv6 address such as 2001:db8::25",
            line=line,
            text=shown,
        ) from None
    bad = _unusable(address)
    if bad is not None:
        raise ConfigError(
            variable,
            f"{what} {clip(text)!r} is {bad}; expected a unicast address",
            line=line,
            text=shown,
        )
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        raise ConfigError(
            variable,
            f"{what} {clip(text)!r} is an IPv4-mapped IPv6 address; write the IPv4 address "
            f"{address.ipv4_mapped} instead",
            line=line,
            text=shown,
        )
    return address


def _check_destination(address: IPAddress, variable: str, line: int, what: str) -> None:
    problem = destination_problem(address)
    if problem is not None:
        raise ConfigError(
            variable, f"{what} {problem}; expected the address of a service", line=line
        )


def _parse_destination(text: str, variable: str, line: int, what: str) -> IPAddress:
    address = parse_address(text, variable, line=line, what=what)
    _check_destination(address, variable, line, what)
    return address


def _parse_port(token: str, variable: str, line: int, what: str) -> int:
    port = ascii_number(token)
    if port is None:
        raise ConfigError(
            variable, f"invalid {what} {clip(token)!r}; expected a number from 1 to 65535",
            line=line,
        )
    if not 1 <= port <= 65535:
        raise ConfigError(
            variable, f"{what} {port} is out of range; expected 1 to 65535", line=line
        )
    return port


def _parse_proto(token: str, variable: str, line: int) -> Proto:
    try:
        return Proto(token.lower())
    except ValueError:
        raise ConfigError(
            variable, f"unknown protocol {clip(token)!r}; expected tcp, udp or sctp", line=line
        ) from None


def _line_error(variable: str, number: int, raw: str, err: ConfigError) -> ConfigError:
    return ConfigError(variable, err.cause, line=number, text=strip_space(raw))


def _strip_host_prefix(token: str, variable: str, line: int) -> str:
    """``203.0.113.25/32`` -> ``203.0.113.25``; any other prefix length is refused."""
    address, slash, length = token.partition("/")
    if not slash:
        return token
    full = 128 if ":" in address else 32
    if length != str(full):
        raise ConfigError(
            variable,
            f"destination {clip(token)!r} is a network, not one address; write {address} "
            f"(or {address}/{full})",
            line=line,
        )
    return address


def _rule_head(
    tokens: list[str],
    variable: str,
    number: int,
    fallbacks: Mapping[int, Fallback],
    named_fallbacks: list[NamedFallback],
) -> tuple[int, Proto]:
    """Local port and protocol of a port rule, which must come before every fallback."""
    earlier = _fallback_lines(fallbacks, named_fallbacks)
    if earlier:
        raise ConfigError(
            variable,
            f"a port rule after the fallback on line {min(earlier)}; "
            "the fallback must come after all port rules",
            line=number,
        )
    return _parse_port(tokens[0], variable, number, "port"), _parse_proto(
        tokens[1], variable, number
    )


def _claim_ports(
    seen: dict[tuple[int, Proto, int], int],
    families: tuple[int, ...],
    proto: Proto,
    port: int,
    *,
    variable: str,
    number: int,
) -> None:
    """Record that line ``number`` redirects ``port``/``proto`` in ``families``; once each."""
    for family in families:
        first = seen.get((family, proto, port))
        if first is not None:
            raise ConfigError(
                variable,
                f"port {port}/{proto.value} is already redirected on line {first}; "
                "each local port may have one rule per protocol",
                line=number,
            )
    for family in families:
        seen[(family, proto, port)] = number


def _remote_port(tokens: list[str], port: int, variable: str, number: int) -> int:
    """The optional fourth field; the local port when it is absent."""
    return _parse_port(tokens[3], variable, number, "remote port") if len(tokens) == 4 else port


def parse_destinations(
    text: str, variable: str = ENV_DESTINATION, *, host_prefix: bool = False
) -> Destinations:
    """Parse destination lines (the upstream grammar, plus IPv6, SCTP and comments).

    Port rules come first; a fallback line (a bare address) may follow, at most
    one per address family. The same local port may appear once per protocol
    and family. An empty rule set is an error: the router would do nothing.
    ``host_prefix`` accepts a ``/32`` (``/128``) suffix on addresses, as
    upstream's CNI configuration writes them.
    """
    rules: list[PortRule] = []
    fallbacks: dict[int, Fallback] = {}
    seen: dict[tuple[int, Proto, int], int] = {}
    named: list[NamedRule] = []
    named_fallbacks: list[NamedFallback] = []
    interned: dict[IPAddress, IPAddress] = {}
    by_text: dict[str, IPAddress] = {}
    for number, raw in enumerate(split_lines(text), start=1):
        body = _strip_line(raw)
        if not body:
            continue
        tokens = body.split()
        try:
            if not _RULE_CHARS.fullmatch(body):
                bad = next(ch for ch in body if not _RULE_CHARS.fullmatch(ch))
                raise ConfigError(
                    variable,
                    f"contains {describe_char(bad)}; a rule holds only printable ASCII "
                    "(a comment after '#' may hold anything)",
                    line=number,
                )
            if host_prefix and len(tokens) in (1, 3, 4):
                index = 0 if len(tokens) == 1 else 2
                tokens[index] = _strip_host_prefix(tokens[index], variable, number)
            if _names_a_host(tokens):
                _add_named(
                    tokens, variable, number, seen=seen, fallbacks=fallbacks, named=named,
                    named_fallbacks=named_fallbacks,
                )
                continue
            if len(tokens) == 1:
                address = _parse_destination(tokens[0], variable, number, "fallback address")
                if named_fallbacks:
                    raise _second_fallback(variable, named_fallbacks[0].line, number)
                if address.version in fallbacks:
                    first = fallbacks[address.version].line
                    raise ConfigError(
                        variable,
                        f"a second IPv{address.version} fallback; line {first} already is the "
                        f"IPv{address.version} fallback and only one is allowed per family",
                        line=number,
                    )
                fallbacks[address.version] = Fallback(address, line=number)
                continue
            if len(tokens) not in (3, 4):
                raise ConfigError(
                    variable,
                    f"expected {RULE_SYNTAX}, got {len(tokens)} fields",
                    line=number,
                )
            port, proto = _rule_head(tokens, variable, number, fallbacks, named_fallbacks)
            # Many rules, few destinations: each address text is parsed and judged once
            # (at 10,000 rules, ipaddress's parser was a third of an edit's parse).
            found = by_text.get(tokens[2])
            if found is None:
                found = parse_address(
                    tokens[2], variable, line=number, what="destination address"
                )
                if found not in interned:
                    _check_destination(found, variable, number, "destination address")
                    interned[found] = found
                found = by_text[tokens[2]] = interned[found]
            address = found
            remote = _remote_port(tokens, port, variable, number)
            _claim_ports(
                seen, (address.version,), proto, port, variable=variable, number=number
            )
            rules.append(PortRule(port, proto, address, remote, line=number))
        except ConfigError as err:
            raise _line_error(variable, number, raw, err) from None
    if not rules and not fallbacks and not named and not named_fallbacks:
        raise ConfigError(
            variable, f"no destinations; expected at least one line: {RULE_SYNTAX}"
        )
    ordered = tuple(fallbacks[f] for f in sorted(fallbacks))
    return Destinations(tuple(rules), ordered, tuple(named), tuple(named_fallbacks))


def _names_a_host(tokens: list[str]) -> bool:
    """Whether the destination token of a rule or fallback line is meant as a DNS name.

    Anything with a letter and without ``:`` or ``/`` is; digits-and-dots and
    IPv6 text stay addresses, so their errors keep talking about addresses.
    """
    if len(tokens) not in (1, 3, 4):
        return False
    token = tokens[0] if len(tokens) == 1 else tokens[2]
    return ":" not in token and "/" not in token and _ASCII_LETTER.search(token) is not None


def parse_host(text: str, variable: str, *, line: int | None = None, what: str) -> str:
    """Validate a DNS name (RFC 1123 labels); return it lower-cased."""
    # ASCII first: str.lower() maps U+212A (Kelvin sign) to 'k', and IDNA is not ours to do.
    name = text.lower() if text.isascii() else ""
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    # At least two labels: a lone word is far more often a typo than a DNS name
    # (and a Kubernetes service is written service.namespace or fully qualified).
    valid = (
        len(labels) >= 2
        and len(name.rstrip(".")) <= 253
        and all(HOST_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )
    if not valid:
        raise ConfigError(
            variable,
            f"invalid {what} {clip(text)!r}; expected an IPv4 address such as 203.0.113.25, "
            "an IPv6 address such as 2001:db8::25 or a host name such as api.example.com",
            line=line,
            text=text if line is None else None,
        )
    return name


def _fallback_lines(fallbacks: Mapping[int, Fallback], named: list[NamedFallback]) -> list[int]:
    return [f.line for f in fallbacks.values()] + [n.line for n in named]


def _second_fallback(variable: str, first: int, number: int) -> ConfigError:
    return ConfigError(
        variable,
        f"a second fallback; line {first} already is a fallback, and a fallback given as a "
        "host name must be the only one",
        line=number,
    )


def _add_named(
    tokens: list[str],
    variable: str,
    number: int,
    *,
    seen: dict[tuple[int, Proto, int], int],
    fallbacks: Mapping[int, Fallback],
    named: list[NamedRule],
    named_fallbacks: list[NamedFallback],
) -> None:
    """Parse a rule or fallback line whose destination is a DNS name (same checks as addresses).

    The name's family is only known once it is resolved, so a named rule takes
    its local port in both families.
    """
    if len(tokens) == 1:
        host = parse_host(tokens[0], variable, line=number, what="fallback address")
        earlier = _fallback_lines(fallbacks, named_fallbacks)
        if earlier:
            raise _second_fallback(variable, min(earlier), number)
        named_fallbacks.append(NamedFallback(host, line=number))
        return
    port, proto = _rule_head(tokens, variable, number, fallbacks, named_fallbacks)
    host = parse_host(tokens[2], variable, line=number, what="destination address")
    remote = _remote_port(tokens, port, variable, number)
    # A name may resolve in either family: it claims the port in both.
    _claim_ports(seen, (4, 6), proto, port, variable=variable, number=number)
    named.append(NamedRule(port, proto, host, remote, line=number))


def _split_list(text: str) -> list[str]:
    return [strip_space(part) for part in text.split(",") if strip_space(part)]


MAX_POOL = 16  # source addresses per family: bounds the SNAT map and the metrics' labels


def parse_sources(text: str, variable: str = ENV_SOURCE) -> tuple[Source, ...]:
    """Parse ``EGRESS_SOURCE``: per family one address or a pool, each optionally ``/len``.

    Several addresses of one family (``192.168.12.99/24,192.168.12.100/24``)
    form a source-address pool that SNAT spreads connections over; they must
    share one subnet (all with the same ``/len``, or all without ``/len``). The result
    is ordered by family, then as written.
    """
    parts = _split_list(text)
    if not parts:
        raise ConfigError(
            variable, "is empty; expected the reserved address, e.g. 192.168.12.99/24"
        )
    sources: dict[int, list[Source]] = {}
    for part in parts:
        source = _parse_source(part, variable)
        pool = sources.setdefault(source.family, [])
        _check_pool_member(pool, source, variable, part)
        pool.append(source)
    return tuple(s for family in sorted(sources) for s in sources[family])


def _parse_source(part: str, variable: str) -> Source:
    address_text, slash, prefix_text = part.partition("/")
    address = parse_address(address_text, variable, what="source address")
    if not slash:
        return Source(ipaddress.ip_interface(f"{address}/{address.max_prefixlen}"), False)
    length = ascii_number(prefix_text)
    if length is None:
        raise ConfigError(
            variable,
            f"invalid prefix length {clip(prefix_text)!r}; expected a number "
            f"from 1 to {address.max_prefixlen}",
            text=part,
        )
    if not 1 <= length <= address.max_prefixlen:
        raise ConfigError(
            variable,
            f"prefix length {length} is out of range for IPv{address.version}; "
            f"expected 1 to {address.max_prefixlen}",
            text=part,
        )
    interface = ipaddress.ip_interface(f"{address}/{length}")
    _check_host_address(interface, variable, part)
    return Source(interface, on_link=True)


def _check_pool_member(pool: list[Source], source: Source, variable: str, part: str) -> None:
    """A further address of a family joins its pool: same subnet, no repeats, bounded."""
    if not pool:
        return
    first = pool[0]
    if any(s.address == source.address for s in pool):
        raise ConfigError(
            variable, "is listed twice; list each address of the pool once", text=part
        )
    if source.on_link != first.on_link or (
        source.on_link and source.interface.network != first.interface.network
    ):
        raise ConfigError(
            variable,
            f"is not in the subnet of {_written(first)}; the IPv{source.family} addresses "
            "form one pool and must share one subnet (write the same /len on each, or none)",
            text=part,
        )
    if len(pool) >= MAX_POOL:
        raise ConfigError(
            variable,
            f"more than {MAX_POOL} IPv{source.family} addresses; expected a pool of at most "
            f"{MAX_POOL}",
            text=part,
        )


def _written(source: Source) -> str:
    return source.interface.with_prefixlen if source.on_link else str(source.address)


def _check_host_address(interface: IPInterface, variable: str, text: str) -> None:
    network = interface.network
    if network.prefixlen >= network.max_prefixlen - 1:
        return
    if interface.ip == network.network_address:
        raise ConfigError(
            variable, f"{interface.ip} is the network address of {network}", text=text
        )
    if isinstance(network, ipaddress.IPv4Network) and interface.ip == network.broadcast_address:
        raise ConfigError(
            variable, f"{interface.ip} is the broadcast address of {network}", text=text
        )


def parse_gateways(text: str, variable: str = ENV_GATEWAY) -> tuple[IPAddress, ...]:
    """Parse ``EGRESS_GATEWAY``: one gateway address per family."""
    parts = _split_list(text)
    if not parts:
        raise ConfigError(variable, "is empty; expected the gateway address, e.g. 192.168.12.1")
    gateways: dict[int, IPAddress] = {}
    for part in parts:
        gateway = parse_address(part, variable, what="gateway address")
        if gateway.version in gateways:
            raise ConfigError(
                variable,
                f"two IPv{gateway.version} gateways; expected at most one address per family",
                text=text,
            )
        gateways[gateway.version] = gateway
    return tuple(gateways[f] for f in sorted(gateways))


_E = TypeVar("_E", bound=enum.Enum)


def _parse_choice(kind: type[_E], text: str, variable: str) -> _E:
    try:
        return kind(strip_space(text).lower())
    except ValueError:
        choices = ", ".join(repr(m.value) for m in kind)
        raise ConfigError(
            variable, f"unknown value {clip(text)!r}; expected one of {choices}"
        ) from None


def parse_ifname(text: str, variable: str) -> str:
    """An interface name the kernel accepts and the ruleset carries verbatim."""
    problem = interface_name_problem(text)
    if problem is not None:
        raise ConfigError(variable, f"invalid interface name {clip(text)!r}: {problem}")
    return text


def _parse_bool(text: str, variable: str) -> bool:
    value = strip_space(text).lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(variable, f"invalid value {clip(text)!r}; expected true or false")


def _parse_count(text: str, variable: str) -> int:
    value = ascii_number(strip_space(text))
    if value is None or not 0 <= value <= 100:
        raise ConfigError(
            variable, f"invalid value {clip(text)!r}; expected a whole number 0 to 100"
        )
    return value


def _parse_interval(text: str, variable: str) -> float:
    value = ascii_decimal(strip_space(text))
    if value is None or not 0.0 <= value <= 60.0:
        raise ConfigError(
            variable,
            f"invalid value {clip(text)!r}; expected seconds from 0 to 60",
        )
    return value


def read_destination_text(
    env: Mapping[str, str], read_text: Callable[[str], str] | None = None
) -> tuple[str, str]:
    """Return (variable-or-path name for errors, destination text) from the environment."""
    path = strip_space(env.get(ENV_DESTINATION_FILE, ""))
    inline = env.get(ENV_DESTINATION)
    if path:
        if inline is not None and strip_space(inline):
            raise ConfigError(
                ENV_DESTINATION_FILE,
                f"is set together with {ENV_DESTINATION}; set only one of them",
            )
        reader = read_text or read_destination_file
        try:
            return path, reader(path)
        except OSError as err:
            cause = err.strerror or str(err)
            raise ConfigError(
                ENV_DESTINATION_FILE,
                f"cannot read destination file {path!r}: {cause}; "
                "mount the ConfigMap or fix the path",
            ) from None
    if inline is None or not strip_space(inline):
        raise ConfigError(
            ENV_DESTINATION,
            f"is not set; set it (or {ENV_DESTINATION_FILE}) to lines of {RULE_SYNTAX}",
        )
    return ENV_DESTINATION, inline


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(mode: int, variable: str) -> str | None:
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
    mounted = variable in (ENV_DESTINATION_FILE, ENV_CNI_CONFIG)
    return (
        f"it is {kind}, not a regular file; point {variable} at a file"
        + (" (the mounted ConfigMap's key)" if mounted else "")
    )


def _too_large(size: str) -> str:
    return (
        f"it is larger than {DESTINATION_FILE_LIMIT} bytes ({size}); the limit holds "
        "100,000 rules: split the rules over several routers or drop comments"
    )


def read_destination_file(path: str) -> str:
    """The destination file's text: a regular file of at most `DESTINATION_FILE_LIMIT` bytes."""
    return read_bounded_file(path, ENV_DESTINATION_FILE, "destination file")


def read_bounded_file(path: str, variable: str, what: str) -> str:
    """The text of the file ``variable`` names: regular, at most `DESTINATION_FILE_LIMIT` bytes.

    The one reader of the file (``init``, ``wait`` and its reloads), so that a
    FIFO, a device or a socket is refused instead of hanging the router or
    filling its memory: the type is checked before opening (a socket cannot be
    opened at all) and again on the open descriptor (the path may change in
    between), the open never blocks (O_NONBLOCK: a FIFO without writer), and
    at most one byte more than the limit is ever read. Raises `ConfigError`.
    """

    def refuse(cause: str) -> ConfigError:
        return ConfigError(variable, f"cannot read {what} {path!r}: {cause}")

    try:
        problem = _not_regular(os.stat(path).st_mode, variable)
        if problem is not None:
            raise refuse(problem)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            problem = _not_regular(info.st_mode, variable)
            if problem is not None:
                raise refuse(problem)
            if info.st_size > DESTINATION_FILE_LIMIT:
                raise refuse(_too_large(f"{info.st_size} bytes"))
            chunks: list[bytes] = []
            left = DESTINATION_FILE_LIMIT + 1
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
    except ConfigError:
        raise
    except OSError as err:
        raise refuse(
            f"{err.strerror or err}; mount the ConfigMap or fix the path"
        ) from None
    except ValueError:  # a NUL byte, or a code point the file system cannot name
        raise refuse(f"it is not a valid path; fix {variable}") from None
    data = b"".join(chunks)
    if len(data) > DESTINATION_FILE_LIMIT:
        raise refuse(_too_large("it grew while it was read"))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise refuse(
            f"line {line} is not UTF-8 (byte 0x{data[err.start]:02x}); save the file as UTF-8"
        ) from None


def load_config(
    env: Mapping[str, str], read_text: Callable[[str], str] | None = None
) -> Config:
    """Build a `Config` from environment variables, exactly as the upstream image reads them."""
    mode = _parse_choice(Mode, env.get(ENV_MODE, Mode.LEGACY.value) or "legacy", ENV_MODE)
    backend = _parse_choice(
        Backend, env.get(ENV_BACKEND, Backend.NFTABLES.value) or "nftables", ENV_BACKEND
    )
    debug = _parse_bool(env.get(ENV_DEBUG, ""), ENV_DEBUG)
    pod_if = parse_ifname(env.get(ENV_POD_INTERFACE, DEFAULT_POD_INTERFACE), ENV_POD_INTERFACE)
    egress_if = parse_ifname(env.get(ENV_INTERFACE, DEFAULT_EGRESS_INTERFACE), ENV_INTERFACE)
    if pod_if == egress_if:
        raise ConfigError(
            ENV_INTERFACE,
            f"is the same interface as {ENV_POD_INTERFACE} ({pod_if!r}); the router needs "
            "a pod-side and a physical-side interface",
        )
    http_port = parse_http_port(env.get(ENV_HTTP_PORT, str(DEFAULT_HTTP_PORT)))
    if ENV_SOURCE not in env:
        raise ConfigError(ENV_SOURCE, "is not set; set it to the reserved address")
    sources = parse_sources(env[ENV_SOURCE])
    if ENV_GATEWAY not in env:
        raise ConfigError(ENV_GATEWAY, "is not set; set it to the gateway's address")
    gateways = parse_gateways(env[ENV_GATEWAY])
    variable, text = read_destination_text(env, read_text)
    destinations = parse_destinations(text, variable)
    check_families(sources, gateways, destinations, destination_variable=variable)
    check_destinations(sources, gateways, destinations, variable, text)
    check_http_port(destinations, http_port, variable, text)
    from egress_router.core import ha  # noqa: PLC0415 (ha builds on this module)

    ha_settings = ha.parse_settings(env)
    cfg = Config(
        sources,
        gateways,
        destinations,
        mode=mode,
        backend=backend,
        pod_interface=pod_if,
        egress_interface=egress_if,
        debug=debug,
        announce_count=_parse_count(
            env.get(ENV_ANNOUNCE_COUNT, str(DEFAULT_ANNOUNCE_COUNT)), ENV_ANNOUNCE_COUNT
        ),
        announce_interval=_parse_interval(
            env.get(ENV_ANNOUNCE_INTERVAL, str(DEFAULT_ANNOUNCE_INTERVAL)), ENV_ANNOUNCE_INTERVAL
        ),
        http_port=http_port,
        ha=ha_settings,
    )
    if ha_settings is not None:
        ha.check_sources(cfg)
    return cfg


def parse_http_port(text: str, variable: str = ENV_HTTP_PORT) -> int:
    """``EGRESS_ROUTER_HTTP_PORT``: the wait container's HTTP port, 0 for none."""
    value = ascii_number(strip_space(text))
    if value is None or value > 65535:
        raise ConfigError(
            variable,
            f"invalid value {clip(text)!r}; expected a port from 1 to 65535, or 0 to turn the "
            "HTTP server (/healthz, /readyz, /metrics) off",
        )
    return value


def check_http_port(
    destinations: Destinations, http_port: int, variable: str, text: str = ""
) -> None:
    """A TCP rule on the HTTP port would be shadowed by the port's accept rule: refuse it."""
    if not http_port:
        return
    lines = split_lines(text)
    rules: list[PortRule | NamedRule] = [*destinations.rules, *destinations.named]
    for rule in rules:
        if rule.proto is Proto.TCP and rule.port == http_port:
            raw = strip_space(lines[rule.line - 1]) if 0 < rule.line <= len(lines) else None
            raise ConfigError(
                variable,
                f"port {http_port}/tcp is the router's own HTTP port ({ENV_HTTP_PORT}, "
                f"/healthz, /readyz, /metrics); use another local port, or set {ENV_HTTP_PORT} "
                "to a free port (0 turns the HTTP server off)",
                line=rule.line or None,
                text=raw,
            )


def check_families(
    sources: tuple[Source, ...],
    gateways: tuple[IPAddress, ...],
    destinations: Destinations,
    *,
    destination_variable: str = ENV_DESTINATION,
    source_variable: str = ENV_SOURCE,
    gateway_variable: str = ENV_GATEWAY,
) -> None:
    """Check that sources, gateways and destinations agree on address families."""
    source_families = {s.family for s in sources}
    gateway_families = {g.version for g in gateways}
    for family in sorted(source_families - gateway_families):
        raise ConfigError(
            gateway_variable,
            f"has no IPv{family} gateway but {source_variable} has an IPv{family} address; "
            f"add the IPv{family} gateway",
        )
    for family in sorted(gateway_families - source_families):
        raise ConfigError(
            source_variable,
            f"has no IPv{family} address but {gateway_variable} has an IPv{family} gateway; "
            f"add the IPv{family} source or remove that gateway",
        )
    for source in sources:
        gateway = next(g for g in gateways if g.version == source.family)
        if gateway == source.address:
            raise ConfigError(
                gateway_variable,
                f"gateway {gateway} is the source address itself; expected the node's gateway",
            )
    items: list[PortRule | Fallback] = [*destinations.rules, *destinations.fallbacks]
    for item in items:
        if item.family not in source_families:
            raise ConfigError(
                destination_variable,
                f"destination {item.address} is IPv{item.family} but {source_variable} has no "
                f"IPv{item.family} address; add one (e.g. {source_variable}=<v4>,<v6>) "
                "or remove the line",
                line=item.line,
            )


def check_destinations(
    sources: tuple[Source, ...],
    gateways: tuple[IPAddress, ...],
    destinations: Destinations,
    variable: str,
    text: str = "",
) -> None:
    """Refuse destinations that are the router's own addresses or its egress subnet's."""
    items: list[PortRule | Fallback] = [*destinations.rules, *destinations.fallbacks]
    judged: dict[IPAddress, str | None] = {}
    for item in items:
        if item.address not in judged:
            judged[item.address] = destination_problem(item.address, sources, gateways)
        problem = judged[item.address]
        if problem is None:
            continue
        lines = split_lines(text)
        what = "fallback address" if isinstance(item, Fallback) else "destination address"
        raw = strip_space(lines[item.line - 1]) if 0 < item.line <= len(lines) else None
        raise ConfigError(
            variable,
            f"{what} {problem}; expected the address of a service behind the gateway",
            line=item.line or None,
            text=raw,
        )


# ---------------------------------------------------------------------- the wait process


@dataclass(frozen=True)
class WaitSettings:
    """How often the waiting container looks, from ``EGRESS_ROUTER_*`` variables."""

    reconcile: float = DEFAULT_RECONCILE
    watch: float = DEFAULT_WATCH
    dns_min_ttl: float = DEFAULT_DNS_MIN_TTL
    dns_max_ttl: float = DEFAULT_DNS_MAX_TTL
    sample: float = DEFAULT_SAMPLE
    metrics_rules: int = DEFAULT_METRICS_RULES  # per-rule series up to this many rules


def _seconds(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    text = strip_space(env.get(name, ""))
    if not text:
        return default
    value = ascii_decimal(text)
    if value is None or not low <= value <= high:
        raise ConfigError(
            name,
            f"invalid value {clip(text)!r}; expected seconds from {low:g} to {high:g}",
        )
    return value


def _count(env: Mapping[str, str], name: str, default: int, high: int) -> int:
    text = strip_space(env.get(name, ""))
    if not text:
        return default
    value = ascii_number(text)
    if value is None or value > high:
        raise ConfigError(
            name, f"invalid value {clip(text)!r}; expected a count from 0 to {high}"
        )
    return value


def parse_wait_settings(env: Mapping[str, str]) -> WaitSettings:
    """Parse the waiting container's own variables (all optional)."""
    settings = WaitSettings(
        metrics_rules=_count(env, ENV_METRICS_RULES, DEFAULT_METRICS_RULES, 1_000_000),
        reconcile=_seconds(env, ENV_RECONCILE, DEFAULT_RECONCILE, 0.2, 3600),
        watch=_seconds(env, ENV_WATCH, DEFAULT_WATCH, 0.1, 60),
        dns_min_ttl=_seconds(env, ENV_DNS_MIN_TTL, DEFAULT_DNS_MIN_TTL, 0.5, 86400),
        dns_max_ttl=_seconds(env, ENV_DNS_MAX_TTL, DEFAULT_DNS_MAX_TTL, 0.5, 86400),
        sample=_seconds(env, ENV_SAMPLE, DEFAULT_SAMPLE, 1, 3600),
    )
    if settings.dns_max_ttl < settings.dns_min_ttl:
        raise ConfigError(
            ENV_DNS_MAX_TTL,
            f"is below {ENV_DNS_MIN_TTL} ({settings.dns_max_ttl:g} < "
            f"{settings.dns_min_ttl:g}); raise it or lower the minimum",
        )
    return settings
