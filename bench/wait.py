"""``python -m bench wait``: ``egress-router wait`` at 10,000 rules, in the lab.

Measures the figures of issue 10 against a router holding 10,000 rules (and
optionally as many live connections as asked), and writes them to
``bench/results/wait.json`` and ``wait.md``:

* edits of every kind (replace, re-target, remove, add 10,000 rules) with live
  connections on the removed rules: seconds until applied and cut, one right
  after the other (from the router's own log lines, read as they arrive);
* SIGTERM: seconds to exit (and the exit status) when idle, during an apply
  of 10,000 rules, during a cut, during the start-up announcements;
* drift: seconds from a change made behind the router's back (table, route,
  address, policy rule, link down, forwarding off) until a connection through
  it succeeds again (or, for the policy rule, until it is back);
* probes: the slowest ``/readyz`` and ``/healthz`` answer while edits and
  announcements run; a one-rule router's seconds from start to ready, with no
  DNS reachable;
* scrapes: CPU seconds of the router process per ``/metrics`` scrape with
  10,000 rules and the live connections; peak RSS (VmHWM) after all of it;
* standby takeover: seconds from the active instance's exit until the standby
  holds the lock.

Needs root (network namespaces). A run takes about two minutes; not in CI.

``--only edits,startup`` runs just those cases (the edits at 10,000 rules, the
one-rule start-up), and ``--baseline SRC`` runs them twice in the same lab,
first with the package at ``SRC`` (the ``src`` folder of another checkout,
e.g. ``git worktree add /tmp/base main``), then with this one, alternating
``--rounds`` times: ratios measured side by side, written to
``wait-compare.json`` / ``wait-compare.md``. Without ``--baseline``, ``--cases``
picks cases of the full run (one, edits, scrapes, drift, sigterm, standby; the
10,000-rule start and the peak RSS always), ``--name`` the results' file name.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

from bench import results, stats
from egress_router.lab import world as labmod

REPO = Path(__file__).resolve().parent.parent
ROUTER4 = "10.128.0.2"
RULES = 10_000
CASES = ("one", "edits", "scrapes", "drift", "sigterm", "standby")
BASE = {
    "EGRESS_SOURCE": "192.168.12.99/24",
    "EGRESS_GATEWAY": "192.168.12.1",
    "EGRESS_ANNOUNCE_INTERVAL": "0.2",
    "EGRESS_ANNOUNCE_COUNT": "2",
    "EGRESS_ROUTER_WATCH_SECONDS": "0.2",
}

# Runs in the client pod: answers commands on stdin, one line each (times are
# CLOCK_MONOTONIC, shared by every process of the machine).
PROBER = r"""
import socket, sys, time, urllib.request, threading
held = []
def connect(port, timeout=0.2):
    s = socket.socket(); s.settimeout(timeout)
    try:
        s.connect((ROUTER, port)); return s
    except OSError:
        s.close(); return None
def get(path):
    started = time.monotonic()
    try:
        code = urllib.request.urlopen(f"http://{ROUTER}:9090{path}", timeout=5).status
    except Exception as e:
        code = getattr(e, "code", 0)
    return code, time.monotonic() - started
