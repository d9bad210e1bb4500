"""``python -m bench data-path``: the data-path benchmark, results under bench/results/.

It builds the lab, then for several rounds measures every (path, rule count,
figure) in a shuffled order, each against freshly applied rules, and finally
the setup timings (with ``EGRESS_ROUTER_DEBUG`` stage timings) and the memory
of the waiting process. The results are a JSON document (every sample), a
markdown report, a PNG chart and optionally the README's summary section.

Needs root (network namespaces). Installs missing Debian tools (ab, nginx,
sockperf, iperf3) with apt-get unless ``--no-install``. ``--quick`` is a short
development run; a full run takes about 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from bench import ablation, baseline, harness, report, results, stats, upstream, workload
from bench.workload import DataPath, Figure
from egress_router.core import config, ruleset
from egress_router.lab import world as labmod

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PREFIX_START = "ertbench"
POLICY_RC = Path("/usr/sbin/policy-rc.d")



@dataclasses.dataclass(frozen=True)
class Preset:
    """Defaults of a full or a quick run."""

    rounds: int
    counts: str
    flow_counts: str
    seconds: int  # per measurement: ab rate, iperf3, sockperf, calibration
    setup_reps: int


FULL = Preset(rounds=5, counts="1,100,1000,10000", flow_counts="1,10000", seconds=2,
              setup_reps=3)
QUICK = Preset(rounds=2, counts="1,1000", flow_counts="1000", seconds=1, setup_reps=1)


class Clock:
    """Progress lines on stderr with the seconds since the start."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=sys.stderr, flush=True)


def _counts(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not 1 <= v <= workload.MAX_RULES for v in values):
        raise SystemExit(
            f"bench: error: cannot use {option} {text!r}: give rule counts from 1 to "
            f"{workload.MAX_RULES} separated by commas, e.g. 1,100,1000,10000"
        )
    return sorted(set(values))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the data-path suites (data-path, ablation, hardening)."""
    parser.add_argument("--quick", action="store_true",
                        help="short development run (2 rounds, 1 and 1000 rules, 1 s each)")
    parser.add_argument("--rounds", type=int, help="rounds over every configuration (full: 4)")
    parser.add_argument("--counts", help="rule counts for new connections (full: 1,100,1000,10000)")
    parser.add_argument("--flow-counts",
                        help="rule counts for throughput and request/response (full: 1,10000)")
    parser.add_argument("--seconds", type=int,
                        help="seconds per measurement (default: 2 full, 1 quick)")
    parser.add_argument("--setup-reps", type=int, help="debug init runs per backend and count")
    parser.add_argument("--seed", type=int, default=6, help="seed of the shuffled order")
    parser.add_argument("--no-calibration", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-install", action="store_true",
                        help="do not apt-get install missing tools")


def add_data_path_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser)
    parser.add_argument("--update-readme", action="store_true",
                        help="replace the summary between the README's benchmark markers")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only re-render the report, chart (and README) from a results file")


def _settle(args: argparse.Namespace) -> argparse.Namespace:
    """The preset's defaults for what was not given; refuses what cannot run."""
    preset = QUICK if args.quick else FULL
    args.rounds = args.rounds or preset.rounds
    args.counts = _counts(args.counts or preset.counts, "--counts")
    args.flow_counts = _counts(args.flow_counts or preset.flow_counts, "--flow-counts")
    args.setup_reps = preset.setup_reps if args.setup_reps is None else args.setup_reps
    seconds = args.seconds or preset.seconds
    args.durations = harness.Durations(conn=seconds, latency=1, flow=seconds,
                                       calibration=seconds)
    if args.rounds < 1 or min(vars(args.durations).values()) < 1:
        raise SystemExit("bench: error: cannot run: --rounds and --seconds must be at least 1")
    if args.quick and args.out is None:
        args.out = Path(tempfile.gettempdir()) / "egress-router-bench-quick"
    return args


def _missing_tools() -> dict[str, str]:
    return {tool: pkg for tool, pkg in harness.REQUIRED_TOOLS.items() if not shutil.which(tool)}


