"""What the CNI tests share: the netns, an upstream configuration, a listing, a healthy pod."""

from __future__ import annotations

from typing import Any

from egress_router.cni import drift

NETNS = "/var/run/netns/pod"

CONF: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "egress",
    "type": "egress-router",
    "ip": {
        "addresses": ["192.168.12.99/24"],
        "gateway": "192.168.12.1",
        "destinations": ["80 tcp 203.0.113.25", "8080 tcp 203.0.113.26/32 80", "203.0.113.27"],
    },
    "interfaceType": "macvlan",
    "interfaceArgs": {"master": "ens3", "mode": "private", "mtu": "1500"},
}

MAC = "02:00:c0:a8:0c:63"

LISTING = """table inet egress_router {
\tset conns_v4 {
\t\ttype inet_proto . inet_service
\t\tcounter
\t\telements = { tcp . 80 counter packets 3 bytes 180,
\t\t\t     tcp . 8080 counter packets 0 bytes 0 }
\t}

\tmap redirect_v4 {
\t\ttype inet_proto . inet_service : ipv4_addr . inet_service
\t\telements = { tcp . 80 : 203.0.113.25 . 80,
\t\t\t     tcp . 8080 : 203.0.113.26 . 80 }
\t}

\tchain forward {
\t\ttype filter hook forward priority filter; policy drop;
\t\tct state established,related accept
\t\tcounter packets 12 bytes 720 comment "not a redirected connection: dropped"
\t}
}
"""

def healthy() -> drift.Observed:
    return drift.Observed(
        link=drift.LinkState("net1", "macvlan", "private", 1500, MAC, True, 2),
        pod_interface=True,
        addresses=("192.168.12.99/24",),
        routes=(drift.Route("192.168.12.1/32"), drift.Route("0.0.0.0/0", "192.168.12.1"),
                drift.Route("192.168.12.0/24")),
        forwarding=((4, "1"), (6, "0")),
        ruleset=LISTING,
    )
