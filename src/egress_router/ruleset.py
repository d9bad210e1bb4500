"""Render the router's data path as one nftables transaction or iptables-restore payloads.

Pure functions from a `Config` to text, golden-tested without root. The
nftables ruleset lives in its own table and is replaced atomically (the
``add table``/``delete table``/definition idiom inside one ``nft -f``
transaction), so an apply is all-or-nothing and never touches other tables.

Shape of the nftables data path (per-packet cost independent of rule count):

* ``prerouting`` (nat): only connections that arrive on the pod interface and
  are addressed to the router itself are redirected, through one map lookup
  keyed by ``l4proto . dport`` per family; unmatched ports of a family with a
  fallback go to the fallback address, same port.
* ``postrouting`` (nat): SNAT to the reserved source on the egress interface.
* ``forward`` (filter, policy drop): the one-way door. Only redirected
  connections from the pod side may leave; replies come back; nothing from the
  physical side opens a connection into the pod network.
* ``input`` (filter): a port with no rule and no fallback is refused at once
  (TCP reset, ICMP port unreachable) instead of timing out; new connections
  from the physical side to the reserved address are dropped.

The iptables backend renders upstream-equivalent rules (one rule per port in
our own chains) for clusters that need xtables; it is the compatibility path,
not the fast one.
"""

from __future__ import annotations

from collections.abc import Iterable

from egress_router import config

TABLE_FAMILY = "inet"
TABLE = "egress_router"
MAP_V4 = "redirect_v4"
MAP_V6 = "redirect_v6"
CHAIN_PREROUTING = "prerouting"
CHAIN_POSTROUTING = "postrouting"
CHAIN_FORWARD = "forward"
CHAIN_INPUT = "input"

L4_PROTOS = "tcp, udp, sctp"

IPT_PREROUTING = "EGRESS-ROUTER-PREROUTING"
IPT_POSTROUTING = "EGRESS-ROUTER-POSTROUTING"
IPT_FORWARD = "EGRESS-ROUTER-FORWARD"
IPT_INPUT = "EGRESS-ROUTER-INPUT"

# (table, built-in chain, our chain): the jumps that hook our chains in.
IPT_JUMPS: tuple[tuple[str, str, str], ...] = (
    ("nat", "PREROUTING", IPT_PREROUTING),
    ("nat", "POSTROUTING", IPT_POSTROUTING),
    ("filter", "FORWARD", IPT_FORWARD),
    ("filter", "INPUT", IPT_INPUT),
)

_NFPROTO = {4: "ipv4", 6: "ipv6"}
_IP = {4: "ip", 6: "ip6"}
_MAP = {4: MAP_V4, 6: MAP_V6}
_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}


def _sorted_rules(rules: Iterable[config.PortRule]) -> list[config.PortRule]:
    return sorted(rules, key=lambda r: (r.proto.value, r.port))