def ensure_tools(install: bool, log: Callable[[str], None]) -> None:
    """Install missing Debian tools; no service may start in the root namespace meanwhile."""
    missing = _missing_tools()
    if not missing:
        return
    packages = sorted(set(missing.values()))
    if not install:
        raise SystemExit(
            f"bench: error: cannot run: missing {', '.join(sorted(missing))}; install the "
            f"Debian packages {' '.join(packages)} or drop --no-install"
        )
    log(f"installing {' '.join(packages)} with apt-get")
    # Debian starts a freshly installed nginx unless policy-rc.d forbids it; the
    # benchmark runs its own nginx inside the lab, never one in the root namespace.
    own_policy = not POLICY_RC.exists()
    if own_policy:
        POLICY_RC.write_text("#!/bin/sh\nexit 101\n", encoding="ascii")
        POLICY_RC.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-qq"],
                     ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
            cp = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600,
                                check=False)
            if cp.returncode != 0:
                raise SystemExit(
                    f"bench: error: cannot install {' '.join(packages)}: "
                    f"{cp.stderr.strip()[-400:]}"
                )
    finally:
        if own_policy:
            POLICY_RC.unlink(missing_ok=True)
    if _missing_tools():
        raise SystemExit(f"bench: error: cannot find {', '.join(_missing_tools())} after install")


def _version(argv: list[str]) -> str:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    text = (cp.stdout + cp.stderr).strip().splitlines()
    return next((line.strip() for line in text if line.strip()), "?")[:100]


def tool_versions() -> dict[str, str]:
    return {
        "ab": _version(["ab", "-V"]),
        "nginx": _version(["nginx", "-v"]),
        "sockperf": _version(["sockperf", "--version"]),
        "iperf3": _version(["iperf3", "--version"]),
        "nft": _version(["nft", "--version"]),
        "iptables": _version(["iptables", "-V"]),
    }


def estimate_seconds(args: argparse.Namespace, units: int) -> float:
    """A rough duration, printed up front (sockperf sleeps ~2 s per run by itself)."""
    d: harness.Durations = args.durations
    per_unit = (d.conn + d.latency + 2 * (d.flow + 2.3) + d.flow) / 4 + 1.2
    return float(args.rounds * units * per_unit + 20 * args.setup_reps + 40)


