"""The NAT port-space sample: what it counts, what it keeps, when it warns, how it is cached."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator

from egress_router.core import config
from egress_router.kernel import conntrack
from egress_router.router import capacity, metrics

CFG = config.load_config({
    "EGRESS_SOURCE": "192.168.12.99/24,192.168.12.100/24",
    "EGRESS_GATEWAY": "192.168.12.1",
    "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n443 tcp 203.0.113.26\n",
})
A, B = ipaddress.ip_address("192.168.12.99"), ipaddress.ip_address("192.168.12.100")
D1, D2 = ipaddress.ip_address("203.0.113.25"), ipaddress.ip_address("203.0.113.26")


def flows(n1: int, n2: int, closing: int = 0) -> list[conntrack.Flow]:
    out = [conntrack.Flow(4, "tcp", 80, D1, 80, True, A) for _ in range(n1)]
    out += [conntrack.Flow(4, "tcp", 80, D1, 80, False, A) for _ in range(closing)]
    out += [conntrack.Flow(4, "tcp", 443, D2, 443, True, B) for _ in range(n2)]
    return out


def test_ports_in_use_count_time_wait_and_list_every_pool_address() -> None:
    sample = capacity.take_sample(CFG, flows(3, 1, closing=2), clock=lambda: 7.0)
    assert sample.active == {(4, "tcp", 80): 3, (4, "tcp", 443): 1}
    assert sample.ports == {
        (4, "tcp", D1, 80): {A: 5, B: 0},
        (4, "tcp", D2, 443): {A: 0, B: 1},
    }
    assert (sample.entries, sample.truncated, sample.taken) == (6, False, 7.0)


def test_the_sample_is_bounded_in_entries_and_destinations() -> None:
    sample = capacity.take_sample(CFG, flows(3, 1), limit=2, top=1)
    assert (sample.entries, sample.truncated) == (2, True)
    assert list(sample.ports) == [(4, "tcp", D1, 80)]


def test_a_destination_past_80_percent_warns_and_says_what_to_do() -> None:
    busy = capacity.Sample(0, 0, 0, False, {}, {(4, "tcp", D1, 80): {A: 51610, B: 51609}})
    assert capacity.warnings(CFG, busy) == [
        "the NAT port space from 192.168.12.99 to 203.0.113.25:80/tcp is 80% used (51,610 of "
        "64,512 ports, TIME_WAIT included); new connections to it fail when it is full: add "
        "addresses to the source pool (EGRESS_SOURCE=192.168.12.99/24,192.168.12.100/24,<more "
        "addresses of the same subnet>) and whitelist them at the destination"
    ]
    assert capacity.warnings(CFG, None) == []


def test_metrics_pair_use_with_capacity_and_carry_the_kernels_failures() -> None:
    sample = capacity.take_sample(CFG, flows(2, 0), clock=lambda: 5.0)
    stats = conntrack.Stats({"insert_failed": 7, "drop": 9, "early_drop": 0}, 12, 262144)
    out: list[str] = []
    capacity.write_metrics(metrics.Writer(out.append, "test", frozenset(capacity.FAMILIES),
                                          set()), sample, stats)
    lines = [line for line in "".join(out).splitlines() if not line.startswith("#")]
    labels = 'family="ipv4",protocol="tcp",source="192.168.12.{}",destination="203.0.113.25",'
    assert lines[:4] == [
        "egress_router_conntrack_insert_failed_total 7",
        "egress_router_conntrack_drop_total 9",
        "egress_router_conntrack_early_drop_total 0",
        "egress_router_conntrack_entries_limit 262144",
    ]
    assert lines[4:8] == [
        f'egress_router_nat_ports_in_use{{{labels.format(99)}port="80"}} 2',
        f'egress_router_nat_ports_in_use{{{labels.format(100)}port="80"}} 0',
        f'egress_router_nat_ports_capacity{{{labels.format(99)}port="80"}} 64512',
        f'egress_router_nat_ports_capacity{{{labels.format(100)}port="80"}} 64512',
    ]


def test_the_sampler_dumps_once_per_interval_never_in_a_scrape_one_pass_at_a_time() -> None:
    now = [0.0]
    passes: list[int] = []
    done = threading.Event()

    gate = threading.Event()  # holds the first pass while the burst of scrapes comes in

    def table() -> Iterator[conntrack.Flow]:
        passes.append(1)
        gate.wait(5)
        yield from flows(len(passes), 0)
        if len(passes) > 1:
            done.set()

    sampler = capacity.Sampler(30, clock=lambda: now[0])
    # A burst of first scrapes: none waits for a dump, and one pass runs for all of them.
    assert [sampler.latest(CFG, table) for _ in range(5)] == [None] * 5
    gate.set()
    assert sampler.wait(5)
    assert len(passes) == 1
    first = sampler.latest(CFG, table)
    assert first is not None and first.active == {(4, "tcp", 80): 1}
    now[0] = 29.0
    assert sampler.latest(CFG, table) is first  # scrapes in between read the sample
    assert len(passes) == 1
    now[0] = 31.0
    assert sampler.latest(CFG, table) is first  # stale: served, and refreshed behind
    assert done.wait(5)
    for _ in range(100):
        fresh = sampler.latest(CFG, table)
        if fresh is not first:
            break
        threading.Event().wait(0.01)
    assert fresh is not None and fresh.active == {(4, "tcp", 80): 2}
    assert len(passes) == 2
