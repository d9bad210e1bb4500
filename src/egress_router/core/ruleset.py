"""Render the router's data path as one nftables transaction or iptables-restore payloads.

Pure functions from a `Config` to text, golden-tested without root. The
nftables ruleset lives in its own table and is replaced atomically (the
``add table``/``delete table``/definition idiom inside one ``nft -f``
transaction), so an apply is all-or-nothing and never touches other tables.

Shape of the nftables data path (per-packet cost independent of rule count):

* ``antispoof`` (filter, prerouting, after conntrack, before dstnat): a packet
  on the pod or the egress interface whose source would not be routed back out
  of that same interface is dropped (``fib saddr . iif``, which honours the
  pod-return policy routing); established packets of a redirected flow on the
  interface and in the direction their flow allows skip the lookup (their
  source is the one checked with the flow's first packet); on the egress
  interface, a family that is not configured is dropped whole.
* ``prerouting`` (nat): only connections that arrive on the pod interface and
  are addressed to the router itself are redirected, through one map lookup
  keyed by ``l4proto . dport`` per family; unmatched ports of a family with a
  fallback go to the fallback address, same port.
* ``postrouting`` (nat): SNAT to the reserved source on the egress interface.
* ``forward`` (filter, policy drop): the one-way door, bound to interface and
  conntrack direction. Pod side to egress side: only the original direction
  of a redirected (``ct status dnat``) connection; egress side to pod side:
  only the reply direction of one. A packet from the physical network that
  forges the original tuple of a live flow matches its conntrack entry but in
  the wrong direction, and is dropped.
* ``input`` (filter): the HTTP port only from the pod interface (and
  loopback); a port with no rule and no fallback is refused at once (TCP
  reset, ICMP port unreachable) instead of timing out; from the egress side
  only replies of the router's own connections (and ICMP) get in. In the
  proxy modes (``http-proxy``, ``dns-proxy``) nothing is redirected and the
  pod side reaches the pod's own listeners (the proxy) instead; the rest holds.
* ``source_guard`` (filter, postrouting, after SNAT): the last resort. Nothing
  leaves the egress interface with a source other than a reserved address
  (IPv6 neighbour discovery and MLD from link-local or unspecified sources
  excepted); postrouting sees forwarded and locally generated packets alike.

The iptables backend renders the same policy with upstream-equivalent NAT
rules (one rule per port in our own chains) for clusters that need xtables;
it is the compatibility path, not the fast one. xtables has no filter hook
after SNAT, so its guard checks locally generated packets in OUTPUT and
relies on the SNAT rule catching every new connection out of the egress
interface for forwarded ones. It always renders both families: a family
without a source gets the closed policy (nothing forwarded, nothing in from
the egress side, the HTTP port only from the pod side).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from egress_router.core import config, ha

TABLE_FAMILY = "inet"
TABLE = "egress_router"
MAP_V4 = "redirect_v4"
MAP_V6 = "redirect_v6"
CHAIN_PREROUTING = "prerouting"
CHAIN_POSTROUTING = "postrouting"
CHAIN_FORWARD = "forward"
CHAIN_GUARD = "guard"  # forward's check that a redirected flow's rule still exists
CHAIN_INPUT = "input"
CHAIN_ANTISPOOF = "antispoof"
CHAIN_SOURCE_GUARD = "source_guard"  # nothing leaves the egress interface but reserved sources

L4_PROTOS = "tcp, udp, sctp"

IPT_PREROUTING = "EGRESS-ROUTER-PREROUTING"
IPT_POSTROUTING = "EGRESS-ROUTER-POSTROUTING"
IPT_FORWARD = "EGRESS-ROUTER-FORWARD"
IPT_INPUT = "EGRESS-ROUTER-INPUT"
IPT_OUTPUT = "EGRESS-ROUTER-OUTPUT"
IPT_ANTISPOOF = "EGRESS-ROUTER-ANTISPOOF"

# (table, built-in chain, our chain): the jumps that hook our chains in.
IPT_JUMPS: tuple[tuple[str, str, str], ...] = (
    ("mangle", "PREROUTING", IPT_ANTISPOOF),
    ("nat", "PREROUTING", IPT_PREROUTING),
    ("nat", "POSTROUTING", IPT_POSTROUTING),
    ("filter", "FORWARD", IPT_FORWARD),
    ("filter", "INPUT", IPT_INPUT),
    ("filter", "OUTPUT", IPT_OUTPUT),
)
IPT_TABLES = ("mangle", "nat", "filter")

# IPv6 control traffic the kernel itself sends from link-local or unspecified sources
# (neighbour discovery, DAD, MLD): the only exception to "reserved source only".
ND_TYPES_NFT = (
    "nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, "
    "mld-listener-report, mld-listener-done, mld2-listener-report"
)
LINK_LOCAL6 = "fe80::/10"

_NFPROTO = {4: "ipv4", 6: "ipv6"}
_IP = {4: "ip", 6: "ip6"}
_MAP = {4: MAP_V4, 6: MAP_V6}
_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
_KEY_TYPE = "inet_proto . inet_service"

Key = tuple[config.Proto, int]
Target = tuple[config.IPAddress, int]


def conns_set(family: int) -> str:
    """Set of rule keys, looked up in the nat chain: its element counters count connections."""
    return f"conns_v{family}"


def traffic_set(family: int) -> str:
    """Set of rule keys, looked up for every forwarded packet: element counters count traffic."""
    return f"traffic_v{family}"


def redirect_map(family: int) -> str:
    """Map of rules with one destination address: key to address . port."""
    return _MAP[family]


def spread_map(family: int) -> str:
    """Verdict map of rules whose DNS name has several addresses: key to a jump."""
    return f"spread_v{family}"


def spread_chain(family: int, key: Key) -> str:
    """The chain that spreads one rule's new connections over its addresses."""
    return f"spread_v{family}_{key[0].value}_{key[1]}"


