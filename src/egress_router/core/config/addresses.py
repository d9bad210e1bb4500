"""Addresses: the reserved sources (and their pool), the gateways, host names, destinations.

One judgement of what an address may be, for literal destinations and DNS answers alike
(`destination_problem`), and the checks that sources, gateways and destinations agree.
"""

from __future__ import annotations

import ipaddress

from egress_router.core.config.model import (
    Destinations,
    Fallback,
    IPAddress,
    IPInterface,
    IPNetwork,
    PortRule,
    Source,
)
from egress_router.core.config.text import (
    HOST_LABEL,
    ConfigError,
    ascii_number,
    clip,
    split_lines,
    split_list,
    strip_space,
)
from egress_router.core.config.variables import (
    ENV_DESTINATION,
    ENV_GATEWAY,
    ENV_SOURCE,
    MAX_POOL,
)

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


def parse_sources(text: str, variable: str = ENV_SOURCE) -> tuple[Source, ...]:
    """Parse ``EGRESS_SOURCE``: per family one address or a pool, each optionally ``/len``.

    Several addresses of one family (``192.168.12.99/24,192.168.12.100/24``)
    form a source-address pool that SNAT spreads connections over; they must
    share one subnet (all with the same ``/len``, or all without ``/len``). The result
    is ordered by family, then as written.
    """
    parts = split_list(text)
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
            f"is not in the subnet of {first.text}; the IPv{source.family} addresses "
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
    parts = split_list(text)
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


