"""Conntrack lines as the conntrack tool prints them, parsed into flows."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from egress_router.kernel import conntrack

# ----------------------------------------------------------------------------- conntrack


@pytest.mark.parametrize(
    ("line", "flow"),
    [
        (
            "tcp      6 299 ESTABLISHED src=10.128.0.10 dst=10.128.0.2 sport=44382 dport=8080 "
            "src=203.0.113.26 dst=192.168.12.99 sport=80 dport=44382 [ASSURED] mark=0 use=1",
            conntrack.Flow(4, "tcp", 8080, ipaddress.ip_address("203.0.113.26"), 80, True,
                           ipaddress.ip_address("192.168.12.99")),
        ),
        (
            "tcp      6 106 TIME_WAIT src=10.128.0.10 dst=10.128.0.2 sport=43434 dport=80 "
            "src=203.0.113.25 dst=192.168.12.99 sport=80 dport=43434 [ASSURED] mark=0 use=1",
            conntrack.Flow(4, "tcp", 80, ipaddress.ip_address("203.0.113.25"), 80, False,
                           ipaddress.ip_address("192.168.12.99")),
        ),
        (
            "udp      17 29 src=fd00:128::10 dst=fd00:128::2 sport=40000 dport=53 [UNREPLIED] "
            "src=2001:db8:113::25 dst=2001:db8:12::99 sport=5353 dport=40000 mark=0 use=1",
            conntrack.Flow(6, "udp", 53, ipaddress.ip_address("2001:db8:113::25"), 5353, True,
                           ipaddress.ip_address("2001:db8:12::99")),
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


STAT = (
    "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop "
    "early_drop icmp_error  expect_new expect_create expect_delete search_restart\n"
    "0000fc00  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 "
    "00006519 00006519 00000000 00000000  00000000 00000000 00000000 00000000\n"
    "0000fc00  00000001 00000000 00000000 00000002 00000000 00000000 00000000 00000000 "
    "00000010 00000011 00000003 00000000  00000000 00000000 00000000 00000000\n"
)


def test_stats_are_summed_over_cpus_without_listing_connections(tmp_path: Path) -> None:
    (tmp_path / "net/stat").mkdir(parents=True)
    (tmp_path / "net/stat/nf_conntrack").write_text(STAT)
    (tmp_path / "sys/net/netfilter").mkdir(parents=True)
    (tmp_path / "sys/net/netfilter/nf_conntrack_count").write_text("64512\n")
    stats = conntrack.read_stats(tmp_path)
    assert stats is not None
    assert (stats.counters["insert_failed"], stats.counters["drop"]) == (0x6529, 0x652A)
    assert (stats.counters["early_drop"], stats.counters["invalid"]) == (3, 2)
    assert "entries" not in stats.counters
    assert (stats.entries, stats.maximum) == (64512, None)
    assert conntrack.read_stats(tmp_path / "absent") is None
