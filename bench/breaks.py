"""``python -m bench breaks --baseline SRC``: the figures of issue 18, this tree against another.

Two measurements, each made with the package at ``SRC`` (the ``src`` folder of
another checkout, e.g. ``git worktree add /tmp/base main``) and with this one,
alternating ``--rounds`` times in one lab (on a busy machine only such
side-by-side figures mean anything):

* drift windows: a one-rule router with the default announcements (3 rounds a
  second apart) and the default 10 s periodic check; for every kind of drift
  (table, route, address, link down, forwarding off) a change made 1 s after
  ``/readyz`` first answered 200 ("right after start") and again 8 s later
  ("later"): seconds until a connection through the router works again;
* drifts in a row (table, route, address, policy rule, link down, forwarding off, as
  the integration test makes them), each as soon as traffic flowed again after the one
  before: an address or link repair announces again (3 rounds, 1 s apart), and a drift
  during those rounds used to wait for them (link down and forwarding off: 1.7-2.1 s);
* a flood on the HTTP port: 1,500 connections from the client pod sending their
  request one byte a second for 12 s, with a control (the same 12 s without the
  flood): the wait process's most threads and most RSS, and the slowest and
  median ``/readyz`` answer (a probe every 0.1 s, as a kubelet asks).

Results go to ``bench/results/breaks.json`` and ``breaks.md`` (``--name``). Needs root; not
in CI.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import results, stats
from bench.wait import ROUTER4, TAMPERS, ConfigMap, Prober, Router, in_router, log
from egress_router.lab import world as labmod

DRIFT_KINDS = tuple(k for k in TAMPERS)  # table, route, address, link, forwarding
ONE_RULE = {
    "EGRESS_SOURCE": "192.168.12.99/24",
    "EGRESS_GATEWAY": "192.168.12.1",
    "EGRESS_ANNOUNCE_COUNT": "3",
    "EGRESS_ANNOUNCE_INTERVAL": "1",
}
FLOOD = r"""
import resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
host, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
request = b"GET /metrics HTTP/1.0\r\nHost: router\r\n\r\n"
conns, end = [], time.monotonic() + seconds
while time.monotonic() < end:
    while len(conns) < count:
        s = socket.socket(); s.setblocking(False)
        try:
            s.connect_ex((host, 9090))
        except OSError:
            s.close(); break
        conns.append([s, 0])
    alive = []
    for s, sent in conns:
        try:
            s.send(request[sent:sent + 1]); alive.append([s, sent + 1])
        except (BlockingIOError, InterruptedError):
            alive.append([s, sent])
        except OSError:
            s.close()
    conns = alive
    time.sleep(1.0)
"""
PROBES = r"""
import sys, time, urllib.request, urllib.error
end, took, bad = time.monotonic() + float(sys.argv[2]), [], 0
while time.monotonic() < end:
    started = time.monotonic()
    try:
        code = urllib.request.urlopen(sys.argv[1], timeout=10).status
    except urllib.error.HTTPError as e:
        code = e.code
    except OSError:
        code = 0
    took.append(time.monotonic() - started); bad += code != 200
    time.sleep(0.1)
