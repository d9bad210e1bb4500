"""The NAT's port space to each destination: how full it is, sampled, never per scrape.

Every connection the router redirects leaves from one of its source addresses, and the
kernel's NAT needs a source port for it that no other tracked connection to the same
destination ip:port uses: 64,512 ports (1024-65535) per source address and destination,
TIME_WAIT entries included. When they run out, the next SYN is dropped (conntrack's
``insert_failed``) and the client times out; nothing else says so. So the router samples
the conntrack table on its own interval (one bounded dump in a background thread, at most
`MAX_ENTRIES` lines; a scrape only reads the last sample), keeps the busiest
`TOP_DESTINATIONS` destinations, and reports their use per source address next to the
capacity, plus the kernel's own NAT failure counters (O(1) reads of ``/proc``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from egress_router.core import config
from egress_router.kernel import conntrack
from egress_router.router import metrics

PORTS_PER_SOURCE = 65535 - 1024 + 1  # the NAT keeps client ports >= 1024 at >= 1024
WARN_RATIO = 0.8
TOP_DESTINATIONS = 10
MAX_ENTRIES = 300_000  # above the kernel's default nf_conntrack_max (262,144)
DEFAULT_INTERVAL = 30.0
PREFIX = "egress_router"
_FAMILY = {4: "ipv4", 6: "ipv6"}

# (family, protocol, destination, destination port)
Destination = tuple[int, str, config.IPAddress, int]


@dataclass(frozen=True)
class Sample:
    """One pass over the conntrack table."""

    taken: float  # Unix time
    seconds: float  # how long the pass took
    entries: int  # redirected entries read
    truncated: bool  # stopped at MAX_ENTRIES
    active: Mapping[tuple[int, str, int], int]  # live connections per (family, proto, port)
    # in use per destination of the busiest ones, then per source address
    ports: Mapping[Destination, Mapping[config.IPAddress, int]] = field(default_factory=dict)


def _endpoint(destination: Destination) -> str:
    family, proto, address, port = destination
    host = f"[{address}]" if family == 6 else str(address)
    return f"{host}:{port}/{proto}"


def become_idle_work() -> None:
    """Make the calling (background) thread idle work: no signals, the lowest priority.

    Signals are the main thread's business (see wait._serve). Linux nice values are per
    thread, and a child inherits its forking thread's, so an ``nft`` this thread runs is
    idle work too: the main loop, its edits and the probes get the CPU first.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def take_sample(
    cfg: config.Config, flows: Iterable[conntrack.Flow], *, limit: int = MAX_ENTRIES,
    top: int = TOP_DESTINATIONS, clock: Callable[[], float] = time.time,
) -> Sample:
    """Count live connections per rule and used ports per destination and source address."""
    started = time.monotonic()
    active: Tally[tuple[int, str, int]] = Tally()
    used: dict[Destination, Tally[config.IPAddress]] = {}
    entries = 0
    truncated = False
    for flow in flows:
        if entries >= limit:
            truncated = True
            break
        entries += 1
        if flow.live:
            active[(flow.family, flow.proto, flow.port)] += 1
        if flow.source is not None:
            key = (flow.family, flow.proto, flow.destination, flow.remote_port)
            used.setdefault(key, Tally())[flow.source] += 1
    busiest = sorted(used.items(), key=lambda item: (-max(item[1].values()), _endpoint(item[0])))
    ports: dict[Destination, dict[config.IPAddress, int]] = {}
    for destination, by_source in busiest[:top]:
        pool = cfg.pool(destination[0])
        ports[destination] = {s.address: by_source.get(s.address, 0) for s in pool}
        for address, count in by_source.items():  # a source no longer configured, still held
            ports[destination].setdefault(address, count)
    return Sample(clock(), time.monotonic() - started, entries, truncated, dict(active), ports)


def warnings(cfg: config.Config, sample: Sample | None) -> list[str]:
    """One line per destination and source address past `WARN_RATIO` of the port space."""
    if sample is None:
        return []
    found = []
    for destination, by_source in sample.ports.items():
        for address, in_use in by_source.items():
            if in_use < WARN_RATIO * PORTS_PER_SOURCE:
                continue
            pool = cfg.pool(destination[0])
            more = [s.interface.with_prefixlen if s.on_link else str(s.address) for s in pool]
            found.append(
                f"the NAT port space from {address} to {_endpoint(destination)} is "
                f"{in_use / PORTS_PER_SOURCE:.0%} used ({in_use:,} of {PORTS_PER_SOURCE:,} "
                f"ports, TIME_WAIT included); new connections to it fail when it is full: add "
                f"addresses to the source pool ({config.ENV_SOURCE}={','.join(more)},<more "
                "addresses of the same subnet>) and whitelist them at the destination"
            )
    return found


def _labels(destination: Destination, source: config.IPAddress) -> str:
    family, proto, address, port = destination
    return (
        f'family="{_FAMILY[family]}",protocol="{proto}",source="{source}",'
        f'destination="{address}",port="{port}"'
    )