def check_verbatim(cfg: config.Config) -> None:
    """Refuse a `Config` whose strings the ruleset could not carry verbatim.

    The parsers already refuse them (`config.interface_name_problem`,
    `config.parse_host`, `config.parse_address`); this is the second lock, for a
    `Config` built some other way: interface names are pasted into nft strings
    and iptables-restore tokens, host names into comments, and an IPv6 zone
    would be pasted after its address. Raises ValueError (a bug, not bad input).
    """
    for name in (cfg.pod_interface, cfg.egress_interface):
        if not config.IFNAME.fullmatch(name):
            raise ValueError(f"cannot render the ruleset: unvalidated interface name {name!r}")
    destinations = cfg.destinations
    hosts = [n.host for n in destinations.named] + [f.host for f in destinations.named_fallbacks]
    hosts += [r.host for r in destinations.rules if r.host is not None]
    for host in dict.fromkeys(hosts):
        labels = host.removesuffix(".").split(".")
        if not all(config.HOST_LABEL.fullmatch(label) for label in labels):
            raise ValueError(f"cannot render the ruleset: unvalidated host name {host!r}")
    addresses = [r.address for r in destinations.rules]
    addresses += [f.address for f in destinations.fallbacks] + [s.address for s in cfg.sources]
    for address in addresses:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            raise ValueError(f"cannot render the ruleset: address {address} has a zone")


def _sorted_rules(rules: Iterable[config.PortRule]) -> list[config.PortRule]:
    # `_value_`, not `value`: the property costs more than the rest of the key at 10,000 rules.
    return sorted(rules, key=lambda r: (r.proto._value_, r.port))


@functools.lru_cache(maxsize=4096)
def _address_text(address: config.IPAddress) -> str:
    # Many rules, few destinations: ipaddress's str() costs more than the rest of a
    # map element's text, so each address is formatted once.
    return str(address)


def _endpoint(address: config.IPAddress, port: int) -> str:
    text = _address_text(address)
    return f"[{text}]:{port}" if address.version == 6 else f"{text}:{port}"


def rule_label(rule: config.PortRule | config.NamedRule) -> str:
    """The destination as configured: ``203.0.113.25:80`` or ``api.example.com:443``."""
    if isinstance(rule, config.NamedRule) or rule.host is not None:
        return f"{rule.host}:{rule.remote_port}"
    return _endpoint(rule.address, rule.remote_port)


def _family_list(cfg: config.Config) -> list[int]:
    return sorted({s.family for s in cfg.sources} | cfg.destinations.families())


def group_rules(cfg: config.Config, family: int) -> dict[Key, list[Target]]:
    """The rules of one family by key (protocol, local port), sorted; targets sorted too.

    A key has several targets only when a DNS name answered with several
    addresses (the parser allows one rule per key).
    """
    groups: dict[Key, list[Target]] = {}
    for rule in _sorted_rules(cfg.destinations.rules_of(family)):
        groups.setdefault((rule.proto, rule.port), []).append((rule.address, rule.remote_port))
    for targets in groups.values():
        targets.sort(key=lambda t: (int(t[0]), t[1]))
    return groups


def _keys_text(keys: Iterable[Key]) -> str:
    return ", ".join(f"{proto._value_} . {port}" for proto, port in keys)


def _target_text(target: Target) -> str:
    return f"{_address_text(target[0])} . {target[1]}"


def _spread_rule(family: int, key: Key, targets: list[Target]) -> str:
    # numgen inc: round robin over the addresses, one map lookup per new connection.
    spread = ", ".join(f"{i} : {_target_text(t)}" for i, t in enumerate(targets))
    return (
        f"meta l4proto {key[0].value} dnat {_IP[family]} to "
        f"numgen inc mod {len(targets)} map {{ {spread} }}"
    )


def _set_lines(name: str, keys: list[Key], what: str) -> list[str]:
    # Elements of the counting sets go on one line: one rule per map element
    # stays the only line-per-rule block, which keeps the ruleset readable.
    lines = [f"\tset {name} {{  # {what}", f"\t\ttype {_KEY_TYPE}", "\t\tcounter"]
    if keys:
        lines.append(f"\t\telements = {{ {_keys_text(keys)} }}")
    return [*lines, "\t}", ""]


def _prerouting_rules(
    cfg: config.Config, families: list[int], groups: dict[int, dict[Key, list[Target]]]
) -> list[str]:
    if not cfg.mode.redirects:
        return []  # the proxy modes: no DNAT at all, the chain stays empty
    rules = [
        f'iifname != "{cfg.pod_interface}" return',
        "fib daddr type != local return",
    ]
    if cfg.http_port:
        rules.append(f"tcp dport {cfg.http_port} return")
    for family in families:
        nfproto = f"meta nfproto {_NFPROTO[family]}"
        rules.append(f"{nfproto} meta l4proto . th dport @{conns_set(family)}")
        if any(len(t) > 1 for t in groups[family].values()):
            rules.append(f"{nfproto} meta l4proto . th dport vmap @{spread_map(family)}")
        rules.append(
            f"{nfproto} dnat {_IP[family]} to meta l4proto . th dport map @{redirect_map(family)}"
        )
        addresses = _fallbacks_of(cfg, family)
        if addresses:
            rules.append(_fallback_rule(family, addresses))
    return rules


