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
        plan.SetAddress("macvlan0", ipaddress.ip_interface("192.168.12.99/24"),
                        (ipaddress.ip_interface("192.168.12.100/24"),)),
        plan.SetRoute("net1", ipaddress.ip_network("192.168.12.1/32")),
        plan.SetRoute("net1", ipaddress.ip_network("0.0.0.0/0"),
                      ipaddress.ip_address("192.168.12.1")),
        plan.EnableForwarding(6),
    ],
)
def test_plan_steps_travel_to_the_helper_process_unchanged(step: plan.Step) -> None:
    assert observe.decode_step(observe.encode_step(step)) == step
