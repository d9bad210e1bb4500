"""The HA benchmark: how long from a failure of the active replica to the first new connection
that reaches the destination from the reserved address, through the other replica?

Run it with ``.venv/bin/python -m bench ha`` (as root; ``--trials N``, default 5 of each
failure). It builds the two-node lab (``egress_router.lab.ha``), starts both replicas as
production does (``EGRESS_ROUTER_HA=vrrp``), and for each failure kind (``sigkill``,
``delete``, ``linkdown``) fails the active replica N times, alternating which one, measuring
the failover from the client's side and counting switchovers while the failed replica
returns (nopreempt: there must be none). Then N partitions between the replicas are healed,
timing until exactly one holds the address. Results: ``bench/results/ha.json`` and ``ha.md``.
"""

from __future__ import annotations

import argparse
import platform
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import results, stats
from egress_router.lab import ha as halab

GOALS = {"median": 0.5, "max": 1.0}


def run(trials: int) -> dict[str, Any]:
    prefix = "erha" + secrets.token_hex(2)
    out: dict[str, Any] = {"trials": trials, "kinds": {}, "heal": {}}
    with halab.running(prefix) as lab:
        client = halab.start_client(lab, 600)
        try:
            halab.wait_ready(lab, client, halab.settle(lab))
            for kind in halab.KINDS:
                rows = []
                for number in range(trials):
                    trial = halab.trial(lab, client, kind)
                    rows.append(trial.__dict__)
                    print(f"{kind} #{number + 1}: {trial.failed} -> {trial.took_over} "
                          f"{trial.failover:.3f} s, switchovers on return "
                          f"{trial.switchovers_on_return}", flush=True)
                times = [r["failover"] for r in rows]
                out["kinds"][kind] = {
                    "trials": rows,
                    "median": stats.median(times),
                    "max": max(times),
                    "min": min(times),
                    "switchovers_on_return": sum(r["switchovers_on_return"] for r in rows),
                }
        finally:
            client.close()
        heals = []
        for number in range(trials):
            took = halab.heal_trial(lab)
            holder = halab.holders(lab)
            extra = halab.count_switchovers(lab, 1.0, holder[0]) if len(holder) == 1 else -1
            heals.append({"one_holder_after": took, "switchovers_next_second": extra})
            print(f"heal #{number + 1}: one holder after {took:.3f} s", flush=True)
        out["heal"] = {
            "trials": heals,
            "max": max(h["one_holder_after"] for h in heals),
            "median": stats.median(h["one_holder_after"] for h in heals),
        }
    return out


def render(result: dict[str, Any], command: str) -> str:
    lines = [
        "# HA failover (two-node netns lab, keepalived VRRPv3, advert_int 0.1 s)",
        "",
        f"Command: `{command}` — {result['when']}, {result['host']}, "
        f"keepalived {result['keepalived']}; load average (1/5/15 min) "
        f"{result['loadavg']['before']} before, {result['loadavg']['after']} after.",
        "",
        "From the failure of the active replica to the first new client connection that "
        "reached the destination from the reserved address through the other replica "
        f"({result['trials']} trials each; goal: median < {GOALS['median']} s, "
        f"max < {GOALS['max']} s, 0 switchovers when the failed replica returns).",
        "",
        "| failure | median s | min s | max s | switchovers on return | goal met |",
        "|---|---|---|---|---|---|",
    ]
    for kind, row in result["kinds"].items():
        met = (row["median"] < GOALS["median"] and row["max"] < GOALS["max"]
               and row["switchovers_on_return"] == 0)
        lines.append(f"| {kind} | {row['median']:.3f} | {row['min']:.3f} | {row['max']:.3f} | "
                     f"{row['switchovers_on_return']} | {'yes' if met else 'NO'} |")
    heal = result["heal"]
    lines += [
        "",
        f"Partition between the replicas healed ({result['trials']} trials): exactly one "
        f"holder after median {heal['median']:.3f} s, max {heal['max']:.3f} s (goal < 1 s); "
        "switchovers in the second after: "
        f"{sum(h['switchovers_next_second'] for h in heal['trials'])}.",
        "",
    ]
    return "\n".join(lines)


def _loadavg() -> str:
    """The first three fields of /proc/loadavg: the machine is shared, so every figure is
    reported with the load it was measured under."""
    return " ".join(Path("/proc/loadavg").read_text(encoding="utf-8").split()[:3])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=5)


def run_suite(args: argparse.Namespace) -> results.Outcome:
    # SIGTERM (a timeout) unwinds like Ctrl-C, so the lab's namespaces are removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    trials = max(1, min(args.trials, 50))
    load_before = _loadavg()
    result = run(trials)
    result["loadavg"] = {"before": load_before, "after": _loadavg()}
    version = subprocess.run(["keepalived", "--version"], capture_output=True, text=True,
                             check=False)
    result["keepalived"] = (version.stderr or version.stdout).split()[1]
    result["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result["host"] = f"{platform.node()} ({platform.release()})"
    return results.Outcome("ha", result, render(result, args.command))

