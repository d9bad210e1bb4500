"""Conntrack lines as the conntrack tool prints them, parsed into flows."""

from __future__ import annotations

import ipaddress

import pytest

from egress_router.kernel import conntrack

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
