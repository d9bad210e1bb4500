"""Reading the kernel without pyroute2: `ip -j` dumps, drift, plan steps sent to a helper.

The inputs are what `ip -j` really prints, so the parsers are held to the real formats.
"""

from __future__ import annotations

import ipaddress

import pytest

from egress_router.core import config, plan
from egress_router.kernel import observe

ENV = {
    "EGRESS_SOURCE": "192.168.12.99/24",
    "EGRESS_GATEWAY": "192.168.12.1",
    "EGRESS_DESTINATION": (
        "80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n53 udp 203.0.113.25\n"
        "443 tcp multi.lab.test\n203.0.113.27\n"
    ),
}


# ----------------------------------------------------------------------------- ip -j


IP_ADDR = [
    {"ifindex": 1, "ifname": "lo", "flags": ["LOOPBACK", "UP", "LOWER_UP"],
     "address": "00:00:00:00:00:00",
     "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"}]},
    {"ifindex": 6, "ifname": "macvlan0", "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
     "address": "9e:e1:36:ed:2b:3b", "link_netnsid": 0,
     "addr_info": [
         {"family": "inet", "local": "192.168.12.99", "prefixlen": 24, "scope": "global"},
         {"family": "inet6", "local": "fe80::9ce1:36ff:feed:2b3b", "prefixlen": 64,
          "scope": "link"},
     ]},
    {"ifindex": 7, "ifname": "net9", "flags": ["BROADCAST"], "address": "02:00:00:00:00:09",
     "addr_info": []},
]
IP_ROUTE6 = [
    {"dst": "2001:db8:12::1", "dev": "macvlan0", "protocol": "static", "metric": 1024},
    {"dst": "default", "gateway": "2001:db8:12::1", "dev": "macvlan0", "metric": 1024},
    {"type": "unreachable", "dst": "2001:db8:99::/48", "dev": "lo", "metric": 1024},
]


def test_parse_ip_json_links_addresses_and_routes() -> None:
    links, addresses = observe.parse_ip_addr(IP_ADDR)
    assert links[1] == observe.Link(6, "macvlan0", True, "9e:e1:36:ed:2b:3b")
    assert links[2] == observe.Link(7, "net9", False, "02:00:00:00:00:09")
    assert addresses[1:] == [
        observe.Address(6, ipaddress.ip_interface("192.168.12.99/24"), 0),
        observe.Address(6, ipaddress.ip_interface("fe80::9ce1:36ff:feed:2b3b/64"), 253),
    ]
    routes = observe.parse_ip_route(IP_ROUTE6, 6, {link.name: link.index for link in links})
    assert routes == [
        observe.Route(6, ipaddress.ip_network("2001:db8:12::1/128"), None, 6, 254, 1),
        observe.Route(6, ipaddress.ip_network("::/0"),
                        ipaddress.ip_address("2001:db8:12::1"), 6, 254, 1),
        observe.Route(6, ipaddress.ip_network("2001:db8:99::/48"), None, 1, 254, 0),
    ]


def test_parse_ip_json_rules_keeps_ours_only() -> None:
    dump = [  # `ip -j rule show` as printed by iproute2 6.1
        {"priority": 0, "src": "all", "table": "local"},
        {"priority": 25970, "src": "all", "iif": "macvlan0", "table": "main",
         "suppress_prefixlen": 0},
        {"priority": 25971, "src": "all", "iif": "macvlan0", "table": "25970"},
        {"priority": 25972, "src": "10.128.0.2", "table": "main", "suppress_prefixlen": 0},
        {"priority": 25973, "src": "10.128.0.2", "table": "25970"},
        {"priority": 32766, "src": "all", "table": "main"},
    ]
    assert observe.parse_ip_rule(dump, 4) == [
        (4, (25970, "macvlan0", None, 254, True)),
        (4, (25971, "macvlan0", None, 25970, False)),
        (4, (25972, None, "10.128.0.2", 254, True)),
        (4, (25973, None, "10.128.0.2", 25970, False)),
    ]


def test_drift_names_what_is_missing() -> None:
    cfg = config.load_config(ENV)
    mac = "9e:e1:36:ed:2b:3b"
    pod = observe.Link(2, "eth0", True, "0a:58:0a:80:00:02")
    return_rules = (
        (4, (25970, "macvlan0", None, 254, True)),
        (4, (25971, "macvlan0", None, 25970, False)),
        (4, (25972, None, "10.128.0.2", 254, True)),
        (4, (25973, None, "10.128.0.2", 25970, False)),
    )
    good = observe.Snapshot(
        links=(pod, observe.Link(6, "macvlan0", True, mac)),
        addresses=(
            observe.Address(2, ipaddress.ip_interface("10.128.0.2/24"), 0),
            observe.Address(6, ipaddress.ip_interface("192.168.12.99/24"), 0),
        ),
        routes=(
            observe.Route(4, ipaddress.ip_network("192.168.12.1/32"), None, 6, 254, 1),
            observe.Route(4, ipaddress.ip_network("0.0.0.0/0"),
                            ipaddress.ip_address("192.168.12.1"), 6, 254, 1),
        ),
        rules=return_rules,
    )
    steps = [s for s in plan.plan_interfaces(cfg) if not isinstance(s, plan.EnableForwarding)]
    assert [observe.problem(s, good) for s in steps] == [None] * 5
    bad = observe.Snapshot(
        links=(pod, observe.Link(6, "macvlan0", False, mac)),
        addresses=(
            observe.Address(6, ipaddress.ip_interface("192.168.12.98/24"), 0),
            observe.Address(6, ipaddress.ip_interface("fe80::1/64"), 253),
        ),
        routes=(
            observe.Route(4, ipaddress.ip_network("0.0.0.0/0"),
                            ipaddress.ip_address("10.128.0.1"), 2, 254, 1),
        ),
    )
    assert [observe.problem(s, bad) for s in steps] == [
        "interface macvlan0 is down",
        "address 192.168.12.99/24 is missing on macvlan0",
        "route 192.168.12.1/32 dev macvlan0 is missing",
        "IPv4 policy rules for replies to the pod network differ (2 missing, 0 unexpected)",
        "no IPv4 default route via 192.168.12.1 dev macvlan0",
    ]


@pytest.mark.parametrize(
    "step",
    [
        plan.LinkUp("macvlan0"),
        plan.SetAddress("macvlan0", ipaddress.ip_interface("2001:db8:12::99/64")),
        plan.SetRoute("net1", ipaddress.ip_network("192.168.12.1/32")),
        plan.SetRoute("net1", ipaddress.ip_network("0.0.0.0/0"),
                      ipaddress.ip_address("192.168.12.1")),
        plan.EnableForwarding(6),
    ],
)
def test_plan_steps_travel_to_the_helper_process_unchanged(step: plan.Step) -> None:
    assert observe.decode_step(observe.encode_step(step)) == step
