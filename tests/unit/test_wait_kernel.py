"""Reading the kernel without pyroute2: netlink dumps, conntrack lines, nft counters, status.

The inputs are what the kernel and the tools really print (a listing taken
from a lab router is in golden/kernel-listing.nft), so the parsers are held
to the real formats.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import pytest

from egress_router import status
from egress_router.core import config, plan
from egress_router.kernel import conntrack, observe
from egress_router.lab import nameserver as labdns
from egress_router.router import metrics, resolve

LISTING = (Path(__file__).parent / "golden" / "kernel-listing.nft").read_text()
ENV = {
    "EGRESS_SOURCE": "192.168.12.99/24",
    "EGRESS_GATEWAY": "192.168.12.1",
    "EGRESS_DESTINATION": (
        "80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n53 udp 203.0.113.25\n"
        "443 tcp multi.lab.test\n203.0.113.27\n"
    ),
}


# ----------------------------------------------------------------------------- nft counters


def test_read_counters_from_a_real_listing() -> None:
    counters = metrics.read_counters(LISTING.splitlines())
    assert set(counters) == {"conns_v4", "traffic_v4"}
    conns = {
        key: metrics.lookup(counters, "conns_v4", key)
        for key in [(config.Proto.UDP, 53), (config.Proto.TCP, 80), (config.Proto.TCP, 8080),
                    (config.Proto.TCP, 443), (config.Proto.TCP, 9)]
    }
    assert conns == {
        (config.Proto.UDP, 53): (0, 0),
        (config.Proto.TCP, 80): (2, 120),
        (config.Proto.TCP, 8080): (0, 0),
        (config.Proto.TCP, 443): (0, 0),
        (config.Proto.TCP, 9): None,
    }
    assert metrics.lookup(counters, "traffic_v4", (config.Proto.TCP, 80)) == (20, 1272)
    assert len(counters["traffic_v4"]) == 4


# ----------------------------------------------------------------------------- status


def test_status_of_a_matching_kernel() -> None:
    cfg = config.load_config(ENV)
    state, rules, problems = status.collect_nftables(cfg, LISTING, {(4, "tcp", 80): 1})
    assert problems == []
    assert state["present"] is True
    rows = {(r.protocol, r.port): r for r in rules}
    assert rows[("tcp", "80")].kernel == ["203.0.113.25:80"]
    assert (rows[("tcp", "80")].connections, rows[("tcp", "80")].packets) == (2, 20)
    assert rows[("tcp", "80")].bytes == 1272
    assert rows[("tcp", "80")].active == 1
    assert rows[("tcp", "443")].destination == "multi.lab.test:443"
    assert rows[("tcp", "443")].kernel == ["203.0.113.25:443", "203.0.113.26:443"]
    assert rows[("tcp, udp, sctp", "*")].kernel == ["203.0.113.27"]


def test_status_names_every_difference() -> None:
    cfg = config.load_config({
        **ENV,
        "EGRESS_DESTINATION": "80 tcp 203.0.113.26\n53 udp 203.0.113.25\n9999 udp 203.0.113.9\n"
                              "443 tcp multi.lab.test\n",
    })
    _state, _rules, problems = status.collect_nftables(cfg, LISTING, {})
    assert problems == [
        "tcp port 80 (IPv4): the kernel sends it to 203.0.113.25:80",
        "udp port 9999 (IPv4): missing in the kernel",
        "tcp port 8080 (IPv4) is not configured",
        "IPv4 fallback: in the kernel but not in the configuration",
    ]
    _state, _rules, problems = status.collect_nftables(cfg, None, {})
    assert problems == ["table inet egress_router is missing"]


def test_status_counts_chain_rules() -> None:
    cfg = config.load_config(ENV)
    tampered = LISTING.replace('\t\tiifname "eth0" tcp dport 9090 accept\n', "")
    _state, _rules, problems = status.collect_nftables(cfg, tampered, {})
    assert problems == ["chain input has 3 rules, expected 4"]


def test_status_json_and_exit_verdict() -> None:
    cfg = config.load_config(ENV)
    snapshot = observe.Snapshot(links=(), addresses=(), routes=())
    report = status.collect(
        cfg,
        runner=_Lister(LISTING),
        read_links=lambda: snapshot,
        tracker=conntrack.FakeConntrack(),
    )
    assert not report.matches  # no macvlan0 in this (empty) snapshot
    assert report.problems[0] == "interface macvlan0 does not exist"
    text = status.to_json(report)
    assert '"matches": false' in text
    assert '"destination": "multi.lab.test:443"' in text


class _Lister:
    def __init__(self, text: str) -> None:
        self.text = text

    def run(self, script: str, *, check_only: bool = False) -> None:
        raise AssertionError("status must not change anything")

    def list_table(self) -> None:
        return None

    def list_table_text(self, *, stateless: bool = False) -> str:
        return self.text


# ----------------------------------------------------------------------------- conntrack


@pytest.mark.parametrize(
    ("line", "flow"),
    [
        (
            "tcp      6 299 ESTABLISHED src=10.128.0.10 dst=10.128.0.2 sport=44382 dport=8080 "
            "src=203.0.113.26 dst=192.168.12.99 sport=80 dport=44382 [ASSURED] mark=0 use=1",
            conntrack.Flow(4, "tcp", 8080, ipaddress.ip_address("203.0.113.26"), 80, True),
        ),
        (
            "tcp      6 106 TIME_WAIT src=10.128.0.10 dst=10.128.0.2 sport=43434 dport=80 "
            "src=203.0.113.25 dst=192.168.12.99 sport=80 dport=43434 [ASSURED] mark=0 use=1",
            conntrack.Flow(4, "tcp", 80, ipaddress.ip_address("203.0.113.25"), 80, False),
        ),
        (
            "udp      17 29 src=fd00:128::10 dst=fd00:128::2 sport=40000 dport=53 [UNREPLIED] "
            "src=2001:db8:113::25 dst=2001:db8:12::99 sport=5353 dport=40000 mark=0 use=1",
            conntrack.Flow(6, "udp", 53, ipaddress.ip_address("2001:db8:113::25"), 5353, True),
        ),
        (  # the HTTP port: not redirected
            "tcp      6 109 TIME_WAIT src=10.128.0.10 dst=10.128.0.2 sport=51264 dport=9090 "
            "src=10.128.0.2 dst=10.128.0.10 sport=9090 dport=51264 [ASSURED] mark=0 use=1",
            None,
        ),
        (
            "icmp     1 29 src=10.128.0.10 dst=10.128.0.2 type=8 code=0 id=7 src=10.128.0.2 "
            "dst=10.128.0.10 type=0 code=0 id=7 mark=0 use=1",
            None,
        ),
    ],
)
def test_parse_conntrack_lines(line: str, flow: conntrack.Flow | None) -> None:
    family = 6 if "fd00" in line else 4
    assert conntrack.parse_flow(line, family) == flow


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


# ----------------------------------------------------------------------------- DNS


def test_answers_are_bounded_and_filtered() -> None:
    resolver = resolve.DnsResolver(min_ttl=5, max_ttl=300)
    a = ipaddress.ip_address
    answer = resolver.answer("api.example.com", [a("203.0.113.26"), a("203.0.113.25"),
                                                 a("203.0.113.25"), a("2001:db8::1")], 0, [4])
    assert answer == resolve.Answer((a("203.0.113.25"), a("203.0.113.26")), 5)
    assert resolver.answer("x.example.com", [a("203.0.113.25")], 86400, [4]).ttl == 300
    with pytest.raises(resolve.ResolveError) as caught:
        resolver.answer("evil.example.com", [a("127.0.0.1")], 60, [4])
    assert str(caught.value) == (
        "cannot use evil.example.com: it resolves to 127.0.0.1, none of which can be a "
        "destination (loopback, link-local, multicast or unspecified)"
    )
    with pytest.raises(resolve.ResolveError, match=r"^cannot resolve v6\.example\.com: no A "):
        resolver.answer("v6.example.com", [], 60, [4])


def test_resolve_now_fails_on_the_first_bad_name() -> None:
    cfg = config.load_config({**ENV, "EGRESS_DESTINATION": "443 tcp nowhere.example.com\n"})

    class Failing:
        def resolve(self, host: str, families: object) -> resolve.Answer:
            raise resolve.ResolveError(f"cannot resolve {host}: no such name (NXDOMAIN)")

    with pytest.raises(resolve.ResolveError, match=r"nowhere\.example\.com"):
        resolve.resolve_now(cfg, Failing())


def test_lab_dns_answers_from_its_records() -> None:
    records = {"api.lab.test": {"A": ["203.0.113.25", "203.0.113.26"], "ttl": 2}}
    query = dns.message.make_query("API.lab.test.", "A")
    wire, entry = labdns.answer(query.to_wire(), records)
    response = dns.message.from_wire(wire)
    assert response.flags & dns.flags.AA
    assert sorted(r.address for r in response.answer[0]) == ["203.0.113.25", "203.0.113.26"]
    assert response.answer[0].ttl == 2
    assert entry == {"name": "api.lab.test", "type": "A", "answer": ["203.0.113.25",
                                                                     "203.0.113.26"], "ttl": 2}
    wire, _ = labdns.answer(dns.message.make_query("api.lab.test.", "AAAA").to_wire(), records)
    assert dns.message.from_wire(wire).rcode() == dns.rcode.NOERROR
    assert dns.message.from_wire(wire).answer == []
    wire, entry = labdns.answer(dns.message.make_query("gone.lab.test.", "A").to_wire(), records)
    assert dns.message.from_wire(wire).rcode() == dns.rcode.NXDOMAIN
    assert entry["rcode"] == "NXDOMAIN"