for line in sys.stdin:
    words = line.split()
    if words[0] == "reach":  # retry until a connection through the router works
        port, deadline = int(words[1]), time.monotonic() + 20
        while time.monotonic() < deadline:
            s = connect(port)
            if s is not None:
                s.close(); break
            time.sleep(0.01)
        print("ok" if time.monotonic() < deadline else "fail", time.monotonic(), flush=True)
    elif words[0] == "hold":  # open connections to ports [a, b) and keep them
        a, b = int(words[1]), int(words[2])
        for port in range(a, b):
            s = connect(port, 2.0)
            if s is not None:
                held.append(s)
        print("held", len(held), flush=True)
    elif words[0] == "drop":
        for s in held: s.close()
        held.clear(); print("dropped", flush=True)
    elif words[0] == "udp":  # n flows (distinct source ports) to one redirected UDP port
        n, port, sent = int(words[1]), int(words[2]), 0
        for i in range(n):
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                u.bind(("", 1024 + i)); u.sendto(b"x", (ROUTER, port)); sent += 1
            except OSError:
                pass
            u.close()
        print("sent", sent, flush=True)
    elif words[0] == "watch":  # GET paths for seconds: the slowest answer, non-200 count
        until = time.monotonic() + float(words[1]); worst = {}; bad = 0; n = 0
        while time.monotonic() < until:
            for path in ("/readyz", "/healthz"):
                code, took = get(path); n += 1
                worst[path] = max(worst.get(path, 0.0), took); bad += code != 200
            time.sleep(0.02)
        print("watched", n, bad, worst.get("/readyz", 0), worst.get("/healthz", 0), flush=True)
    elif words[0] == "ready":  # seconds from now until /readyz says 200
        started, deadline = time.monotonic(), time.monotonic() + 20
        while time.monotonic() < deadline and get("/readyz")[0] != 200:
            time.sleep(0.01)
        print("ready", time.monotonic(), flush=True)
    elif words[0] == "scrape":
        code, took = get("/metrics"); print("scraped", code, took, flush=True)
