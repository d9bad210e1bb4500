"""The waiting container in the lab: live reloads, drift repair, DNS names, metrics, lock.

Each test runs ``egress-router wait`` in a fresh lab's router pod with its
rules in a directory laid out like a mounted ConfigMap (edited through the
kubelet's symlink swap), and judges it from the far side: what the
destination server recorded, what a long-lived stream saw, what the client
pod got from ``/readyz`` and ``/metrics``, and kernel state read through
``nft``, ``ip`` and ``conntrack``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from egress_router.lab import world as labmod
from support.flood import READYZ_WATCH, flood
from support.httpget import get as http_get
from support.waiting import eventually

pytestmark = pytest.mark.privileged

ROUTER4 = "10.128.0.2"
SOURCE4 = "192.168.12.99"
BASE = {
    "EGRESS_SOURCE": "192.168.12.99/24",
    "EGRESS_GATEWAY": "192.168.12.1",
    "EGRESS_ANNOUNCE_INTERVAL": "0.1",
    "EGRESS_ANNOUNCE_COUNT": "1",
    "EGRESS_ROUTER_WATCH_SECONDS": "0.2",
}


class ConfigMap:
    """A directory as the kubelet mounts a ConfigMap: ``destinations -> ..data/destinations``.

    An edit writes a new timestamped directory and swaps the ``..data``
    symlink atomically, as the kubelet does.
    """

    def __init__(self, root: Path, text: str) -> None:
        self.root = root
        self.edits = 0
        self.write(text)
        (root / "destinations").symlink_to("..data/destinations")

    @property
    def path(self) -> Path:
        return self.root / "destinations"

    def write(self, text: str) -> None:
        self.edits += 1
        version = self.root / f"..{self.edits}"
        version.mkdir()
        (version / "destinations").write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(version.name)
        os.replace(tmp, self.root / "..data")


def http(lab: labmod.Lab, path: str) -> tuple[int, str]:
    """GET ``path`` on the router's HTTP port from the client pod (as kubelet/Prometheus)."""
    answer = http_get(lab.client, f"http://{ROUTER4}:9090{path}")
    assert answer.status is not None, answer.error
    return answer.status, answer.body


def metric(lab: labmod.Lab, sample_name: str, **labels: str) -> float | None:
    """One sample of ``/metrics`` (None when absent)."""
    _status, body = http(lab, "/metrics")
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    for line in body.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == sample_name or sample.startswith(sample_name + "{"):
            inner = sample[len(sample_name):].strip("{}")
            if wanted <= set(filter(None, inner.split(","))):
                return float(value)
    return None


