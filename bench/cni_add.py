"""How long the CNI plugin's ADD takes, apart from the configured announcement wait.

Run as root: ``.venv/bin/python -m bench cni-add [--runs 15] [--executable PATH]``. It builds the
lab (``egress_router.lab.world``) with the router pod's eth0 from Debian's bridge plugin, then
times ADD + DEL of the egress network N times through ``cnirun`` (``egress_router.cni.runtime``,
which runs the plugin as a runtime does, from the node's namespace), with
``announceCount: 0`` so that only the plugin's own work is measured. Two plugins side by side
in one run: the one-file executable (scripts/build-cni.sh) and the console script of this
virtualenv. Each ADD is measured as wall time and as CPU time (user + system of the plugin and
every process it started, from ``getrusage``): on a loaded machine the wall time mostly measures
the queue for a core, the CPU time what the plugin costs. A bare ``python3 -c pass`` is timed in
the same rounds as a yardstick for how slow the machine is at the moment. ``--also NAME=PATH``
(repeatable) times further plugins in the same rounds, e.g. an older build to compare with.
Writes ``bench/results/cni_add.json`` (and ``.md``) and prints the medians.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import results, stats
from egress_router.cni import runtime as cnirun
from egress_router.lab import world as labmod

ROOT = Path(__file__).resolve().parent.parent
EXECUTABLE = ROOT / "build" / "cni" / "egress-router-cni"
CONTAINER_ID = "benchcniadd0"
CONF: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "egress",
    "type": "egress-router",
    "ip": {
        "addresses": ["192.168.12.99/24"],
        "gateway": "192.168.12.1",
        "destinations": ["80 tcp 203.0.113.25", "8080 tcp 203.0.113.26 80", "203.0.113.27"],
    },
    "interfaceType": "macvlan",
    "interfaceArgs": {"master": "ens3", "mode": "private"},
    "announceCount": 0,
}


def _bridge(data_dir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "pod-network",
        "type": "bridge",
        "bridge": labmod.BRIDGE,
        "ipam": {
            "type": "host-local",
            "dataDir": str(data_dir),
            "ranges": [[{"subnet": "10.128.0.0/24", "rangeStart": "10.128.0.2",
                         "rangeEnd": "10.128.0.2", "gateway": "10.128.0.1"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _bare_python() -> tuple[float, float]:
    started, cpu = time.monotonic(), _cpu()
    subprocess.run(["python3", "-c", "pass"], check=True)
    return time.monotonic() - started, _cpu() - cpu


def _time(lab: labmod.Lab, plugin: str, runs: int) -> list[tuple[float, float]]:
    seconds = []
    for _ in range(runs):
        started, cpu = time.monotonic(), _cpu()
        added = cnirun.invoke(plugin, "ADD", CONF, netns=lab.router, ifname="net1",
                              container_id=CONTAINER_ID, in_netns=lab.node, cni_path=())
        seconds.append((time.monotonic() - started, _cpu() - cpu))
        if not added.ok:
            raise SystemExit(f"ADD with {plugin} failed: {added.stdout}{added.stderr}")
        deleted = cnirun.invoke(plugin, "DEL", CONF, netns=lab.router, ifname="net1",
                                container_id=CONTAINER_ID, in_netns=lab.node, cni_path=())
        if not deleted.ok:
            raise SystemExit(f"DEL with {plugin} failed: {deleted.stdout}{deleted.stderr}")
    return seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--executable", type=Path, default=EXECUTABLE)
    parser.add_argument("--also", action="append", default=[], metavar="NAME=PATH",
                        help="another plugin to time in the same rounds (repeatable)")


def run_suite(args: argparse.Namespace) -> results.Outcome:
    if not args.executable.is_file():
        raise SystemExit(f"cannot find {args.executable}; run scripts/build-cni.sh first")
    plugins = {
        "one-file executable": str(args.executable),
        "console script (venv)": str(Path(sys.executable).parent / "egress-router-cni"),
    }
    for item in args.also:
        name, sep, path = item.partition("=")
        if not sep or not name or not os.access(path, os.X_OK):
            raise SystemExit(f"cannot time --also {item!r}: expected NAME=PATH of an executable")
        plugins[name] = path
    prefix = f"bca{os.getpid() % 1000}"
    lab = labmod.up(prefix, macvlan=None, router_eth0=False)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            primary = cnirun.invoke("bridge", "ADD", _bridge(Path(scratch)), netns=lab.router,
                                    ifname="eth0", container_id=CONTAINER_ID,
                                    cni_path=("/usr/lib/cni",), in_netns=lab.node)
            if not primary.ok:
                raise SystemExit(f"bridge plugin: {primary.stdout}{primary.stderr}")
            # Interleaved rounds, so that both plugins see the same machine load.
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in plugins}
            samples["python3 -c pass (yardstick)"] = []
            for _ in range(args.runs):
                for name, plugin in plugins.items():
                    samples[name] += _time(lab, plugin, 1)
                samples["python3 -c pass (yardstick)"].append(_bare_python())
    finally:
        labmod.down(prefix)
    report: dict[str, dict[str, float]] = {}
    for name, values in samples.items():
        wall = [w for w, _ in values]
        cpu = [c for _, c in values]
        report[name] = {"runs": len(values), "wall_median_s": round(stats.median(wall), 3),
                        "wall_min_s": round(min(wall), 3),
                        "cpu_median_s": round(stats.median(cpu), 3)}
    exe, venv = (report[n] for n in list(plugins)[:2])
    report["ratio executable/venv"] = {
        "wall": round(exe["wall_median_s"] / venv["wall_median_s"], 2),
        "cpu": round(exe["cpu_median_s"] / venv["cpu_median_s"], 2),
    }
    report["machine"] = {"load_average_1m": round(os.getloadavg()[0], 2), "cores": os.cpu_count()
                         or 0}
    lines = [f"`{args.command}`", "", "```"]
    lines += [f"{name:24} {values}" for name, values in report.items()]
    return results.Outcome("cni_add", report, "\n".join([*lines, "```"]) + "\n")