""".replace("ROUTER", repr(ROUTER4))


def log(text: str) -> None:
    print(f"bench.wait: {text}", file=sys.stderr, flush=True)


def rules_text(first: int, address: str, extra: str = "") -> str:
    lines = ["80 tcp 203.0.113.25", "53 udp 203.0.113.25"]
    lines += [f"{first + i} tcp {address} 80" for i in range(RULES)] if first else []
    return "\n".join(lines) + "\n" + extra


class ConfigMap:
    """A directory as the kubelet mounts a ConfigMap, edited by the ``..data`` swap."""

    def __init__(self, root: Path, text: str) -> None:
        self.root, self.edits = root, 0
        self.write(text)
        (root / "destinations").symlink_to("..data/destinations")

    @property
    def path(self) -> Path:
        return self.root / "destinations"

    def write(self, text: str) -> float:
        self.edits += 1
        version = self.root / f"..{self.edits}"
        version.mkdir()
        (version / "destinations").write_text(text)
        (self.root / "..data_tmp").symlink_to(version.name)
        os.replace(self.root / "..data_tmp", self.root / "..data")
        return time.monotonic()


class Router:
    """``egress-router wait`` in the router pod, its log lines timed as they arrive."""

    def __init__(self, lab: labmod.Lab, env: dict[str, str]) -> None:
        self.proc = labmod.spawn_router(lab, env, args=["wait"])
        self.started = time.monotonic()
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append((time.monotonic(), line.rstrip()))

    def wait_line(self, pattern: str, after: float, timeout: float = 30) -> tuple[float, str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for at, line in self.lines:
                    if at >= after and regex.search(line):
                        return at, line
            if self.proc.poll() is not None:
                break
            time.sleep(0.005)
        tail = "\n".join(line for _, line in self.lines[-10:])
        raise RuntimeError(f"no log line /{pattern}/ within {timeout:g}s; last lines:\n{tail}")

    def terminate(self) -> tuple[float, int]:
        """SIGTERM: seconds until it exited, and its exit status."""
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
            return 10.0, code
        return time.monotonic() - sent, code

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid()}/stat").read_text().rsplit(")", 1)[1].split()
        # utime + stime + its waited-for children's (nft, ip, the pyroute2 helper)
        return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def hwm_kib(self) -> int:
        status = Path(f"/proc/{self.pid()}/status").read_text()
        found = re.search(r"VmHWM:\s+(\d+) kB", status)
        return int(found.group(1)) if found else 0

    def pid(self) -> int:
        # ip netns exec execs the command: the child keeps the pid.
        return self.proc.pid


class Prober:
    def __init__(self, lab: labmod.Lab) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.client, sys.executable, "-u", "-c", PROBER],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def ask(self, command: str) -> list[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().split()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def in_router(lab: labmod.Lab, *argv: str) -> str:
    done = labmod.run_in(lab.router, list(argv), timeout=30)
    return done.stdout


def measure_edits(router: Router, cm: ConfigMap, probe: Prober) -> list[dict[str, Any]]:
    steps = [
        ("replace 10,000 rules (new ports)", rules_text(20000, "203.0.113.26"), (10000, 10200)),
        ("re-target 10,000 rules", rules_text(20000, "203.0.113.25"), (20000, 20200)),
        ("remove 10,000 rules", rules_text(0, ""), (20000, 20200)),
        ("add 10,000 rules", rules_text(10000, "203.0.113.25"), None),
        ("replace again, right after", rules_text(30000, "203.0.113.26"), (10000, 10200)),
    ]
    out = []
    for what, text, hold in steps:
        held = int(probe.ask(f"hold {hold[0]} {hold[1]}")[1]) if hold else 0
        cpu = router.cpu()
        written = cm.write(text)
        applied, _line = router.wait_line(r"edit applied \(generation", written, 30)
        entry: dict[str, Any] = {"edit": what, "held": held, "applied_s": applied - written,
                                 "cpu_s": router.cpu() - cpu}
        if held:
            cut_at, cut_line = router.wait_line(r"cut \d+ connection", written, 30)
            entry["cut"] = int(re.search(r"cut (\d+)", cut_line).group(1))  # type: ignore[union-attr]
            entry["applied_and_cut_s"] = cut_at - written
        probe.ask("drop")
        log(f"edit: {entry}")
        out.append(entry)
    return out


TAMPERS: dict[str, list[list[str]]] = {
    "table deleted": [["nft", "delete", "table", "inet", "egress_router"]],
    "default route deleted": [["ip", "route", "del", "default"]],
    "address deleted": [["ip", "address", "del", "192.168.12.99/24", "dev", "macvlan0"]],
    "link set down": [["ip", "link", "set", "macvlan0", "down"]],
    "forwarding off": [["sysctl", "-qw", "net.ipv4.ip_forward=0"]],
}


def measure_drift(lab: labmod.Lab, probe: Prober) -> dict[str, float]:
    out: dict[str, float] = {}
    for kind, commands in TAMPERS.items():
        assert probe.ask("reach 80")[0] == "ok"
        time.sleep(1.0)
        started = time.monotonic()
        for argv in commands:
            in_router(lab, *argv)
        answer = probe.ask("reach 80")
        out[kind] = float(answer[1]) - started if answer[0] == "ok" else float("inf")
        log(f"drift: {kind}: traffic again after {out[kind]:.2f}s")
    # A policy rule does not carry the client's own traffic: time its return instead.
    time.sleep(1.0)
    started = time.monotonic()
    in_router(lab, "ip", "rule", "del", "priority", "25970")
    while "25970" not in in_router(lab, "ip", "rule", "show", "priority", "25970"):
        if time.monotonic() - started > 20:
            break
        time.sleep(0.01)
    out["policy rule deleted (back in place)"] = time.monotonic() - started
    log(f"drift: policy rule back after {out['policy rule deleted (back in place)']:.2f}s")
    return out


def measure_scrapes(router: Router, probe: Prober, count: int = 10) -> dict[str, float]:
    probe.ask("scrape")
    before = router.cpu()
    worst = 0.0
    for _ in range(count):
        worst = max(worst, float(probe.ask("scrape")[2]))
    return {"cpu_s_per_scrape": (router.cpu() - before) / count, "slowest_scrape_s": worst}


def run(args: argparse.Namespace) -> dict[str, Any]:
    prefix = "wb" + secrets.token_hex(3)[:5]
    lab = labmod.up(prefix)
    doc: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                 "load": os.getloadavg()},
        "rules": RULES,
        "cases": list(args.cases),
    }
    tmp = Path(tempfile.mkdtemp(prefix="bench-wait-"))
    probe = Prober(lab)
    routers: list[Router] = []
    try:
        # Probes and readiness of a one-rule router, no DNS reachable from the router pod.
        if "one" in args.cases:
            (tmp / "one").mkdir()
            one = ConfigMap(tmp / "one", "80 tcp 203.0.113.25\n")
            router = Router(lab, {**BASE, "EGRESS_DESTINATION_FILE": str(one.path),
                                  "EGRESS_ANNOUNCE_COUNT": "3", "EGRESS_ANNOUNCE_INTERVAL": "1"})
            ready_at = float(probe.ask("ready")[1])
            doc["one_rule_ready_s"] = ready_at - router.started
            time.sleep(0.3)  # in the middle of the start-up announcements (3 rounds, 1 s apart)
            doc["sigterm_during_announcements"] = router.terminate()
            log(f"one rule: ready after {doc['one_rule_ready_s']:.2f}s; SIGTERM during "
                f"announcements: {doc['sigterm_during_announcements']}")

        (tmp / "big").mkdir()
        cm = ConfigMap(tmp / "big", rules_text(10000, "203.0.113.25"))
        env = {**BASE, "EGRESS_DESTINATION_FILE": str(cm.path)}
        router = Router(lab, env)
        routers.append(router)
        ready_at = float(probe.ask("ready")[1])
        doc["start_10000_ready_s"] = ready_at - router.started
        log(f"10,000 rules: ready after {doc['start_10000_ready_s']:.2f}s")

        if "edits" in args.cases:
            # Probes while edits run (a watcher of its own, beside the prober).
            watcher = Prober(lab)
            watch_result: list[str] = []
            thread = threading.Thread(target=lambda: watch_result.extend(watcher.ask("watch 25")))
            thread.start()
            doc["edits"] = measure_edits(router, cm, probe)
            thread.join()
            watcher.close()
            doc["probes_during_edits"] = {
                "requests": int(watch_result[1]), "not_200": int(watch_result[2]),
                "slowest_readyz_s": float(watch_result[3]),
                "slowest_healthz_s": float(watch_result[4]),
            }
            log(f"probes during edits: {doc['probes_during_edits']}")

        if "scrapes" in args.cases:
            sent = int(probe.ask(f"udp {args.connections} 53")[1])
            count = in_router(lab, "cat", "/proc/sys/net/netfilter/nf_conntrack_count").strip()
            doc["conntrack_entries"] = int(count)
            doc["scrape"] = measure_scrapes(router, probe)
            log(f"scrapes with {count} entries ({sent} sent): {doc['scrape']}")
        if "drift" in args.cases:
            doc["drift_s"] = measure_drift(lab, probe)
        doc["peak_rss_mib"] = router.hwm_kib() / 1024
        log(f"peak RSS: {doc['peak_rss_mib']:.1f} MiB")

        if "sigterm" in args.cases:
            # SIGTERM: idle, during an apply, during a cut; standby takeover.
            doc["sigterm_idle"] = router.terminate()
            routers.remove(router)
            router = Router(lab, env)
            probe.ask("ready")
            written = cm.write(rules_text(40000, "203.0.113.26"))
            router.wait_line(r"changed: applying", written, 10)
            doc["sigterm_during_apply"] = router.terminate()
            router = Router(lab, env)
            probe.ask("ready")
            probe.ask("hold 40000 40200")
            written = cm.write(rules_text(10000, "203.0.113.25"))
            router.wait_line(r"edit applied", written, 30)
            doc["sigterm_during_cut"] = router.terminate()
            probe.ask("drop")
            log(f"SIGTERM idle {doc['sigterm_idle']}, apply {doc['sigterm_during_apply']}, "
                f"cut {doc['sigterm_during_cut']}")

        if "standby" in args.cases:
            if router in routers:  # still running (no sigterm case): it would be the active one
                router.terminate()
                routers.remove(router)
            active = Router(lab, env)
            routers.append(active)
            probe.ask("ready")
            standby = Router(lab, env)
            routers.append(standby)
            standby.wait_line("standing by", standby.started, 10)
            sent = time.monotonic()
            doc["active_exit"] = active.terminate()
            at, _line = standby.wait_line("taking over", sent, 10)
            doc["takeover_s"] = at - sent  # from SIGTERM: includes the active one's exit
            ready_at = float(probe.ask("ready")[1])
            doc["takeover_ready_s"] = ready_at - sent
            log(f"standby: lock after {doc['takeover_s']:.3f}s, ready after "
                f"{doc['takeover_ready_s']:.2f}s (10,000 rules applied)")
        doc["host"]["load_end"] = os.getloadavg()
    finally:
        for r in routers:
            if r.proc.poll() is None:
                r.terminate()
        probe.close()
        labmod.down(prefix)
    return doc


def measure_startup(lab: labmod.Lab, probe: Prober, root: Path, extra: dict[str, str]) -> float:
    """Seconds from the start of a one-rule router until /readyz says 200 (no DNS)."""
    root.mkdir(parents=True)
    one = ConfigMap(root, "80 tcp 203.0.113.25\n")
    router = Router(lab, {**BASE, "EGRESS_DESTINATION_FILE": str(one.path),
                          "EGRESS_ANNOUNCE_COUNT": "3", "EGRESS_ANNOUNCE_INTERVAL": "1", **extra})
    try:
        return float(probe.ask("ready")[1]) - router.started
    finally:
        router.terminate()


def cold_startup(root: Path, extra: dict[str, str]) -> tuple[float, float]:
    """`measure_startup` in a lab of its own: a fresh pod, as in the full run; then again in
    the same pod (its links, addresses and routes in place, as after an init container)."""
    prefix = "wc" + secrets.token_hex(3)[:5]
    lab = labmod.up(prefix)
    probe = Prober(lab)
    try:
        return (measure_startup(lab, probe, root / "cold", extra),
                measure_startup(lab, probe, root / "warm", extra))
    finally:
        probe.close()
        labmod.down(prefix)


def measure_edits_only(
    lab: labmod.Lab, probe: Prober, root: Path, extra: dict[str, str]
) -> list[dict[str, Any]]:
    root.mkdir()
    cm = ConfigMap(root, rules_text(10000, "203.0.113.25"))
    router = Router(lab, {**BASE, "EGRESS_DESTINATION_FILE": str(cm.path), **extra})
    try:
        probe.ask("ready")
        time.sleep(6.0)  # past the start-up's idle work (the fingerprint)
        return measure_edits(router, cm, probe)
    finally:
        router.terminate()


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """The selected cases with the package at ``args.baseline`` and with this one, alternating."""
    prefix = "wc" + secrets.token_hex(3)[:5]
    lab = labmod.up(prefix) if "edits" in args.only else None
    tmp = Path(tempfile.mkdtemp(prefix="bench-wait-"))
    trees = {"baseline": {"PYTHONPATH": str(args.baseline.resolve())}, "this tree": {}}
    doc: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "load": os.getloadavg()},
        "baseline": str(args.baseline), "only": sorted(args.only), "rounds": args.rounds,
        "startup_s": {name: [] for name in trees}, "edits": {name: [] for name in trees},
        "restart_s": {name: [] for name in trees},
    }
    probe = Prober(lab) if lab is not None else None
    try:
        for round_ in range(args.rounds):
            for name, extra in trees.items():
                label = f"{name.replace(' ', '-')}-{round_}"
                if "startup" in args.only:
                    took, again = cold_startup(tmp / f"one-{label}", extra)
                    doc["startup_s"][name].append(took)
                    doc["restart_s"][name].append(again)
                    log(f"{name}: one-rule ready after {took:.2f}s, restarted {again:.2f}s")
                if lab is not None and probe is not None:
                    doc["edits"][name].append(
                        measure_edits_only(lab, probe, tmp / f"big-{label}", extra))
        doc["host"]["load_end"] = os.getloadavg()
    finally:
        if probe is not None:
            probe.close()
        if lab is not None:
            labmod.down(prefix)
    return doc


def compare_markdown(doc: dict[str, Any]) -> str:
    load = doc["host"]["load"]
    lines = [
        f"# egress-router wait: baseline vs this tree ({doc['when']})",
        "",
        f"Host: {doc['host']['cpus']} CPUs, kernel {doc['host']['kernel']}, load average at "
        f"start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, at the end "
        f"{doc['host'].get('load_end', [0.0])[0]:.1f}. Baseline: `{doc['baseline']}`. "
        f"Medians of {doc['rounds']} alternating round(s). Command: `python -m bench wait "
        f"--only {','.join(doc['only'])} --baseline SRC --rounds {doc['rounds']}`.",
        "",
        "| figure | baseline | this tree | ratio | goal |",
        "|---|---|---|---|---|",
    ]
    if doc["startup_s"]["baseline"]:
        a = stats.median(doc["startup_s"]["baseline"])
        b = stats.median(doc["startup_s"]["this tree"])
        lines.append(f"| one-rule router ready after start, no DNS (fresh pod) | {a:.2f} s | "
                     f"{b:.2f} s | {b / a:.2f} | < 1 s |")
        a = stats.median(doc["restart_s"]["baseline"])
        b = stats.median(doc["restart_s"]["this tree"])
        lines.append(f"| the same, restarted in that pod (interfaces in place, as after init) | "
                     f"{a:.2f} s | {b:.2f} s | {b / a:.2f} | < 1 s |")
    runs = doc["edits"]
    if runs["baseline"]:
        for index, first in enumerate(runs["baseline"][0]):
            for key, unit, goal in (("applied_s", "s wall", "< 2 s"), ("cpu_s", "s CPU", ""),
                                    ("applied_and_cut_s", "s wall, cut", "< 2 s")):
                if key not in first:
                    continue
                a = stats.median([run[index][key] for run in runs["baseline"]])
                b = stats.median([run[index][key] for run in runs["this tree"]])
                lines.append(f"| edit: {first['edit']} ({unit}) | {a:.2f} | {b:.2f} | "
                             f"{b / a:.2f} | {goal} |")
    return "\n".join(lines) + "\n"


def markdown(doc: dict[str, Any]) -> str:
    host = doc["host"]
    load_end = host.get("load_end", host["load"])
    command = "python -m bench wait" + (
        f" --cases {','.join(doc['cases'])}" if doc.get("cases") and doc["cases"] != list(CASES)
        else "")
    lines = [
        f"# egress-router wait at {doc['rules']:,} rules ({doc['when']})",
        "",
        f"Host: {host['cpus']} CPUs, kernel {host['kernel']}, load average at start "
        f"{host['load'][0]:.1f}, at the end {load_end[0]:.1f}. Command: `{command}`.",
        "",
        "| figure | value | goal |",
        "|---|---|---|",
    ]
    for e in doc.get("edits", ()):
        cut = f", {e['cut']} of {e['held']} held connections cut after " \
              f"{e['applied_and_cut_s']:.2f} s" if e.get("held") else ""
        lines.append(f"| edit: {e['edit']} | applied after {e['applied_s']:.2f} s (CPU "
                     f"{e['cpu_s']:.2f} s){cut} | < 2 s |")
    for key, goal in (("sigterm_idle", "exit 0 < 1 s"), ("sigterm_during_apply", "exit 0 < 1 s"),
                      ("sigterm_during_cut", "exit 0 < 1 s"),
                      ("sigterm_during_announcements", "exit 0 < 1 s")):
        if key in doc:
            took, code = doc[key]
            lines.append(f"| {key.replace('_', ' ')} | exit {code} after {took:.2f} s | {goal} |")
    for kind, took in doc.get("drift_s", {}).items():
        lines.append(f"| drift: {kind} | traffic again after {took:.2f} s | < 1.5 s |")
    if "probes_during_edits" in doc:
        p = doc["probes_during_edits"]
        lines.append(
            f"| slowest /readyz, /healthz during edits ({p['requests']} requests, "
            f"{p['not_200']} not 200) | {p['slowest_readyz_s'] * 1000:.0f} ms, "
            f"{p['slowest_healthz_s'] * 1000:.0f} ms | < 100 ms |")
    if "one_rule_ready_s" in doc:
        lines.append(f"| one-rule router ready after start, no DNS | "
                     f"{doc['one_rule_ready_s']:.2f} s | < 1 s |")
    lines.append(f"| 10,000-rule router ready after start | {doc['start_10000_ready_s']:.2f} s | |")
    if "scrape" in doc:
        lines.append(
            f"| /metrics CPU per scrape ({doc['conntrack_entries']:,} conntrack entries) | "
            f"{doc['scrape']['cpu_s_per_scrape'] * 1000:.0f} ms (slowest answer "
            f"{doc['scrape']['slowest_scrape_s'] * 1000:.0f} ms) | < 100 ms |")
    done = [c for c in ("edits", "scrapes", "drift") if c in doc.get("cases", CASES)]
    lines.append(f"| peak RSS of wait (VmHWM), after {', '.join(done) or 'start'} | "
                 f"{doc['peak_rss_mib']:.1f} MiB | < 40 MiB |")
    if "takeover_s" in doc:
        lines += [
            f"| standby holds the lock, from SIGTERM to the active one (exit "
            f"{doc['active_exit'][0]:.2f} s) | {doc['takeover_s']:.2f} s | < 1 s after the exit |",
            f"| standby ready (10,000 rules applied), from that SIGTERM | "
            f"{doc['takeover_ready_s']:.2f} s | |",
        ]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connections", type=int, default=64_000, metavar="N",
                        help="UDP flows held in the conntrack table during the scrapes "
                        "(at most 64,000: one client address, one source port each)")
    parser.add_argument("--only", type=lambda text: set(text.split(",")), default=None,
                        metavar="CASES", help="comma-separated: edits, startup (with --baseline)")
    parser.add_argument("--baseline", type=Path, default=None, metavar="SRC",
                        help="the src folder of another checkout, measured side by side")
    parser.add_argument("--rounds", type=int, default=1, metavar="N")
    parser.add_argument("--cases", default=",".join(CASES), metavar="LIST",
                        help=f"comma-separated cases to run (default: all of {','.join(CASES)}); "
                        "the 10,000-rule start and the peak RSS are always measured")
    parser.add_argument("--name", default="wait", help="results file name (default: wait)")


def run_suite(args: argparse.Namespace) -> results.Outcome:
    def refuse(message: str) -> NoReturn:
        raise SystemExit(f"python -m bench wait: error: {message}")

    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if unknown := sorted(set(args.cases) - set(CASES)):
        refuse(f"cannot run case(s) {', '.join(unknown)}: choose from {', '.join(CASES)}")
    if not 0 <= args.connections <= 64_000:
        refuse(f"cannot hold {args.connections} flows: give 0 to 64000")
    if args.only is not None or args.baseline is not None:
        if args.baseline is None or not (args.baseline / "egress_router").is_dir():
            refuse("cannot compare: give --baseline SRC, a folder holding egress_router")
        args.only = args.only or {"edits", "startup"}
        if not args.only <= {"edits", "startup"}:
            refuse(f"cannot run {sorted(args.only)}: the cases are edits and startup")
        doc = compare(args)
        return results.Outcome("wait-compare", doc, compare_markdown(doc))
    doc = run(args)
    return results.Outcome(args.name, doc, markdown(doc))
