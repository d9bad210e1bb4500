"""Render the router's data path as one nftables transaction or iptables-restore payloads.

Pure functions from a `Config` to text, golden-tested without root: `table_of` builds the
table as objects (`egress_router.core.nftables`: chains, sets, maps, each writing its own
text), `render_nftables` is their atomic replacement. The
nftables ruleset lives in its own table and is replaced atomically (the
``add table``/``delete table``/definition idiom inside one ``nft -f``
transaction), so an apply is all-or-nothing and never touches other tables.

Shape of the nftables data path (per-packet cost independent of rule count). A
packet of an established redirected flow crosses three of our base chains and in
each meets one lookup that lets it through (about what upstream's two nat rules
cost, which such a packet never meets); checks a flow needs once are made on its
first packet only:

* ``antispoof`` (filter, prerouting, after conntrack, before dstnat): first, in
  one concatenated lookup (``iifname . ct direction``), established packets of a
  redirected flow on the interface and in the direction their flow allows return
  (their source is the one checked with the flow's first packet); then, on the
  egress interface, a family that is not configured is dropped whole, and a
  packet on the pod or the egress interface whose source would not be routed
  back out of that same interface is dropped (``fib saddr . iif``, which honours
  the pod-return policy routing).
* ``prerouting`` (nat, a connection's first packet only): only connections that
  arrive on the pod interface and are addressed to the router itself are
  redirected, through one map lookup keyed by ``l4proto . dport`` per family;
  unmatched ports of a family with a fallback go to the fallback address, same
  port. New TCP connections get the NAT's conntrack timeout policy here.
* ``postrouting`` (nat): SNAT to the reserved source on the egress interface.
* ``forward`` (filter, policy drop): the one-way door, one verdict-map lookup
  keyed by family, input and output interface and conntrack direction, for
  redirected (``ct status dnat``) flows only. Pod side to egress side: only the
  original direction; egress side to pod side: only the reply direction. A packet
  from the physical network that forges the original tuple of a live flow matches
  its conntrack entry but in the wrong direction, and is dropped. The map jumps
  to ``redirected_v4``/``redirected_v6``: one lookup of the flow's rule key both
  counts the packet (per-rule packets and bytes) and proves the rule still exists
  (a removed rule's connections stop with the transaction that removes it);
  flows to a fallback pass by its address.
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

The iptables backend (`egress_router.core.iptables_rules`) renders the same policy with
upstream-equivalent NAT
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

from egress_router.core import config, ha, nftables

TABLE_FAMILY = "inet"
TABLE = "egress_router"
MAP_V4 = "redirect_v4"
MAP_V6 = "redirect_v6"
CHAIN_PREROUTING = "prerouting"
CHAIN_POSTROUTING = "postrouting"
CHAIN_FORWARD = "forward"
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


def redirected_chain(family: int) -> str:
    """The forward chain's verdict for a redirected flow: its rule still exists; counted."""
    return f"redirected_v{family}"


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


def endpoint_text(address: config.IPAddress, port: int) -> str:
    text = _address_text(address)
    return f"[{text}]:{port}" if address.version == 6 else f"{text}:{port}"


def rule_label(rule: config.PortRule | config.NamedRule) -> str:
    """The destination as configured: ``203.0.113.25:80`` or ``api.example.com:443``."""
    if isinstance(rule, config.NamedRule) or rule.host is not None:
        return f"{rule.host}:{rule.remote_port}"
    return endpoint_text(rule.address, rule.remote_port)


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


def _counting_set(
    name: str, keys: list[Key], what: str, labels: dict[Key, object]
) -> nftables.Set:
    # Elements of the counting sets go on one line: one rule per map element
    # stays the only line-per-rule block, which keeps the ruleset readable. An element's
    # label is the rule's configured destination: an update restarts the counters of a
    # key whose destination changed (`nftables.update`).
    return nftables.Set(name, _KEY_TYPE, what, elements=[_keys_text([key]) for key in keys],
                        labels=[labels.get(key) for key in keys])


