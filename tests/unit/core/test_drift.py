"""The one comparison: plan steps, policy rules, macvlan shape and ruleset vs a Snapshot."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

from egress_router.core import config, drift, plan, state
from support.cni import LISTING, MAC, healthy
from support.environments import NAMED_ENV

ENV = NAMED_ENV


def test_drift_names_what_is_missing() -> None:
    cfg = config.load_config(ENV)
    mac = "9e:e1:36:ed:2b:3b"
    pod = state.Link(2, "eth0", True, "0a:58:0a:80:00:02")
    return_rules = (
        (4, (25970, "macvlan0", None, 254, True)),
        (4, (25971, "macvlan0", None, 25970, False)),
        (4, (25972, None, "10.128.0.2", 254, True)),
        (4, (25973, None, "10.128.0.2", 25970, False)),
    )
    good = state.Snapshot(
        links=(pod, state.Link(6, "macvlan0", True, mac)),
        addresses=(
            state.Address(2, ipaddress.ip_interface("10.128.0.2/24"), 0),
            state.Address(6, ipaddress.ip_interface("192.168.12.99/24"), 0),
        ),
        routes=(
            state.Route(4, ipaddress.ip_network("192.168.12.1/32"), None, 6, 254, 1),
            state.Route(4, ipaddress.ip_network("0.0.0.0/0"),
                            ipaddress.ip_address("192.168.12.1"), 6, 254, 1),
        ),
        rules=return_rules,
        forwarding=((4, True),),
        sysctls=plan.harden_egress(cfg).values,
    )
    steps = plan.plan_interfaces(cfg)
    assert [drift.step_problem(s, good) for s in steps] == [None] * 7
    bad = state.Snapshot(
        links=(pod, state.Link(6, "macvlan0", False, mac)),
        addresses=(
            state.Address(6, ipaddress.ip_interface("192.168.12.98/24"), 0),
            state.Address(6, ipaddress.ip_interface("fe80::1/64"), 253),
        ),
        routes=(
            state.Route(4, ipaddress.ip_network("0.0.0.0/0"),
                            ipaddress.ip_address("10.128.0.1"), 2, 254, 1),
        ),
        sysctls=(*plan.harden_egress(cfg).values, ("net/ipv6/conf/macvlan0/accept_ra", "1")),
    )
    assert [drift.step_problem(s, bad) for s in steps] == [
        "net.ipv6.conf.macvlan0.accept_ra is 1, not 0",
        "interface macvlan0 is down",
        "address 192.168.12.99/24 is missing on macvlan0",
        "route 192.168.12.1/32 dev macvlan0 is missing",
        "IPv4 policy rules for replies to the pod network differ: missing ip rule add priority "
        "25970 iif macvlan0 lookup main suppress_prefixlength 0; missing ip rule add priority "
        "25971 iif macvlan0 lookup 25970",
        "no IPv4 default route via 192.168.12.1 dev macvlan0",
        "net.ipv4.ip_forward is not 1",
    ]


def _return_path_snapshot(rules: tuple[tuple[int, state.RuleKey], ...]) -> state.Snapshot:
    return state.Snapshot(
        links=(state.Link(2, "eth0", True, ""), state.Link(6, "macvlan0", True, "")),
        addresses=(state.Address(2, ipaddress.ip_interface("10.128.0.2/24"), 0),),
        routes=(), rules=rules,
    )


def test_a_deleted_return_path_rule_is_named_with_the_command_that_makes_it() -> None:
    step = plan.KeepPodReturnPath(4, "eth0", "macvlan0")
    wanted = tuple((4, r) for r in state.pod_return_rules(step, ["10.128.0.2"]))
    assert drift.step_problem(step, _return_path_snapshot(wanted)) is None
    assert drift.step_problem(step, _return_path_snapshot(wanted[1:])) == (
        "IPv4 policy rules for replies to the pod network differ: missing ip rule add priority "
        "25970 iif macvlan0 lookup main suppress_prefixlength 0"
    )
    stray = (4, (25972, None, "10.128.0.9", 254, True))
    assert drift.step_problem(step, _return_path_snapshot((*wanted, stray))) == (
        "IPv4 policy rules for replies to the pod network differ: unexpected ip rule add "
        "priority 25972 from 10.128.0.9 lookup main suppress_prefixlength 0"
    )


SHAPE = drift.MacvlanShape("net1", "private", mtu=1500, mac=MAC, parent=2, master="ens3")


def test_the_macvlan_shape_names_mode_mac_mtu_and_master() -> None:
    link = state.Link(3, "net1", True, MAC, 1500, "macvlan", "private", 2)
    good = state.Snapshot((link,), (), ())
    assert drift.macvlan_problems(SHAPE, good) == []
    bad = state.Snapshot(
        (state.Link(3, "net1", True, "02:00:00:00:00:01", 1400, "macvlan", "bridge", 7),), (), ()
    )
    assert [str(p) for p in drift.macvlan_problems(SHAPE, bad)] == [
        "macvlan net1 is in bridge mode, expected private",
        f"interface net1 has MAC 02:00:00:00:00:01, but ADD reported {MAC}",
        "interface net1 has MTU 1400, expected 1500",
        "macvlan net1 is not on master ens3",
    ]
    veth = state.Snapshot((state.Link(3, "net1", True, MAC, 1500, "veth"),), (), ())
    assert [str(p) for p in drift.macvlan_problems(SHAPE, veth)] == [
        "interface net1 is a veth link, not a macvlan"]
    orphan = drift.MacvlanShape("net1", "private", master="ens3")
    assert [str(p) for p in drift.macvlan_problems(orphan, state.Snapshot((), (), ()))] == [
        "master interface ens3 no longer exists on the node"]


def test_ruleset_differences_in_nfts_words() -> None:
    rewrapped = LISTING.replace(",\n\t\t\t     tcp . 8080 : ", ", tcp . 8080 : ").replace(
        "packets 12 bytes 720", "packets 0 bytes 0")
    assert drift.ruleset_problems(LISTING, rewrapped) == []
    tampered = (
        LISTING.replace("tcp . 8080 : 203.0.113.26 . 80", "tcp . 8080 : 198.51.100.9 . 80")
        .replace("policy drop;", "policy accept;")
    )
    assert [str(p) for p in drift.ruleset_problems(LISTING, tampered)] == [
        "nftables map redirect_v4: missing element 'tcp . 8080 : 203.0.113.26 . 80'",
        "nftables map redirect_v4: unexpected element 'tcp . 8080 : 198.51.100.9 . 80'",
        "nftables chain forward: missing 'type filter hook forward priority filter; policy "
        "drop;'",
        "nftables chain forward: unexpected 'type filter hook forward priority filter; policy "
        "accept;'",
    ]
    assert [str(p) for p in drift.ruleset_problems(LISTING, None)] == [
        "nftables table inet egress_router is missing"
    ]


def test_compare_puts_the_link_first_and_the_ruleset_last_and_names_each_reason_once() -> None:
    cfg = config.load_config({**ENV, "EGRESS_INTERFACE": "net1"})
    empty = state.Snapshot((state.Link(2, "eth0", True, ""),), (), (), table=None)
    found = drift.compare(plan.plan_interfaces(cfg), empty, ruleset_listing=LISTING, macvlan=SHAPE)
    assert found[0] == drift.Problem("interface net1 does not exist", plan.LinkUp("net1"))
    assert drift.reasons(found) == [
        "interface net1 does not exist",
        "IPv4 policy rules for replies to the pod network differ: missing ip rule add priority "
        "25970 iif net1 lookup main suppress_prefixlength 0; missing ip rule add priority 25971 "
        "iif net1 lookup 25970",
        "net.ipv4.ip_forward is not 1",
        "nftables table inet egress_router is missing",
    ]
    assert drift.summarise([f"p{i}" for i in range(22)]).endswith("p19; and 2 more")


CNI_ENV = {**ENV, "EGRESS_INTERFACE": "net1", "EGRESS_POD_INTERFACE": "eth0"}


def test_a_healthy_pod_has_no_problem_and_a_broken_one_names_each() -> None:
    steps = plan.plan_interfaces(config.load_config(CNI_ENV))
    good = healthy()
    assert drift.compare(steps, good, ruleset_listing=LISTING, macvlan=SHAPE) == []
    broken = dataclasses.replace(
        good,
        links=(good.links[0], state.Link(3, "net1", False, "02:00:00:00:00:01", 1400, "macvlan",
                                         "bridge", 2)),
        addresses=(state.Address(3, ipaddress.ip_interface("192.168.12.98/24"), 0),),
        routes=good.routes[:1],
        forwarding=((4, False),),
    )
    assert drift.reasons(drift.compare(steps, broken, ruleset_listing=LISTING, macvlan=SHAPE)) == [
        "macvlan net1 is in bridge mode, expected private",
        f"interface net1 has MAC 02:00:00:00:00:01, but ADD reported {MAC}",
        "interface net1 has MTU 1400, expected 1500",
        "interface net1 is down",
        "address 192.168.12.99/24 is missing on net1",
        "interface eth0 does not exist",
        "no IPv4 default route via 192.168.12.1 dev net1",
        "net.ipv4.ip_forward is not 1",
    ]


def test_a_pool_address_is_not_an_other_address_and_a_missing_one_is_named() -> None:
    cfg = config.load_config({
        "EGRESS_SOURCE": "192.168.12.99/24,192.168.12.100/24",
        "EGRESS_GATEWAY": "192.168.12.1",
        "EGRESS_DESTINATION": "80 tcp 203.0.113.25",
    })
    steps = [s for s in plan.plan_interfaces(cfg) if isinstance(s, plan.SetAddress)]
    link = state.Link(6, "macvlan0", True, "02:00:00:00:00:01")
    both = state.Snapshot(links=(link,), addresses=(
        state.Address(6, ipaddress.ip_interface("192.168.12.99/24"), 0),
        state.Address(6, ipaddress.ip_interface("192.168.12.100/24"), 0),
    ), routes=())
    assert [drift.step_problem(s, both) for s in steps] == [None, None]
    one = state.Snapshot(links=(link,), addresses=(
        state.Address(6, ipaddress.ip_interface("192.168.12.99/24"), 0),
        state.Address(6, ipaddress.ip_interface("192.168.12.7/24"), 0),
    ), routes=())
    assert [drift.step_problem(s, one) for s in steps] == [
        "macvlan0 has other addresses: 192.168.12.7/24",
        "address 192.168.12.100/24 is missing on macvlan0",
    ]


# ----------------------------------------------------------------------------- rule by rule

KERNEL_LISTING = (Path(__file__).parents[1] / "golden" / "kernel-listing.nft").read_text()


def test_rules_of_a_matching_kernel_with_targets_and_counters() -> None:
    cfg = config.load_config(ENV)
    table, rules, problems = drift.nftables_rules(cfg, KERNEL_LISTING, {(4, "tcp", 80): 1})
    assert problems == []
    assert table["present"] is True
    rows = {(r.protocol, r.port): r for r in rules}
    assert rows[("tcp", "80")].kernel == ["203.0.113.25:80"]
    assert (rows[("tcp", "80")].connections, rows[("tcp", "80")].packets) == (2, 20)
    assert rows[("tcp", "80")].bytes == 1272
    assert rows[("tcp", "80")].active == 1
    assert rows[("tcp", "443")].destination == "multi.lab.test:443"
    assert rows[("tcp", "443")].kernel == ["203.0.113.25:443", "203.0.113.26:443"]
    assert rows[("tcp, udp, sctp", "*")].kernel == ["203.0.113.27"]


def test_rules_name_every_difference() -> None:
    cfg = config.load_config({
        **ENV,
        "EGRESS_DESTINATION": "80 tcp 203.0.113.26\n53 udp 203.0.113.25\n9999 udp 203.0.113.9\n"
                              "443 tcp multi.lab.test\n",
    })
    _state, _rules, problems = drift.nftables_rules(cfg, KERNEL_LISTING, {})
    assert problems == [
        "tcp port 80 (IPv4): the kernel sends it to 203.0.113.25:80",
        "udp port 9999 (IPv4): missing in the kernel",
        "tcp port 8080 (IPv4) is not configured",
        "IPv4 fallback: in the kernel but not in the configuration",
    ]
    _state, _rules, problems = drift.nftables_rules(cfg, None, {})
    assert problems == ["table inet egress_router is missing"]


def test_rules_count_the_chains_statements() -> None:
    cfg = config.load_config(ENV)
    tampered = KERNEL_LISTING.replace('\t\tiifname "eth0" tcp dport 9090 accept\n', "")
    _state, _rules, problems = drift.nftables_rules(cfg, tampered, {})
    assert problems == ["chain input has 5 rules, expected 6"]
