"""The one parser of what nft, iptables-save and `ip -j` print (the real formats)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from egress_router.core import config, listing, ruleset, state
from support.cni import LISTING
from support.golden import SEED_ENV

KERNEL = (Path(__file__).parents[1] / "golden" / "kernel-listing.nft").read_text()


def test_blocks_keep_statements_in_order_and_split_out_wrapped_elements() -> None:
    table = listing.parse_table(LISTING)
    assert list(table.blocks) == ["set conns_v4", "map redirect_v4", "chain forward"]
    assert table.elements("set", "conns_v4") == [
        "tcp . 80 counter packets 3 bytes 180", "tcp . 8080 counter packets 0 bytes 0"]
    assert table.elements("map", "redirect_v4") == [
        "tcp . 80 : 203.0.113.25 . 80", "tcp . 8080 : 203.0.113.26 . 80"]
    assert table.lines("chain", "forward") == [
        "type filter hook forward priority filter; policy drop;",
        "ct state established,related accept",
        'counter packets 12 bytes 720 comment "not a redirected connection: dropped"',
    ]
    assert table.lines("chain", "nope") == [] and table.get("set", "forward") is None
    assert listing.strip_counters(table.lines("chain", "forward")[-1]) == (
        'counter comment "not a redirected connection: dropped"')


def test_our_rendered_script_and_the_kernels_listing_have_the_same_blocks() -> None:
    rendered = listing.parse_table(ruleset.render_nftables(config.load_config(SEED_ENV)))
    kernel = listing.parse_table(KERNEL)
    assert set(rendered.of_kind("chain")) <= set(kernel.of_kind("chain"))
    assert "tcp . 80 : 203.0.113.25 . 80" in rendered.elements("map", "redirect_v4")
    assert set(rendered.of_kind("set")) == {"conns_v4", "traffic_v4"}


def test_a_flowtable_is_a_block_too() -> None:
    text = "table inet t {\n\tflowtable f {\n\t\thook ingress priority filter\n\t}\n}\n"
    assert listing.parse_table(text).lines("flowtable", "f") == ["hook ingress priority filter"]


def test_counters_are_read_from_sets_only() -> None:
    text = (
        "table inet egress_router {\n\tset conns_v4 {\n"
        "\t\telements = { tcp . 80 counter packets 3 bytes 180 }\n\t}\n"
        "\tmap redirect_v4 {\n\t\telements = { tcp . 81 counter packets 9 bytes 9 }\n\t}\n}\n"
    )
    counters = listing.read_counters(text.splitlines())
    assert counters == {"conns_v4": {listing.counter_key(config.Proto.TCP, 80): 3 << 64 | 180}}


def test_fingerprint_ignores_element_order_but_not_content() -> None:
    a = "set s {\n\telements = { tcp . 80 counter,\n\t\t     tcp . 81 counter }\n}\n"
    b = "set s {\n\telements = { tcp . 81 counter, tcp . 80 counter }\n}\n"
    c = "set s {\n\telements = { tcp . 81 counter, tcp . 82 counter }\n}\n"
    assert listing.fingerprint_nftables(a) == listing.fingerprint_nftables(b)
    assert listing.fingerprint_nftables(a) != listing.fingerprint_nftables(c)


def test_iptables_fingerprint_sees_only_our_rules() -> None:
    ours = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j EGRESS-ROUTER-PREROUTING\nCOMMIT\n"
    other = ours + "# a comment\n-A PREROUTING -j KUBE-SERVICES\n"
    assert listing.fingerprint_iptables([ours]) == listing.fingerprint_iptables([other])
    assert listing.fingerprint_iptables(["*nat\n-A PREROUTING -j KUBE-SERVICES\n"]) is None




def test_iptables_jumps_and_dnat_targets_come_from_iptables_save() -> None:
    saved = (
        "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j EGRESS-ROUTER-PREROUTING\n"
        "-A EGRESS-ROUTER-PREROUTING -p tcp -m tcp --dport 80 -j DNAT --to-destination "
        "203.0.113.25:80\n"
        "-A EGRESS-ROUTER-PREROUTING -p udp -m udp --dport 80 -j DNAT --to-destination "
        "203.0.113.26:80\nCOMMIT\n*filter\n-A PREROUTING -j EGRESS-ROUTER-PREROUTING\nCOMMIT\n"
    )
    assert listing.iptables_jumps(saved) == {("nat", "PREROUTING", "EGRESS-ROUTER-PREROUTING")}
    assert listing.iptables_dnat_targets(saved, config.Proto.TCP, 80) == ["203.0.113.25:80"]
    assert listing.iptables_dnat_targets(saved, config.Proto.TCP, 8080) == []


# ----------------------------------------------------------------------------- ip -j


IP_ADDR = [
    {"ifindex": 1, "ifname": "lo", "flags": ["LOOPBACK", "UP", "LOWER_UP"],
     "address": "00:00:00:00:00:00",
     "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"}]},
    {"ifindex": 6, "ifname": "macvlan0", "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
     "address": "9e:e1:36:ed:2b:3b", "link_index": 2, "link_netnsid": 0, "mtu": 1500,
     "linkinfo": {"info_kind": "macvlan", "info_data": {"mode": "private"}},
     "addr_info": [
         {"family": "inet", "local": "192.168.12.99", "prefixlen": 24, "scope": "global"},
         {"family": "inet6", "local": "fe80::9ce1:36ff:feed:2b3b", "prefixlen": 64,
          "scope": "link"},
     ]},
    {"ifindex": 7, "ifname": "net9", "flags": ["BROADCAST"], "address": "02:00:00:00:00:09",
     "link": "macvlan0", "addr_info": []},
]
IP_ROUTE6 = [
    {"dst": "2001:db8:12::1", "dev": "macvlan0", "protocol": "static", "metric": 1024},
    {"dst": "default", "gateway": "2001:db8:12::1", "dev": "macvlan0", "metric": 1024},
    {"type": "unreachable", "dst": "2001:db8:99::/48", "dev": "lo", "metric": 1024},
]


def test_ip_json_links_addresses_and_routes() -> None:
    links, addresses = listing.parse_ip_addr(IP_ADDR)
    assert links[1] == state.Link(6, "macvlan0", True, "9e:e1:36:ed:2b:3b", 1500, "macvlan",
                                  "private", parent=2)
    assert links[2] == state.Link(7, "net9", False, "02:00:00:00:00:09", parent=6)
    assert addresses[1:] == [
        state.Address(6, ipaddress.ip_interface("192.168.12.99/24"), 0),
        state.Address(6, ipaddress.ip_interface("fe80::9ce1:36ff:feed:2b3b/64"), 253),
    ]
    routes = listing.parse_ip_route(IP_ROUTE6, 6, {link.name: link.index for link in links})
    assert routes == [
        state.Route(6, ipaddress.ip_network("2001:db8:12::1/128"), None, 6, 254, 1),
        state.Route(6, ipaddress.ip_network("::/0"),
                        ipaddress.ip_address("2001:db8:12::1"), 6, 254, 1),
        state.Route(6, ipaddress.ip_network("2001:db8:99::/48"), None, 1, 254, 0),
    ]


def test_ip_json_rules_keeps_ours_only() -> None:
    dump = [  # `ip -j rule show` as printed by iproute2 6.1
        {"priority": 0, "src": "all", "table": "local"},
        {"priority": 25970, "src": "all", "iif": "macvlan0", "table": "main",
         "suppress_prefixlen": 0},
        {"priority": 25971, "src": "all", "iif": "macvlan0", "table": "25970"},
        {"priority": 25972, "src": "10.128.0.2", "table": "main", "suppress_prefixlen": 0},
        {"priority": 25973, "src": "10.128.0.2", "table": "25970"},
        {"priority": 32766, "src": "all", "table": "main"},
    ]
    assert listing.parse_ip_rule(dump, 4) == [
        (4, (25970, "macvlan0", None, 254, True)),
        (4, (25971, "macvlan0", None, 25970, False)),
        (4, (25972, None, "10.128.0.2", 254, True)),
        (4, (25973, None, "10.128.0.2", 25970, False)),
    ]


def test_snat_addresses_of_one_source_and_of_a_pool() -> None:
    one = 'oifname "macvlan0" meta nfproto ipv4 snat ip to 192.168.12.99'
    pool = ('oifname "net1" meta nfproto ipv4 snat ip to jhash ip saddr . th sport mod 2 '
            "map { 0 : 192.168.12.99, 1 : 192.168.12.100 }")
    assert listing.snat_addresses(one) == ["192.168.12.99"]
    assert listing.snat_addresses(pool) == ["192.168.12.99", "192.168.12.100"]
    assert listing.snat_addresses("ip6 saddr 2001:db8:12::99 snat ip6 to 2001:db8:12::5") == [
        "2001:db8:12::5"
    ]
    assert listing.snat_addresses("ip saddr 192.168.12.99 accept") == []
