"""CHECK's comparison: the nft listing parsed without counters, and differences named."""

from __future__ import annotations

from egress_router.cni import drift, macvlan, netconf
from support.cni import CONF, LISTING, MAC, healthy

# ------------------------------------------------------------------ CHECK's comparison


def test_rewrapped_elements_and_other_counter_values_are_no_difference() -> None:
    rewrapped = LISTING.replace(",\n\t\t\t     tcp . 8080 : ", ", tcp . 8080 : ").replace(
        "packets 12 bytes 720", "packets 0 bytes 0")
    assert drift.ruleset_differences(LISTING, rewrapped, "inet egress_router") == []


def test_ruleset_differences_in_nfts_words() -> None:
    tampered = (
        LISTING.replace("tcp . 8080 : 203.0.113.26 . 80", "tcp . 8080 : 198.51.100.9 . 80")
        .replace("policy drop;", "policy accept;")
    )
    assert drift.ruleset_differences(LISTING, tampered, "inet egress_router") == [
        "nftables map redirect_v4: missing element 'tcp . 8080 : 203.0.113.26 . 80'",
        "nftables map redirect_v4: unexpected element 'tcp . 8080 : 198.51.100.9 . 80'",
        "nftables chain forward: missing 'type filter hook forward priority filter; policy "
        "drop;'",
        "nftables chain forward: unexpected 'type filter hook forward priority filter; policy "
        "accept;'",
    ]
    assert drift.ruleset_differences(LISTING, None, "inet egress_router") == [
        "nftables table inet egress_router is missing"
    ]


def _expected(conf: netconf.NetConf) -> drift.Expected:
    cfg = conf.router_config("net1")
    return drift.Expected(
        ifname="net1", pod_interface="eth0", mode="private",
        addresses=tuple(s.interface for s in cfg.sources), routes=drift.expected_routes(cfg),
        families=cfg.families(), ruleset=LISTING, mtu=1500, mac=MAC, parent_index=2,
        master="ens3",
    )




def test_differences_name_what_drifted() -> None:
    expected = _expected(netconf.parse(CONF))
    assert drift.differences(expected, healthy(), macvlan.TABLE) == []
    broken = drift.Observed(
        link=drift.LinkState("net1", "macvlan", "bridge", 1400, "02:00:00:00:00:01", False, 2),
        pod_interface=False,
        addresses=("192.168.12.98/24",),
        routes=(drift.Route("192.168.12.1/32"),),
        forwarding=((4, "0"),),
        ruleset=LISTING,
    )
    assert drift.differences(expected, broken, macvlan.TABLE) == [
        "pod interface 'eth0' is missing",
        "macvlan 'net1' is in bridge mode, expected private",
        f"interface 'net1' has MAC 02:00:00:00:00:01, but ADD reported {MAC}",
        "interface 'net1' has MTU 1400, expected 1500",
        "interface 'net1' is down",
        "address 192.168.12.99/24 is missing from 'net1'",
        "unexpected address 192.168.12.98/24 on 'net1'",
        "route missing: ip route default via 192.168.12.1 dev net1",
        "forwarding is off (net.ipv4.ip_forward=0)",
    ]
    gone = drift.Observed(link=None, pod_interface=True, forwarding=((4, "1"),), ruleset=None)
    assert drift.differences(expected, gone, macvlan.TABLE) == [
        "interface 'net1' is missing from the container",
        "nftables table inet egress_router is missing",
    ]
