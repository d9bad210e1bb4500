"""Statistics of a benchmark run: min/median/max, paired ratios, the issue's targets.

The one module of bench/ that computes statistics (every suite takes its medians and
quartiles from here).

A shared 2-core machine drifts while a run goes on, so a figure is compared
with the forwarding baseline measured *in the same round* (a paired ratio),
and the summary reports the min, median and max over rounds of those ratios
as well as of the raw values. Everything here is pure: samples in, summaries
out.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.workload import BASELINE, DataPath, Figure

# The targets.
CONN_FLAT_MIN = 0.85  # nftables conn rate at the largest count vs at 1 rule
CONN_VS_FORWARD_MIN = 0.8  # nftables conn rate at the largest count vs plain forwarding
THROUGHPUT_VS_FORWARD_MIN = 0.9
APPLY_MAX_S = 0.5  # check + apply of 10,000 rules
INIT_READY_MAX_S = 1.5  # init with 10,000 rules, process start to ready


@dataclass(frozen=True)
class Summary:
    """min / median / max of a set of values, and how many there were."""

    min: float
    median: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary | None:
        data = sorted(values)
        if not data:
            return None
        return cls(data[0], statistics.median(data), data[-1], len(data))


@dataclass(frozen=True)
class Sample:
    """One measurement: a unit of one round, its value and latencies, or why it failed."""

    round: int
    path: str
    rules: int | None
    figure: str
    value: float | None  # conn/s, bits/s or transactions/s
    p50_us: float | None = None
    p99_us: float | None = None
    load1: float | None = None
    error: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int | None, str]:
        return (self.path, self.rules, self.figure)


@dataclass(frozen=True)
class UnitSummary:
    """Everything measured for one (path, rules, figure) over all rounds."""

    path: str
    rules: int | None
    figure: str
    value: Summary | None
    p50_us: Summary | None
    p99_us: Summary | None
    ratio: Summary | None  # paired per round against the baseline path, same figure
    errors: int


def sample_from_dict(data: Mapping[str, Any]) -> Sample:
    """The inverse of ``dataclasses.asdict`` for a `Sample` read back from JSON."""
    return Sample(
        round=int(data["round"]),
        path=str(data["path"]),
        rules=None if data.get("rules") is None else int(data["rules"]),
        figure=str(data["figure"]),
        value=None if data.get("value") is None else float(data["value"]),
        p50_us=None if data.get("p50_us") is None else float(data["p50_us"]),
        p99_us=None if data.get("p99_us") is None else float(data["p99_us"]),
        load1=None if data.get("load1") is None else float(data["load1"]),
        error=data.get("error"),
        detail=dict(data.get("detail") or {}),
    )


def _good(samples: Iterable[Sample]) -> list[Sample]:
    return [s for s in samples if s.error is None and s.value is not None]


def paired_ratios(
    samples: Sequence[Sample], numerator: tuple[str, int | None, str],
    denominator: tuple[str, int | None, str],
) -> list[float]:
    """value(numerator) / value(denominator) for every round that has both, in round order.

    A key measured more than once in a round counts with its mean; rounds
    whose denominator is not positive are left out.
    """
    by_round: dict[tuple[str, int | None, str], dict[int, list[float]]] = {}
    for sample in _good(samples):
        assert sample.value is not None
        by_round.setdefault(sample.key, {}).setdefault(sample.round, []).append(sample.value)
    top = by_round.get(numerator, {})
    bottom = by_round.get(denominator, {})
    ratios = []
    for r in sorted(top):
        if r in bottom and statistics.fmean(bottom[r]) > 0:
            ratios.append(statistics.fmean(top[r]) / statistics.fmean(bottom[r]))
    return ratios


def summarize(samples: Sequence[Sample], baseline: str = BASELINE.value) -> list[UnitSummary]:
    """One `UnitSummary` per (path, rules, figure), in the order first seen."""
    keys = list(dict.fromkeys(s.key for s in samples))
    out: list[UnitSummary] = []
    for key in keys:
        mine = [s for s in samples if s.key == key]
        good = _good(mine)
        path, rules, figure = key
        out.append(
            UnitSummary(
                path=path,
                rules=rules,
                figure=figure,
                value=Summary.of(s.value for s in good if s.value is not None),
                p50_us=Summary.of(s.p50_us for s in good if s.p50_us is not None),
                p99_us=Summary.of(s.p99_us for s in good if s.p99_us is not None),
                ratio=Summary.of(paired_ratios(samples, key, (baseline, None, figure))),
                errors=len(mine) - len(good),
            )
        )
    return out


@dataclass(frozen=True)
class Target:
    """One of the issue's targets and whether this run met it."""

    name: str
    measured: float | None
    limit: float
    at_least: bool  # True: measured >= limit; False: measured < limit
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured >= self.limit if self.at_least else self.measured < self.limit


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def median(values: Iterable[float]) -> float:
    """The median of ``values``; NaN when there are none (a figure that was not measured)."""
    data = list(values)
    return float(statistics.median(data)) if data else float("nan")


