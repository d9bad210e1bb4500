"""What the CNI tests share: the netns, an upstream configuration, a listing, a healthy pod."""

from __future__ import annotations

import ipaddress
from typing import Any

from egress_router.core import plan, state

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

def healthy() -> state.Snapshot:
    """The pod's namespace right after a good ADD of `CONF` (ens3 is index 2 on the node)."""
    return_path = plan.KeepPodReturnPath(4, "eth0", "net1")
    return state.Snapshot(
        links=(
            state.Link(1, "lo", True, "00:00:00:00:00:00", 65536),
            state.Link(2, "eth0", True, "0a:58:0a:80:00:02", 1500, "veth"),
            state.Link(3, "net1", True, MAC, 1500, "macvlan", "private", parent=2),
        ),
        addresses=(
            state.Address(2, ipaddress.ip_interface("10.128.0.2/24"), state.RT_SCOPE_UNIVERSE),
            state.Address(3, ipaddress.ip_interface("192.168.12.99/24"), state.RT_SCOPE_UNIVERSE),
        ),
        routes=(
            state.Route(4, ipaddress.ip_network("192.168.12.1/32"), None, 3, state.MAIN_TABLE,
                        state.RTN_UNICAST),
            state.Route(4, ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("192.168.12.1"),
                        3, state.MAIN_TABLE, state.RTN_UNICAST),
            state.Route(4, ipaddress.ip_network("192.168.12.0/24"), None, 3, state.MAIN_TABLE,
                        state.RTN_UNICAST),
        ),
        rules=tuple((4, r) for r in state.pod_return_rules(return_path, ["10.128.0.2"])),
        forwarding=((4, True), (6, False)),
        table=LISTING,
    )