def _fallbacks_of(cfg: config.Config, family: int) -> list[config.IPAddress]:
    return sorted((f.address for f in cfg.destinations.fallbacks if f.family == family), key=int)


def _fallback_rule(family: int, addresses: list[config.IPAddress]) -> str:
    head = (
        f"meta nfproto {_NFPROTO[family]} meta l4proto {{ {L4_PROTOS} }} dnat {_IP[family]} to "
    )
    if len(addresses) == 1:
        return head + str(addresses[0])
    spread = ", ".join(f"{i} : {address}" for i, address in enumerate(addresses))
    return head + f"numgen inc mod {len(addresses)} map {{ {spread} }}"


# Conntrack's TIME_WAIT for redirected TCP connections, seconds. The kernel's default
# (120 s) holds a NAT tuple twice as long as the destination's TIME_WAIT (60 s on Linux,
# 2 MSL on BSDs), so at a high rate of short connections the port space to one
# destination fills with tuples nobody needs, and the NAT starts evicting TIME_WAIT
# entries the destination still remembers (PAWS then drops another client's SYN: a 1 s
# retry). Just over 60 s frees a tuple only after the destination has let it go.
NAT_TIME_WAIT = 65


def ct_timeout(family: int) -> str:
    """The conntrack timeout policy given to redirected TCP connections of ``family``."""
    return f"nat_tcp_v{family}"


def _ct_timeout_lines(family: int) -> list[str]:
    return [
        f"\tct timeout {ct_timeout(family)} {{  # see NAT_TIME_WAIT",
        "\t\tprotocol tcp",
        f"\t\tl3proto {_IP[family]}",
        f"\t\tpolicy = {{ time_wait : {NAT_TIME_WAIT} }}",
        "\t}",
        "",
    ]


def snat_statement(cfg: config.Config, family: int) -> str:
    """SNAT to the family's source address, or spread over its pool.

    A pool address is picked by a hash of the client's address and port, so the same
    client tuple always leaves from the same pool address. Linux clients cycle through
    their ports in about a minute at 125 connections a second, so a client often reuses
    a port while conntrack still holds its previous connection in TIME_WAIT; conntrack
    then replaces the entry, and with the hash the new connection asks for the same NAT
    tuple again, which the destination accepts (same client, increasing timestamps).
    Handing addresses out in turn (``numgen inc``) moves it to another address and frees
    a tuple the destination still holds in TIME_WAIT for the next stranger, whose SYN
    the destination then answers with an ACK (a reset and a retry). An address range
    (``snat to a-b``) would hash the client address only: one pod, one address.
    """
    pool = cfg.pool(family)
    if len(pool) == 1:
        return f"snat {_IP[family]} to {pool[0].address}"
    spread = ", ".join(f"{i} : {s.address}" for i, s in enumerate(pool))
    return (
        f"snat {_IP[family]} to jhash {_IP[family]} saddr . th sport mod {len(pool)} "
        f"map {{ {spread} }}"
    )


