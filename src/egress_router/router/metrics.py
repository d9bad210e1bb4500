"""Prometheus metrics of the waiting container: what the router did and is doing.

Two kinds. What the process itself decides (applies and their failures, drift
repairs, DNS failures, the configuration generation, readiness) are counters
and gauges in a small registry here, every labelled counter created at zero for
each of its known label values. What the data path does per rule (new
connections, packets and bytes) lives in the kernel: in the element counters of
the ``conns_v4``/``traffic_v4`` sets (one lookup per connection or packet,
whatever the number of rules). Those are read at scrape time and written
straight out in the text format, line by line; as metric objects they would
cost about 20 MiB on every scrape.

Why not prometheus-client: importing it imports its push-gateway and HTTP
server code, and with them ``ssl``, ``http.client`` and ``urllib.request``,
about 8 MiB of the waiting process's 40 MiB budget for code the router never
runs. What the router needs is a few counters and gauges and the text format
(version 0.0.4), which the writer here produces; the unit tests read its output
back with prometheus-client's own parser. The names follow the same rules: a
counter ``x`` is exported as ``x_total``, its HELP and TYPE name the family as
written, label values and help texts escaped as the format says.

Series stay bounded: per-rule families are written only while the ruleset has
at most ``EGRESS_ROUTER_METRICS_RULES`` rules (1,000 by default, 0 turns them
off; three series per rule); the aggregates (rules, live conntrack entries of
the namespace) are always there. Live connections are counted by the kernel
(``nf_conntrack_count``), not by listing the table at every scrape.
"""

from __future__ import annotations

import math
import os
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from egress_router.core import config, ruleset
from egress_router.core.listing import Counters, counter_key
from egress_router.kernel import conntrack

APPLY_RESULTS = ("ok", "invalid", "failed")
REPAIR_KINDS = ("ruleset", "link", "address", "route", "forwarding")

PREFIX = "egress_router"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FAMILY_LABEL = {4: "ipv4", 6: "ipv6"}


# (name, type, help) of the per-rule families, in the order they are written.
RULE_FAMILIES = (
    (
        f"{PREFIX}_rule_connections_total",
        "counter",
        "New connection attempts redirected by the rule: conntrack entries created (first "
        "packets seen by the nat hook). A SYN the kernel dropped before the connection was "
        "tracked (egress_router_conntrack_insert_failed_total: no free NAT port) counts again "
        "when the client retries; a retransmitted SYN of a tracked connection does not.",
    ),
    (
        f"{PREFIX}_rule_packets_total",
        "counter",
        "Packets of the rule's connections forwarded, both directions.",
    ),
    (
        f"{PREFIX}_rule_bytes_total",
        "counter",
        "Bytes of the rule's connections forwarded, both directions.",
    ),
    (
        f"{PREFIX}_rule_active_connections",
        "gauge",
        "Connections of the rule in the conntrack table, not counting closing TCP ones, "
        "at the last conntrack sample (EGRESS_ROUTER_CONNTRACK_SAMPLE_SECONDS).",
    ),
)

# ----------------------------------------------------------------------------- the registry


def format_value(value: float) -> str:
    """A sample value as the text format (and prometheus-client) spells it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class _Child:
    """One series: a value behind its family's lock."""

    __slots__ = ("_lock", "value")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"cannot increase a counter by {amount}: counters only go up")
        with self._lock:
            self.value += amount

    def set(self, value: float) -> None:
        with self._lock:
            self.value = float(value)


