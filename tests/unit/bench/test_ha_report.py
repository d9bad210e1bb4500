"""bench/ha.py's report: the goal verdict per failure kind is computed, not written by hand."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root: bench/

from bench import ha as bench_ha


def _result(delete_max: float, switchovers: int = 0) -> dict[str, object]:
    def kind(median: float, worst: float, back: int = 0) -> dict[str, object]:
        return {"median": median, "min": median / 2, "max": worst, "switchovers_on_return": back,
                "trials": []}

    return {
        "trials": 5, "when": "now", "host": "h", "keepalived": "v2.2.7",
        "loadavg": {"before": "1.00 0.50 0.25", "after": "2.00 1.00 0.50"},
        "kinds": {"sigkill": kind(0.1, 0.2), "delete": kind(0.3, delete_max),
                  "linkdown": kind(0.3, 0.4, switchovers)},
        "heal": {"median": 0.07, "max": 0.1,
                 "trials": [{"one_holder_after": 0.07, "switchovers_next_second": 0}]},
    }


def test_report_marks_each_goal() -> None:
    text = bench_ha.render(_result(0.5), "cmd")
    assert "| sigkill | 0.100 | 0.050 | 0.200 | 0 | yes |" in text
    assert "| delete | 0.300 | 0.150 | 0.500 | 0 | yes |" in text
    assert "Command: `cmd`" in text
    assert "load average (1/5/15 min) 1.00 0.50 0.25 before, 2.00 1.00 0.50 after" in text


def test_report_flags_a_missed_goal() -> None:
    text = bench_ha.render(_result(1.2, switchovers=1), "cmd")
    assert "| delete | 0.300 | 0.150 | 1.200 | 0 | NO |" in text  # max over 1 s
    assert "| linkdown | 0.300 | 0.150 | 0.400 | 1 | NO |" in text  # a switchover on return