def render_nftables(
    cfg: config.Config, *, groups: dict[int, dict[Key, list[Target]]] | None = None
) -> str:
    """The whole ruleset as one ``nft -f`` transaction that replaces our table atomically.

    ``groups``: `group_rules` of every family, when the caller has them already.
    """
    check_verbatim(cfg)
    pod = cfg.pod_interface
    egress = cfg.egress_interface
    out: list[str] = [
        "# egress-router ruleset: generated, do not edit (re-run egress-router instead)",
    ]
    out += [
        f"# line {n.line}: {n.port} {n.proto.value} {n.host} {n.remote_port}: "
        "a host name, resolved when the rules are applied"
        for n in cfg.destinations.named
    ]
    out += [
        f"# line {f.line}: fallback {f.host}: a host name, resolved when the rules are applied"
        for f in cfg.destinations.named_fallbacks
    ]
    out += [
        f"add table {TABLE_FAMILY} {TABLE}",
        f"delete table {TABLE_FAMILY} {TABLE}",
        f"table {TABLE_FAMILY} {TABLE} {{",
    ]
    families = _family_list(cfg)
    if groups is None:
        groups = {family: group_rules(cfg, family) for family in families}
    for family in cfg.families():
        out += _ct_timeout_lines(family)
    for family in families:
        keys = list(groups[family])
        out += _set_lines(conns_set(family), keys, "new connections per rule")
        out += _set_lines(traffic_set(family), keys, "packets and bytes per rule")
        out += [
            f"\tmap {redirect_map(family)} {{",
            f"\t\ttype {_KEY_TYPE} : {_ADDR_TYPE[family]} . inet_service",
        ]
        single = [(key, targets[0]) for key, targets in groups[family].items() if len(targets) == 1]
        if single:
            out.append("\t\telements = {")
            out += [
                f"\t\t\t{proto.value} . {port} : {_target_text(target)},"
                for (proto, port), target in single
            ]
            out.append("\t\t}")
        out += ["\t}", ""]
        multi = [(key, targets) for key, targets in groups[family].items() if len(targets) > 1]
        if multi:
            out += [
                f"\tmap {spread_map(family)} {{",
                f"\t\ttype {_KEY_TYPE} : verdict",
                "\t\telements = {",
            ]
            out += [
                f"\t\t\t{key[0].value} . {key[1]} : jump {spread_chain(family, key)},"
                for key, _ in multi
            ]
            out += ["\t\t}", "\t}", ""]
            for key, targets in multi:
                out += [
                    f"\tchain {spread_chain(family, key)} {{",
                    f"\t\t{_spread_rule(family, key, targets)}",
                    "\t}",
                    "",
                ]

    out.append(f"\tchain {CHAIN_PREROUTING} {{")
    out.append("\t\ttype nat hook prerouting priority dstnat; policy accept;")
    out += [f"\t\t{rule}" for rule in _prerouting_rules(cfg, families, groups)]
    out += ["\t}", ""]

    out += [
        f"\tchain {CHAIN_POSTROUTING} {{",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
    ]
    if cfg.ha is not None:
        # HA: the VRRP adverts leave from the replica's own link-local address; SNAT
        # to the reserved one would break their checksum (and the election with it).
        out.append(f'\t\toifname "{egress}" ip protocol 112 accept')
    out += [
        f'\t\toifname "{egress}" meta nfproto {_NFPROTO[family]} {snat_statement(cfg, family)}'
        for family in cfg.families()
    ]
    out += ["\t}", ""]

    out.append(f"\tchain {CHAIN_GUARD} {{")
    out += [f"\t\t{rule}" for rule in _forward_guard(cfg, families)]
    out += ["\t}", ""]

    out += [
        f"\tchain {CHAIN_FORWARD} {{",
        "\t\ttype filter hook forward priority filter; policy drop;",
    ]
    # Count before the accepts: both directions of every redirected connection,
    # keyed by the local port the client dialled (the conntrack original tuple).
    out += [
        f"\t\tmeta nfproto {_NFPROTO[family]} meta l4proto {{ {L4_PROTOS} }} "
        f"meta l4proto . ct original proto-dst @{traffic_set(family)}"
        for family in families
    ]
    # Bound to interfaces and direction: ICMP errors (ct state related) carry the
    # direction of the packet they quote, so they pass only the way their flow does.
    out += [
        f'\t\tiifname "{pod}" oifname "{egress}" ct state new ct status dnat '
        f"meta nfproto {_NFPROTO[family]} meta l4proto tcp "
        f'ct timeout set "{ct_timeout(family)}"'
        for family in cfg.families()
    ]
    out += [
        f"\t\tjump {CHAIN_GUARD}",
        f'\t\tiifname "{pod}" oifname "{egress}" ct direction original ct status dnat accept',
        f'\t\tiifname "{egress}" oifname "{pod}" ct direction reply ct status dnat accept',
        '\t\tcounter comment "not a redirected connection: dropped"',
        "\t}",
        "",
    ]
    out += _nft_input(cfg)
    out.append("")
    out += _nft_antispoof(cfg)
    out.append("")
    out += _nft_guard(cfg)
    out.append("}")
    return "\n".join(out) + "\n"


def _nft_input(cfg: config.Config) -> list[str]:
    pod = cfg.pod_interface
    egress = cfg.egress_interface
    lines = [
        f"\tchain {CHAIN_INPUT} {{",
        "\t\ttype filter hook input priority filter; policy accept;",
    ]
    if cfg.http_port:
        # Loopback stays allowed: the router's own probes of its pod address arrive there.
        lines.append(
            f'\t\ttcp dport {cfg.http_port} iifname != {{ "{pod}", "lo" }} '
            'counter drop comment "HTTP only from the pod side"'
        )
        lines.append(f'\t\tiifname "{pod}" tcp dport {cfg.http_port} accept')
    lines += _nft_ha_input(cfg)
    if cfg.mode.redirects:
        lines += [
            f'\t\tiifname "{pod}" ct state new meta l4proto tcp reject with tcp reset',
            f'\t\tiifname "{pod}" ct state new meta l4proto {{ udp, sctp }} '
            "reject with icmpx type port-unreachable",
        ]
    else:
        # The proxy modes: the pod's own listeners (the proxy's ports) answer the pod side.
        lines.append(f'\t\tiifname "{pod}" accept comment "the proxy listens on the pod side"')
    lines += [
        # From the physical side only replies of the router's own connections reach a
        # socket: a forged original-direction packet of any flow does not.
        f'\t\tiifname "{egress}" meta l4proto {{ {L4_PROTOS} }} ct direction reply accept',
        f'\t\tiifname "{egress}" meta l4proto {{ {L4_PROTOS} }} drop',
        "\t}",
    ]
    return lines


def _nft_ha_input(cfg: config.Config) -> list[str]:
    """HA: VRRP adverts for the pair's VRID only from its link-local range at its priority.

    Both replicas advertise from a 169.254.0.0/16 address at the pair's priority; VRRP
    has no authentication, and a host of the egress L2 advertising the VRID from its own
    address, or outbidding the pair (priority 255), would keep every replica from holding
    the address. Dropped here, keepalived never hears them; the pair's own watch reads
    adverts before the firewall (a packet socket), so they are still counted and named.
    Other VRIDs pass: other groups' business, and the VRID check's.
    """
    if cfg.ha is None:
        return []
    egress = cfg.egress_interface
    vrrp = f'iifname "{egress}" ip protocol vrrp @th,8,8 {cfg.ha.vrid}'
    return [
        f"\t\t{vrrp} ip saddr != {ha.LINK_LOCAL} counter drop "
        'comment "VRRP for our VRID from outside the pair\'s 169.254.0.0/16: dropped"',
        f"\t\t{vrrp} @th,16,8 != {cfg.ha.priority} counter drop "
        'comment "VRRP for our VRID at another priority than the pair\'s: dropped"',
    ]