class _Family:
    """A metric family: its name, help, type and series (by label values)."""

    kind = "untyped"
    suffix = ""

    def __init__(
        self, name: str, documentation: str, labelnames: Iterable[str] = (), *,
        registry: Registry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], _Child] = {}
        if not self.labelnames:
            self._series[()] = _Child(self._lock)
        registry.register(self)

    def labels(self, **values: str) -> _Child:
        """The series of these label values (created at zero on first use)."""
        if set(values) != set(self.labelnames):
            raise ValueError(
                f"cannot select a series of {self.name}: labels {sorted(values)} given, "
                f"{sorted(self.labelnames)} expected"
            )
        key = tuple(str(values[n]) for n in self.labelnames)
        with self._lock:
            child = self._series.get(key)
            if child is None:
                child = self._series[key] = _Child(self._lock)
        return child

    def _unlabelled(self) -> _Child:
        if self.labelnames:
            raise ValueError(f"cannot use {self.name} without its labels {self.labelnames}")
        return self._series[()]

    def samples(self) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
        """(sample name, labels, value) of every series, in creation order."""
        with self._lock:
            items = [(key, child.value) for key, child in self._series.items()]
        sample = self.name + self.suffix
        return [(sample, tuple(zip(self.labelnames, key, strict=True)), value)
                for key, value in items]

    def text(self) -> str:
        name = self.name + self.suffix
        lines = [f"# HELP {name} {_escape_help(self.documentation)}\n# TYPE {name} {self.kind}\n"]
        for sample, labels, value in self.samples():
            if labels:
                pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                lines.append(f"{sample}{{{pairs}}} {format_value(value)}\n")
            else:
                lines.append(f"{sample} {format_value(value)}\n")
        return "".join(lines)


class Counter(_Family):
    """A counter: only goes up; exported as ``<name>_total``."""

    kind = "counter"
    suffix = "_total"

    def __init__(
        self, name: str, documentation: str, labelnames: Iterable[str] = (), *,
        registry: Registry,
    ) -> None:
        super().__init__(name.removesuffix("_total"), documentation, labelnames,
                         registry=registry)

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)


class Gauge(_Family):
    """A gauge: set to what it is now."""

    kind = "gauge"

    def set(self, value: float) -> None:
        self._unlabelled().set(value)

    def inc(self, amount: float = 1.0) -> None:
        child = self._unlabelled()
        child.set(child.value + amount)


class Writer:
    """What a collector writes through: only the families it registered, each once a scrape.

    ``family`` writes a family's HELP and TYPE lines; calling the writer passes sample
    lines on. A family the collector did not register, or one written twice in one
    scrape, is refused: a strict reader (promtool, Prometheus itself) drops a whole
    scrape that has a family twice.
    """

    def __init__(self, out: Callable[[str], object], owner: str, names: frozenset[str],
                 written: set[str]) -> None:
        self._out = out
        self._owner = owner
        self._names = names
        self._written = written

    def family(self, name: str, kind: str, documentation: str) -> None:
        if name not in self._names:
            raise ValueError(f"{self._owner} writes the family {name}, which it did not register")
        if name in self._written:
            raise ValueError(f"the family {name} is written twice in one scrape")
        self._written.add(name)
        self._out(f"# HELP {name} {_escape_help(documentation)}\n# TYPE {name} {kind}\n")

    def __call__(self, text: str) -> None:
        self._out(text)


@dataclass(frozen=True)
class Collector:
    """A writer of families computed at scrape time (process, rule series, capacity)."""

    owner: str
    names: frozenset[str]
    write: Callable[[Writer], None]


class Registry:
    """Every family of one process, written in registration order: the only writer of a scrape.

    Families (counters, gauges) and collectors (functions that write families computed
    at scrape time) both register here under the names they write, and a name is
    taken once: a second family of the same name is refused when it registers, not
    found later by a strict scraper.
    """

    def __init__(self) -> None:
        self._entries: list[_Family | Collector] = []
        self._names: set[str] = set()
        self._lock = threading.Lock()

    def _take(self, names: Iterable[str]) -> None:
        for name in names:
            if name in self._names:
                raise ValueError(f"cannot register {name} twice")
        self._names.update(names)

    def register(self, family: _Family) -> None:
        """Add a family (its name as written: a counter ``x`` is ``x_total``)."""
        with self._lock:
            self._take([family.name + family.suffix])
            self._entries.append(family)

    def collector(
        self, owner: str, names: Iterable[str], write: Callable[[Writer], None]
    ) -> None:
        """Add a collector that writes the families ``names`` (and no other) at scrape time."""
        taken = frozenset(names)
        with self._lock:
            self._take(sorted(taken))
            self._entries.append(Collector(owner, taken, write))

    def families(self) -> Iterator[_Family]:
        with self._lock:
            found = list(self._entries)
        yield from (f for f in found if isinstance(f, _Family))

    def write(self, out: Callable[[str], object]) -> None:
        """Every family in the text format (version 0.0.4), handed to ``out`` piece by piece."""
        with self._lock:
            found = list(self._entries)
        written: set[str] = set()
        for entry in found:
            if isinstance(entry, _Family):
                written.add(entry.name + entry.suffix)
                out(entry.text())
            else:
                entry.write(Writer(out, entry.owner, entry.names, written))

    def generate(self) -> bytes:
        """Every family in the text format (version 0.0.4)."""
        parts: list[str] = []
        self.write(parts.append)
        return "".join(parts).encode()

    def get_sample_value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """The value of one sample (``x_total`` for a counter ``x``); None if there is none."""
        wanted = tuple(sorted((labels or {}).items()))
        for family in self.families():
            for sample, pairs, value in family.samples():
                if sample == name and tuple(sorted(pairs)) == wanted:
                    return value
        return None