def run(args: argparse.Namespace, clock: Clock) -> dict[str, Any]:
    """The whole benchmark; the run document (JSON-ready)."""
    units = workload.plan_units(args.counts, args.flow_counts)
    clock.log(
        f"{len(units)} measurements x {args.rounds} rounds, rule counts {args.counts} "
        f"(flows: {args.flow_counts}); about {estimate_seconds(args, len(units)) / 60:.0f} min"
    )
    started = datetime.datetime.now(datetime.UTC)
    load_start = harness.loadavg()
    samples: list[stats.Sample] = []
    calibration: list[dict[str, Any]] = []
    labmod.sweep(PREFIX_START)  # leftovers of an earlier, crashed run (not a live one)
    prefix = PREFIX_START + secrets.token_hex(2)
    workdir = Path(tempfile.mkdtemp(prefix="egress-router-bench-"))
    try:
        with harness.Harness(prefix, workdir, args.durations, clock.log) as h:
            if not args.no_calibration:
                clock.log("calibration: how fast are the clients?")
                calibration = h.calibrate()
            for round_index in range(args.rounds):
                order = workload.round_order(units, args.seed, round_index)
                for number, unit in enumerate(order, 1):
                    sample = h.measure(unit, round_index)
                    samples.append(sample)
                    if sample.error is None:
                        shown = report.fmt_value(sample.value, unit.figure.value)
                        clock.log(f"round {round_index + 1}/{args.rounds} {number}/{len(order)}"
                                  f" {unit.key}: {shown} {unit.figure.unit}"
                                  f" (load {sample.load1:.2f})")
            clock.log("setup timings with EGRESS_ROUTER_DEBUG=true")
            for _ in range(args.setup_reps):
                for path in (DataPath.NFTABLES, DataPath.IPTABLES):
                    for count in args.counts:
                        h.flush_router()
                        h.run_product(path, count, Figure.CONN, debug=True)
            if not args.no_memory:
                count = max(args.counts)
                entry = h.measure_memory(count)
                clock.log(f"memory, legacy mode, {count} rules: {entry['rss_kib'] / 1024:.1f} MiB")
                if wait_command_exists():
                    entry = h.measure_memory(count, ["wait"])
                    clock.log(f"memory, wait, {count} rules: {entry['rss_kib'] / 1024:.1f} MiB")
                else:
                    h.records.notes.append(
                        "`egress-router wait` did not exist when this run was made; only the "
                        "legacy-mode waiting process was measured.")
            records = h.records
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    finished = datetime.datetime.now(datetime.UTC)
    loads = [s.load1 for s in samples if s.load1 is not None]
    load_summary = stats.Summary.of(loads)
    doc: dict[str, Any] = {
        "schema": 1,
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": (finished - started).total_seconds(),
        "host": {
            "nproc": os.cpu_count(), "kernel": platform.release(),
            "loadavg_start": list(load_start), "loadavg_end": list(harness.loadavg()),
            "load1": dataclasses.asdict(load_summary) if load_summary else None,
        },
        "settings": {
            "command": "python -m bench data-path " + " ".join(sys.argv[1:]),
            "quick": args.quick, "rounds": args.rounds, "counts": args.counts,
            "flow_counts": args.flow_counts, "seed": args.seed,
            "durations_s": dataclasses.asdict(args.durations), "setup_reps": args.setup_reps,
            "ab": f"{harness.AB_PROCESSES} processes x concurrency {harness.AB_CONCURRENCY}, "
                  "no keep-alive",
            "pinning": "client CPU 0, servers CPU 1 (flows and latency)",
            "tools": tool_versions(),
        },
        "calibration": {"runs": calibration},
        "samples": [dataclasses.asdict(s) for s in samples],
        "init": records.init,
        "stages": records.stages,
        "upstream_apply": records.upstream_apply,
        "memory": records.memory,
        "notes": records.notes,
    }
    doc["summary"] = [dataclasses.asdict(u) for u in stats.summarize(samples)]
    doc["targets"] = [
        {**dataclasses.asdict(t), "met": t.met} for t in report.targets_from(doc)
    ]
    return doc


ABLATION_RULES = "5201 tcp 203.0.113.25\n8080 tcp 203.0.113.25\n"  # iperf3 and nginx