print(len(took), bad, max(took), sorted(took)[len(took) // 2], flush=True)
"""


def _status(pid: int) -> tuple[int, int]:
    """Threads and VmRSS (KiB) of a process."""
    threads = rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            threads = int(line.split()[1])
        elif line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return threads, rss


def drift_windows(lab: labmod.Lab, probe: Prober, root: Path,
                  extra: dict[str, str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for index, kind in enumerate(DRIFT_KINDS):
        (root / str(index)).mkdir(parents=True)
        cm = ConfigMap(root / str(index), "80 tcp 203.0.113.25\n")
        router = Router(lab, {**ONE_RULE, "EGRESS_DESTINATION_FILE": str(cm.path), **extra})
        try:
            probe.ask("ready")
            out[kind] = {}
            for when, pause in (("right after start", 1.0), ("later", 8.0)):
                time.sleep(pause)
                started = time.monotonic()
                for argv in TAMPERS[kind]:
                    in_router(lab, *argv)
                answer = probe.ask("reach 80")
                out[kind][when] = (float(answer[1]) - started if answer[0] == "ok"
                                   else float("inf"))
                log(f"drift {kind}, {when}: traffic again after {out[kind][when]:.2f}s")
        finally:
            router.terminate()
    return out


SEQUENCE: dict[str, list[list[str]]] = {
    "table deleted": TAMPERS["table deleted"],
    "default route deleted": TAMPERS["default route deleted"],
    "address deleted": TAMPERS["address deleted"],
    "policy rule deleted": [["ip", "rule", "del", "priority", "25970"]],
    "link set down": TAMPERS["link set down"],
    "forwarding off": TAMPERS["forwarding off"],
}


def drift_sequence(lab: labmod.Lab, probe: Prober, root: Path,
                   extra: dict[str, str]) -> dict[str, float]:
    root.mkdir(parents=True)
    cm = ConfigMap(root, "80 tcp 203.0.113.25\n")
    router = Router(lab, {**ONE_RULE, "EGRESS_DESTINATION_FILE": str(cm.path), **extra})
    out: dict[str, float] = {}
    try:
        probe.ask("ready")
        time.sleep(3.0)  # past the start-up announcements
        for kind, commands in SEQUENCE.items():
            started = time.monotonic()
            for argv in commands:
                in_router(lab, *argv)
            answer = probe.ask("reach 80")
            out[kind] = float(answer[1]) - started if answer[0] == "ok" else float("inf")
            log(f"drift in a row, {kind}: traffic again after {out[kind]:.2f}s")
    finally:
        router.terminate()
    return out


def flood(lab: labmod.Lab, probe: Prober, root: Path, extra: dict[str, str],
          connections: int) -> dict[str, dict[str, float]]:
    root.mkdir(parents=True)
    cm = ConfigMap(root, "80 tcp 203.0.113.25\n")
    router = Router(lab, {**ONE_RULE, "EGRESS_DESTINATION_FILE": str(cm.path), **extra})
    out: dict[str, dict[str, float]] = {}
    try:
        probe.ask("ready")
        probe.ask("scrape")
        for case, count in (("control (no flood)", 0), (f"flood of {connections}", connections)):
            flooder = (subprocess.Popen(["ip", "netns", "exec", lab.client, sys.executable,
                                         "-c", FLOOD, ROUTER4, str(count), "12"])
                       if count else None)
            prober = subprocess.Popen(
                ["ip", "netns", "exec", lab.client, sys.executable, "-c", PROBES,
                 f"http://{ROUTER4}:9090/readyz", "12"], stdout=subprocess.PIPE, text=True)
            threads, rss = 0, 0
            for _ in range(24):
                t, r = _status(router.pid())
                threads, rss = max(threads, t), max(rss, r)
                time.sleep(0.5)
            answers, _ = prober.communicate(timeout=60)
            if flooder is not None:
                flooder.kill()
                flooder.wait()
            n, bad, worst, median = answers.split()
            reach = probe.ask("reach 80")[0]
            out[case] = {"threads_max": threads, "rss_max_mib": rss / 1024,
                         "readyz_answers": int(n), "readyz_not_200": int(bad),
                         "readyz_slowest_s": float(worst), "readyz_median_s": float(median),
                         "traffic_after": reach == "ok"}
            log(f"{case}: {out[case]}")
    finally:
        router.terminate()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    prefix = "wk" + secrets.token_hex(3)[:5]
    lab = labmod.up(prefix)
    tmp = Path(tempfile.mkdtemp(prefix="bench-breaks-"))
    trees = {"baseline": {"PYTHONPATH": str(args.baseline.resolve())}, "this tree": {}}
    doc: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "load": os.getloadavg()},
        "baseline": str(args.baseline), "rounds": args.rounds,
        "drift_s": {name: [] for name in trees}, "flood": {name: [] for name in trees},
        "sequence_s": {name: [] for name in trees},
    }
    probe = Prober(lab)
    try:
        for round_ in range(args.rounds):
            for name, extra in trees.items():
                label = f"{name.replace(' ', '-')}-{round_}"
                if "drift" in args.cases:
                    doc["drift_s"][name].append(
                        drift_windows(lab, probe, tmp / f"drift-{label}", extra))
                if "sequence" in args.cases:
                    doc["sequence_s"][name].append(
                        drift_sequence(lab, probe, tmp / f"sequence-{label}", extra))
                if "flood" in args.cases:
                    doc["flood"][name].append(
                        flood(lab, probe, tmp / f"flood-{label}", extra, args.connections))
        doc["host"]["load_end"] = os.getloadavg()
    finally:
        probe.close()
        labmod.down(prefix)
    return doc


def markdown(doc: dict[str, Any]) -> str:
    trees = list(doc["drift_s"])
    lines = [f"# Issue 18's figures, this tree against {doc['baseline']} ({doc['when']})", "",
             f"Host: {doc['host']['cpus']} CPUs, kernel {doc['host']['kernel']}, load "
             f"{doc['host']['load'][0]:.1f} at start, {doc['host'].get('load_end', [0])[0]:.1f} "
             f"at the end; {doc['rounds']} round(s), alternating. Command: "
             "`python -m bench breaks --baseline SRC`.", ""]
    if any(doc["drift_s"].values()):
        lines += ["## Drift: seconds until traffic flows again (median of the rounds)", "",
                  "| drift | when | " + " | ".join(trees) + " |",
                  "|---|---|" + "---|" * len(trees)]
        for kind in DRIFT_KINDS:
            for when in ("right after start", "later"):
                cells = [stats.median(r[kind][when] for r in doc["drift_s"][t])
                         for t in trees]
                lines.append(f"| {kind} | {when} | " + " | ".join(f"{c:.2f}" for c in cells)
                             + " |")
        lines.append("")
    if any(doc.get("sequence_s", {}).values()):
        lines += ["## Drifts in a row: seconds until traffic flows again (median of the rounds)",
                  "", "| drift | " + " | ".join(trees) + " |", "|---|" + "---|" * len(trees)]
        for kind in SEQUENCE:
            cells = [stats.median(r[kind] for r in doc["sequence_s"][t]) for t in trees]
            lines.append(f"| {kind} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
        lines.append("")
    if any(doc["flood"].values()):
        lines += ["## HTTP port under a flood of slow connections (worst of the rounds)", "",
                  "| tree | case | threads (max) | RSS MiB (max) | /readyz answered | not 200 "
                  "| slowest | median | traffic |", "|---|---|---|---|---|---|---|---|---|"]
        for tree in trees:
            for case in doc["flood"][tree][0]:
                rows = [r[case] for r in doc["flood"][tree]]
                lines.append(
                    f"| {tree} | {case} | {max(r['threads_max'] for r in rows)} | "
                    f"{max(r['rss_max_mib'] for r in rows):.1f} | "
                    f"{sum(r['readyz_answers'] for r in rows)} | "
                    f"{sum(r['readyz_not_200'] for r in rows)} | "
                    f"{max(r['readyz_slowest_s'] for r in rows) * 1000:.0f} ms | "
                    f"{stats.median(r['readyz_median_s'] for r in rows) * 1000:.0f} ms | "
                    f"{'ok' if all(r['traffic_after'] for r in rows) else 'FAILED'} |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", type=Path, default=None, metavar="SRC",
                        help="the src folder of another checkout, measured side by side")
    parser.add_argument("--rounds", type=int, default=1, metavar="N")
    parser.add_argument("--cases", default="drift,sequence,flood", metavar="LIST",
                        help="comma-separated: drift, sequence, flood (default: all)")
    parser.add_argument("--connections", type=int, default=1500, metavar="N",
                        help="slow connections of the flood (default 1,500)")
    parser.add_argument("--name", default="breaks", help="results file name (default: breaks)")


def run_suite(args: argparse.Namespace) -> results.Outcome:
    args.cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    if unknown := sorted(args.cases - {"drift", "sequence", "flood"}):
        raise SystemExit(f"python -m bench breaks: error: cannot run case(s) "
                         f"{', '.join(unknown)}: choose from drift, sequence, flood")
    if args.baseline is None or not (args.baseline / "egress_router").is_dir():
        raise SystemExit("python -m bench breaks: error: cannot compare: give --baseline SRC, "
                         "a folder holding egress_router")
    doc = run(args)
    return results.Outcome(args.name, doc, markdown(doc))