def _prerouting_rules(
    cfg: config.Config,
    families: list[int],
    groups: dict[int, dict[Key, list[Target]]],
    *,
    timeouts: bool = False,
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
        if timeouts and family in cfg.families():
            # Here, in the nat chain that only a connection's first packet crosses, the
            # timeout policy costs nothing per packet (in the forward chain its test ran
            # for every packet of every flow). Set before the DNAT: a connection refused
            # at input is never confirmed, so it does not matter that it got one too.
            rules.append(
                f"{nfproto} meta l4proto tcp ct timeout set \"{ct_timeout(family)}\""
            )
        rules.append(f"{nfproto} meta l4proto . th dport @{conns_set(family)}")
        if any(len(t) > 1 for t in groups[family].values()):
            rules.append(f"{nfproto} meta l4proto . th dport vmap @{spread_map(family)}")
        rules.append(
            f"{nfproto} dnat {_IP[family]} to meta l4proto . th dport map @{redirect_map(family)}"
        )
        addresses = fallbacks_of(cfg, family)
        if addresses:
            rules.append(_fallback_rule(family, addresses))
    return rules


def fallbacks_of(cfg: config.Config, family: int) -> list[config.IPAddress]:
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


def _ct_timeout(family: int) -> nftables.CtTimeout:
    return nftables.CtTimeout(
        ct_timeout(family), "tcp", _IP[family], f"time_wait : {NAT_TIME_WAIT}",
        "see NAT_TIME_WAIT",
    )


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
    return table_of(cfg, groups=groups).replacement(_header_comments(cfg))


def _header_comments(cfg: config.Config) -> list[str]:
    return [
        "# egress-router ruleset: generated, do not edit (re-run egress-router instead)",
        *(
            f"# line {n.line}: {n.port} {n.proto.value} {n.host} {n.remote_port}: "
            "a host name, resolved when the rules are applied"
            for n in cfg.destinations.named
        ),
        *(
            f"# line {f.line}: fallback {f.host}: a host name, resolved when the rules are "
            "applied"
            for f in cfg.destinations.named_fallbacks
        ),
    ]


def table_of(
    cfg: config.Config, *, groups: dict[int, dict[Key, list[Target]]] | None = None
) -> nftables.Table:
    """Our table for ``cfg`` as objects (sets, maps, chains), in the order they are written."""
    families = _family_list(cfg)
    if groups is None:
        groups = {family: group_rules(cfg, family) for family in families}
    table = nftables.Table(TABLE_FAMILY, TABLE)
    for family in cfg.families():
        table.add(_ct_timeout(family))
    for family in families:
        keys = list(groups[family])
        labels = _labels(cfg, family)
        table.add(
            _counting_set(conns_set(family), keys, "new connections per rule", labels),
            _counting_set(traffic_set(family), keys, "packets and bytes per rule", labels),
            nftables.Map(
                redirect_map(family),
                f"{_KEY_TYPE} : {_ADDR_TYPE[family]} . inet_service",
                [
                    f"{proto.value} . {port} : {_target_text(targets[0])}"
                    for (proto, port), targets in groups[family].items()
                    if len(targets) == 1
                ],
            ),
        )
        multi = [(key, targets) for key, targets in groups[family].items() if len(targets) > 1]
        if multi:
            table.add(nftables.Map(
                spread_map(family),
                f"{_KEY_TYPE} : verdict",
                [f"{key[0].value} . {key[1]} : jump {spread_chain(family, key)}"
                 for key, _ in multi],
            ))
            table.add(*(
                nftables.Chain(spread_chain(family, key), rules=[_spread_rule(family, key, t)])
                for key, t in multi
            ))
    table.add(
        nftables.Chain(
            CHAIN_PREROUTING,
            "type nat hook prerouting priority dstnat; policy accept;",
            _prerouting_rules(cfg, families, groups, timeouts=True),
        ),
        _postrouting(cfg),
        *(nftables.Chain(redirected_chain(f), rules=_redirected_rules(cfg, f)) for f in families),
        nftables.Chain(
            CHAIN_FORWARD,
            "type filter hook forward priority filter; policy drop;",
            [*([_forward_door(cfg, families)] if families else []),
             'counter comment "not a redirected connection: dropped"'],
        ),
        _nft_input(cfg),
        _nft_antispoof(cfg),
        _nft_guard(cfg),
    )
    return table


def _postrouting(cfg: config.Config) -> nftables.Chain:
    egress = cfg.egress_interface
    chain = nftables.Chain(
        CHAIN_POSTROUTING, "type nat hook postrouting priority srcnat; policy accept;"
    )
    if cfg.ha is not None:
        # HA: the VRRP adverts leave from the replica's own link-local address; SNAT
        # to the reserved one would break their checksum (and the election with it).
        chain.rules.append(f'oifname "{egress}" ip protocol 112 accept')
    chain.rules += [
        f'oifname "{egress}" meta nfproto {_NFPROTO[family]} {snat_statement(cfg, family)}'
        for family in cfg.families()
    ]
    return chain


def _forward_door(cfg: config.Config, families: list[int]) -> str:
    """The one-way door: one lookup per forwarded packet, bound to interfaces and direction.

    Only a redirected connection (``ct status dnat``) passes, pod side to egress side in
    its original direction and egress side to pod side in its reply direction. ICMP
    errors (``ct state related``) carry the direction of the packet they quote, so they
    pass only the way their flow does; a packet from the physical side that forges the
    original tuple of a live flow matches the entry in the wrong direction and stays out.
    The family is part of the key, so the flow then meets its own family's rules.
    """
    pod, egress = cfg.pod_interface, cfg.egress_interface
    elements = []
    for family in families:
        chain = redirected_chain(family)
        elements += [
            f'{_NFPROTO[family]} . "{pod}" . "{egress}" . original : jump {chain}',
            f'{_NFPROTO[family]} . "{egress}" . "{pod}" . reply : jump {chain}',
        ]
    return (
        "ct status dnat meta nfproto . iifname . oifname . ct direction vmap { "
        + ", ".join(elements) + " }"
    )


def _redirected_rules(cfg: config.Config, family: int) -> list[str]:
    """A redirected flow's packet, either way: accepted while its rule exists, and counted.

    One lookup does both: the packets and bytes of the rule's element in the traffic set
    (keyed by the local port the client dialled, the conntrack original tuple), and the
    check that the rule is still configured. Replacing the rules leaves established
    connections in conntrack, NAT binding included; until the waiting container cuts
    them (a moment later), a removed rule's connection would still reach its old
    destination. With this check in the same transaction as the removal, it stops at
    once: a redirected flow passes only while its port is a key of the rule set, or
    while its destination is one of the fallbacks.
    """
    rules = [
        # The l4proto match first gives nft the type of ``ct original proto-dst``.
        f"meta l4proto {{ {L4_PROTOS} }} meta l4proto . ct original proto-dst "
        f"@{traffic_set(family)} accept"
    ]
    fallbacks = fallbacks_of(cfg, family)
    if fallbacks:  # nft lists a one-element set as its element: written the same way
        listed = str(fallbacks[0]) if len(fallbacks) == 1 else (
            f"{{ {', '.join(map(str, fallbacks))} }}"
        )
        rules.append(f"ct reply {_IP[family]} saddr {listed} accept")
    return [*rules, 'counter drop comment "its rule was removed"']


def _nft_input(cfg: config.Config) -> nftables.Chain:
    pod = cfg.pod_interface
    egress = cfg.egress_interface
    chain = nftables.Chain(CHAIN_INPUT, "type filter hook input priority filter; policy accept;")
    if cfg.http_port:
        # Loopback stays allowed: the router's own probes of its pod address arrive there.
        chain.rules += [
            f'tcp dport {cfg.http_port} iifname != {{ "{pod}", "lo" }} '
            'counter drop comment "HTTP only from the pod side"',
            f'iifname "{pod}" tcp dport {cfg.http_port} accept',
        ]
    chain.rules += _nft_ha_input(cfg)
    if cfg.mode.redirects:
        chain.rules += [
            f'iifname "{pod}" ct state new meta l4proto tcp reject with tcp reset',
            f'iifname "{pod}" ct state new meta l4proto {{ udp, sctp }} '
            "reject with icmpx type port-unreachable",
        ]
    else:
        # The proxy modes: the pod's own listeners (the proxy's ports) answer the pod side.
        chain.rules.append(f'iifname "{pod}" accept comment "the proxy listens on the pod side"')
    chain.rules += [
        # From the physical side only replies of the router's own connections reach a
        # socket: a forged original-direction packet of any flow does not.
        f'iifname "{egress}" meta l4proto {{ {L4_PROTOS} }} ct direction reply accept',
        f'iifname "{egress}" meta l4proto {{ {L4_PROTOS} }} drop',
    ]
    return chain


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
        f"{vrrp} ip saddr != {ha.LINK_LOCAL} counter drop "
        'comment "VRRP for our VRID from outside the pair\'s 169.254.0.0/16: dropped"',
        f"{vrrp} @th,16,8 != {cfg.ha.priority} counter drop "
        'comment "VRRP for our VRID at another priority than the pair\'s: dropped"',
    ]