def _nft_antispoof(cfg: config.Config) -> list[str]:
    pod = cfg.pod_interface
    egress = cfg.egress_interface
    lines = [
        f"\tchain {CHAIN_ANTISPOOF} {{",
        # After conntrack (mangle, before dstnat): the route lookup runs for new, related,
        # invalid and untracked packets, about once per connection, instead of for each of
        # its ten or so packets (in raw, before conntrack, nothing tells them apart; a
        # lookup costs about half a microsecond of the ~300 us of CPU a short connection
        # takes in the lab). A packet dropped here is dropped before its conntrack entry
        # is confirmed, so a forged packet still never creates one.
        "\t\ttype filter hook prerouting priority mangle; policy accept;",
    ]
    lines += [
        f'\t\tiifname "{egress}" meta nfproto {_NFPROTO[family]} '
        f'counter drop comment "IPv{family} is not configured on {egress}"'
        for family in (4, 6)
        if cfg.source(family) is None
    ]
    lines += [
        # The established packets of a redirected flow, each on the interface and in the
        # direction its flow allows: the same tuple, hence the same source, as the
        # packet that created the entry on the pod side (checked here then, before
        # dstnat gave it ``ct status dnat``), or as the replies of a connection forwarded
        # out of the egress interface to that very address. Anything else that matches
        # an entry (a forged reply from the pod side, a forged original from the
        # physical side, an ICMP error) is still checked.
        f'\t\tiifname "{pod}" ct direction original ct status dnat ct state established return',
        f'\t\tiifname "{egress}" ct direction reply ct status dnat ct state established return',
        f'\t\tiifname != {{ "{pod}", "{egress}" }} return',
        # DAD probes come from :: and are never forwarded; fib has no route back for them.
        "\t\tip6 saddr :: return",
        "\t\tfib saddr . iif oif missing counter drop "
        'comment "source not routed back through its interface: dropped"',
        "\t}",
    ]
    return lines


def _nft_guard(cfg: config.Config) -> list[str]:
    egress = cfg.egress_interface
    lines = [
        f"\tchain {CHAIN_SOURCE_GUARD} {{",
        # After srcnat: the source checked is the one on the wire.
        "\t\ttype filter hook postrouting priority srcnat + 10; policy accept;",
        f'\t\toifname != "{egress}" return',
    ]
    for family in (4, 6):
        addresses = [str(s.address) for s in cfg.sources if s.family == family]
        if addresses:
            match = addresses[0] if len(addresses) == 1 else f"{{ {', '.join(addresses)} }}"
            lines.append(f"\t\t{_IP[family]} saddr {match} accept")
    if cfg.source(6) is not None:
        lines.append(
            f"\t\tip6 saddr {{ ::, {LINK_LOCAL6} }} icmpv6 type {{ {ND_TYPES_NFT} }} accept"
        )
    if cfg.ha is not None:
        # HA: the VRRP adverts leave from the replica's own link-local address, to the
        # link-local VRRP group only: they never leave the L2.
        lines.append(
            f"\t\tip saddr {ha.LINK_LOCAL} ip daddr {ha.VRRP_GROUP4} ip protocol vrrp accept"
        )
    lines += [
        '\t\tcounter drop comment "not from a reserved address: dropped"',
        "\t}",
    ]
    return lines


def _forward_guard(cfg: config.Config, families: list[int]) -> list[str]:
    """Drop packets of redirected connections whose rule is gone (before the accepts).

    Replacing the rules leaves established connections in conntrack, NAT
    binding included; until the waiting container cuts them (a moment later),
    a removed rule's connection would still reach its old destination. With
    this check in the same transaction as the removal, it stops at once: a
    redirected flow passes only while its port is a key of the rule set, or
    while its destination is one of the fallbacks.
    """
    rules = []
    for family in families:
        fallbacks = _fallbacks_of(cfg, family)
        rule = (
            # The l4proto match first gives nft the type of ``ct original proto-dst``.
            f"meta nfproto {_NFPROTO[family]} meta l4proto {{ {L4_PROTOS} }} ct status dnat "
            f"meta l4proto . ct original proto-dst != @{conns_set(family)}"
        )
        if fallbacks:  # nft lists a one-element set as its element: written the same way
            listed = str(fallbacks[0]) if len(fallbacks) == 1 else (
                f"{{ {', '.join(map(str, fallbacks))} }}"
            )
            rule += f" ct reply {_IP[family]} saddr != {listed}"
        rules.append(rule + ' counter drop comment "its rule was removed"')
    return rules


def render_nftables_removal() -> str:
    """Remove our table (and nothing else); succeeds when it is already gone."""
    return f"add table {TABLE_FAMILY} {TABLE}\ndelete table {TABLE_FAMILY} {TABLE}\n"


def _static_part(cfg: config.Config) -> tuple[object, ...]:
    return (
        tuple(_family_list(cfg)),
        cfg.sources,
        cfg.pod_interface,
        cfg.egress_interface,
        cfg.http_port,
    )


# Changed rules (deleted plus added elements) from which an update rewrites the whole table.
REBUILD_AT = 1000


