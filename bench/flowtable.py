"""The established-flow fast path: an nftables flowtable for redirected flows, measured.

Run on demand (root, about 4 minutes)::

    python -m bench flowtable --rounds 3

Side by side, in rounds, in one lab: plain forwarding (routed through the router pod, no
NAT), the product's ruleset, and the product's ruleset plus a flowtable (software offload:
``flow add @fastpath`` for established redirected TCP/UDP flows; offloaded packets skip
the forward chain in both directions). Figures: one TCP stream (iperf3, Gbit/s) and TCP
request/response on one connection (``capload rr``, one byte each way, round trips/s).
It also records what the flowtable does to the per-rule packet counters (the forward
chain's ``traffic_v4`` set) for a stream of known size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import capacity, harness, results, stats
from bench.workload import DataPath
from egress_router.core import ruleset
from egress_router.lab import world as labmod

IPERF_PORT = 5201
RR_PORT = 7300
SECONDS = 8

FLOWTABLE = (
    "\tflowtable fastpath {\n"
    "\t\thook ingress priority filter\n"
    '\t\tdevices = { "eth0", "macvlan0" }\n'
    "\t}\n\n"
)
# Offload only what the direction-bound forward chain accepts: pod -> egress, original direction.
_FORWARD_ACCEPT = re.compile(
    r"^(\t\tiifname \S+ oifname \S+ ct direction original ct status dnat accept)$", re.M
)


def with_flowtable(text: str) -> str:
    """The product's ruleset plus the fast path (a flowtable and one rule)."""
    head, sep, rest = text.partition("\tchain prerouting {")
    offload = (
        "\t\tmeta l4proto { tcp, udp } ct state established ct status dnat "
        "flow add @fastpath\n"
    )
    return head + FLOWTABLE + sep + _FORWARD_ACCEPT.sub(lambda m: offload + m.group(1), rest)


def traffic_packets(lab: labmod.Lab, port: int) -> int:
    cp = labmod.run_in(lab.router, ["nft", "list", "set", "inet", ruleset.TABLE,
                                    ruleset.traffic_set(4)], timeout=20)
    found = re.search(rf"tcp \. {port} counter packets (\d+)", cp.stdout)
    return int(found.group(1)) if found else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3)


def run_suite(args: argparse.Namespace) -> results.Outcome:
    if os.geteuid() != 0:
        raise harness.BenchError("needs root (network namespaces)")

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    prefix = f"ft{os.getpid() % 100000}"
    samples: list[dict[str, Any]] = []
    counters: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="flowtable-") as tmp, \
            harness.terminating_on_signals():
        workdir = Path(tmp)
        binary = capacity.compile_capload(workdir)
        lab = labmod.up(prefix)
        try:
            bench = capacity.Bench(lab, binary, workdir, log)
            bench.prepare()
            hh = bench.h
            dest = capacity.DESTINATION
            servers = [
                harness.netns_argv(lab.ext, ["iperf3", "-s", "-B", dest, "-p", str(IPERF_PORT)]),
                harness.netns_argv(lab.ext, [str(binary), "serve", dest, str(RR_PORT), "echo",
                                             "100000"]),
            ]
            import subprocess  # noqa: PLC0415

            procs = [subprocess.Popen(a, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True) for a in servers]
            time.sleep(1)
            rules = f"{IPERF_PORT} tcp {dest}\n{RR_PORT} tcp {dest}\n"
            cfg = bench.product(1, rules)
            product = ruleset.render_nftables(cfg)
            probe = labmod.run_in(lab.router, ["nft", "-f", "-"], timeout=30,
                                  input=with_flowtable(product))
            if probe.returncode != 0:
                # e.g. a kernel built without CONFIG_NF_FLOW_TABLE: "No such file or directory"
                raise harness.BenchError(
                    "cannot measure the flowtable: this kernel refuses it: "
                    + probe.stderr.strip().splitlines()[0]
                )
            try:
                for round_index in range(args.rounds):
                    for path in ("forward", "product", "flowtable"):
                        hh._route = None
                        if path == "forward":
                            hh.set_route(DataPath.FORWARD)
                            hh.flush_router()
                            host = dest
                        else:
                            hh.set_route(DataPath.NFTABLES)
                            text = product if path == "product" else with_flowtable(product)
                            hh.apply_ruleset(text, path)
                            host = harness.ROUTER_IP
                        cp = labmod.run_in(lab.client, [
                            "iperf3", "-c", host, "-p", str(IPERF_PORT), "-t", str(SECONDS),
                            "-J"], timeout=SECONDS + 30)
                        gbit = json.loads(cp.stdout)["end"]["sum_received"][
                            "bits_per_second"] / 1e9
                        if path != "forward":
                            counters.setdefault(path, []).append(
                                traffic_packets(lab, IPERF_PORT))
                        cp = labmod.run_in(lab.client, [str(binary), "rr", host, str(RR_PORT),
                                                        str(SECONDS)], timeout=SECONDS + 30)
                        rr = json.loads(cp.stdout.strip().splitlines()[-1])["per_s"]
                        samples.append({"round": round_index, "path": path, "gbit_s": gbit,
                                        "rr_per_s": rr})
                        log(f"  round {round_index} {path}: {gbit:.2f} Gbit/s, {rr:,.0f} RR/s")
            finally:
                for proc in procs:
                    proc.terminate()
                    proc.wait(10)
        finally:
            labmod.down(prefix)

    def med(path: str, key: str) -> float:
        return float(stats.median(s[key] for s in samples if s["path"] == path))

    def ratio(path: str, key: str) -> float:
        per_round = [
            next(s[key] for s in samples if s["path"] == path and s["round"] == r)
            / next(s[key] for s in samples if s["path"] == "forward" and s["round"] == r)
            for r in range(args.rounds)
        ]
        return float(stats.median(per_round))

    summary = {p: {"gbit_s": med(p, "gbit_s"), "rr_per_s": med(p, "rr_per_s"),
                   "gbit_vs_forward": ratio(p, "gbit_s"), "rr_vs_forward": ratio(p, "rr_per_s")}
               for p in ("forward", "product", "flowtable")}
    doc: dict[str, Any] = {
        "command": args.command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "kernel": os.uname().release, "samples": samples,
        "traffic_v4_packets_after_iperf": counters,
        "summary": summary,
    }
    lines = [
        "# Flowtable fast path", "", f"Command: `{doc['command']}`", "",
        f"Run of {doc['date']}, kernel {doc['kernel']}, {args.rounds} rounds, {SECONDS} s per "
        "figure; ratios are per round against plain forwarding, median.", "",
        "| path | TCP Gbit/s | vs forwarding | TCP RR/s | vs forwarding |",
        "|---|---|---|---|---|",
    ]
    for path, s in summary.items():
        lines.append(f"| {path} | {s['gbit_s']:.2f} | {s['gbit_vs_forward']:.2f} | "
                     f"{s['rr_per_s']:,.0f} | {s['rr_vs_forward']:.2f} |")
    lines += ["", "Per-rule packet counter (`traffic_v4`, tcp . 5201) after each iperf3 run: "
              + json.dumps(counters)]
    return results.Outcome("flowtable", doc, "\n".join(lines) + "\n")