# (metric suffix, type, help, /proc/net/stat/nf_conntrack column)
KERNEL_COUNTERS = (
    ("conntrack_insert_failed_total", "counter", "New connections the kernel could not track "
     "(for NATed flows: no free source port to their destination); each was dropped.",
     "insert_failed"),
    ("conntrack_drop_total", "counter", "Packets dropped by conntrack (table full, or a "
     "connection that could not be inserted).", "drop"),
    ("conntrack_early_drop_total", "counter", "Tracked connections evicted because the "
     "conntrack table was full.", "early_drop"),
)


SAMPLE_FAMILIES = (
    (f"{PREFIX}_nat_ports_in_use", "gauge",
     "Source ports of one source address taken by tracked connections to one destination "
     f"(TIME_WAIT included), for the {TOP_DESTINATIONS} busiest destinations at the last "
     "conntrack sample."),
    (f"{PREFIX}_nat_ports_capacity", "gauge",
     "Source ports the NAT can use per source address and destination."),
    (f"{PREFIX}_conntrack_sample_timestamp_seconds", "gauge",
     "When the conntrack table was last sampled (Unix time)."),
    (f"{PREFIX}_conntrack_sample_duration_seconds", "gauge", "How long the last sample took."),
    (f"{PREFIX}_conntrack_sample_truncated", "gauge",
     f"1 when the last sample stopped at {MAX_ENTRIES:,} entries."),
)
LIMIT_FAMILY = (f"{PREFIX}_conntrack_entries_limit", "gauge", "The kernel's nf_conntrack_max.")
# Every family `write_metrics` may write (the registry takes each name once). The entries
# themselves (nf_conntrack_count) are the registry's own gauge, egress_router_conntrack_entries.
FAMILIES = tuple(
    [f"{PREFIX}_{suffix}" for suffix, _kind, _text, _column in KERNEL_COUNTERS]
    + [LIMIT_FAMILY[0]] + [name for name, _kind, _text in SAMPLE_FAMILIES]
)


def write_metrics(out: metrics.Writer, sample: Sample | None,
                  stats: conntrack.Stats | None) -> None:
    """The port-space and NAT-failure families in the text format (bounded cardinality)."""
    if stats is not None:
        for suffix, kind, text, column in KERNEL_COUNTERS:
            out.family(f"{PREFIX}_{suffix}", kind, text)
            out(f"{PREFIX}_{suffix} {stats.counters.get(column, 0)}\n")
        if stats.maximum is not None:
            out.family(*LIMIT_FAMILY)
            out(f"{LIMIT_FAMILY[0]} {stats.maximum}\n")
    if sample is None:
        return
    (in_use, *_), (cap, *_), (taken, *_), (took, *_), (truncated, *_) = SAMPLE_FAMILIES
    out.family(*SAMPLE_FAMILIES[0])
    out("".join(f"{in_use}{{{_labels(d, s)}}} {n}\n"
                for d, by_source in sample.ports.items() for s, n in by_source.items()))
    out.family(*SAMPLE_FAMILIES[1])
    out("".join(f"{cap}{{{_labels(d, s)}}} {PORTS_PER_SOURCE}\n"
                for d, by_source in sample.ports.items() for s in by_source))
    out.family(*SAMPLE_FAMILIES[2])
    out(f"{taken} {sample.taken:.3f}\n")
    out.family(*SAMPLE_FAMILIES[3])
    out(f"{took} {sample.seconds:.3f}\n")
    out.family(*SAMPLE_FAMILIES[4])
    out(f"{truncated} {int(sample.truncated)}\n")


class Sampler:
    """The last `Sample`, refreshed at most once per ``interval`` in a background thread.

    A scrape never dumps the table: it returns the last sample (None before the first
    pass has finished) and, when that is older than ``interval``, starts one refresh in a
    daemon thread — one at a time, whoever asks. At 64,000 entries a pass is seconds of
    Python holding the GIL; run inside each scrape (as the first scrapes once did, every one
    of them while no sample existed yet), a burst of scrapes ran that many passes at once
    and starved the main loop: repairs took 3-5 s instead of 0.2 s. The thread runs at the
    lowest priority so the main loop and the probes get the CPU first.
    """

    def __init__(self, interval: float = DEFAULT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._sample: Sample | None = None
        self._at = 0.0
        self._running = False
        self._passes = 0

    def latest(
        self, cfg: config.Config, flows: Callable[[], Iterator[conntrack.Flow]]
    ) -> Sample | None:
        with self._lock:
            sample = self._sample
            due = not self._passes or self._clock() - self._at >= self.interval
            start = due and not self._running
            if start:
                self._running = True
        if start:
            threading.Thread(
                target=self._refresh, args=(cfg, flows), name="conntrack-sample", daemon=True
            ).start()
        return sample

    def wait(self, timeout: float) -> bool:
        """Until no pass is running (tests); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running:
                    return True
            time.sleep(0.005)
        return False

    def _refresh(self, cfg: config.Config, flows: Callable[[], Iterator[conntrack.Flow]]) -> None:
        become_idle_work()
        try:
            sample = take_sample(cfg, flows())
        except conntrack.ConntrackError:
            sample = None
        with self._lock:
            self._running = False
            self._passes += 1
            self._at = self._clock()  # a failed pass waits its interval too
            if sample is not None:
                self._sample = sample