def render_nftables_update(old: config.Config, new: config.Config) -> str | None:
    """A transaction that turns the table of ``old`` into that of ``new`` in place.

    Unlike a whole replacement it keeps the element counters of rules that stay
    the same (a rule is the same when its key and configured destination are),
    so per-rule metrics do not drop back to zero on every reload. Only what
    changed is deleted and added; the prerouting chain, which holds no state,
    is rewritten. Returns None when the two differ in more than rules and
    fallbacks (families, sources, interfaces, HTTP port): replace the table then.
    The transaction fails as a whole when the kernel's table is not ``old``'s.

    When an edit changes more rules than it keeps (at least `REBUILD_AT` of
    them), the transaction is the whole table instead (`render_nftables`): nft
    then parses one element per rule rather than a delete and an add of each,
    about a third less work at 10,000 rules, and the few kept rules' counters
    start again. Either way it is one atomic transaction.
    """
    check_verbatim(new)
    if _static_part(old) != _static_part(new):
        return None
    table = f"{TABLE_FAMILY} {TABLE}"
    families = _family_list(new)
    old_groups = {f: group_rules(old, f) for f in families}
    new_groups = {f: group_rules(new, f) for f in families}
    head = [f"flush chain {table} {CHAIN_PREROUTING}"]
    deletes: list[str] = []
    adds: list[str] = []
    changes: dict[int, tuple[list[Key], list[Key]]] = {}
    for family in families:
        before, after = old_groups[family], new_groups[family]
        old_labels, new_labels = _labels(old, family), _labels(new, family)
        # Counting elements: a key whose destination (as configured) changed starts at zero.
        gone = [k for k in before if k not in after or old_labels[k] != new_labels[k]]
        fresh = [k for k in after if k not in before or old_labels[k] != new_labels[k]]
        changes[family] = gone, fresh
    changed = sum(len(gone) + len(fresh) for gone, fresh in changes.values())
    if changed >= REBUILD_AT and changed > sum(map(len, new_groups.values())):
        return render_nftables(new, groups=new_groups)
    for family in families:
        before, after = old_groups[family], new_groups[family]
        gone, fresh = changes[family]
        for name in (conns_set(family), traffic_set(family)):
            if gone:
                deletes.append(f"delete element {table} {name} {{ {_keys_text(gone)} }}")
            if fresh:
                adds.append(f"add element {table} {name} {{ {_keys_text(fresh)} }}")
        deletes_f, adds_f = _update_redirects(table, family, before, after)
        deletes += deletes_f
        adds += adds_f
    tail = [
        f"add rule {table} {CHAIN_PREROUTING} {rule}"
        for rule in _prerouting_rules(new, families, new_groups)
    ]
    guard = _forward_guard(new, families)
    if _forward_guard(old, families) != guard:  # it names the fallbacks
        tail += [f"flush chain {table} {CHAIN_GUARD}"]
        tail += [f"add rule {table} {CHAIN_GUARD} {rule}" for rule in guard]
    lines = ["# egress-router update: generated", *head, *deletes, *adds, *tail]
    return "\n".join(lines) + "\n"


def _labels(cfg: config.Config, family: int) -> dict[Key, object]:
    # What `rule_label` shows, compared without formatting it: the name, or the address.
    return {
        (r.proto, r.port): (r.host or r.address, r.remote_port)
        for r in cfg.destinations.rules_of(family)
    }


def _update_redirects(
    table: str,
    family: int,
    before: dict[Key, list[Target]],
    after: dict[Key, list[Target]],
) -> tuple[list[str], list[str]]:
    redirect, spread = redirect_map(family), spread_map(family)
    deletes: list[str] = []
    adds: list[str] = []
    old_single = {k: t[0] for k, t in before.items() if len(t) == 1}
    new_single = {k: t[0] for k, t in after.items() if len(t) == 1}
    old_multi = {k: t for k, t in before.items() if len(t) > 1}
    new_multi = {k: t for k, t in after.items() if len(t) > 1}
    drop = [k for k, t in old_single.items() if new_single.get(k) != t]
    put = [(k, t) for k, t in new_single.items() if old_single.get(k) != t]
    if drop:
        deletes.append(f"delete element {table} {redirect} {{ {_keys_text(drop)} }}")
    if put:
        elements = ", ".join(f"{p.value} . {n} : {_target_text(t)}" for (p, n), t in put)
        adds.append(f"add element {table} {redirect} {{ {elements} }}")
    if not old_multi and not new_multi:
        return deletes, adds
    if new_multi:
        adds.insert(0, f"add map {table} {spread} {{ type {_KEY_TYPE} : verdict; }}")
    for key in old_multi:
        if key not in new_multi:
            deletes.append(f"delete element {table} {spread} {{ {_keys_text([key])} }}")
            deletes.append(f"delete chain {table} {spread_chain(family, key)}")
    if not new_multi:
        deletes.append(f"delete map {table} {spread}")
    for key, targets in new_multi.items():
        chain = spread_chain(family, key)
        if old_multi.get(key) == targets:
            continue
        if key not in old_multi:
            adds.append(f"add chain {table} {chain}")
        else:
            adds.append(f"flush chain {table} {chain}")
        adds.append(f"add rule {table} {chain} {_spread_rule(family, key, targets)}")
        if key not in old_multi:
            adds.append(f"add element {table} {spread} {{ {_keys_text([key])} : jump {chain} }}")
    return deletes, adds


