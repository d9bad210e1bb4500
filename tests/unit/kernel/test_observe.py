"""The interface drift of a snapshot, and plan steps sent to the pyroute2 helper process."""

from __future__ import annotations

import ipaddress

import pytest

from egress_router.core import plan
from egress_router.kernel import observe


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


def test_a_pool_address_is_not_an_other_address_and_a_missing_one_is_named() -> None:
    cfg = config.load_config({
        "EGRESS_SOURCE": "192.168.12.99/24,192.168.12.100/24",
        "EGRESS_GATEWAY": "192.168.12.1",
        "EGRESS_DESTINATION": "80 tcp 203.0.113.25",
    })
    steps = [s for s in plan.plan_interfaces(cfg) if isinstance(s, plan.SetAddress)]
    link = observe.Link(6, "macvlan0", True, "02:00:00:00:00:01")
    both = observe.Snapshot(links=(link,), addresses=(
        observe.Address(6, ipaddress.ip_interface("192.168.12.99/24"), 0),
        observe.Address(6, ipaddress.ip_interface("192.168.12.100/24"), 0),
    ), routes=())
    assert [observe.problem(s, both) for s in steps] == [None, None]
    one = observe.Snapshot(links=(link,), addresses=(
        observe.Address(6, ipaddress.ip_interface("192.168.12.99/24"), 0),
        observe.Address(6, ipaddress.ip_interface("192.168.12.7/24"), 0),
    ), routes=())
    assert [observe.problem(s, one) for s in steps] == [
        "macvlan0 has other addresses: 192.168.12.7/24",
        "address 192.168.12.100/24 is missing on macvlan0",
    ]
    assert [observe.decode_step(observe.encode_step(s)) for s in steps] == steps
