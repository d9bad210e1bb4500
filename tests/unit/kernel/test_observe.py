"""The interface drift of a snapshot, and plan steps sent to the pyroute2 helper process."""

from __future__ import annotations

import ipaddress

import pytest

from egress_router.core import config, plan, state
from egress_router.kernel import observe

ENV = {
    "EGRESS_SOURCE": "192.168.12.99/24",
    "EGRESS_GATEWAY": "192.168.12.1",
    "EGRESS_DESTINATION": (
        "80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n53 udp 203.0.113.25\n"
        "443 tcp multi.lab.test\n203.0.113.27\n"
    ),
}


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
    )
    steps = plan.plan_interfaces(cfg)
    assert [observe.problem(s, good) for s in steps] == [None] * 6
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
    )
    assert [observe.problem(s, bad) for s in steps] == [
        "interface macvlan0 is down",
        "address 192.168.12.99/24 is missing on macvlan0",
        "route 192.168.12.1/32 dev macvlan0 is missing",
        "IPv4 policy rules for replies to the pod network differ (2 missing, 0 unexpected)",
        "no IPv4 default route via 192.168.12.1 dev macvlan0",
        "net.ipv4.ip_forward is not 1",
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