CollectorRegistry = Registry  # the name router/ha (and its tests) know from prometheus-client


PROCESS_FAMILIES = (
    ("virtual_memory_bytes", "gauge", "Virtual memory size in bytes."),
    ("resident_memory_bytes", "gauge", "Resident memory size in bytes."),
    ("start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds."),
    ("cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds."),
    ("open_fds", "gauge", "Number of open file descriptors."),
    ("max_fds", "gauge", "Maximum number of open file descriptors."),
)


def process_families(prefix: str) -> list[str]:
    """The names `process_metrics` writes."""
    return [f"{prefix}_process_{name}" for name, _kind, _help in PROCESS_FAMILIES]


def process_metrics(prefix: str, proc: str = "/proc/self") -> Callable[[Writer], None]:
    """A collector of the standard process families (Prometheus' client guidelines), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")

    def boot_time() -> float:
        with open("/proc/stat", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("btime "):
                    return float(line.split()[1])
        return 0.0

    started: list[float] = []

    def write(out: Writer) -> None:
        try:
            with open(f"{proc}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            fds = len(os.listdir(f"{proc}/fd"))
            max_fds = None
            with open(f"{proc}/limits", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("Max open files"):
                        max_fds = float(line.split()[3])
        except OSError:
            return  # no /proc: no process families (as prometheus-client does)
        if not started:
            started.append(boot_time() + int(fields[19]) / ticks)
        values = {
            "virtual_memory_bytes": float(fields[20]),
            "resident_memory_bytes": float(int(fields[21]) * page),
            "start_time_seconds": started[0],
            "cpu_seconds_total": (int(fields[11]) + int(fields[12])) / ticks,
            "open_fds": float(fds),
            "max_fds": max_fds,
        }
        for name, kind, documentation in PROCESS_FAMILIES:
            value = values[name]
            if value is None:
                continue
            out.family(f"{prefix}_process_{name}", kind, documentation)
            out(f"{prefix}_process_{name} {format_value(value)}\n")

    return write


class Metrics:
    """The process-level metrics, registered in their own registry."""

    def __init__(self) -> None:
        self.registry = Registry()
        registry = self.registry
        registry.collector("process", process_families(PREFIX), process_metrics(PREFIX))
        self.applies = Counter(
            f"{PREFIX}_applies", "Rule applies by result: ok, invalid (configuration refused, "
            "running rules kept) or failed (the kernel refused, running rules kept).",
            ["result"], registry=registry,
        )
        self.repairs = Counter(
            f"{PREFIX}_drift_repairs", "Drift found in the kernel and repaired, by kind: "
            "ruleset, sysctl, link, address, route, forwarding.", ["kind"], registry=registry,
        )
        self.repair_failures = Counter(
            f"{PREFIX}_drift_repair_failures", "Drift found that could not be repaired, by kind.",
            ["kind"], registry=registry,
        )
        self.reconciles = Counter(
            f"{PREFIX}_reconciles", "Comparisons of the kernel's state with the desired state.",
            registry=registry,
        )
        self.dns_failures = Counter(
            f"{PREFIX}_dns_resolution_failures", "Failed lookups of DNS-named destinations.",
            ["name"], registry=registry,
        )
        self.dns_refused = Counter(
            f"{PREFIX}_dns_answers_refused", "Addresses in DNS answers refused as destinations "
            "(the router's own or gateway address, its subnet's broadcast, the pod network, "
            "loopback, link-local, multicast, unspecified, mapped or reserved); they never "
            "reach the rules.", registry=registry,
        )
        self.dns_changes = Counter(
            f"{PREFIX}_dns_changes", "Answers of DNS-named destinations that changed the rules.",
            ["name"], registry=registry,
        )
        self.announcements = Counter(
            f"{PREFIX}_announcements", "Rounds of gratuitous ARP / unsolicited NA sent.",
            registry=registry,
        )
        self.connections_cut = Counter(
            f"{PREFIX}_connections_cut", "Connections of removed rules cut (conntrack entries "
            "deleted).", registry=registry,
        )
        self.generation = Gauge(
            f"{PREFIX}_config_generation", "Destination configurations applied since the "
            "process started (1: the first one).", registry=registry,
        )
        self.last_apply = Gauge(
            f"{PREFIX}_last_apply_timestamp_seconds", "When rules were last applied "
            "successfully (Unix time).", registry=registry,
        )
        self.ready = Gauge(
            f"{PREFIX}_ready", "1 when the kernel matched the desired state at the last check.",
            registry=registry,
        )
        self.rules = Gauge(
            f"{PREFIX}_rules", "Port rules in the applied ruleset (one per address of a name).",
            registry=registry,
        )
        self.backoff = Gauge(
            f"{PREFIX}_drift_backoff_seconds", "How long repairs wait after a kernel change "
            "because something keeps undoing them (0: repaired at once).", registry=registry,
        )
        self.conntrack_entries = Gauge(
            f"{PREFIX}_conntrack_entries", "Entries in the router's conntrack table (its "
            "network namespace): live and closing connections.", registry=registry,
        )
        self.rule_series = Gauge(
            f"{PREFIX}_rule_series_enabled", "1 when the per-rule families are written (the "
            "ruleset has at most EGRESS_ROUTER_METRICS_RULES rules).", registry=registry,
        )
        for result in APPLY_RESULTS:
            self.applies.labels(result=result)
        for kind in REPAIR_KINDS:
            self.repairs.labels(kind=kind)
            self.repair_failures.labels(kind=kind)

    def names(self, hosts: Iterable[str]) -> None:
        """Create the per-name DNS counters at zero (the names of the configuration)."""
        for host in hosts:
            self.dns_failures.labels(name=host)
            self.dns_changes.labels(name=host)

    def generate(self) -> bytes:
        return self.registry.generate()


def count_active(flows: Iterable[conntrack.Flow]) -> Tally[tuple[int, str, int]]:
    """Live redirected connections per (family, protocol, local port)."""
    return Tally((f.family, f.proto, f.port) for f in flows if f.live)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_rule_metrics(
    write: Writer,
    cfg: config.Config,
    counters: Counters,
    active: Mapping[tuple[int, str, int], int],
    *,
    chunk: int = 500,
) -> None:
    """Write the per-rule families for the rules of ``cfg`` in the text format.

    Lines are handed to ``write`` ``chunk`` at a time, so the output is never
    held whole. A rule missing from the kernel's sets reports zero.
    """
    for index, (name, kind, help_text) in enumerate(RULE_FAMILIES):
        write.family(name, kind, help_text)
        lines: list[str] = []
        named_done: set[tuple[int, int]] = set()
        for rule in cfg.destinations.rules:
            family = rule.family
            key = counter_key(rule.proto, rule.port)
            if rule.host is not None:  # one rule per address of a name: report the key once
                if (family, key) in named_done:
                    continue
                named_done.add((family, key))
            if index == 3:
                value = active.get((family, rule.proto.value, rule.port), 0)
            else:
                table = ruleset.conns_set(family) if index == 0 else ruleset.traffic_set(family)
                packed = counters.get(table, {}).get(key, 0)
                value = packed & (2**64 - 1) if index == 2 else packed >> 64
            lines.append(
                f'{name}{{family="{FAMILY_LABEL[family]}",protocol="{rule.proto.value}",'
                f'port="{rule.port}",destination="{_escape(ruleset.rule_label(rule))}"}} '
                f"{value}\n"
            )
            if len(lines) >= chunk:
                write("".join(lines))
                lines.clear()
        if lines:
            write("".join(lines))