def _nft_antispoof(cfg: config.Config) -> nftables.Chain:
    pod = cfg.pod_interface
    egress = cfg.egress_interface
    chain = nftables.Chain(
        CHAIN_ANTISPOOF,
        # After conntrack (mangle, before dstnat): the route lookup runs for new, related,
        # invalid and untracked packets, about once per connection, instead of for each of
        # its ten or so packets (in raw, before conntrack, nothing tells them apart; a
        # lookup costs about half a microsecond of the ~300 us of CPU a short connection
        # takes in the lab). A packet dropped here is dropped before its conntrack entry
        # is confirmed, so a forged packet still never creates one.
        "type filter hook prerouting priority mangle; policy accept;",
    )
    chain.rules += [
        # First, in one lookup: the established packets of a redirected flow, each on the
        # interface and in the direction its flow allows. Their tuple, hence their source,
        # is the one of the packet that created the entry on the pod side (checked here
        # then, before dstnat gave it ``ct status dnat``), or of the replies of a
        # connection forwarded out of the egress interface to that very address. Anything
        # else that matches an entry (a forged reply from the pod side, a forged original
        # from the physical side, an ICMP error) is still checked. No flow of an
        # unconfigured family is redirected, so none skips the family check below.
        f'ct state established ct status dnat iifname . ct direction '
        f'{{ "{pod}" . original, "{egress}" . reply }} return',
    ]
    chain.rules += [
        f'iifname "{egress}" meta nfproto {_NFPROTO[family]} '
        f'counter drop comment "IPv{family} is not configured on {egress}"'
        for family in (4, 6)
        if cfg.source(family) is None
    ]
    chain.rules += [
        f'iifname != {{ "{pod}", "{egress}" }} return',
        # DAD probes come from :: and are never forwarded; fib has no route back for them.
        "ip6 saddr :: return",
        "fib saddr . iif oif missing counter drop "
        'comment "source not routed back through its interface: dropped"',
    ]
    return chain