class Router:
    """``egress-router wait`` in the lab's router pod."""

    def __init__(self, lab: labmod.Lab, env: dict[str, str]) -> None:
        self.lab = lab
        self.proc = labmod.spawn_router(lab, env, args=["wait"])

    def ready(self, timeout: float = 30) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.stop()
            try:
                return http(self.lab, "/readyz")[0] == 200
            except AssertionError:
                return False

        eventually(up, timeout, "the router never became ready")

    def stop(self) -> str:
        """SIGTERM, wait, and return what it logged."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _out, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _out, err = self.proc.communicate(timeout=10)
        return err


@pytest.fixture
def routers() -> Iterator[list[Router]]:
    started: list[Router] = []
    yield started
    for router in started:
        router.stop()


def conntrack_lines(lab: labmod.Lab) -> list[str]:
    done = labmod.run_in(lab.router, ["conntrack", "-L"], timeout=10)
    return [line for line in done.stdout.splitlines() if line.strip()]


def nft_json(lab: labmod.Lab) -> list[dict[str, Any]] | None:
    done = labmod.run_in(lab.router, ["nft", "-j", "list", "table", "inet", "egress_router"],
                         timeout=10)
    if done.returncode != 0:
        return None
    items: list[dict[str, Any]] = json.loads(done.stdout)["nftables"]
    return items


@pytest.mark.slow
def test_edits_reload_live_keep_streams_cut_removed_rules_and_report_bad_ones(
    lab: labmod.Lab, routers: list[Router], tmp_path: Path
) -> None:
    base = "80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n"
    cm = ConfigMap(tmp_path, base)
    router = Router(lab, {**BASE, "EGRESS_DESTINATION_FILE": str(cm.path)})
    routers.append(router)
    router.ready()
    kept = labmod.open_stream(lab, ROUTER4, 80, count=300, interval=0.05)
    doomed = labmod.open_stream(lab, ROUTER4, 8080, count=600, interval=0.05)
    try:
        assert kept.connected().server == "203.0.113.25:80"
        assert doomed.connected().server == "203.0.113.26:80"
        generation = metric(lab, "egress_router_config_generation")
        assert generation == 1
        # 20 edits, adding and removing other rules, each applied before the next.
        for edit in range(20):
            extra = "".join(f"{9100 + j} tcp 203.0.113.26 80\n" for j in range(edit % 4 + 1))
            cm.write(base + extra)
            eventually(lambda n=edit: metric(lab, "egress_router_config_generation") == n + 2,
                       5, f"edit {edit + 1} applied")
        assert labmod.dial(lab, "tcp", ROUTER4, 9100).server == "203.0.113.26:80"
        # A bad edit: reported and counted, the running rules stay.
        cm.write(base + "9200 tcp 999.1.1.1 80\n")
        eventually(lambda: metric(lab, "egress_router_applies_total", result="invalid") == 1,
                   5, "the bad edit counted")
        assert metric(lab, "egress_router_config_generation") == 21
        assert labmod.dial(lab, "tcp", ROUTER4, 9100).server == "203.0.113.26:80"
        # Rule 8080 taken away: its connection is cut, new ones are refused.
        cm.write("80 tcp 203.0.113.25\n")
        eventually(lambda: metric(lab, "egress_router_config_generation") == 22, 5, "removal")
        cut = doomed.result(timeout=30)
        assert cut["error"] in ("reset", "closed"), cut
        assert cut["echoed"] < 600
        assert labmod.dial(lab, "tcp", ROUTER4, 8080, timeout=2).error == "refused"
        assert metric(lab, "egress_router_connections_cut_total") >= 1
        assert not [line for line in conntrack_lines(lab)
                    if "dport=8080" in line and "ESTABLISHED" in line]
        # The kept stream: every line echoed, never a stall of a second.
        summary = kept.result(timeout=60)
    finally:
        kept.close()
        doomed.close()
    assert summary["error"] is None, summary
    assert summary["echoed"] == 300
    assert summary["max_gap"] < 1.0
    peer = summary["greeting"]["peer"]
    ends = [e for e in labmod.served(lab) if e["event"] == "stream-end" and e["peer"] == peer]
    assert [e["lines"] for e in ends] == [300]  # the destination saw the whole stream
    assert peer.startswith(SOURCE4 + ":")


@pytest.mark.slow
def test_drift_is_repaired_counted_and_readiness_follows(
    lab: labmod.Lab, routers: list[Router], tmp_path: Path
) -> None:
    cm = ConfigMap(tmp_path, "80 tcp 203.0.113.25\n53 udp 203.0.113.25\n")
    router = Router(lab, {**BASE, "EGRESS_DESTINATION_FILE": str(cm.path),
                          })
    routers.append(router)
    router.ready()
    # Metrics match what was sent.
    for _ in range(5):
        assert labmod.dial(lab, "tcp", ROUTER4, 80).ok
    for _ in range(3):
        assert labmod.dial(lab, "udp", ROUTER4, 53).ok
    tcp80 = {"family": "ipv4", "protocol": "tcp", "port": "80",
             "destination": "203.0.113.25:80"}
    udp53 = {"family": "ipv4", "protocol": "udp", "port": "53",
             "destination": "203.0.113.25:53"}
    assert metric(lab, "egress_router_rule_connections_total", **tcp80) == 5
    assert metric(lab, "egress_router_rule_connections_total", **udp53) == 3
    assert metric(lab, "egress_router_rule_packets_total", **udp53) == 6  # 3 requests, 3 replies
    assert (metric(lab, "egress_router_rule_bytes_total", **tcp80) or 0) > 0
    served = [e for e in labmod.served(lab) if e["server"] == "203.0.113.25:80"]
    assert len(served) == 5

    # Kernel change events, not the 10 s poll (default settings): each kind of drift is
    # repaired and traffic flows again about a second after it happened.
    tampers = {
        "table": [["nft", "delete", "table", "inet", "egress_router"]],
        "route": [["ip", "route", "del", "default"]],
        "address": [["ip", "address", "del", "192.168.12.99/24", "dev", "macvlan0"]],
        "rule": [["ip", "rule", "del", "priority", "25970"]],
        "link": [["ip", "link", "set", "macvlan0", "down"]],
        "forwarding": [["sysctl", "-qw", "net.ipv4.ip_forward=0"]],
    }
    # How fast (the goal is 1.5 s) is measured by `python -m bench wait`; here: repaired.
    for kind, commands in tampers.items():
        for argv in commands:
            assert labmod.run_in(lab.router, argv).returncode == 0, argv

        def flows() -> bool:
            result = labmod.dial(lab, "tcp", ROUTER4, 80, timeout=0.5)
            return result.ok and str(result.peer_ip) == SOURCE4

        eventually(flows, 10, f"traffic after {kind} drift")
    for kind in ("ruleset", "route", "address", "link", "forwarding"):
        assert (metric(lab, "egress_router_drift_repairs_total", kind=kind) or 0) >= 1, kind
    assert http(lab, "/readyz") == (200, "ok\n")
    # Read back through independent handles.
    assert nft_json(lab) is not None
    routes = json.loads(labmod.run_in(lab.router, ["ip", "-j", "route", "show", "default"]).stdout)
    assert [(r["gateway"], r["dev"]) for r in routes] == [("192.168.12.1", "macvlan0")]

    # Something that keeps undoing a repair makes the router slow down, not spin: 60
    # deletions in 6 s, far fewer reconciles (the backoff itself is unit-tested).
    assert metric(lab, "egress_router_drift_backoff_seconds") == 0
    reconciles = metric(lab, "egress_router_reconciles_total") or 0
    fighter = subprocess.Popen([
        "ip", "netns", "exec", lab.router,
        "sh", "-c", "for i in $(seq 60); do ip route del default 2>/dev/null; sleep 0.1; done",
    ])
    try:
        assert fighter.wait(timeout=30) == 0
    finally:
        if fighter.poll() is None:
            fighter.kill()
            fighter.wait()
    fought = (metric(lab, "egress_router_reconciles_total") or 0) - reconciles
    print(f"{fought:.0f} reconciles while the route was deleted 60 times")
    assert fought <= 30
    eventually(lambda: labmod.dial(lab, "tcp", ROUTER4, 80, timeout=0.5).ok, 15, "recovery")


# Polls /readyz from the client pod for argv[2] seconds, one line of JSON per answer.


def test_a_drift_right_after_the_first_200_is_repaired_on_the_kernels_event(
    lab: labmod.Lab, routers: list[Router], tmp_path: Path
) -> None:
    # Issue 18, item 2: the kernel's change events of the first seconds after readiness (the
    # start-up announcements: 3 rounds a second apart) were dropped, and a table deleted then
    # came back only with the periodic check. Here the periodic check is an hour away: only
    # the event path can repair it.
    cm = ConfigMap(tmp_path, "80 tcp 203.0.113.25\n")
    router = Router(lab, {**BASE, "EGRESS_DESTINATION_FILE": str(cm.path),
                          "EGRESS_ANNOUNCE_COUNT": "3", "EGRESS_ANNOUNCE_INTERVAL": "1",
                          "EGRESS_ROUTER_RECONCILE_SECONDS": "3600"})
    routers.append(router)
    router.ready()
    assert labmod.run_in(lab.router, ["nft", "delete", "table", "inet", "egress_router"]
                         ).returncode == 0

    def flows() -> bool:
        result = labmod.dial(lab, "tcp", ROUTER4, 80, timeout=0.5)
        return result.ok and str(result.peer_ip) == SOURCE4

    eventually(flows, 30, "traffic after the table was deleted right after readiness")
    assert metric(lab, "egress_router_drift_repairs_total", kind="ruleset") == 1
    assert nft_json(lab) is not None


def test_a_drift_during_the_announcements_after_a_repair_is_repaired_meanwhile(
    lab: labmod.Lab, routers: list[Router], tmp_path: Path
) -> None:
    # Issue 18, item 4: link down and forwarding off took 1.7-1.8 s when they came right
    # after an address or link repair, whose announcements (3 rounds, 1 s apart) the main
    # loop sat through before it looked at the next kernel event. Judged by order, from the
    # router's own log: the forwarding repair comes before the repair's last announcement.
    cm = ConfigMap(tmp_path, "80 tcp 203.0.113.25\n")
    router = Router(lab, {**BASE, "EGRESS_DESTINATION_FILE": str(cm.path),
                          "EGRESS_ANNOUNCE_COUNT": "2", "EGRESS_ANNOUNCE_INTERVAL": "4",
                          "EGRESS_ROUTER_RECONCILE_SECONDS": "3600",
                          "EGRESS_ROUTER_DEBUG": "true"})
    routers.append(router)
    router.ready()
    time.sleep(4.5)  # past the start-up's second round

    def flows() -> bool:
        result = labmod.dial(lab, "tcp", ROUTER4, 80, timeout=0.5)
        return result.ok and str(result.peer_ip) == SOURCE4

    tamper = ["ip", "address", "del", "192.168.12.99/24", "dev", "macvlan0"]
    assert labmod.run_in(lab.router, tamper).returncode == 0
    eventually(flows, 30, "traffic after the address was deleted")
    assert labmod.run_in(lab.router, ["sysctl", "-qw", "net.ipv4.ip_forward=0"]).returncode == 0
    eventually(flows, 30, "traffic after forwarding was turned off")
    time.sleep(4.5)  # the address repair's last round is out by now
    lines = router.stop().splitlines()
    forwarding = [i for i, line in enumerate(lines) if "ip_forward is not 1; repairing" in line]
    last_rounds = [i for i, line in enumerate(lines) if "192.168.12.99 on macvlan0" in line
                   and line.endswith("(2/2)")]
    assert forwarding and len(last_rounds) == 2, "\n".join(lines)
    assert forwarding[0] < last_rounds[1], "\n".join(lines[last_rounds[0] - 5:])


def test_readyz_says_503_with_the_reason_while_the_data_path_stays_broken(
    lab: labmod.Lab, routers: list[Router], tmp_path: Path
) -> None:
    # Issue 18, item 3: something keeps deleting the table, so repairs are slowed down (the
    # backoff) and the data path is broken most of the time: /readyz must say so (the Service
    # drops the endpoint, the HA pair can move), and say 200 again once it is repaired.
    cm = ConfigMap(tmp_path, "80 tcp 203.0.113.25\n")
    router = Router(lab, {**BASE, "EGRESS_DESTINATION_FILE": str(cm.path)})
    routers.append(router)
    router.ready()
    watch = subprocess.Popen(
        ["ip", "netns", "exec", lab.client, sys.executable, "-c", READYZ_WATCH,
         f"http://{ROUTER4}:9090/readyz", "12"], stdout=subprocess.PIPE, text=True)
    fighter = subprocess.Popen([
        "ip", "netns", "exec", lab.router, "sh", "-c",
        "for i in $(seq 40); do nft delete table inet egress_router 2>/dev/null; sleep 0.2; done",
    ])
    try:
        assert fighter.wait(timeout=30) == 0
        out, _ = watch.communicate(timeout=30)
    finally:
        for proc in (fighter, watch):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    answers = [json.loads(line) for line in out.splitlines()]
    broken = [body for _at, code, body in answers if code == 503]
    print(f"{len(broken)} of {len(answers)} /readyz answers 503 during the fight:",
          broken[:1])
    assert broken, [code for _at, code, _body in answers]
    assert all("rules" in body for body in broken), broken
    eventually(lambda: http(lab, "/readyz") == (200, "ok\n"), 30, "ready after the repair")
    eventually(lambda: labmod.dial(lab, "tcp", ROUTER4, 80, timeout=0.5).ok, 10, "traffic")


# From the client pod: argv[2] slow connections to argv[1]:9090, each sending its request one
# byte a second, for argv[3] seconds; prints how many were open at most and how many the
# server closed.


def test_a_flood_of_slow_connections_from_a_pod_cannot_exhaust_the_endpoint(
    lab: labmod.Lab, routers: list[Router], tmp_path: Path
) -> None:
    # Issue 18, item 5: port 9090 is open to every pod. A thread per connection and a
    # timeout per read let slow clients run the router to hundreds of threads. Here 1,500
    # slow connections for 12 s: the probes are answered every time, the thread count does
    # not move, the flood's connections are closed by the server, traffic is unaffected.
    cm = ConfigMap(tmp_path, "80 tcp 203.0.113.25\n")
    router = Router(lab, {**BASE, "EGRESS_DESTINATION_FILE": str(cm.path)})
    routers.append(router)
    router.ready()
    assert http(lab, "/metrics")[0] == 200  # every thread the router ever runs is running
    def data_path_works() -> None:
        assert labmod.dial(lab, "tcp", ROUTER4, 80, timeout=2).ok

    done = flood(lab.client, ROUTER4, router.proc.pid, connections=1500, seconds=12,
                 watch_seconds=10, samples=16, during=data_path_works)
    print(f"threads {done.calm} calm, at most {done.most} in the flood {done.figures}; "
          f"/readyz answers {done.codes.count(200)} of {len(done.codes)} 200")
    assert done.figures["peak"] >= 1000  # the flood was real: the kernel took its connections
    assert done.figures["closed_by_server"] >= 500  # deadlines and evictions let them go
    assert done.codes and done.codes == [200] * len(done.codes)
    assert done.most <= done.calm + 1, (done.calm, done.most)
    assert http(lab, "/readyz") == (200, "ok\n")


def _help_names(text: str) -> list[str]:
    return [line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")]


def test_the_whole_scrape_with_conntrack_figures_passes_strict_parsers(
    lab: labmod.Lab, routers: list[Router], tmp_path: Path
) -> None:
    # Issue 18, item 1: once the conntrack figures existed, one family was written twice
    # (by the registry and by the capacity writer) and a strict scraper dropped the scrape.
    # The whole scrape is judged here, not the first line matching a name.
    cm = ConfigMap(tmp_path, "80 tcp 203.0.113.25\n53 udp 203.0.113.25\n")
    router = Router(lab, {**BASE, "EGRESS_DESTINATION_FILE": str(cm.path),
                          "EGRESS_ROUTER_CONNTRACK_SAMPLE_SECONDS": "1"})
    routers.append(router)
    router.ready()
    for _ in range(3):
        assert labmod.dial(lab, "tcp", ROUTER4, 80).ok
    assert http(lab, "/metrics")[0] == 200  # starts the first conntrack sample
    eventually(lambda: "egress_router_nat_ports_in_use{" in http(lab, "/metrics")[1], 10,
               "the conntrack sample in the scrape")
    status, body = http(lab, "/metrics")
    assert status == 200
    names = _help_names(body)
    assert {"egress_router_conntrack_entries", "egress_router_conntrack_insert_failed_total",
            "egress_router_nat_ports_in_use", "egress_router_rule_connections_total",
            "egress_router_process_resident_memory_bytes"} <= set(names)
    assert sorted({n for n in names if names.count(n) > 1}) == []
    parsed = [f.name for f in text_string_to_metric_families(body)]
    assert len(parsed) == len(set(parsed)) == len(names)
    promtool = os.environ.get("EGRESS_ROUTER_PROMTOOL") or shutil.which("promtool")
    if promtool:  # Debian's prometheus package; CI does not install the server for it
        done = subprocess.run([promtool, "check", "metrics"], input=body, text=True, check=False,
                              capture_output=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        print("promtool check metrics:", done.stdout.strip() or "clean")


def test_dns_named_destinations_follow_the_answer(
    lab: labmod.Lab, routers: list[Router], tmp_path: Path
) -> None:
    labmod.start_dns(lab, {
        "api.lab.test": {"A": ["203.0.113.25"], "ttl": 1},
        "multi.lab.test": {"A": ["203.0.113.25", "203.0.113.26"], "ttl": 60},
    })
    rules = "80 tcp api.lab.test\n8080 tcp multi.lab.test 80\n"
    # The init container resolves names too, and refuses one that does not resolve.
    init = labmod.router_command(lab, {**BASE, "EGRESS_ROUTER_MODE": "init",
                                       "EGRESS_DESTINATION": rules})
    assert init.returncode == 0, init.stderr
    assert labmod.dial(lab, "tcp", ROUTER4, 80).server == "203.0.113.25:80"
    bad = labmod.router_command(lab, {**BASE, "EGRESS_ROUTER_MODE": "init",
                                      "EGRESS_DESTINATION": "80 tcp nowhere.lab.test\n"})
    assert bad.returncode == 1
    assert bad.stderr == (
        "egress-router: error: cannot resolve nowhere.lab.test: no such name (NXDOMAIN); check "
        "the name and the pod's DNS (/etc/resolv.conf), or write the address\n"
    )

    cm = ConfigMap(tmp_path, rules)
    router = Router(lab, {**BASE, "EGRESS_DESTINATION_FILE": str(cm.path),
                          "EGRESS_ROUTER_DNS_MIN_TTL": "1"})
    routers.append(router)
    router.ready()
    # Several addresses: new connections are spread over all of them.
    servers = {labmod.dial(lab, "tcp", ROUTER4, 8080).server for _ in range(4)}
    assert servers == {"203.0.113.25:80", "203.0.113.26:80"}
    assert labmod.dial(lab, "tcp", ROUTER4, 80).server == "203.0.113.25:80"
    labmod.set_dns_records(lab, {
        "api.lab.test": {"A": ["203.0.113.26"], "ttl": 1},
        "multi.lab.test": {"A": ["203.0.113.25", "203.0.113.26"], "ttl": 60},
    })
    # Within the TTL, the loop and one dial: the answer's TTL is followed, not the reconcile.
    eventually(
        lambda: labmod.dial(lab, "tcp", ROUTER4, 80).server == "203.0.113.26:80", 1 + 3,
        "new connections follow the new answer",
    )
    seen = [e for e in labmod.served(lab) if e["server"] == "203.0.113.26:80"]
    assert seen[-1]["peer"].startswith(SOURCE4 + ":")
    # The name disappears: reported, and its last good address stays in use.
    labmod.set_dns_records(lab, {"multi.lab.test": {"A": ["203.0.113.25"], "ttl": 60}})
    eventually(lambda: (metric(lab, "egress_router_dns_resolution_failures_total",
                               name="api.lab.test") or 0) >= 1, 6, "the failure counted")
    assert labmod.dial(lab, "tcp", ROUTER4, 80).server == "203.0.113.26:80"
    asked = [q for q in labmod.dns_queries(lab) if q["name"] == "api.lab.test"]
    assert any(q.get("rcode") == "NXDOMAIN" for q in asked)


def test_one_instance_per_namespace_sighup_announces_sigterm_is_quick_and_status(
    lab: labmod.Lab, routers: list[Router], tmp_path: Path
) -> None:
    cm = ConfigMap(tmp_path, "80 tcp 203.0.113.25\n203.0.113.27\n")
    env = {**BASE, "EGRESS_DESTINATION_FILE": str(cm.path),
           "EGRESS_ROUTER_RECONCILE_SECONDS": "60"}
    first = Router(lab, env)
    routers.append(first)
    first.ready()
    second = Router(lab, env)
    routers.append(second)
    time.sleep(1.5)
    assert second.proc.poll() is None  # standing by, not fighting
    status = labmod.router_command(lab, env, args=["status", "--json"])
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["matches"] is True
    assert [(r["port"], r["kernel"]) for r in report["rules"]] == [
        ("80", ["203.0.113.25:80"]), ("*", ["203.0.113.27"])
    ]

    # How quickly it stops and the standby takes over is measured by `python -m bench wait`.
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=5) == 0
    assert "standing by" not in first.stop()
    # The standby blocks on the lock (no poll): it takes over as the first one exits.
    second.ready()
    # SIGHUP: the address is announced again; a stale neighbour entry learns our MAC.
    stale = "02:00:00:00:de:ad"
    labmod.run_in(lab.gw, ["ip", "neigh", "replace", SOURCE4, "lladdr", stale, "dev", "lan0",
                           "nud", "stale"])
    mac = json.loads(labmod.run_in(lab.router, ["ip", "-j", "link", "show", "macvlan0"]).stdout)
    second.proc.send_signal(signal.SIGHUP)

    def learned() -> bool:
        neigh = json.loads(labmod.run_in(lab.gw, ["ip", "-j", "neigh", "show", "dev", "lan0"])
                           .stdout)
        return any(n["dst"] == SOURCE4 and n.get("lladdr") == mac[0]["address"] for n in neigh)

    eventually(learned, 3, "the gateway learned the MAC after SIGHUP")
    log = second.stop()
    assert "another egress-router wait (process" in log
    assert "standing by until it exits" in log
    assert "the other instance exited; taking over" in log
    # status exits 4 and names the difference when the kernel does not match (with no
    # wait running: that one would repair it within a second).
    labmod.run_in(lab.router, ["nft", "delete", "element", "inet", "egress_router",
                               "redirect_v4", "{ tcp . 80 }"])
    drifted = labmod.router_command(lab, env, args=["status"])
    assert drifted.returncode == 4
    assert "tcp port 80 (IPv4): missing in the kernel" in re.sub(r"\s+", " ", drifted.stdout)


def test_iptables_backend_is_watched_and_repaired_too(
    lab: labmod.Lab, routers: list[Router], tmp_path: Path
) -> None:
    cm = ConfigMap(tmp_path, "80 tcp 203.0.113.25\n")
    env = {**BASE, "EGRESS_DESTINATION_FILE": str(cm.path), "EGRESS_ROUTER_BACKEND": "iptables",
           "EGRESS_ROUTER_RECONCILE_SECONDS": "1"}
    router = Router(lab, env)
    routers.append(router)
    router.ready()
    assert labmod.dial(lab, "tcp", ROUTER4, 80).server == "203.0.113.25:80"
    labmod.run_in(lab.router, ["iptables", "-t", "nat", "-D", "PREROUTING", "-j",
                               "EGRESS-ROUTER-PREROUTING"])
    eventually(lambda: metric(lab, "egress_router_drift_repairs_total", kind="ruleset") == 1,
               5, "the iptables rules repaired")
    dump = labmod.run_in(lab.router, ["iptables-save", "-t", "nat"]).stdout
    assert dump.count("-A PREROUTING -j EGRESS-ROUTER-PREROUTING") == 1
    cm.write("8080 tcp 203.0.113.26 80\n")
    eventually(lambda: metric(lab, "egress_router_config_generation") == 2, 5, "the edit")
    assert labmod.dial(lab, "tcp", ROUTER4, 8080).server == "203.0.113.26:80"
    assert labmod.dial(lab, "tcp", ROUTER4, 80, timeout=2).error == "refused"
    status = labmod.router_command(lab, env, args=["status", "--json"])
    report = json.loads(status.stdout)
    assert status.returncode == 0, report["problems"]
    assert [(r["port"], r["kernel"]) for r in report["rules"]] == [("8080", ["203.0.113.26:80"])]


def test_a_removed_rule_stops_with_the_transaction_before_any_cut(lab: labmod.Lab) -> None:
    """The forward guard: with no conntrack cut at all (``init`` only re-applies), a removed
    rule's established connection stops reaching its old destination the moment the new
    ruleset is in place; a kept rule's stream, the control, goes on untouched."""
    env = {**BASE, "EGRESS_ROUTER_MODE": "init",
           "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n"}
    done = labmod.router_command(lab, env)
    assert done.returncode == 0, done.stderr
    kept = labmod.open_stream(lab, ROUTER4, 80, count=60, interval=0.05)
    doomed = labmod.open_stream(lab, ROUTER4, 8080, count=300, interval=0.05, timeout=1.0)
    try:
        assert kept.connected().server == "203.0.113.25:80"
        assert doomed.connected().server == "203.0.113.26:80"
        time.sleep(0.5)
        done = labmod.router_command(lab, {**env, "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n"})
        assert done.returncode == 0, done.stderr
        stopped = doomed.result(timeout=30)
        summary = kept.result(timeout=30)
    finally:
        kept.close()
        doomed.close()
    # The lines before the second init went through, none after (300 without the guard:
    # the stream runs 15 s, the re-apply is done within a few).
    assert stopped["error"] is not None and 0 < stopped["echoed"] < 200, stopped
    # Still tracked (nobody cut it): the new ruleset alone stopped it.
    assert [line for line in conntrack_lines(lab) if "dport=8080" in line]
    assert summary["error"] is None and summary["echoed"] == 60, summary