def run_ablation(args: argparse.Namespace, clock: Clock) -> dict[str, Any]:
    """Variants of the product's nftables ruleset, measured like the main run."""
    cfg = config.load_config({**harness.ROUTER_ENV, config.ENV_DESTINATION: ABLATION_RULES})
    texts = ablation.variants(ruleset.render_nftables(cfg))
    texts["upstream"] = upstream.render_upstream(cfg.destinations, IPv4Address(harness.SOURCE_IP))
    names = ["forward", *texts]
    clock.log(f"ablation: {', '.join(names)} x {args.rounds} rounds")
    started = datetime.datetime.now(datetime.UTC)
    samples: list[stats.Sample] = []
    prefix = PREFIX_START + secrets.token_hex(2)
    workdir = Path(tempfile.mkdtemp(prefix="egress-router-bench-"))
    try:
        with harness.Harness(prefix, workdir, args.durations, clock.log) as h:
            for round_index in range(args.rounds):
                order = names[:]
                random.Random(f"{args.seed}/ablation/{round_index}").shuffle(order)
                for name in order:
                    path = DataPath.FORWARD if name == "forward" else DataPath.NFTABLES
                    h.set_route(path)
                    if name == "forward":
                        h.flush_router()
                    else:
                        h.apply_ruleset(texts[name], name)
                    label = name if name in ("forward", "upstream") else f"nftables:{name}"
                    rules = None if name == "forward" else 1
                    host = h.target(path)
                    load1 = harness.loadavg()[0]
                    rate, _ = h.conn_rate(h.lab_handle.client, host,
                                          workload.SERVICES[Figure.CONN].port)
                    p50, p99 = h.conn_latency(host)
                    tput = h.iperf(host).bits_per_second
                    samples += [
                        stats.Sample(round_index, label, rules, Figure.CONN.value, rate,
                                     p50_us=p50, p99_us=p99, load1=load1),
                        stats.Sample(round_index, label, rules, Figure.THROUGHPUT.value, tput,
                                     load1=load1),
                    ]
                    clock.log(f"round {round_index + 1}/{args.rounds} {label}: {rate:,.0f} "
                              f"conn/s, p50 {p50:.0f} us, {tput / 1e9:.1f} Gbit/s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "schema": 1, "kind": "ablation",
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": (datetime.datetime.now(datetime.UTC) - started).total_seconds(),
        "settings": {"command": "python -m bench data-path " + " ".join(sys.argv[1:]),
                     "rounds": args.rounds, "seed": args.seed,
                     "durations_s": dataclasses.asdict(args.durations)},
        "variants": {name: ablation.VARIANTS[name][0] for name in texts
                     if name in ablation.VARIANTS},
        "rulesets": texts,
        "samples": [dataclasses.asdict(s) for s in samples],
    }


def _apply_iptables(h: harness.Harness, payloads: dict[int, str], what: str) -> None:
    """Replace the router's rules with iptables-restore payloads (after `nft flush ruleset`)."""
    h.flush_router()
    for family, payload in payloads.items():
        tool = "iptables-restore" if family == 4 else "ip6tables-restore"
        cp = labmod.run_in(h.lab_handle.router, [tool, "--noflush"], input=payload, timeout=60)
        harness._check(cp, f"apply the {what} rules")
    h.flush_conntrack()


def run_hardening(args: argparse.Namespace, clock: Clock) -> dict[str, Any]:
    """Today's ruleset against the hardened one, per backend, measured in the same rounds.

    Each backend's pair is measured back to back (today then hardened in even rounds,
    the other way round in odd ones, so that a drift of the machine's load favours
    neither), the backends in a shuffled order. Besides the rate, the CPU time the
    measured processes used per connection (`harness.CpuMeter`) is recorded: on a
    shared machine the rate follows the other tenants' load, the CPU time much less.
    """
    cfg = config.load_config({**harness.ROUTER_ENV, config.ENV_DESTINATION: ABLATION_RULES})
    nft = {"nftables:today": baseline.nftables(),
           "nftables:hardened": ruleset.render_nftables(cfg)}
    ipt = {"iptables:today": {4: baseline.iptables()},
           "iptables:hardened": {f: ruleset.render_iptables(cfg, f) for f in (4, 6)}}
    names = [*nft, *ipt]
    clock.log(f"hardening: {', '.join(names)} x {args.rounds} rounds")
    started = datetime.datetime.now(datetime.UTC)
    load_start = harness.loadavg()
    samples: list[stats.Sample] = []
    prefix = PREFIX_START + secrets.token_hex(2)
    workdir = Path(tempfile.mkdtemp(prefix="egress-router-bench-"))
    try:
        with harness.Harness(prefix, workdir, args.durations, clock.log) as h:
            h.set_route(DataPath.NFTABLES)
            for round_index in range(args.rounds):
                backends = ["nftables", "iptables"]
                random.Random(f"{args.seed}/hardening/{round_index}").shuffle(backends)
                pair = ["today", "hardened"] if round_index % 2 == 0 else ["hardened", "today"]
                for name in [f"{b}:{v}" for b in backends for v in pair]:
                    if name in nft:
                        h.apply_ruleset(nft[name], name)
                    else:
                        _apply_iptables(h, ipt[name], name)
                    host = h.target(DataPath.NFTABLES)
                    load1 = harness.loadavg()[0]
                    with h.cpu_meter() as cpu:
                        rate, detail = h.conn_rate(h.lab_handle.client, host,
                                                   workload.SERVICES[Figure.CONN].port)
                    cpu_us = cpu.seconds * 1e6 / max(1, detail["requests"])
                    p50, p99 = h.conn_latency(host)
                    samples.append(stats.Sample(
                        round_index, name, 1, Figure.CONN.value, rate, p50_us=p50, p99_us=p99,
                        load1=load1, detail={**detail, "cpu_us_per_conn": cpu_us}))
                    clock.log(f"round {round_index + 1}/{args.rounds} {name}: {rate:,.0f} "
                              f"conn/s, {cpu_us:.0f} us CPU per connection, p50 {p50:.0f} us "
                              f"(load {load1:.2f})")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "schema": 1, "kind": "hardening",
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": (datetime.datetime.now(datetime.UTC) - started).total_seconds(),
        "host": {"nproc": os.cpu_count(), "kernel": platform.release(),
                 "loadavg_start": list(load_start), "loadavg_end": list(harness.loadavg())},
        "settings": {"command": "python -m bench data-path " + " ".join(sys.argv[1:]),
                     "rounds": args.rounds, "seed": args.seed,
                     "durations_s": dataclasses.asdict(args.durations),
                     "ab": f"{harness.AB_PROCESSES} processes x concurrency "
                           f"{harness.AB_CONCURRENCY}, no keep-alive"},
        "rulesets": {**nft, **{k: "".join(v.values()) for k, v in ipt.items()}},
        "samples": [dataclasses.asdict(s) for s in samples],
    }