def _endpoint(address: config.IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def render_nftables(cfg: config.Config) -> str:
    """The whole ruleset as one ``nft -f`` transaction that replaces our table atomically."""
    pod = cfg.pod_interface
    egress = cfg.egress_interface
    out: list[str] = [
        "# egress-router ruleset: generated, do not edit (re-run egress-router instead)",
        f"add table {TABLE_FAMILY} {TABLE}",
        f"delete table {TABLE_FAMILY} {TABLE}",
        f"table {TABLE_FAMILY} {TABLE} {{",
    ]
    families = sorted(cfg.destinations.families())
    for family in families:
        rules = _sorted_rules(cfg.destinations.rules_of(family))
        if not rules:
            continue
        out += [
            f"\tmap {_MAP[family]} {{",
            f"\t\ttype inet_proto . inet_service : {_ADDR_TYPE[family]} . inet_service",
            "\t\telements = {",
        ]
        out += [
            f"\t\t\t{r.proto.value} . {r.port} : {r.address} . {r.remote_port},"
            for r in rules
        ]
        out += ["\t\t}", "\t}", ""]

    out += [
        f"\tchain {CHAIN_PREROUTING} {{",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        f'\t\tiifname != "{pod}" return',
        "\t\tfib daddr type != local return",
    ]
    for family in families:
        nfproto = f"meta nfproto {_NFPROTO[family]}"
        if cfg.destinations.rules_of(family):
            out.append(
                f"\t\t{nfproto} dnat {_IP[family]} to meta l4proto . th dport map @{_MAP[family]}"
            )
        fallback = cfg.destinations.fallback(family)
        if fallback is not None:
            out.append(
                f"\t\t{nfproto} meta l4proto {{ {L4_PROTOS} }} "
                f"dnat {_IP[family]} to {fallback.address}"
            )
    out += ["\t}", ""]

    out += [
        f"\tchain {CHAIN_POSTROUTING} {{",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
    ]
    for source in cfg.sources:
        out.append(
            f'\t\toifname "{egress}" meta nfproto {_NFPROTO[source.family]} '
            f"snat {_IP[source.family]} to {source.address}"
        )
    out += ["\t}", ""]

    out += [
        f"\tchain {CHAIN_FORWARD} {{",
        "\t\ttype filter hook forward priority filter; policy drop;",
        "\t\tct state established,related accept",
        f'\t\tiifname "{pod}" oifname "{egress}" ct state new ct status dnat accept',
        '\t\tcounter comment "not a redirected connection: dropped"',
        "\t}",
        "",
        f"\tchain {CHAIN_INPUT} {{",
        "\t\ttype filter hook input priority filter; policy accept;",
        f'\t\tiifname "{pod}" ct state new meta l4proto tcp reject with tcp reset',
        f'\t\tiifname "{pod}" ct state new meta l4proto {{ udp, sctp }} '
        "reject with icmpx type port-unreachable",
        f'\t\tiifname "{egress}" ct state new meta l4proto {{ {L4_PROTOS} }} drop',
        "\t}",
        "}",
    ]
    return "\n".join(out) + "\n"


def render_nftables_removal() -> str:
    """Remove our table (and nothing else); succeeds when it is already gone."""
    return f"add table {TABLE_FAMILY} {TABLE}\ndelete table {TABLE_FAMILY} {TABLE}\n"


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
    source = cfg.source(family)

    def jumps(table: str) -> list[str]:
        return [
            f"-I {builtin} 1 -j {ours}"
            for (tbl, builtin, ours) in IPT_JUMPS
            if tbl == table and (tbl, builtin, ours) not in present
        ]

    local = f"-i {pod} -m addrtype --dst-type LOCAL"
    nat = [
        "*nat",
        f":{IPT_PREROUTING} - [0:0]",
        f":{IPT_POSTROUTING} - [0:0]",
    ]
    for rule in cfg.destinations.rules:
        if rule.family != family:
            continue
        nat.append(
            f"-A {IPT_PREROUTING} {local} -p {rule.proto.value} --dport {rule.port} "
            f"-j DNAT --to-destination {_endpoint(rule.address, rule.remote_port)}"
        )
    fallback = cfg.destinations.fallback(family)
    if fallback is not None:
        target = f"[{fallback.address}]" if family == 6 else str(fallback.address)
        nat += [
            f"-A {IPT_PREROUTING} {local} -p {proto.value} -j DNAT --to-destination {target}"
            for proto in config.Proto
        ]
    if source is not None:
        nat.append(f"-A {IPT_POSTROUTING} -o {egress} -j SNAT --to-source {source.address}")
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
        f"-A {IPT_INPUT} -i {pod} -p tcp {new} -j REJECT --reject-with tcp-reset",
        f"-A {IPT_INPUT} -i {pod} -p udp {new} -j REJECT --reject-with {unreachable}",
        f"-A {IPT_INPUT} -i {pod} -p sctp {new} -j REJECT --reject-with {unreachable}",
    ]
    filt += [f"-A {IPT_INPUT} -i {egress} -p {p.value} {new} -j DROP" for p in config.Proto]
    filt += jumps("filter")
    filt.append("COMMIT")
    return "\n".join(["# egress-router: generated, do not edit", *nat, *filt]) + "\n"


def render_iptables_removal(family: int, present_jumps: Iterable[tuple[str, str, str]]) -> str:
    """Unhook and empty our chains (deleting them needs a second step: ``-X``)."""
    present = set(present_jumps)
    lines = ["# egress-router: removal"]
    for table in ("nat", "filter"):
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
    rows = [
        (str(r.port), r.proto.value, _endpoint(r.address, r.remote_port), str(r.line))
        for r in cfg.destinations.rules
    ]
    rows += [
        (f"* (IPv{f.family})", L4_PROTOS, f"{f.address} (same port)", str(f.line))
        for f in cfg.destinations.fallbacks
    ]
    return rows
