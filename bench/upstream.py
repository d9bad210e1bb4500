"""The reference: the ruleset OpenShift's egress-router.sh generates, rendered for the lab.

Upstream's script (openshift/images, ``egress/router/egress-router.sh``,
functions ``setup_nft`` and ``gen_nft_rules``) creates ``table ip nat`` with a
``prerouting`` and a ``postrouting`` chain, flushes it, and adds one
``add rule ip nat prerouting iifname "eth0" <proto> dport <port> dnat to
<ip>[:<port>]`` per destination line, in the order of the configuration, a
protocol-less DNAT for the fallback, and one SNAT rule. Every new connection
walks that chain rule by rule. This module reproduces that text exactly (it is
the benchmark's baseline, not part of the product) from the product's own
parsed `Destinations`, so both paths always get the same rules.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from egress_router.core import config

UPSTREAM_POD_INTERFACE = "eth0"  # hard-coded upstream
UPSTREAM_EGRESS_INTERFACE = "macvlan0"

_PREAMBLE = """\
table ip nat {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
  }
}
flush table ip nat
"""


def render_upstream(destinations: config.Destinations, source: IPv4Address) -> str:
    """The ``nft -f`` input upstream's ``setup_nft`` would pipe to nft for ``destinations``.

    Upstream knows IPv4, TCP and UDP only; anything else cannot be expressed
    and raises ``ValueError``.
    """
    if destinations.named or destinations.named_fallbacks:
        raise ValueError("cannot render upstream rules: upstream takes no DNS names")
    iif = f'iifname "{UPSTREAM_POD_INTERFACE}"'
    lines: list[str] = []
    for rule in destinations.rules:
        if rule.family != 4 or rule.proto not in (config.Proto.TCP, config.Proto.UDP):
            raise ValueError(
                f"cannot render upstream rules: {rule.port} {rule.proto.value} {rule.address}"
                " is not IPv4 TCP/UDP, which is all upstream supports"
            )
        target = (
            f"{rule.address}" if rule.remote_port == rule.port
            else f"{rule.address}:{rule.remote_port}"
        )
        match = f"{iif} {rule.proto.value} dport {rule.port}"
        lines.append(f"add rule ip nat prerouting {match} dnat to {target}")
    for fallback in destinations.fallbacks:
        if fallback.family != 4:
            raise ValueError(
                f"cannot render upstream rules: fallback {fallback.address} is not IPv4"
            )
        lines.append(f"add rule ip nat prerouting {iif} dnat to {fallback.address}")
    lines.append(
        f'add rule ip nat postrouting oifname "{UPSTREAM_EGRESS_INTERFACE}" snat to {source}'
    )
    return _PREAMBLE + "\n".join(lines) + "\n"