HARDENING_TARGET = 0.95  # the hardened path costs at most 5% of today's new-connection rate


def _fmt_spread(values: Sequence[float]) -> str:
    median, q1, q3, low, high = stats.spread(values)
    return f"{median:.3f} (IQR {q1:.3f}-{q3:.3f}, range {low:.3f}-{high:.3f})"


def render_hardening(doc: dict[str, Any]) -> str:
    """Per backend: hardened / today new-connection rate and CPU cost, per round and median."""
    by: dict[tuple[str, int], dict[str, Any]] = {
        (s["path"], s["round"]): s for s in doc["samples"] if s.get("value")
    }
    rows = []
    for backend in ("nftables", "iptables"):
        today_key, hard_key = f"{backend}:today", f"{backend}:hardened"
        rounds = sorted(r for (path, r) in by if path == today_key and (hard_key, r) in by)
        if not rounds:
            continue
        ratios = [by[(hard_key, r)]["value"] / by[(today_key, r)]["value"] for r in rounds]
        cpu = [by[(today_key, r)]["detail"]["cpu_us_per_conn"]
               / by[(hard_key, r)]["detail"]["cpu_us_per_conn"]
               for r in rounds if by[(today_key, r)].get("detail", {}).get("cpu_us_per_conn")
               and by[(hard_key, r)].get("detail", {}).get("cpu_us_per_conn")]
        today = stats.spread([by[(today_key, r)]["value"] for r in rounds])[0]
        hardened = stats.spread([by[(hard_key, r)]["value"] for r in rounds])[0]
        verdict = "met" if stats.spread(ratios)[0] >= HARDENING_TARGET else "MISSED"
        rows.append(f"| {backend} | {len(rounds)} | {today:,.0f} | {hardened:,.0f} | "
                    f"{_fmt_spread(ratios)} | {_fmt_spread(cpu) if cpu else '-'} | {verdict} |")
    settings = doc.get("settings", {})
    host = doc.get("host", {})
    loads = [s["load1"] for s in doc["samples"] if s.get("load1") is not None]
    load_text = ""
    if loads:
        median, _q1, _q3, low, high = stats.spread(loads)
        load_text = (f"Load average (1 min) during the samples: median {median:.2f}, "
                     f"{low:.2f}-{high:.2f}")
        if host.get("loadavg_start"):
            load_text += (f"; at the start {' '.join(f'{v:.2f}' for v in host['loadavg_start'])}"
                          f", at the end {' '.join(f'{v:.2f}' for v in host['loadavg_end'])}")
        load_text += f" ({host.get('nproc', '?')} CPUs).\n\n"
    return (
        f"# Price of the data-path hardening ({doc.get('started', '?')}, "
        f"{settings.get('rounds', '?')} rounds, {doc.get('duration_s', 0):.0f} s)\n\n"
        f"Command: `{settings.get('command', '?')}`\n\n"
        "New connections per second (connect, one HTTP request, close; `ab`, "
        f"{settings.get('ab', '?')}) through the router with today's ruleset "
        "(`bench/baseline.py`) and the hardened one (direction-bound forward accepts, "
        "reverse-path check, egress source guard, HTTP port rules). Each backend's two "
        "rulesets are measured back to back in every round, in alternating order; a ratio "
        "compares the two of the same round: hardened / today for the rate, today / hardened "
        "for the CPU time the client, the server and the softirq threads used per connection "
        "(below 1: the hardened path is dearer). Median, interquartile range and range over "
        "the rounds. Target: rate ratio >= 0.95 (at most 5% slower).\n\n"
        + load_text +
        "| backend | rounds | today conn/s (median) | hardened conn/s (median) | "
        "rate hardened / today | CPU per connection today / hardened | target |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


def wait_command_exists() -> bool:
    cp = subprocess.run([sys.executable, "-m", "egress_router", "wait", "--help"],
                        capture_output=True, text=True, timeout=30, check=False,
                        env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    return cp.returncode == 0


def _extra_outputs(doc: dict[str, Any], update_readme: bool) -> Callable[[Path], list[Path]]:
    """The chart (and the README's summary) beside results.json and results.md."""

    def write(out: Path) -> list[Path]:
        report.plot(doc, out / "conn_rate.png")
        written = [out / "conn_rate.png"]
        if update_readme:
            text = README.read_text(encoding="utf-8")
            README.write_text(report.replace_between_markers(text, report.render_summary(doc)),
                              encoding="utf-8")
            written.append(README)
        return written

    return write


def _prepare(args: argparse.Namespace, clock: Clock) -> None:
    """Root, the tools, the nf_tables iptables: refuse to start without them."""
    problem = labmod.check_host()
    if problem is not None:
        raise harness.BenchError(f"cannot run the benchmark: {problem}")
    ensure_tools(not args.no_install, clock.log)
    if "nf_tables" not in _version(["iptables", "-V"]):
        raise harness.BenchError(
            "cannot run the benchmark: iptables is not the nf_tables variant "
            "(the router namespace is reset with `nft flush ruleset`)"
        )


def run_data_path(args: argparse.Namespace) -> results.Outcome:
    """The main run: every path, rule count and figure against plain forwarding."""
    args = _settle(args)
    clock = Clock()
    if args.render is not None:
        doc = json.loads(args.render.read_text(encoding="utf-8"))
        args.out = args.out or args.render.parent
    else:
        _prepare(args, clock)
        with harness.terminating_on_signals():
            doc = run(args, clock)
    return results.Outcome("results", doc, report.render_markdown(doc),
                           also=_extra_outputs(doc, args.update_readme))


def _suite(
    args: argparse.Namespace,
    name: str,
    measure: Callable[[argparse.Namespace, Clock], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
) -> results.Outcome:
    args = _settle(args)
    clock = Clock()
    _prepare(args, clock)
    with harness.terminating_on_signals():
        doc = measure(args, clock)
    return results.Outcome(name, doc, render(doc))


def run_ablation_suite(args: argparse.Namespace) -> results.Outcome:
    """The product's nftables ruleset with parts removed, against upstream and forwarding."""
    return _suite(args, "ablation", run_ablation, report.render_ablation)


def run_hardening_suite(args: argparse.Namespace) -> results.Outcome:
    """Today's ruleset (bench/golden/baseline.*) against the hardened one, both backends."""
    return _suite(args, "hardening", run_hardening, render_hardening)