def test_the_routers_own_lookups_reach_a_resolver_on_the_service_network(
    lab: labmod.Lab, routers: list[Router], tmp_path: Path
) -> None:
    # The resolver is only reachable through the pod network's gateway (the node), as a
    # cluster DNS Service is; the plan's default route points at the egress gateway.
    labmod.start_dns(lab, {"api.lab.test": {"A": ["203.0.113.25"], "ttl": 60}},
                     service_network=True)
    resolver = labmod.SERVICE_RESOLVER
    cm = ConfigMap(tmp_path, "80 tcp api.lab.test\n")
    router = Router(lab, {**BASE, "EGRESS_DESTINATION_FILE": str(cm.path)})
    routers.append(router)
    router.ready()
    result = labmod.dial(lab, "tcp", ROUTER4, 80)
    assert result.server == "203.0.113.25:80" and str(result.peer_ip) == SOURCE4, result
    assert any(q["name"].rstrip(".") == "api.lab.test" for q in labmod.dns_queries(lab))
    # Routed right after readiness (the data path does not wait for it).
    def resolver_routes() -> list[tuple[str | None, str]]:
        routes = json.loads(labmod.run_in(lab.router, ["ip", "-j", "route", "show", resolver])
                            .stdout)
        return [(r.get("gateway"), r["dev"]) for r in routes]

    eventually(lambda: bool(resolver_routes()), 10, "the resolver's route")
    assert resolver_routes() == [("10.128.0.1", "eth0")]
    # Control: a neighbour on the service network without such a route is out of reach.
    labmod.run_in(lab.node, ["ip", "address", "add", "172.30.0.11/32", "dev", "lo"])
    # (TCP to port 53: an answer, even a refusal, means the packet got there and back.)
    probe = (
        "import socket, sys\n"
        "s = socket.socket(); s.settimeout(1.5)\n"
        "try:\n    s.connect((sys.argv[1], 53)); print('reached')\n"
        "except ConnectionRefusedError:\n    print('reached')\n"
        "except OSError as e:\n    print('lost', e)\n"
    )
    reach = [sys.executable, "-c", probe]
    assert labmod.run_in(lab.router, [*reach, resolver]).stdout.startswith("reached")
    assert labmod.run_in(lab.router, [*reach, "172.30.0.11"]).stdout.startswith("lost")
    # The route is repaired like the others.
    labmod.run_in(lab.router, ["ip", "route", "del", resolver])
    eventually(lambda: bool(json.loads(labmod.run_in(
        lab.router, ["ip", "-j", "route", "show", resolver]).stdout)), 10, "resolver route back")