def render_iptables(
    cfg: config.Config, family: int, present_jumps: Iterable[tuple[str, str, str]] = ()
) -> str:
    """An ``iptables-restore --noflush`` payload for one family (``ip6tables-restore`` for 6).

    Declaring our chains in the payload flushes them inside the same commit,
    so the swap is atomic per table; the jumps from the built-in chains are
    added only when ``present_jumps`` (read back from the kernel) lacks them,
    which keeps re-runs free of duplicates. A family without a source gets the
    closed policy: no NAT, nothing forwarded, nothing in from the egress side.
    """
    check_verbatim(cfg)
    pod = cfg.pod_interface
    egress = cfg.egress_interface
    present = set(present_jumps)
    source = cfg.source(family)

    def jumps(table: str) -> list[str]:
        return [
            f"-I {builtin} 1 -j {ours}"
            for (tbl, builtin, ours) in IPT_JUMPS
            if tbl == table and (tbl, builtin, ours) not in present
        ]

    # In mangle (after conntrack), so that established packets of redirected flows skip
    # the route lookup: xt_rpfilter (through nft_compat) on every packet cost about 7% of
    # the new-connection rate (bench --hardening). Skipped only on the interface and in the
    # direction their flow allows, as in the nftables chain (see there why their source is
    # the one already checked); a forged packet that matches a live flow from the other
    # side, new, related and invalid ones are checked. ip6t_rpfilter lets :: (DAD)
    # through by itself; both look up with the pod-return rules.
    mangle = ["*mangle", f":{IPT_ANTISPOOF} - [0:0]"]
    if source is None:
        mangle.append(f"-A {IPT_ANTISPOOF} -i {egress} -j DROP")
    mangle += [
        f"-A {IPT_ANTISPOOF} -i {ifname} -m conntrack --ctstate ESTABLISHED --ctdir {direction} "
        "-m conntrack --ctstate DNAT -j RETURN"
        for ifname, direction in ((pod, "ORIGINAL"), (egress, "REPLY"))
        if source is not None  # a closed family has nothing redirected
    ]
    mangle += [
        f"-A {IPT_ANTISPOOF} -i {ifname} -m rpfilter --invert -j DROP" for ifname in (pod, egress)
    ]
    mangle += jumps("mangle")
    mangle.append("COMMIT")

    # Interface and address type are checked once, at the top, as in the nftables chain:
    # repeating `-m addrtype` in every per-port rule made each rule three times dearer.
    nat = [
        "*nat",
        f":{IPT_PREROUTING} - [0:0]",
        f":{IPT_POSTROUTING} - [0:0]",
    ]
    if source is not None:
        nat += _iptables_redirects(cfg, family)
        if cfg.ha is not None and family == 4:
            nat.append(f"-A {IPT_POSTROUTING} -o {egress} -p 112 -j RETURN")  # see nftables
        pool = cfg.pool(family)
        for index, member in enumerate(pool):
            # A pool: every nth new connection to each address, as the DNAT round robin.
            left = len(pool) - index
            nth = f"-m statistic --mode nth --every {left} --packet 0 " if left > 1 else ""
            nat.append(
                f"-A {IPT_POSTROUTING} -o {egress} {nth}-j SNAT --to-source {member.address}"
            )
    nat += jumps("nat")
    nat.append("COMMIT")

    unreachable = "icmp-port-unreachable" if family == 4 else "icmp6-port-unreachable"
    new = "-m conntrack --ctstate NEW"
    filt = [
        "*filter",
        f":{IPT_FORWARD} - [0:0]",
        f":{IPT_INPUT} - [0:0]",
        f":{IPT_OUTPUT} - [0:0]",
    ]
    if source is not None:
        filt += [
            f"-A {IPT_FORWARD} -i {pod} -o {egress} -m conntrack --ctdir ORIGINAL "
            "--ctstate DNAT -j ACCEPT",
            f"-A {IPT_FORWARD} -i {egress} -o {pod} -m conntrack --ctdir REPLY "
            "--ctstate DNAT -j ACCEPT",
        ]
    filt.append(f"-A {IPT_FORWARD} -j DROP")
    if cfg.http_port:
        filt += [
            f"-A {IPT_INPUT} -i {pod} -p tcp --dport {cfg.http_port} -j ACCEPT",
            f"-A {IPT_INPUT} -i lo -p tcp --dport {cfg.http_port} -j ACCEPT",
            f"-A {IPT_INPUT} -p tcp --dport {cfg.http_port} -j DROP",
        ]
    if cfg.mode.redirects:
        filt += [
            f"-A {IPT_INPUT} -i {pod} -p tcp {new} -j REJECT --reject-with tcp-reset",
            f"-A {IPT_INPUT} -i {pod} -p udp {new} -j REJECT --reject-with {unreachable}",
            f"-A {IPT_INPUT} -i {pod} -p sctp {new} -j REJECT --reject-with {unreachable}",
        ]
    else:  # the proxy modes: the proxy's ports answer the pod side
        filt.append(f"-A {IPT_INPUT} -i {pod} -j ACCEPT")
    if source is not None:
        filt += [
            f"-A {IPT_INPUT} -i {egress} -p {p.value} -m conntrack --ctdir REPLY -j ACCEPT"
            for p in config.Proto
        ]
        filt += [f"-A {IPT_INPUT} -i {egress} -p {p.value} -j DROP" for p in config.Proto]
        filt += [
            f"-A {IPT_OUTPUT} -o {egress} -s {member.address} -j RETURN"
            for member in cfg.pool(family)
        ]
        if cfg.ha is not None and family == 4:
            filt.append(  # the VRRP adverts: see the nftables source guard
                f"-A {IPT_OUTPUT} -o {egress} -s {ha.LINK_LOCAL} -d {ha.VRRP_GROUP4} -p 112 "
                "-j RETURN"
            )
            # Adverts for the pair's VRID only from its link-local range at its priority:
            # see `_nft_ha_input` (u32: the VRRP header's second and third byte).
            vrid = f'"0>>22&0x3C@0>>16&0xFF={cfg.ha.vrid}"'
            filt += [
                f"-A {IPT_INPUT} -i {egress} -p 112 ! -s {ha.LINK_LOCAL} -m u32 --u32 {vrid} "
                "-j DROP",
                f"-A {IPT_INPUT} -i {egress} -p 112 -m u32 --u32 {vrid} -m u32 ! --u32 "
                f'"0>>22&0x3C@0>>8&0xFF={cfg.ha.priority}" -j DROP',
            ]
        if family == 6:
            # ICMPv6 from link-local or unspecified sources never leaves the link.
            filt += [
                f"-A {IPT_OUTPUT} -o {egress} -s {src} -p ipv6-icmp -j RETURN"
                for src in ("::", LINK_LOCAL6)
            ]
    else:
        filt.append(f"-A {IPT_INPUT} -i {egress} -j DROP")
    filt.append(f"-A {IPT_OUTPUT} -o {egress} -j DROP")
    filt += jumps("filter")
    filt.append("COMMIT")
    return "\n".join(["# egress-router: generated, do not edit", *mangle, *nat, *filt]) + "\n"


