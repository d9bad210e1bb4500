"""Read the load generators' output: ab, ab's percentile CSV, sockperf, iperf3, loadavg.

Each parser takes the text a tool printed and returns numbers, or raises
`ToolOutputError` naming the tool and what was missing, so a broken run is a
reported failure and never a silent zero.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ToolOutputError(ValueError):
    """A tool's output lacks what the benchmark needs."""


@dataclass(frozen=True)
class AbResult:
    """``ab``'s summary: completed and failed requests, and requests per second."""

    complete: int
    failed: int
    non_2xx: int
    rate: float


def _number(pattern: str, text: str, tool: str, what: str) -> float:
    match = re.search(pattern, text, re.MULTILINE)
    if match is None:
        raise ToolOutputError(f"cannot read {what} from {tool} output: {text.strip()[-300:]!r}")
    return float(match.group(1))


def parse_ab(text: str) -> AbResult:
    """The summary ``ab`` prints (``Complete requests``, ``Requests per second``, ...)."""
    non_2xx = re.search(r"^Non-2xx responses:\s+(\d+)", text, re.MULTILINE)
    return AbResult(
        complete=int(_number(r"^Complete requests:\s+(\d+)", text, "ab", "complete requests")),
        failed=int(_number(r"^Failed requests:\s+(\d+)", text, "ab", "failed requests")),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        rate=_number(r"^Requests per second:\s+([0-9.]+)", text, "ab", "requests per second"),
    )


def parse_ab_percentiles(text: str) -> dict[int, float]:
    """``ab -e`` CSV (``Percentage served,Time in ms``): percent -> milliseconds."""
    out: dict[int, float] = {}
    for line in text.splitlines()[1:]:
        fields = line.strip().split(",")
        if len(fields) != 2:
            continue
        try:
            out[int(fields[0])] = float(fields[1])
        except ValueError:
            continue
    if 50 not in out or 99 not in out:
        raise ToolOutputError(f"cannot read percentiles from ab's CSV: {text[:200]!r}")
    return out


@dataclass(frozen=True)
class SockperfResult:
    """sockperf ping-pong: round trips per second over the valid period, and RTT percentiles."""

    received: int
    seconds: float
    p50_us: float
    p99_us: float

    @property
    def rate(self) -> float:
        return self.received / self.seconds


def parse_sockperf(text: str) -> SockperfResult:
    """``sockperf ping-pong --full-rtt`` output (warm-up excluded: the ``Valid Duration``)."""
    clean = _ANSI.sub("", text)
    valid = re.search(
        r"\[Valid Duration\] RunTime=([0-9.]+) sec; SentMessages=\d+; ReceivedMessages=(\d+)",
        clean,
    )
    if valid is None or float(valid.group(1)) <= 0:
        raise ToolOutputError(
            f"cannot read the valid duration from sockperf output: {clean.strip()[-300:]!r}"
        )
    return SockperfResult(
        received=int(valid.group(2)),
        seconds=float(valid.group(1)),
        p50_us=_number(r"percentile 50\.000 =\s*([0-9.]+)", clean, "sockperf", "p50"),
        p99_us=_number(r"percentile 99\.000 =\s*([0-9.]+)", clean, "sockperf", "p99"),
    )


@dataclass(frozen=True)
class IperfResult:
    """iperf3's end summary: bits per second received, and the sender's retransmits."""

    bits_per_second: float
    retransmits: int


def parse_iperf3(text: str) -> IperfResult:
    """``iperf3 -J`` output."""
    try:
        data = json.loads(text)
        if "error" in data:
            raise ToolOutputError(f"iperf3 failed: {data['error']}")
        end = data["end"]
        return IperfResult(
            bits_per_second=float(end["sum_received"]["bits_per_second"]),
            retransmits=int(end["sum_sent"].get("retransmits", 0)),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ToolOutputError(f"cannot read iperf3's JSON: {exc}: {text.strip()[:300]!r}") from exc


def parse_loadavg(text: str) -> tuple[float, float, float]:
    """``/proc/loadavg``: the 1, 5 and 15 minute load averages."""
    fields = text.split()
    try:
        return float(fields[0]), float(fields[1]), float(fields[2])
    except (IndexError, ValueError) as exc:
        raise ToolOutputError(f"cannot read /proc/loadavg: {text!r}") from exc


_STAGE = re.compile(r"DEBUG: (.+?): ([0-9.]+)s$", re.MULTILINE)


def parse_stages(stderr: str) -> dict[str, float]:
    """The per-stage timings ``EGRESS_ROUTER_DEBUG=true`` prints (``<stage>: 0.123s``)."""
    return {name: float(value) for name, value in _STAGE.findall(stderr)}


def parse_status_kib(text: str) -> dict[str, int]:
    """``/proc/<pid>/status`` or ``smaps_rollup`` lines measured in kB: name -> KiB."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"^(\w+):\s+(\d+) kB$", line.strip())
        if match:
            out[match.group(1)] = int(match.group(2))
    return out