def _elements(items: list[dict[str, Any]], name: str) -> dict[tuple[str, int], Any]:
    """The elements of set or map ``name`` of our table as nft -j lists them: key -> value.

    A map element's value is its (address, port) target; a counting set's, its packets.
    """
    found: dict[tuple[str, int], Any] = {}
    for item in items:
        body = item.get("set") or item.get("map")
        if body is None or body["name"] != name:
            continue
        for element in body.get("elem", []):
            if isinstance(element, list):  # map: [key, value]
                key, value = element
                value = tuple(value["concat"])
            else:  # counting set: {"elem": {"val": key, "counter": {...}}}
                key = element["elem"]["val"]
                value = element["elem"].get("counter", {}).get("packets", 0)
            proto, port = key["concat"]
            found[(proto, int(port))] = value
    return found


def test_edits_in_place_and_whole_read_back_from_the_kernel_and_followed_by_traffic(
    lab: labmod.Lab, routers: list[Router], tmp_path: Path
) -> None:
    """A small edit changes our table in place (the kept rule's counter goes on counting); an
    edit of 1,800 of 1,202 rules replaces it whole in one transaction. After each, what nft
    lists is the new rule set, a re-targeted rule reaches its new destination, a removed
    rule's established connection is cut, and a kept rule's stream goes on untouched."""
    many = "".join(f"{20000 + i} tcp 203.0.113.25 80\n" for i in range(1200))
    base = "80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n"
    cm = ConfigMap(tmp_path, base + many)
    router = Router(lab, {**BASE, "EGRESS_DESTINATION_FILE": str(cm.path)})
    routers.append(router)
    router.ready()
    assert labmod.dial(lab, "tcp", ROUTER4, 80).server == "203.0.113.25:80"  # counted: 80
    kept = labmod.open_stream(lab, ROUTER4, 80, count=200, interval=0.05)
    doomed = labmod.open_stream(lab, ROUTER4, 20700, count=400, interval=0.05)
    try:
        assert kept.connected().server == "203.0.113.25:80"
        assert doomed.connected().server == "203.0.113.25:80"
        # In place: 8080 re-targeted, one rule added.
        cm.write("80 tcp 203.0.113.25\n8080 tcp 203.0.113.25 80\n9000 tcp 203.0.113.26 80\n"
                 + many)
        eventually(lambda: metric(lab, "egress_router_config_generation") == 2, 10, "edit 1")
        items = nft_json(lab)
        assert items is not None
        redirects = _elements(items, "redirect_v4")
        assert redirects[("tcp", 8080)] == ("203.0.113.25", 80)
        assert redirects[("tcp", 9000)] == ("203.0.113.26", 80)
        assert len(redirects) == 1203
        assert _elements(items, "conns_v4")[("tcp", 80)] >= 2  # kept: still counting
        assert labmod.dial(lab, "tcp", ROUTER4, 8080).server == "203.0.113.25:80"
        assert labmod.dial(lab, "tcp", ROUTER4, 9000).server == "203.0.113.26:80"
        # Whole: 600 rules re-targeted, 600 removed (20700 among them), 9000 removed.
        retargeted = "".join(f"{20000 + i} tcp 203.0.113.26 80\n" for i in range(600))
        cm.write(base + retargeted)
        eventually(lambda: metric(lab, "egress_router_config_generation") == 3, 10, "edit 2")
        items = nft_json(lab)
        assert items is not None
        redirects = _elements(items, "redirect_v4")
        assert len(redirects) == 602
        assert redirects[("tcp", 20001)] == ("203.0.113.26", 80)
        assert ("tcp", 20700) not in redirects and ("tcp", 9000) not in redirects
        assert _elements(items, "conns_v4")[("tcp", 80)] == 0  # a new table: counters anew
        assert labmod.dial(lab, "tcp", ROUTER4, 20001).server == "203.0.113.26:80"
        assert labmod.dial(lab, "tcp", ROUTER4, 20700, timeout=2).error == "refused"
        cut = doomed.result(timeout=30)
        assert cut["error"] in ("reset", "closed"), cut
        assert cut["echoed"] < 400
        assert not [line for line in conntrack_lines(lab)
                    if "dport=20700" in line and "ESTABLISHED" in line]
        summary = kept.result(timeout=60)
    finally:
        kept.close()
        doomed.close()
    assert summary["error"] is None, summary
    assert summary["echoed"] == 200
    assert summary["max_gap"] < 1.0
