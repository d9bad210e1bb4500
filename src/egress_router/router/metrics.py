"""Prometheus metrics of the waiting container: what the router did and is doing.

Two kinds. What the process itself decides (applies and their failures, drift
repairs, DNS failures, the configuration generation, readiness) are
prometheus-client counters and gauges in a private registry, every labelled
counter created at zero for each of its known label values. What the data path
does per rule (new connections, packets and bytes) lives in the kernel: in the
element counters of the ``conns_v4``/``traffic_v4`` sets (one lookup per
connection or packet, whatever the number of rules). Those are read at scrape
time and written straight out in the text format, line by line; as
prometheus-client objects they would cost about 20 MiB on every scrape.

Series stay bounded: per-rule families are written only while the ruleset has
at most ``EGRESS_ROUTER_METRICS_RULES`` rules (1,000 by default, 0 turns them
off; three series per rule); the aggregates (rules, live conntrack entries of
the namespace) are always there. Live connections are counted by the kernel
(``nf_conntrack_count``), not by listing the table at every scrape.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client import generate_latest as _generate_latest

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

class Metrics:
    """The process-level metrics, registered in their own registry."""

    def __init__(self) -> None:
        # The *_created series double the output and say only when the process started.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        ProcessCollector(namespace=PREFIX, registry=registry)
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
        return _generate_latest(self.registry)


def count_active(flows: Iterable[conntrack.Flow]) -> Tally[tuple[int, str, int]]:
    """Live redirected connections per (family, protocol, local port)."""
    return Tally((f.family, f.proto, f.port) for f in flows if f.live)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_rule_metrics(
    write: Callable[[str], object],
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
        write(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
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
