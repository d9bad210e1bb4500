"""ctnetlink messages as the kernel writes them: parsed into flows, matched against a cut.

The messages are built here field by field after ``nfnetlink_conntrack.h``
(nested tuple attributes, network byte order ports, big-endian status), so the
parser is held to the wire format rather than to itself.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path

from egress_router.kernel import conntrack


def _attr(kind: int, payload: bytes, nested: bool = False) -> bytes:
    size = 4 + len(payload)
    head = struct.pack("=HH", size, kind | (0x8000 if nested else 0))
    return head + payload + b"\0" * ((4 - size % 4) % 4)


def _tuple(kind: int, src: str, dst: str, proto: int, *ports: int) -> bytes:
    sport, dport = ports
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    ip_kinds = (1, 2) if a.version == 4 else (3, 4)
    ip = _attr(ip_kinds[0], a.packed) + _attr(ip_kinds[1], b.packed)
    l4 = (
        _attr(1, bytes([proto]))
        + _attr(2, struct.pack("!H", sport))
        + _attr(3, struct.pack("!H", dport))
    )
    return _attr(kind, _attr(1, ip, True) + _attr(2, l4, True), True)


def entry(
    client: str, router: str, dest: str, proto: int, *ports: int,
    status: int = 0x1AE, tcp_state: int | None = 3, snat: str | None = None,
) -> bytes:
    """One IPCTNL_MSG_CT_NEW body (after nfgenmsg): client -> router:port DNATed to dest:remote."""
    port, remote = ports
    body = _tuple(1, client, router, proto, 40000, port)
    body += _tuple(2, dest, snat or client, proto, remote, 40000)
    body += _attr(3, struct.pack("!I", status))
    if tcp_state is not None:
        body += _attr(4, _attr(1, _attr(1, bytes([tcp_state])), True), True)
    return body


def parse(body: bytes, family: int = 4) -> conntrack.Flow | None:
    found = conntrack.parse_entry(body, 0, len(body), family)
    return None if found is None else found[0]


def test_a_redirected_tcp_flow_is_read_from_its_tuples() -> None:
    body = entry("10.128.0.10", "10.128.0.2", "203.0.113.26", socket.IPPROTO_TCP, 8080, 80)
    flow = parse(body)
    # The reply goes to the client: no source NAT in this entry.
    assert flow == conntrack.Flow(4, "tcp", 8080, ipaddress.ip_address("203.0.113.26"), 80, True)
    found = conntrack.parse_entry(body, 0, len(body), 4)
    assert found is not None
    # What a delete sends back: the original tuple attribute, exactly as written.
    assert found[1] == _tuple(1, "10.128.0.10", "10.128.0.2", socket.IPPROTO_TCP, 40000, 8080)


def test_the_source_nat_address_is_read_from_the_reply_tuple() -> None:
    body = entry("10.128.0.10", "10.128.0.2", "203.0.113.26", 6, 8080, 80, snat="192.168.12.99")
    flow = parse(body)
    assert flow is not None and flow.source == ipaddress.ip_address("192.168.12.99")


def test_ipv6_udp_and_closing_tcp() -> None:
    body = entry("fd00:128::10", "fd00:128::2", "2001:db8:113::25", socket.IPPROTO_UDP, 53, 53,
                 tcp_state=None)
    assert parse(body, 6) == conntrack.Flow(
        6, "udp", 53, ipaddress.ip_address("2001:db8:113::25"), 53, True
    )
    closing = entry("10.128.0.10", "10.128.0.2", "203.0.113.25", 6, 80, 80, tcp_state=7)
    flow = parse(closing)
    assert flow is not None and flow.live is False


def test_flows_without_dnat_or_of_other_protocols_are_not_ours() -> None:
    # The router's own HTTP port: no IPS_DST_NAT bit in the status.
    own = entry("10.128.0.10", "10.128.0.2", "10.128.0.2", 6, 9090, 9090, status=0x18E)
    assert parse(own) is None
    icmp = entry("10.128.0.10", "10.128.0.2", "203.0.113.25", 1, 0, 0, tcp_state=None)
    assert parse(icmp) is None


def test_a_cut_matches_removed_rules_and_unclaimed_fallback_ports() -> None:
    gone = ipaddress.ip_address("203.0.113.26")
    fallback = ipaddress.ip_address("203.0.113.27")
    selection = conntrack.Cut(
        targets=frozenset({(4, "tcp", 8080, gone, 80)}),
        fallbacks=frozenset({(4, fallback)}),
        kept=frozenset({(4, "tcp", 443)}),
    )
    assert selection.families() == [4]
    assert selection.matches(conntrack.Flow(4, "tcp", 8080, gone, 80, True))
    assert not selection.matches(conntrack.Flow(4, "tcp", 8080, gone, 81, True))  # re-targeted
    assert selection.matches(conntrack.Flow(4, "udp", 9000, fallback, 9000, True))
    assert not selection.matches(conntrack.Flow(4, "tcp", 443, fallback, 443, True))  # a rule now
    assert not conntrack.Cut()


def test_the_live_count_is_one_read(tmp_path: Path) -> None:
    path = tmp_path / "nf_conntrack_count"
    path.write_text("64000\n")
    assert conntrack.CtNetlink(path).count() == 64000
    assert conntrack.CtNetlink(path.with_name("missing")).count() is None


def test_a_cut_skips_entries_of_other_ports_before_reading_their_addresses() -> None:
    gone = ipaddress.ip_address("203.0.113.26")
    selection = conntrack.Cut(targets=frozenset({(4, "tcp", 8080, gone, 80)}))
    ports = selection.ports(4)
    assert ports == {(6, 8080)}
    other = entry("10.128.0.10", "10.128.0.2", "203.0.113.25", 17, 53, 53, tcp_state=None)
    assert conntrack.parse_entry(other, 0, len(other), 4, ports) is None
    mine = entry("10.128.0.10", "10.128.0.2", "203.0.113.26", 6, 8080, 80)
    assert conntrack.parse_entry(mine, 0, len(mine), 4, ports) is not None
    # A removed fallback may own any port: no shortcut then.
    assert conntrack.Cut(fallbacks=frozenset({(4, gone)})).ports(4) is None


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