def _iptables_redirects(cfg: config.Config, family: int) -> list[str]:
    pod = cfg.pod_interface
    nat = [
        f"-A {IPT_PREROUTING} ! -i {pod} -j RETURN",
        f"-A {IPT_PREROUTING} -m addrtype ! --dst-type LOCAL -j RETURN",
    ]
    if cfg.http_port:
        nat.append(f"-A {IPT_PREROUTING} -p tcp --dport {cfg.http_port} -j RETURN")
    in_order = sorted(cfg.destinations.rules_of(family), key=lambda r: r.line)
    groups = group_rules(cfg, family)
    for key in dict.fromkeys((r.proto, r.port) for r in in_order):
        proto, port = key
        targets = groups[key]
        for index, (address, remote) in enumerate(targets):
            # Several addresses (a DNS name): round robin, as kube-proxy's iptables mode does.
            left = len(targets) - index
            nth = f"-m statistic --mode nth --every {left} --packet 0 " if left > 1 else ""
            nat.append(
                f"-A {IPT_PREROUTING} -p {proto.value} --dport {port} {nth}"
                f"-j DNAT --to-destination {_endpoint(address, remote)}"
            )
    fallbacks = _fallbacks_of(cfg, family)
    for proto in config.Proto if fallbacks else ():
        for index, address in enumerate(fallbacks):
            target = f"[{address}]" if family == 6 else str(address)
            left = len(fallbacks) - index
            nth = f"-m statistic --mode nth --every {left} --packet 0 " if left > 1 else ""
            nat.append(
                f"-A {IPT_PREROUTING} -p {proto.value} {nth}"
                f"-j DNAT --to-destination {target}"
            )
    return nat


def render_iptables_removal(family: int, present_jumps: Iterable[tuple[str, str, str]]) -> str:
    """Unhook and empty our chains (deleting them needs a second step: ``-X``)."""
    present = set(present_jumps)
    lines = ["# egress-router: removal"]
    for table in IPT_TABLES:
        lines.append(f"*{table}")
        for tbl, builtin, ours in IPT_JUMPS:
            if tbl == table:
                lines.append(f":{ours} - [0:0]")
                if (tbl, builtin, ours) in present:
                    lines.append(f"-D {builtin} -j {ours}")
        lines.append("COMMIT")
    del family  # the payload is the same for both families
    return "\n".join(lines) + "\n"


def describe_rules(cfg: config.Config) -> list[tuple[str, str, str, str]]:
    """The normalised rule table: (local, protocol, destination, line) rows for people."""
    ports: list[tuple[int, tuple[str, str, str, str]]] = [
        (r.line, (str(r.port), r.proto.value, _described(r), str(r.line)))
        for r in cfg.destinations.rules
    ]
    ports += [
        (n.line, (str(n.port), n.proto.value, f"{rule_label(n)} (DNS name)", str(n.line)))
        for n in cfg.destinations.named
    ]
    rows = [row for _, row in sorted(ports, key=lambda item: item[0])]
    rows += [
        (f"* (IPv{f.family})", L4_PROTOS, f"{_fallback_text(f)} (same port)", str(f.line))
        for f in cfg.destinations.fallbacks
    ]
    rows += [
        ("*", L4_PROTOS, f"{f.host} (DNS name, same port)", str(f.line))
        for f in cfg.destinations.named_fallbacks
    ]
    return rows


def _described(rule: config.PortRule) -> str:
    endpoint = _endpoint(rule.address, rule.remote_port)
    return endpoint if rule.host is None else f"{rule_label(rule)} = {endpoint}"


def _fallback_text(fallback: config.Fallback) -> str:
    if fallback.host is None:
        return str(fallback.address)
    return f"{fallback.host} = {fallback.address}"
