"""The iptables backend: the router's policy as ``iptables-restore --noflush`` payloads.

The compatibility path for clusters that need xtables, not the fast one: upstream-equivalent
NAT rules (one rule per port in our own chains), the same policy as the nftables table
(`egress_router.core.ruleset`, whose names and rule grouping it shares). xtables has no filter
hook after SNAT, so its guard checks locally generated packets in OUTPUT and relies on the SNAT
rule catching every new connection out of the egress interface for forwarded ones. It always
renders both families: a family without a source gets the closed policy (nothing forwarded,
nothing in from the egress side, the HTTP port only from the pod side). Pure, golden-tested.
"""

from __future__ import annotations

from collections.abc import Iterable

from egress_router.core import config, ha
from egress_router.core.ruleset import (
    IPT_ANTISPOOF,
    IPT_FORWARD,
    IPT_INPUT,
    IPT_JUMPS,
    IPT_OUTPUT,
    IPT_POSTROUTING,
    IPT_PREROUTING,
    IPT_TABLES,
    LINK_LOCAL6,
    check_verbatim,
    endpoint_text,
    fallbacks_of,
    group_rules,
)


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
            # see `ruleset._nft_ha_input` (u32: the VRRP header's second and third byte).
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
                f"-j DNAT --to-destination {endpoint_text(address, remote)}"
            )
    fallbacks = fallbacks_of(cfg, family)
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
