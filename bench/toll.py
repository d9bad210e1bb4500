"""What the hardened data path costs per connection and per packet, against upstream's rules.

Run on demand (root, a few minutes)::

    python -m bench toll --rounds 6
    python -m bench toll --rounds 6 --baseline /tmp/base/src   # plus another tree's rulesets

One lab, the seed's size of configuration (four rules and a fallback), and in
every round, in a shuffled order, each path measured twice over: new
connections (``ab``, connect + one request + close, as the data-path suite) and
request/response on one TCP connection (``capload rr``: one byte each way,
client pinned to CPU 0, server to CPU 1). Paths: plain forwarding (no rules),
upstream-style rules (``bench/upstream.py``), this tree's nftables and iptables
rulesets, the same with ``--baseline``'s package, and the ablation variants
below (the product's nftables ruleset with one piece taken out: what that
piece costs).

Besides the rates, the CPU time the measured processes used (client, server,
softirq threads: `harness.CpuMeter`) per connection and per round trip: on
veth links the router's netfilter work runs in the sender's softirq context,
so it is in those figures, and on a shared machine they follow the other
tenants' load much less than the rates do. Every ratio compares two paths of
the same round; the report gives the median over rounds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from bench import ablation as bench_ablation
from bench import capacity, harness, results, stats, suite, upstream
from bench.workload import DESTINATION, FILLER_DESTINATION, DataPath
from egress_router.core import config, iptables_rules, ruleset
from egress_router.lab import world as labmod

RR_PORT = 7300
BLAST_PORT = 7301
BLAST_COUNT = 40000
CONN_PORT = 8080  # nginx (harness)
FALLBACK = "203.0.113.27"
# The seed's size: four rules and a fallback; the measured ports last among the rules
# (upstream walks its chain in this order, the fallback after them).
SEED_RULES = (
    f"20000 tcp {FILLER_DESTINATION}\n"
    f"{BLAST_PORT} udp {DESTINATION}\n"
    f"{CONN_PORT} tcp {DESTINATION}\n"
    f"{RR_PORT} tcp {DESTINATION}\n"
    f"{FALLBACK}\n"
)


@dataclass(frozen=True)
class Way:
    """One way through the router: no rules, an nft text, or iptables-restore payloads."""

    kind: str  # "forward", "nft", "ipt"
    nft: str = ""
    ipt: tuple[tuple[int, str], ...] = ()


def cfg_for(rules: str) -> config.Config:
    return config.load_config({**harness.ROUTER_ENV, config.ENV_DESTINATION: rules})


def render_tree(cfg_rules: str, src: Path | None) -> tuple[str, dict[int, str]]:
    """The nftables text and iptables payloads of ``cfg_rules``, by this tree or ``src``."""
    if src is None:
        cfg = cfg_for(cfg_rules)
        payloads = {f: iptables_rules.render_iptables(cfg, f) for f in (4, 6)}
        return ruleset.render_nftables(cfg), payloads
    code = (
        "import json, sys\n"
        "from egress_router.core import config, ruleset\n"
        "try:\n"  # an older tree renders iptables in ruleset itself
        "    from egress_router.core import iptables_rules\n"
        "except ImportError:\n"
        "    iptables_rules = ruleset\n"
        "env = json.loads(sys.argv[1])\n"
        "cfg = config.load_config(env)\n"
        "print(json.dumps([ruleset.render_nftables(cfg),"
        " {f: iptables_rules.render_iptables(cfg, f) for f in (4, 6)}]))\n"
    )
    env = {**harness.ROUTER_ENV, config.ENV_DESTINATION: cfg_rules}
    cp = subprocess.run([sys.executable, "-I", "-c", code, json.dumps(env)], capture_output=True,
                        text=True, timeout=60, check=False,
                        env={**os.environ, "PYTHONPATH": str(src)})
    if cp.returncode != 0:
        raise harness.BenchError(f"cannot render with {src}: {cp.stderr.strip()[-400:]}")
    nft, ipt = json.loads(cp.stdout)
    return nft, {int(k): v for k, v in ipt.items()}


def paths(baseline: Path | None, ablation: bool) -> dict[str, Way]:
    cfg = cfg_for(SEED_RULES)
    nft, ipt = render_tree(SEED_RULES, None)
    out = {
        "forward": Way("forward"),
        "upstream": Way("nft", upstream.render_upstream(cfg.destinations,
                                                          IPv4Address(harness.SOURCE_IP))),
        "nftables": Way("nft", nft),
        "iptables": Way("ipt", ipt=tuple(sorted(ipt.items()))),
    }
    if baseline is not None:
        old_nft, old_ipt = render_tree(SEED_RULES, baseline)
        out["nftables:baseline"] = Way("nft", old_nft)
        out["iptables:baseline"] = Way("ipt", ipt=tuple(sorted(old_ipt.items())))
    if ablation:
        for name, text in bench_ablation.variants(nft).items():
            if name != "full":
                out[f"nftables:{name}"] = Way("nft", text)
    return out


class Toll:
    """The lab with nginx (harness) and a capload echo server, switched between paths."""

    def __init__(self, h: harness.Harness, capload: Path) -> None:
        self.h = h
        self.capload = capload
        self.server: subprocess.Popen[bytes] | None = None

    def start_echo(self) -> None:
        argv = harness.pinned(harness.SERVER_CPU, [str(self.capload), "serve", DESTINATION,
                                                   str(RR_PORT), "echo", "100000"])
        self.server = subprocess.Popen(harness.netns_argv(self.h.lab_handle.ext, argv),
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(0.3)
        if self.server.poll() is not None:
            raise harness.BenchError("cannot start the capload echo server")

    def stop(self) -> None:
        if self.server is not None:
            harness._stop([self.server])

    def apply(self, path: Way) -> str:
        h = self.h
        if path.kind == "forward":
            h.set_route(DataPath.FORWARD)
            h.flush_router()
            h.flush_conntrack()
            return DESTINATION
        h.set_route(DataPath.NFTABLES)
        if path.kind == "nft":
            h.apply_ruleset(path.nft, "measured")
        else:
            h.flush_router()
            for family, payload in path.ipt:
                tool = "iptables-restore" if family == 4 else "ip6tables-restore"
                cp = labmod.run_in(h.lab_handle.router, [tool, "--noflush"], input=payload,
                                   timeout=60)
                harness._check(cp, "apply the iptables rules")
            h.flush_conntrack()
        return harness.ROUTER_IP

    def blast(self, host: str, count: int) -> tuple[float, float]:
        """Nanoseconds of CPU per datagram: through the router, and its echo back."""
        lab = self.h.lab_handle
        server = subprocess.Popen(
            harness.netns_argv(lab.ext, harness.pinned(harness.SERVER_CPU, [
                str(self.capload), "uecho", DESTINATION, str(BLAST_PORT), "60"])),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, start_new_session=True)
        try:
            time.sleep(0.2)
            cp = labmod.run_in(lab.client, harness.pinned(harness.CLIENT_CPU, [
                str(self.capload), "blast", host, str(BLAST_PORT), str(count)]), timeout=60)
            sent = json.loads(harness._check(cp, f"blast {host}").strip().splitlines()[-1])
        finally:
            server.terminate()
            out, _ = server.communicate(timeout=10)
        echoed = json.loads(out.strip().splitlines()[-1])
        return (sent["cpu_s"] * 1e9 / max(1, sent["sent"]),
                echoed["cpu_s"] * 1e9 / max(1, echoed["echoed"]))

    def conn(self, host: str) -> tuple[float, float]:
        with self.h.cpu_meter() as cpu:
            rate, detail = self.h.conn_rate(self.h.lab_handle.client, host, CONN_PORT)
        return rate, cpu.seconds * 1e6 / max(1, detail["requests"])

    def rr(self, host: str, seconds: float) -> tuple[float, float]:
        assert self.server is not None
        argv = harness.pinned(harness.CLIENT_CPU, [str(self.capload), "rr", host, str(RR_PORT),
                                                   str(seconds)])
        with harness.CpuMeter([self.server.pid, *harness._softirq_threads()]).measuring() as cpu:
            cp = labmod.run_in(self.h.lab_handle.client, argv, timeout=seconds + 20)
        out = harness._check(cp, f"run capload rr against {host}")
        trips = json.loads(out.strip().splitlines()[-1])
        return float(trips["per_s"]), cpu.seconds * 1e6 / max(1, int(trips["round_trips"]))


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    todo = paths(args.baseline, not args.no_ablation)
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only.split(",")}
    log(f"paths: {', '.join(todo)} x {args.rounds} rounds")
    samples: list[dict[str, Any]] = []
    started = datetime.datetime.now(datetime.UTC)
    load_start = harness.loadavg()
    prefix = f"erttoll{os.getpid() % 10000}"
    with tempfile.TemporaryDirectory(prefix="egress-router-toll-") as tmp:
        workdir = Path(tmp)
        capload = capacity.compile_capload(workdir)
        durations = harness.Durations(conn=args.seconds, latency=1, flow=args.seconds,
                                      calibration=1)
        with harness.Harness(prefix, workdir, durations, log) as h:
            toll = Toll(h, capload)
            toll.start_echo()
            try:
                for round_index in range(args.rounds):
                    order = list(todo)
                    random.Random(f"{args.seed}/toll/{round_index}").shuffle(order)
                    for name in order:
                        host = toll.apply(todo[name])
                        h.check_path(DataPath.FORWARD if name == "forward"
                                     else DataPath.NFTABLES)
                        load1 = harness.loadavg()[0]
                        rate, cpu_conn = toll.conn(host)
                        rr, cpu_rr = toll.rr(host, args.seconds)
                        there, back = toll.blast(host, args.blast)
                        samples.append({"round": round_index, "path": name, "conn_s": rate,
                                        "cpu_us_per_conn": cpu_conn, "rr_s": rr,
                                        "cpu_us_per_rr": cpu_rr, "ns_there": there,
                                        "ns_back": back, "ns_packet": there + back,
                                        "load1": load1})
                        log(f"round {round_index + 1}/{args.rounds} {name}: {rate:,.0f} conn/s "
                            f"({cpu_conn:.0f} us CPU), {rr:,.0f} RR/s ({cpu_rr:.1f} us CPU), "
                            f"UDP {there:,.0f} + {back:,.0f} ns CPU/datagram "
                            f"(load {load1:.2f})")
            finally:
                toll.stop()
    return {
        "schema": 1, "kind": "toll",
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": (datetime.datetime.now(datetime.UTC) - started).total_seconds(),
        "host": {"nproc": os.cpu_count(), "kernel": platform.release(),
                 "loadavg_start": list(load_start), "loadavg_end": list(harness.loadavg())},
        "settings": {"command": args.command,
                     "rounds": args.rounds, "seconds": args.seconds, "seed": args.seed,
                     "rules": SEED_RULES,
                     "baseline": str(args.baseline) if args.baseline else None},
        "labels": {f"nftables:{k}": v[0] for k, v in bench_ablation.VARIANTS.items()},
        "rulesets": {k: v.nft or "".join(p for _, p in v.ipt) for k, v in todo.items()},
        "samples": samples,
    }


FIGURES = (("conn_s", True), ("cpu_us_per_conn", False), ("rr_s", True),
           ("cpu_us_per_rr", False))


def ratios(doc: dict[str, Any], path: str, reference: str, key: str, higher: bool) -> list[float]:
    """Per round: ``path`` over ``reference`` (rates), or ``reference`` over ``path`` (CPU):
    above 1 means ``path`` is better."""
    by = {(s["path"], s["round"]): s for s in doc["samples"]}
    out = []
    for (name, r), sample in by.items():
        other = by.get((reference, r))
        if name != path or other is None or not sample[key] or not other[key]:
            continue
        out.append(sample[key] / other[key] if higher else other[key] / sample[key])
    return out


def _med(values: Sequence[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{stats.median(ordered):.3f} ({ordered[0]:.2f}-{ordered[-1]:.2f})"


def render_markdown(doc: dict[str, Any]) -> str:
    names = list(dict.fromkeys(s["path"] for s in doc["samples"]))
    order = ["forward", "upstream", "nftables", "iptables"]
    names = [n for n in order if n in names] + sorted(n for n in names if n not in order)
    host = doc["host"]
    lines = [
        f"# The data path's toll at the seed's size ({doc['started']}, "
        f"{doc['settings']['rounds']} rounds, {doc['duration_s']:.0f} s)", "",
        f"Command: `{doc['settings']['command']}`", "",
        f"Kernel {host['kernel']}, {host['nproc']} CPUs; load average at the start "
        f"{' '.join(f'{v:.2f}' for v in host['loadavg_start'])}, at the end "
        f"{' '.join(f'{v:.2f}' for v in host['loadavg_end'])}. Rules: four and a fallback "
        "(the measured ports third and fourth). Each figure is the median over rounds of the "
        "ratio of two paths measured in the same round (min-max in brackets); for CPU time "
        "the ratio is inverted, so above 1 is better everywhere.", "",
        "| path | conn/s | vs upstream | vs forwarding | CPU us/conn | CPU vs upstream | "
        "TCP RR/s | vs upstream | vs forwarding | CPU us/RR | CPU vs upstream | "
        "CPU ns/datagram | vs upstream | vs forwarding |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        mine = [s for s in doc["samples"] if s["path"] == name]

        def med(key: str, mine: list[dict[str, Any]] = mine) -> float:
            return stats.median(s[key] for s in mine)

        label = doc.get("labels", {}).get(name, "")
        shown = f"{name}" + (f" ({label})" if label else "")
        lines.append(
            f"| {shown} | {med('conn_s'):,.0f} | "
            f"{_med(ratios(doc, name, 'upstream', 'conn_s', True))} | "
            f"{_med(ratios(doc, name, 'forward', 'conn_s', True))} | "
            f"{med('cpu_us_per_conn'):.0f} | "
            f"{_med(ratios(doc, name, 'upstream', 'cpu_us_per_conn', False))} | "
            f"{med('rr_s'):,.0f} | {_med(ratios(doc, name, 'upstream', 'rr_s', True))} | "
            f"{_med(ratios(doc, name, 'forward', 'rr_s', True))} | "
            f"{med('cpu_us_per_rr'):.1f} | "
            f"{_med(ratios(doc, name, 'upstream', 'cpu_us_per_rr', False))} | "
            f"{med('ns_packet'):,.0f} | "
            f"{_med(ratios(doc, name, 'upstream', 'ns_packet', False))} | "
            f"{_med(ratios(doc, name, 'forward', 'ns_packet', False))} |"
        )
    if any(n.startswith("nftables:no-") for n in names):
        lines += ["", "Ablation: what each piece costs, as the product's ruleset over the "
                  "variant without it, same round (CPU time per connection / per round trip; "
                  "below 1: the piece costs that share).", "",
                  "| piece taken out | CPU per conn: full / without | CPU per RR: full / without "
                  "| CPU per datagram: full / without |",
                  "|---|---|---|---|"]
        for name in names:
            if name.startswith("nftables:no-"):
                conn = ratios(doc, "nftables", name, "cpu_us_per_conn", False)
                rr = ratios(doc, "nftables", name, "cpu_us_per_rr", False)
                packet = ratios(doc, "nftables", name, "ns_packet", False)
                lines.append(f"| {doc['labels'].get(name, name)} | {_med(conn)} | {_med(rr)} "
                             f"| {_med(packet)} |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--blast", type=int, default=BLAST_COUNT,
                        help="datagrams per per-packet measurement")
    parser.add_argument("--baseline", type=Path, metavar="SRC",
                        help="also measure the rulesets of the package in SRC (a src folder)")
    parser.add_argument("--no-ablation", action="store_true", help="no ablation variants")
    parser.add_argument("--only", help="comma-separated path names to measure")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only re-render a result")


def run_suite(args: argparse.Namespace) -> results.Outcome:
    if args.render is not None:
        doc = json.loads(args.render.read_text(encoding="utf-8"))
        args.out = args.out or args.render.parent
        return results.Outcome("toll", doc, render_markdown(doc))
    if os.geteuid() != 0:
        raise harness.BenchError("needs root (network namespaces)")
    if args.baseline is not None and not (args.baseline / "egress_router").is_dir():
        raise harness.BenchError(
            f"cannot use --baseline {args.baseline}: no egress_router package in it"
        )
    begun = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - begun:6.1f}s] {message}", file=sys.stderr, flush=True)

    from bench import run as bench_run  # noqa: PLC0415 (bench.run imports much more)

    bench_run.ensure_tools(True, log)
    with harness.terminating_on_signals():
        doc = run(args, log)
    return results.Outcome("toll", doc, render_markdown(doc))


SUITES = (
    suite.Suite(
        "toll",
        "the data path's toll at the seed's size against upstream-style rules and forwarding",
        add_arguments,
        run_suite,
    ),
)