def spread(values: Sequence[float]) -> tuple[float, float, float, float, float]:
    """Median, lower and upper quartile, minimum and maximum of ``values``."""
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 \
        else [ordered[0]] * 3
    return (quartiles[1], quartiles[0], quartiles[2], ordered[0], ordered[-1])


def evaluate_targets(
    samples: Sequence[Sample],
    apply_seconds: Mapping[int, Sequence[float]],
    init_ready_seconds: Mapping[int, Sequence[float]],
) -> list[Target]:
    """The issue's targets, judged on medians of paired per-round ratios and of timings.

    ``apply_seconds`` and ``init_ready_seconds`` map a rule count to the
    nftables backend's check+apply times and process-start-to-ready times.
    The largest rule count measured stands for "10,000 rules" (a quick run may
    use fewer; the note says which).
    """
    nft, fwd = DataPath.NFTABLES.value, BASELINE.value
    conn, tput = Figure.CONN.value, Figure.THROUGHPUT.value
    conn_counts = sorted({s.rules for s in samples if s.path == nft and s.figure == conn
                          and s.rules is not None})
    targets: list[Target] = []
    if conn_counts:
        low, high = conn_counts[0], conn_counts[-1]
        targets.append(Target(
            f"nftables new-connection rate, {high:,} rules vs {low:,} rule(s)",
            _median(paired_ratios(samples, (nft, high, conn), (nft, low, conn))),
            CONN_FLAT_MIN, True,
        ))
        targets.append(Target(
            f"nftables new-connection rate, {high:,} rules vs plain forwarding",
            _median(paired_ratios(samples, (nft, high, conn), (fwd, None, conn))),
            CONN_VS_FORWARD_MIN, True,
        ))
    tput_counts = sorted({s.rules for s in samples if s.path == nft and s.figure == tput
                          and s.rules is not None})
    if tput_counts:
        medians = {
            n: _median(paired_ratios(samples, (nft, n, tput), (fwd, None, tput)))
            for n in tput_counts
        }
        known = {n: m for n, m in medians.items() if m is not None}
        worst = min(known, key=lambda n: known[n]) if known else tput_counts[-1]
        targets.append(Target(
            "nftables TCP throughput vs plain forwarding (worst rule count)",
            known.get(worst), THROUGHPUT_VS_FORWARD_MIN, True, note=f"at {worst:,} rules",
        ))
    if apply_seconds:
        high = max(apply_seconds)
        targets.append(Target(
            f"apply {high:,} rules (nftables check + apply), seconds",
            _median(apply_seconds[high]), APPLY_MAX_S, False,
        ))
    if init_ready_seconds:
        high = max(init_ready_seconds)
        targets.append(Target(
            f"init with {high:,} rules: process start to ready, seconds",
            _median(init_ready_seconds[high]), INIT_READY_MAX_S, False,
        ))
    return targets
