"""Capacity to one destination: concurrent connections and sustained new connections.

Run on demand (root, a few minutes a case; not in CI)::

    python -m bench capacity                      # the default matrix, results in bench/results/
    python -m bench capacity --cases goal --seconds 150

Every case gets a fresh destination port (so no TIME_WAIT of an earlier case is in the
way), an empty conntrack table and the router configured from scratch. The load comes
from ``bench/capload.c`` (compiled with gcc here), run in the lab's client namespace with
16 client addresses (pods), each connection on time whether or not earlier ones finished
(open loop). A connection is *failed* when it is refused, reset or not answered within
10 s, *slow* when it took more than 0.9 s (a lost SYN costs 1 s). The router's NAT
failures are read from ``conntrack -S`` in its namespace before and after.

Paths: ``forward`` (routed through the router pod, no NAT), ``upstream`` (the
upstream-style ruleset of bench/upstream.py: one source address), ``product`` (this
project, ``EGRESS_SOURCE`` with 1 or 4 addresses), and product variants that change one
NAT knob on top of the rendered ruleset (``fully-random``, ``ct timeout``, no ``ct
timeout`` when the product has it), so each knob is measured side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from bench import harness, results, upstream
from bench.workload import DataPath
from egress_router.core import config, ruleset
from egress_router.lab import world as labmod

HERE = Path(__file__).resolve().parent
DESTINATION = str(labmod.DESTINATIONS4[0].ip)
LOCAL_PORT = 80  # what the clients dial on the router
FIRST_SERVER_PORT = 7100
CLIENTS = tuple(f"10.128.0.{100 + i}" for i in range(16))
POOL = tuple(f"192.168.12.{99 + i}" for i in range(4))
TOOL_GRACE = 30.0
HOLD_PROCESSES = 5  # a process may have 20,000 descriptors here: 70,000 need several
NICE = ["nice", "-n", "-10"]  # the machine is shared: keep the load itself on time
REALTIME = ["chrt", "-f", "10"]  # --realtime: SCHED_FIFO, for a loaded machine
NSTAT_KEYS = ("TcpExtTCPSynRetrans", "TcpExtPAWSEstab", "TcpExtPAWSActive", "TcpExtTWRecycled",
              "TcpExtTWKilled", "TcpExtListenOverflows", "TcpExtListenDrops", "TcpRetransSegs",
              "TcpExtTCPTimeWaitOverflow", "TcpAttemptFails", "TcpEstabResets", "TcpOutRsts",
              "TcpExtTCPChallengeACK", "TcpExtTCPACKSkippedTimeWait")


@dataclass(frozen=True)
class Case:
    """One measurement: a path, its NAT knobs and a workload."""

    name: str
    path: str  # forward | upstream | product
    workload: str  # hold | close (server closes first) | wait (client closes first)
    rate: float
    seconds: float
    pool: int = 1
    variant: str = ""  # "", "fully-random", "no-ct-timeout", "ct-timeout"
    count: int = 0  # hold: connections to open


def matrix(seconds: float, goal_only: bool) -> list[Case]:
    """The reduced matrix (see README "Capacity"): what fits the shared 2-core machine."""
    goal = Case("goal: pool 4, server closes, 2000/s", "product", "close", 2000, seconds, 4)
    if goal_only:
        return [goal]
    hold = 70000
    return [
        Case("concurrent, forward", "forward", "hold", 5000, 40, count=hold),
        Case("concurrent, upstream", "upstream", "hold", 5000, 40, count=hold),
        Case("concurrent, product pool 1", "product", "hold", 5000, 40, 1, count=hold),
        Case("concurrent, product pool 4", "product", "hold", 5000, 40, 4, count=hold),
        Case("server closes, forward, 2000/s", "forward", "close", 2000, seconds),
        Case("server closes, upstream, 2000/s", "upstream", "close", 2000, seconds),
        Case("server closes, pool 1, 2000/s", "product", "close", 2000, seconds, 1),
        Case("server closes, pool 4, 2000/s, no ct timeout", "product", "close", 2000,
             seconds, 4, "no-ct-timeout"),
        Case("server closes, pool 4, 2000/s, fully-random", "product", "close", 2000,
             seconds, 4, "fully-random"),
        goal,
        Case("server closes, pool 1, 800/s", "product", "close", 800, seconds, 1),
        Case("server closes, pool 1, 800/s, no ct timeout", "product", "close", 800,
             seconds, 1, "no-ct-timeout"),
        Case("server closes, pool 4, 2000/s, random", "product", "close", 2000,
             seconds, 4, "random"),
        Case("server closes, pool 4, 2000/s, numgen", "product", "close", 2000,
             seconds, 4, "numgen"),
        Case("client closes, pool 1, 2000/s", "product", "wait", 2000, seconds, 1),
        Case("client closes, pool 4, 2000/s", "product", "wait", 2000, seconds, 4),
    ]


def compile_capload(workdir: Path) -> Path:
    binary = workdir / "capload"
    cp = subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(binary), str(HERE / "capload.c")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    if cp.returncode != 0:
        raise harness.BenchError(f"cannot compile capload.c: {cp.stderr.strip()}")
    return binary


_STAT = re.compile(r"(\w+)=(\d+)")


def conntrack_stats(ns: str) -> dict[str, int]:
    """``conntrack -S`` summed over CPUs (insert_failed, drop, early_drop, ...)."""
    cp = labmod.run_in(ns, ["conntrack", "-S"], timeout=20)
    totals: dict[str, int] = {}
    for line in cp.stdout.splitlines():
        for key, value in _STAT.findall(line):
            if key != "cpu":
                totals[key] = totals.get(key, 0) + int(value)
    return totals


def nstat(ns: str) -> dict[str, int]:
    """The namespace's TCP counters (absolute values, ``nstat -az``)."""
    cp = labmod.run_in(ns, ["nstat", "-asz", "--json"], timeout=20)
    data = json.loads(cp.stdout or "{}")
    counters: dict[str, Any] = next(iter(data.values()), {}) if data else {}
    return {k: int(counters.get(k, 0)) for k in NSTAT_KEYS}


