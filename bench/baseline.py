"""Today's ruleset generator (before the data-path hardening), kept for side-by-side runs.

``python -m bench.run --hardening`` measures the new-connection rate of this
ruleset next to the product's current one in the same rounds, so the price
of direction-bound state, the reverse-path check and the egress source guard
is a ratio measured under the same load, not a comparison across runs. It is
a verbatim copy of ``render_nftables`` and ``render_iptables`` of main just
before the hardening, built from the helpers of `egress_router.core.ruleset`
that it did not change.
"""

from __future__ import annotations

from collections.abc import Iterable

from egress_router.core import config
from egress_router.core.ruleset import (
    _ADDR_TYPE,
    _IP,
    _KEY_TYPE,
    _NFPROTO,
    CHAIN_FORWARD,
    CHAIN_INPUT,
    CHAIN_POSTROUTING,
    CHAIN_PREROUTING,
    IPT_FORWARD,
    IPT_INPUT,
    IPT_POSTROUTING,
    IPT_PREROUTING,
    L4_PROTOS,
    TABLE,
    TABLE_FAMILY,
    _ct_timeout_lines,
    _endpoint,
    _fallbacks_of,
    _family_list,
    _prerouting_rules,
    _set_lines,
    _spread_rule,
    _target_text,
    conns_set,
    ct_timeout,
    group_rules,
    redirect_map,
    snat_statement,
    spread_chain,
    spread_map,
    traffic_set,
)

CHAIN_GUARD = "guard"  # forward's check that a redirected flow's rule still exists


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


_JUMPS: tuple[tuple[str, str, str], ...] = (
    ("nat", "PREROUTING", IPT_PREROUTING),
    ("nat", "POSTROUTING", IPT_POSTROUTING),
    ("filter", "FORWARD", IPT_FORWARD),
    ("filter", "INPUT", IPT_INPUT),
)


def render_nftables(cfg: config.Config) -> str:
    """The whole ruleset as one ``nft -f`` transaction that replaces our table atomically."""
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
    out += [
        f'\t\tiifname "{pod}" oifname "{egress}" ct state new ct status dnat '
        f"meta nfproto {_NFPROTO[family]} meta l4proto tcp "
        f'ct timeout set "{ct_timeout(family)}"'
        for family in cfg.families()
    ]
    out += [
        f"\t\tjump {CHAIN_GUARD}",
        "\t\tct state established,related accept",
        f'\t\tiifname "{pod}" oifname "{egress}" ct state new ct status dnat accept',
        '\t\tcounter comment "not a redirected connection: dropped"',
        "\t}",
        "",
        f"\tchain {CHAIN_INPUT} {{",
        "\t\ttype filter hook input priority filter; policy accept;",
    ]
    if cfg.http_port:
        out.append(f'\t\tiifname "{pod}" tcp dport {cfg.http_port} accept')
    out += [
        f'\t\tiifname "{pod}" ct state new meta l4proto tcp reject with tcp reset',
        f'\t\tiifname "{pod}" ct state new meta l4proto {{ udp, sctp }} '
        "reject with icmpx type port-unreachable",
        f'\t\tiifname "{egress}" ct state new meta l4proto {{ {L4_PROTOS} }} drop',
        "\t}",
        "}",
    ]
    return "\n".join(out) + "\n"


def render_iptables(
    cfg: config.Config, family: int, present_jumps: Iterable[tuple[str, str, str]] = ()
) -> str:
    """An ``iptables-restore --noflush`` payload for one family (``ip6tables-restore`` for 6).

    Declaring our chains in the payload flushes them inside the same commit,
    so the swap is atomic per table; the jumps from the built-in chains are
    added only when ``present_jumps`` (read back from the kernel) lacks them,
    which keeps re-runs free of duplicates.
    """
    pod = cfg.pod_interface
    egress = cfg.egress_interface
    present = set(present_jumps)

    def jumps(table: str) -> list[str]:
        return [
            f"-I {builtin} 1 -j {ours}"
            for (tbl, builtin, ours) in _JUMPS
            if tbl == table and (tbl, builtin, ours) not in present
        ]

    # Interface and address type are checked once, at the top, as in the nftables chain:
    # repeating `-m addrtype` in every per-port rule made each rule three times dearer.
    nat = [
        "*nat",
        f":{IPT_PREROUTING} - [0:0]",
        f":{IPT_POSTROUTING} - [0:0]",
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
    pool = cfg.pool(family)
    for index, member in enumerate(pool):
        # A pool: every nth new connection to each address, as the DNAT round robin above.
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
        f"-A {IPT_FORWARD} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-A {IPT_FORWARD} -i {pod} -o {egress} -m conntrack --ctstate NEW "
        "-m conntrack --ctstate DNAT -j ACCEPT",
        f"-A {IPT_FORWARD} -j DROP",
    ]
    if cfg.http_port:
        filt.append(f"-A {IPT_INPUT} -i {pod} -p tcp --dport {cfg.http_port} -j ACCEPT")
    filt += [
        f"-A {IPT_INPUT} -i {pod} -p tcp {new} -j REJECT --reject-with tcp-reset",
        f"-A {IPT_INPUT} -i {pod} -p udp {new} -j REJECT --reject-with {unreachable}",
        f"-A {IPT_INPUT} -i {pod} -p sctp {new} -j REJECT --reject-with {unreachable}",
    ]
    filt += [f"-A {IPT_INPUT} -i {egress} -p {p.value} {new} -j DROP" for p in config.Proto]
    filt += jumps("filter")
    filt.append("COMMIT")
    return "\n".join(["# egress-router: generated, do not edit", *nat, *filt]) + "\n"
