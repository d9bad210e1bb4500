"""What the benchmark measures: paths, figures, services and the rule sets it applies.

A rule lookup is paid once per new connection, so the rule set for a
measurement always has exactly ``count`` rules with the measured port on the
*last* line (the worst case for a linear chain); the others are fillers of the
same protocol on ports no client uses. Keeping this pure makes the
configurations reviewable and testable without a lab.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass

# Inside the lab's address plan (egress_router.lab.world): the measured services run on
# DESTINATION; fillers point at FILLER_DESTINATION, which nothing ever dials.
DESTINATION = "203.0.113.25"
FILLER_DESTINATION = "203.0.113.26"
FILLER_FIRST_PORT = 20000
MAX_RULES = 40000  # fillers must stay within 20000-59999, clear of every service port
# The seed's size (four rules and a fallback), at which upstream-style rules are the
# reference every rule count of ours is compared with (UPSTREAM_SEED).
SEED_RULES = 4
SEED_FALLBACK = "203.0.113.27"


class DataPath(enum.Enum):
    """How the client reaches the destination."""

    DIRECT = "direct"  # no router: client -> node -> gateway -> destination
    FORWARD = "forward"  # routed through the router pod, no NAT, no ruleset at all
    NFTABLES = "nftables"  # our router, nftables backend (map lookup)
    IPTABLES = "iptables"  # our router, iptables backend (one rule per port)
    UPSTREAM = "upstream"  # OpenShift's egress-router.sh ruleset (one rule per port)
    UPSTREAM_SEED = "upstream-seed"  # the same at the seed's size: four rules and a fallback

    @property
    def has_rules(self) -> bool:
        return self in RULE_PATHS

    @property
    def label(self) -> str:
        return _LABELS[self]


RULE_PATHS = (DataPath.NFTABLES, DataPath.IPTABLES, DataPath.UPSTREAM, DataPath.UPSTREAM_SEED)
BASELINE = DataPath.FORWARD

_LABELS = {
    DataPath.DIRECT: "direct (no router)",
    DataPath.FORWARD: "plain forwarding (no NAT)",
    DataPath.NFTABLES: "egress-router nftables",
    DataPath.IPTABLES: "egress-router iptables",
    DataPath.UPSTREAM: "upstream-style (rule per port)",
    DataPath.UPSTREAM_SEED: "upstream-style, the seed's size",
}


class Figure(enum.Enum):
    """One kind of measurement."""

    CONN = "conn"  # new connections: connect, one HTTP request, close (ab, no keep-alive)
    THROUGHPUT = "throughput"  # one TCP stream (iperf3)
    TCP_RR = "tcp_rr"  # request/response on one TCP connection (sockperf ping-pong)
    UDP_RR = "udp_rr"  # request/response with UDP datagrams (sockperf ping-pong)

    @property
    def label(self) -> str:
        return _FIGURE_LABELS[self][0]

    @property
    def unit(self) -> str:
        return _FIGURE_LABELS[self][1]


_FIGURE_LABELS = {
    Figure.CONN: ("new connections", "conn/s"),
    Figure.THROUGHPUT: ("TCP throughput", "Gbit/s"),
    Figure.TCP_RR: ("TCP request/response", "trans/s"),
    Figure.UDP_RR: ("UDP request/response", "trans/s"),
}


@dataclass(frozen=True)
class Service:
    """A server in the destination namespace that one figure's client talks to."""

    proto: str
    port: int


SERVICES = {
    Figure.CONN: Service("tcp", 8080),  # nginx
    Figure.THROUGHPUT: Service("tcp", 5201),  # iperf3
    Figure.TCP_RR: Service("tcp", 11111),  # sockperf --tcp
    Figure.UDP_RR: Service("udp", 11111),  # sockperf
}


def destination_text(count: int, figure: Figure, *, fallback: bool = False) -> str:
    """``EGRESS_DESTINATION`` with ``count`` rules, the one ``figure`` dials last (before the
    fallback address, with ``fallback``: upstream walks it after the rules)."""
    if not 1 <= count <= MAX_RULES:
        raise ValueError(f"cannot build a rule set of {count} rules: use 1 to {MAX_RULES}")
    service = SERVICES[figure]
    lines = [
        f"{FILLER_FIRST_PORT + i} {service.proto} {FILLER_DESTINATION}" for i in range(count - 1)
    ]
    lines.append(f"{service.port} {service.proto} {DESTINATION}")
    if fallback:
        lines.append(SEED_FALLBACK)
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Unit:
    """One measurement of a round: a path, its rule count (None without rules), a figure."""

    path: DataPath
    rules: int | None
    figure: Figure

    @property
    def key(self) -> str:
        count = "-" if self.rules is None else str(self.rules)
        return f"{self.path.value}/{count}/{self.figure.value}"


def plan_units(
    counts: Sequence[int],
    flow_counts: Sequence[int],
    figures: Sequence[Figure] = tuple(Figure),
    paths: Sequence[DataPath] = tuple(DataPath),
    baseline_repeats: int = 2,
) -> list[Unit]:
    """Every measurement of one round, in a canonical order.

    New connections are measured at every rule count; the figures of one
    established flow (throughput, request/response), where the ruleset is
    not consulted per packet, only at ``flow_counts``; upstream-style rules
    at the seed's size (four and a fallback) once, every figure. The baseline is
    measured ``baseline_repeats`` times a round: every ratio divides by its
    round's mean, so one unlucky baseline measurement weighs less.
    """
    units: list[Unit] = []
    for path in paths:
        for figure in figures:
            if path is DataPath.UPSTREAM_SEED:  # one size: the reference of every count
                units.append(Unit(path, SEED_RULES, figure))
                continue
            if not path.has_rules:
                repeats = baseline_repeats if path is BASELINE else 1
                units += [Unit(path, None, figure)] * repeats
                continue
            for count in counts if figure is Figure.CONN else flow_counts:
                units.append(Unit(path, count, figure))
    return units


def round_order(units: Sequence[Unit], seed: int, round_index: int) -> list[Unit]:
    """The units of one round in a shuffled order that differs from round to round.

    Interleaving spreads a slow drift of the machine's load over all
    configurations instead of letting it land on one; the seed keeps a run
    reproducible.
    """
    order = list(units)
    random.Random(f"{seed}/{round_index}").shuffle(order)
    return order