def conntrack_count(ns: str) -> int:
    cp = labmod.run_in(ns, ["conntrack", "-C"], timeout=20)
    return int(cp.stdout.strip() or 0)


@dataclass
class Bench:
    lab: labmod.Lab
    capload: Path
    workdir: Path
    log: Callable[[str], None]
    port: int = FIRST_SERVER_PORT
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def h(self) -> harness.Harness:
        hh = harness.Harness(self.lab.prefix, self.workdir, harness.Durations(), self.log)
        hh.lab = self.lab
        return hh

    def prepare(self) -> None:
        lab = self.lab
        for ns, settings in (
            (lab.client, {"net.ipv4.ip_local_port_range": "1024 65535",
                          "net.ipv4.tcp_tw_reuse": "1"}),
            (lab.ext, {"net.ipv4.ip_local_port_range": "1024 65535",
                       "net.core.somaxconn": "65535", "net.ipv4.tcp_max_syn_backlog": "65535",
                       # a destination with room for every TIME_WAIT (the common default)
                       "net.ipv4.tcp_max_tw_buckets": "262144"}),
        ):
            argv = ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())]
            harness._check(labmod.run_in(ns, argv, timeout=10), f"set sysctls in {ns}")
        for address in CLIENTS:
            harness._check(labmod.run_in(lab.client, [
                "ip", "address", "replace", f"{address}/24", "dev", labmod.POD_IF
            ], timeout=10), f"add client address {address}")

    # ------------------------------------------------------------------ configuring

    def configure(self, case: Case, server_port: int) -> str:
        """Set up the path of ``case``; returns the address the clients dial."""
        hh = self.h
        destination = f"{LOCAL_PORT} tcp {DESTINATION} {server_port}\n"
        if case.path == "forward":
            hh._route = None
            hh.set_route(DataPath.FORWARD)
            self.product(1, destination)  # addresses and routes as the product sets them
            hh.flush_router()
            hh.flush_conntrack()
            return f"{DESTINATION}:{server_port}"
        hh._route = None
        hh.set_route(DataPath.NFTABLES)
        cfg = self.product(case.pool, destination)
        if case.path == "upstream":
            hh.flush_router()
            text = upstream.render_upstream(cfg.destinations, IPv4Address(POOL[0]))
            hh.apply_ruleset(text, "upstream-style")
        elif case.variant:
            hh.apply_ruleset(variant(ruleset.render_nftables(cfg), case.variant), case.variant)
        hh.flush_conntrack()
        return f"{harness.ROUTER_IP}:{LOCAL_PORT}"

    def product(self, pool: int, destinations: str) -> config.Config:
        env = {
            config.ENV_SOURCE: ",".join(f"{a}/24" for a in POOL[:pool]),
            config.ENV_GATEWAY: str(labmod.GATEWAY4.ip),
            config.ENV_DESTINATION: destinations,
            config.ENV_MODE: "init",
            config.ENV_ANNOUNCE_COUNT: "1",
        }
        proc = labmod.spawn_router(self.lab, env)
        try:
            _out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        if proc.returncode != 0:
            raise harness.BenchError(f"cannot configure the router: {err.strip()[-600:]}")
        return config.load_config({k: v for k, v in env.items() if k != config.ENV_MODE})

    # ------------------------------------------------------------------ measuring

    @contextlib.contextmanager
    def server(self, port: int, mode: str, seconds: float, processes: int = 1
               ) -> Iterator[dict[str, int]]:
        """Servers on ``port`` (SO_REUSEPORT); yields the peer counts, filled in at the end."""
        peers: dict[str, int] = {}
        procs = [
            subprocess.Popen(
                harness.netns_argv(self.lab.ext, [
                    *NICE, str(self.capload), "serve", DESTINATION, str(port), mode, str(seconds)
                ]),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, start_new_session=True,
            )
            for _ in range(processes)
        ]
        try:
            time.sleep(0.3)
            for proc in procs:
                if proc.poll() is not None:
                    assert proc.stderr is not None
                    raise harness.BenchError(f"cannot start the server: {proc.stderr.read()}")
            yield peers
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs:
                stdout, _ = proc.communicate(timeout=30)
                lines = stdout.strip().splitlines()
                if lines:
                    for peer, n in json.loads(lines[-1]).get("peers", {}).items():
                        peers[peer] = peers.get(peer, 0) + int(n)

    def run(self, case: Case) -> dict[str, Any]:
        self.port += 1
        port = self.port
        target = self.configure(case, port)
        host, _, dial_port = target.rpartition(":")
        mode = {"hold": "hold", "close": "close", "wait": "wait"}[case.workload]
        before = conntrack_stats(self.lab.router)
        tcp_before = {ns: nstat(ns) for ns in (self.lab.client, self.lab.ext)}
        started = time.time()
        processes = HOLD_PROCESSES if case.workload == "hold" else 1
        with self.server(port, mode, case.seconds + TOOL_GRACE + 60, processes) as peers:
            if case.workload == "hold":
                result = self.hold(case, host, dial_port)
            else:
                result = self.rate(case, host, dial_port)
        after = conntrack_stats(self.lab.router)
        tcp = {}
        for role, ns in (("client", self.lab.client), ("destination", self.lab.ext)):
            now = nstat(ns)
            tcp[role] = {k: now[k] - tcp_before[ns][k] for k in NSTAT_KEYS
                         if now[k] != tcp_before[ns][k]}
        entry = {
            "case": case.name, "path": case.path, "workload": case.workload,
            "rate": case.rate, "seconds": case.seconds, "pool": case.pool,
            "variant": case.variant, "started": started, "result": result,
            "conntrack_delta": {k: after.get(k, 0) - before.get(k, 0)
                                for k in ("insert_failed", "drop", "early_drop", "error",
                                          "invalid", "clash_resolve")},
            "peers": peers, "tcp": tcp, "load1": os.getloadavg()[0],
        }
        self.log(f"  {case.name}: {json.dumps({**result, 'failed_by_second': None})} "
                 f"ct {entry['conntrack_delta']} peers {entry['peers']} tcp {tcp}")
        self.results.append(entry)
        return entry

    def rate(self, case: Case, host: str, port: str) -> dict[str, Any]:
        peak = 0
        proc = subprocess.Popen(
            harness.netns_argv(self.lab.client, [
                *NICE, str(self.capload), "rate", host, port, str(case.rate), str(case.seconds),
                case.workload, ",".join(CLIENTS),
            ]),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )
        deadline = time.monotonic() + case.seconds + TOOL_GRACE
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(5)
            with contextlib.suppress(labmod.LabError, ValueError):
                peak = max(peak, conntrack_count(self.lab.router))
        if proc.poll() is None:
            proc.kill()
        stdout, stderr = proc.communicate(timeout=30)
        if proc.returncode != 0 or not stdout.strip():
            raise harness.BenchError(f"capload rate failed: {stderr.strip()[-400:]}")
        result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
        result["conntrack_peak"] = peak
        return result

    def hold(self, case: Case, host: str, port: str) -> dict[str, Any]:
        share = -(-case.count // HOLD_PROCESSES)
        procs = [
            subprocess.Popen(
                harness.netns_argv(self.lab.client, [
                    *NICE, str(self.capload), "hold", host, port, str(share),
                    str(case.rate / HOLD_PROCESSES), str(case.seconds), ",".join(CLIENTS),
                ]),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, start_new_session=True,
            )
            for _ in range(HOLD_PROCESSES)
        ]
        try:
            parts = [json.loads(_read_line(p, case.seconds + TOOL_GRACE)) for p in procs]
            entries = conntrack_count(self.lab.router)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.communicate(timeout=60)
        fails = [p["first_failure_s"] for p in parts if p["first_failure_s"] >= 0]
        return {
            "target": sum(p["target"] for p in parts),
            "attempted": sum(p["attempted"] for p in parts),
            "established": sum(p["established"] for p in parts),
            "failed": sum(p["failed"] for p in parts),
            "first_failure_s": min(fails) if fails else -1.0,
            "elapsed_s": max(p["elapsed_s"] for p in parts),
            "conntrack_entries": entries,
        }


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    import selectors  # noqa: PLC0415

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise harness.BenchError("capload hold gave no result in time")
    return proc.stdout.readline()


CT_TIMEOUT_RE = re.compile(r"^\tct timeout .*?^\t}\n\n", re.M | re.S)
CT_TIMEOUT_SET_RE = re.compile(r"^.*ct timeout set .*\n", re.M)
SNAT_RE = re.compile(r"^(\t\toifname .* snat ip to .*)$", re.M)


def variant(text: str, name: str) -> str:
    """The rendered ruleset with one NAT knob changed."""
    if name == "numgen":  # addresses in turn instead of by client tuple
        return re.sub(r"jhash ip saddr \. th sport mod", "numgen inc mod", text)
    if name in ("fully-random", "random"):
        return SNAT_RE.sub(rf"\1 {name}", text)
    if name == "no-ct-timeout":
        return CT_TIMEOUT_SET_RE.sub("", CT_TIMEOUT_RE.sub("", text))
    raise ValueError(f"unknown variant {name!r}")


def render_markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# Capacity to one destination",
        "",
        f"Command: `{doc['command']}`",
        "",
        f"Run of {doc['date']} on kernel {doc['kernel']}, {doc['cpus']} CPUs (shared); "
        f"16 client addresses, one destination {DESTINATION}:port; conntrack max "
        f"{doc['conntrack_max']}. Failed: refused, reset or no answer in 10 s; "
        "slow: > 0.9 s (a lost SYN costs 1 s).",
        "",
        "Concurrent connections held open (opened at 5,000/s until the first failure):",
        "",
        "| case | established | failed | first failure s | conntrack entries | "
        "insert_failed | drop |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in doc["results"]:
        if e["workload"] != "hold":
            continue
        r, ct = e["result"], e["conntrack_delta"]
        first = "-" if r["first_failure_s"] < 0 else f"{r['first_failure_s']:.1f}"
        lines.append(
            f"| {e['case']} | {r['established']:,} of {r['target']:,} | {r['failed']} | {first} "
            f"| {r['conntrack_entries']:,} | {ct['insert_failed']} | {ct['drop']} |"
        )
    lines += [
        "",
        "Sustained new connections (open loop):",
        "",
        "| case | s | attempted | failed | timeouts | slow | slow % | p50 ms | p99 ms | p99.9 ms "
        "| SYN retransmits | conntrack peak | insert_failed | drop | connections per source |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in doc["results"]:
        if e["workload"] == "hold":
            continue
        r, ct = e["result"], e["conntrack_delta"]
        share = 100.0 * r["slow"] / max(r["attempted"], 1)
        peers = ", ".join(
            f"{p.rsplit('.', 1)[-1]}: {n:,}" for p, n in sorted(e["peers"].items())
        )
        lines.append(
            f"| {e['case']} | {e['seconds']:g} | {r['attempted']:,} | {r['failed']} | "
            f"{r['timeouts']} | {r['slow']} | {share:.3f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['p999_ms']:.1f} | "
            f"{e['tcp']['client'].get('TcpExtTCPSynRetrans', 0):,} | {r['conntrack_peak']:,} | "
            f"{ct['insert_failed']} | {ct['drop']} | {peers} |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--cases", default="all",
                        help="all, goal, or case-name substrings separated by ';'")
    parser.add_argument("--name", default="capacity", help="results file name")
    parser.add_argument("--realtime", action="store_true",
                        help="run the load generator and servers SCHED_FIFO (chrt -f 10), so "
                        "that other work on the machine does not delay them")


def run_suite(args: argparse.Namespace) -> results.Outcome:
    if args.realtime:
        NICE[:] = REALTIME
    if os.geteuid() != 0:
        raise harness.BenchError("needs root (network namespaces)")
    cases = matrix(args.seconds, args.cases == "goal")
    if args.cases not in ("all", "goal"):
        wanted = [w.strip() for w in args.cases.split(";")]
        cases = [c for c in cases if any(w in c.name for w in wanted)]

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    prefix = f"cap{os.getpid() % 100000}"
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp, \
            harness.terminating_on_signals():
        workdir = Path(tmp)
        binary = compile_capload(workdir)
        log(f"building lab {prefix}")
        lab = labmod.up(prefix)
        try:
            bench = Bench(lab, binary, workdir, log)
            bench.prepare()
            for case in cases:
                log(f"case {case.name}")
                try:
                    bench.run(case)
                except (harness.BenchError, labmod.LabError, ValueError) as exc:
                    log(f"  {case.name}: FAILED: {exc}")
                    bench.results.append({"case": case.name, "error": str(exc)})
        finally:
            labmod.down(prefix)
    doc = {
        "command": args.command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "kernel": os.uname().release, "cpus": os.cpu_count(),
        "conntrack_max": Path("/proc/sys/net/netfilter/nf_conntrack_max").read_text().strip(),
        "results": [r for r in bench.results if "error" not in r],
        "errors": [r for r in bench.results if "error" in r],
    }
    return results.Outcome(args.name, doc, render_markdown(doc))