def _nft_guard(cfg: config.Config) -> nftables.Chain:
    egress = cfg.egress_interface
    # After srcnat: the source checked is the one on the wire.
    chain = nftables.Chain(
        CHAIN_SOURCE_GUARD,
        "type filter hook postrouting priority srcnat + 10; policy accept;",
        [f'oifname != "{egress}" return'],
    )
    for family in (4, 6):
        addresses = [str(s.address) for s in cfg.sources if s.family == family]
        if addresses:
            match = addresses[0] if len(addresses) == 1 else f"{{ {', '.join(addresses)} }}"
            chain.rules.append(f"{_IP[family]} saddr {match} accept")
    if cfg.source(6) is not None:
        chain.rules.append(
            f"ip6 saddr {{ ::, {LINK_LOCAL6} }} icmpv6 type {{ {ND_TYPES_NFT} }} accept"
        )
    if cfg.ha is not None:
        # HA: the VRRP adverts leave from the replica's own link-local address, to the
        # link-local VRRP group only: they never leave the L2.
        chain.rules.append(
            f"ip saddr {ha.LINK_LOCAL} ip daddr {ha.VRRP_GROUP4} ip protocol vrrp accept"
        )
    chain.rules.append('counter drop comment "not from a reserved address: dropped"')
    return chain


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

    The difference of the two tables as objects (`nftables.update`): unlike a whole
    replacement it keeps the element counters of rules that stay the same (a rule is the
    same when its key and configured destination are), so per-rule metrics do not drop
    back to zero on every reload; only what changed is deleted, flushed and added.
    Returns None when the two differ in more than rules and fallbacks (families, sources,
    interfaces, HTTP port): replace the table then. The transaction fails as a whole when
    the kernel's table is not ``old``'s.

    When an edit changes more rules than it keeps (at least `REBUILD_AT` of
    them), the transaction is the whole table instead (`render_nftables`): nft
    then parses one element per rule rather than a delete and an add of each,
    about a third less work at 10,000 rules, and the few kept rules' counters
    start again. Either way it is one atomic transaction.
    """
    check_verbatim(new)
    if _static_part(old) != _static_part(new):
        return None
    families = _family_list(new)
    new_groups = {f: group_rules(new, f) for f in families}
    before, after = table_of(old), table_of(new, groups=new_groups)
    changed = 0
    for family in families:
        was, now = before.get(nftables.Set, conns_set(family)), after.get(nftables.Set,
                                                                          conns_set(family))
        assert isinstance(was, nftables.Set) and isinstance(now, nftables.Set)
        old_ids = set(zip(was.elements, was.labels, strict=True))
        new_ids = set(zip(now.elements, now.labels, strict=True))
        changed += len(old_ids ^ new_ids)
    if changed >= REBUILD_AT and changed > sum(map(len, new_groups.values())):
        return after.replacement(_header_comments(new))
    lines = ["# egress-router update: generated", *nftables.update(before, after)]
    return "\n".join(lines) + "\n"


def _labels(cfg: config.Config, family: int) -> dict[Key, object]:
    # What `rule_label` shows, compared without formatting it: the name, or the address.
    return {
        (r.proto, r.port): (r.host or r.address, r.remote_port)
        for r in cfg.destinations.rules_of(family)
    }


def describe_rules(cfg: config.Config) -> list[tuple[str, str, str, str]]:
    """The normalised rule table: (local, protocol, destination, line) rows for people."""
    ports: list[tuple[int, tuple[str, str, str, str]]] = [
        (r.line, (str(r.port), r.proto.value, describe_rule(r), str(r.line)))
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


def describe_rule(rule: config.PortRule) -> str:
    """A rule's destination for people: ``203.0.113.25:80``, or ``name = address:port``."""
    shown = endpoint_text(rule.address, rule.remote_port)
    return shown if rule.host is None else f"{rule_label(rule)} = {shown}"


def _fallback_text(fallback: config.Fallback) -> str:
    if fallback.host is None:
        return str(fallback.address)
    return f"{fallback.host} = {fallback.address}"
