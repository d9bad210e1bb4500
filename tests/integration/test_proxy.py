"""The HTTP and DNS proxy pods in the lab: upstream's pod shapes with our one image.

Each mode gets one lab: the init container's set-up (``EGRESS_ROUTER_MODE=http-proxy`` or
``dns-proxy``, nothing but EGRESS_SOURCE and EGRESS_GATEWAY), then the main container started
with nothing but the proxy's variable (the entry point picks the proxy from it, as a drop-in
for upstream's image must), the cluster resolver on the service network (reached through the
pod side). Real clients run in the client pod (curl, the lab's dialer) and every verdict is
read from the far side: the destination server's log of the peer address, the proxy's
answer, HAProxy's servers; the one-way door is probed from the physical side with a control
that takes the ruleset out.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from egress_router.lab import world as labmod
from support.flood import flood

from .conftest import new_prefix, require_privileged

pytestmark = pytest.mark.privileged

SOURCE = "192.168.12.99"
ROUTER = str(labmod.ROUTER_POD4.ip)
PROXY = f"http://{ROUTER}:8080"
SOURCE6 = "2001:db8:12::99"
# Dual-stack (upstream's pods are IPv4 only; the same two variables carry both families here).
INIT_ENV = {"EGRESS_SOURCE": f"{SOURCE}/24,{SOURCE6}/64",
            "EGRESS_GATEWAY": "192.168.12.1,2001:db8:12::1", "EGRESS_ANNOUNCE_COUNT": "1"}
ENDPOINTS = (
    "tcp:203.0.113.25:80", "tcp:203.0.113.26:80", "tcp:203.0.113.27:80",
    "tcp:203.0.113.27:9000", "tcp:203.0.113.25:9000",
    "tcp:[2001:db8:113::25]:80", "tcp:[2001:db8:113::26]:80",
)
RECORDS: dict[str, dict[str, Any]] = {
    "api.example.com": {"A": ["203.0.113.27"], "ttl": 1},
    "bad.example.com": {"A": ["203.0.113.26"], "ttl": 1},
    "other.test": {"A": ["203.0.113.27"], "ttl": 1},
    "multi.example.com": {"A": ["203.0.113.25", "203.0.113.26"], "ttl": 1},
}
HTTP_RULES = (
    "# upstream's grammar, and IPv6\n!203.0.113.26\n203.0.113.25\n*.example.com\n"
    "2001:db8:113::24/127\n"
)
WAIT = 20.0


@dataclass
class ProxyWorld:
    lab: labmod.Lab
    proc: subprocess.Popen[str]
    rules_file: Path | None = None

    def logs(self) -> str:
        """Stop the proxy and return its log (for the assertions about what it said)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        _, err = self.proc.communicate(timeout=15)
        return err


def curl(lab: labmod.Lab, *args: str, ns: str | None = None) -> subprocess.CompletedProcess[str]:
    return labmod.run_in(
        ns or lab.client,
        ["curl", "-sS", "-m", "5", "-o", "/dev/stdout", "-w", "\n%{http_code}", *args],
        timeout=20,
    )


def status_of(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout.rsplit("\n", 1)[-1]


def peers(lab: labmod.Lab, server: str) -> list[str]:
    return [e["peer"].rsplit(":", 1)[0].strip("[]") for e in labmod.served(lab)
            if e["server"] == server]


def wait_ready(lab: labmod.Lab, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the proxy exited: {proc.communicate()[1]}")
        if status_of(curl(lab, f"http://{ROUTER}:9090/readyz")) == "200":
            return
        time.sleep(0.2)
    pytest.fail("the proxy did not become ready")


def init(lab: labmod.Lab, mode: str) -> None:
    done = labmod.router_command(lab, {**INIT_ENV, "EGRESS_ROUTER_MODE": mode})
    assert done.returncode == 0, done.stderr


def build(mode: str, proxy_env: dict[str, str]) -> Iterator[ProxyWorld]:
    require_privileged()
    prefix = new_prefix()
    lab = labmod.up(prefix, endpoints=ENDPOINTS)
    try:
        labmod.start_dns(lab, RECORDS, service_network=True)
        init(lab, mode)
        proc = labmod.spawn_router(lab, proxy_env)
        world = ProxyWorld(lab, proc)
        wait_ready(lab, proc)
        yield world
    finally:
        labmod.down(prefix)


@pytest.fixture(scope="module")
def http_world() -> Iterator[ProxyWorld]:
    yield from build("http-proxy", {"EGRESS_HTTP_PROXY_DESTINATION": HTTP_RULES})


# --------------------------------------------------------------------------- init side


def test_init_in_proxy_mode_sets_up_the_network_and_redirects_nothing(
    http_world: ProxyWorld,
) -> None:
    ns = http_world.lab.router
    addresses = [a["local"] for link in labmod.ip_json(ns, "-4", "addr", "show", "dev",
                                                       labmod.MACVLAN_IF, what="read addresses")
                 for a in link["addr_info"]]
    assert addresses == [SOURCE]
    routes = labmod.ip_json(ns, "-4", "route", "show", "default", what="read routes")
    assert [(r["gateway"], r["dev"]) for r in routes] == [("192.168.12.1", labmod.MACVLAN_IF)]
    table = labmod.run_in(ns, ["nft", "-j", "list", "table", "inet", "egress_router"])
    assert table.returncode == 0, table.stderr
    objects = json.loads(table.stdout)["nftables"]
    statements = [stmt for obj in objects if "rule" in obj for stmt in obj["rule"]["expr"]]
    assert statements and not [stmt for stmt in statements if "dnat" in stmt]
    maps = [obj["map"] for obj in objects if "map" in obj]
    assert maps and not [m for m in maps if m.get("elem")]
    # The cluster resolver (on the service network) stays on the pod side.
    via = labmod.ip_json(ns, "route", "get", labmod.SERVICE_RESOLVER, what="route to DNS")
    assert via[0]["dev"] == labmod.POD_IF


def test_the_physical_side_reaches_nothing_and_the_control_shows_the_probe_works(
    http_world: ProxyWorld,
) -> None:
    lab = http_world.lab
    # The physical side tries the proxy through the reserved address and, routed through
    # the router, the pod address.
    labmod.ip(lab.gw, "route", "replace", str(labmod.POD_NET4), "via", SOURCE,
              what="route the pod network via the router")
    targets = (f"http://{SOURCE}:8080/", f"http://{ROUTER}:8080/", f"http://{ROUTER}:9090/readyz")

    def reached() -> list[str]:
        got = []
        for url in targets:
            done = labmod.run_in(lab.gw, ["curl", "-sS", "-m", "2", "-o", "/dev/null",
                                          "-w", "%{http_code}", url], timeout=10)
            if done.stdout not in ("", "000"):
                got.append(url)
        return got

    assert reached() == []
    # Control: without our table, both answer (squid's 400/403 or the probe's 200).
    labmod.run_in(lab.router, ["nft", "delete", "table", "inet", "egress_router"])
    try:
        assert reached() == list(targets)
    finally:
        init(lab, "http-proxy")
        labmod.ip(lab.gw, "route", "del", str(labmod.POD_NET4), what="remove the route")
    assert reached() == []


def test_status_reports_the_proxy_mode_and_the_proxy(http_world: ProxyWorld) -> None:
    lab = http_world.lab
    env = {**INIT_ENV, "EGRESS_ROUTER_MODE": "http-proxy"}
    done = labmod.router_command(lab, env, args=["status", "--json"])
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["configuration"]["mode"] == "http-proxy"
    assert report["proxy"]["ready"] is True, report["proxy"]
    assert report["problems"] == []
    # Control: status does notice a kernel that differs (the one-way door taken out).
    labmod.run_in(lab.router, ["nft", "delete", "table", "inet", "egress_router"])
    try:
        done = labmod.router_command(lab, env, args=["status", "--json"])
        assert done.returncode == 4
    finally:
        init(lab, "http-proxy")


# --------------------------------------------------------------------------- HTTP proxy


def test_allowed_request_leaves_from_the_reserved_address(http_world: ProxyWorld) -> None:
    lab = http_world.lab
    done = curl(lab, "-x", PROXY, "http://203.0.113.25/allowed")
    assert status_of(done) == "200", done.stderr
    assert json.loads(done.stdout.rsplit("\n", 1)[0])["peer"].startswith(SOURCE + ":")
    assert SOURCE in peers(lab, "203.0.113.25:80")


def test_denied_request_gets_403_and_never_reaches_the_far_side(http_world: ProxyWorld) -> None:
    lab = http_world.lab
    for url in ("http://203.0.113.26/deny-1", "http://203.0.113.27/deny-2",
                "http://other.test/deny-3"):
        done = curl(lab, "-x", PROXY, url)
        assert status_of(done) == "403", (url, done.stdout, done.stderr)
    assert not [e for e in labmod.served(lab) if "/deny-" in e["data"]]
    # Control: the same destinations answer when asked directly from the physical side.
    done = curl(lab, "http://203.0.113.27/deny-control", ns=lab.gw)
    assert status_of(done) == "200"


def test_wildcard_allows_names_and_a_deny_before_it_wins(http_world: ProxyWorld) -> None:
    lab = http_world.lab
    done = curl(lab, "-x", PROXY, "http://api.example.com/wild")
    assert status_of(done) == "200", done.stderr
    assert any(e["server"] == "203.0.113.27:80" and "/wild" in e["data"]
               for e in labmod.served(lab))
    # bad.example.com matches *.example.com, but resolves to 203.0.113.26: line 2 denies
    # it first (squid's dst ACL resolves the name).
    done = curl(lab, "-x", PROXY, "http://bad.example.com/first-match")
    assert status_of(done) == "403"
    assert not any("/first-match" in e["data"] for e in labmod.served(lab))


def test_connect_tunnels_allowed_and_refuses_denied(http_world: ProxyWorld) -> None:
    lab = http_world.lab
    done = curl(lab, "-p", "-x", PROXY, "http://203.0.113.25:9000/tunnelled")
    assert status_of(done) == "200", done.stderr
    assert any(e["server"] == "203.0.113.25:9000" and "/tunnelled" in e["data"]
               and e["peer"].startswith(SOURCE + ":") for e in labmod.served(lab))
    done = curl(lab, "-p", "-x", PROXY, "http://203.0.113.27:9000/no-tunnel")
    assert "CONNECT tunnel failed, response 403" in done.stderr
    assert not any("/no-tunnel" in e["data"] for e in labmod.served(lab))


def test_https_through_connect(http_world: ProxyWorld, tmp_path: Path) -> None:
    lab = http_world.lab
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=203.0.113.25", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.ext, "openssl", "s_server", "-quiet", "-www",
         "-accept", "203.0.113.25:8443", "-cert", str(cert), "-key", str(key)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 10
        done = curl(lab, "-k", "-x", PROXY, "https://203.0.113.25:8443/")
        while status_of(done) != "200" and time.monotonic() < deadline:
            time.sleep(0.3)
            done = curl(lab, "-k", "-x", PROXY, "https://203.0.113.25:8443/")
        assert status_of(done) == "200", done.stderr
        assert "s_server" in done.stdout
    finally:
        server.terminate()
        server.wait(10)


def test_metrics_count_decisions_by_rule(http_world: ProxyWorld) -> None:
    lab = http_world.lab
    name = "egress_router_http_proxy_requests_total"

    def scrape() -> dict[tuple[str, str | None, str | None], float]:
        done = labmod.run_in(lab.client, ["curl", "-sS", "-m", "5",
                                          f"http://{ROUTER}:9090/metrics"])
        return {
            (s.name, s.labels.get("rule"), s.labels.get("decision")): s.value
            for family in text_string_to_metric_families(done.stdout)
            for s in family.samples
        }

    before = scrape()
    for url in ("http://203.0.113.26/counted", "http://203.0.113.25/counted",
                "http://203.0.113.27/counted"):
        curl(lab, "-x", PROXY, url)
    wanted = {(name, "2", "deny"), (name, "3", "allow"), (name, "default", "deny")}
    deadline = time.monotonic() + 5  # squid's log datagrams are read by another thread
    after = scrape()
    while any(after.get(k, 0) <= before.get(k, 0) for k in wanted):
        assert time.monotonic() < deadline, (before, after)
        time.sleep(0.2)
        after = scrape()
    # Nothing here is allowed by default (no last '*'): the readiness probe's bare connections
    # to squid were not counted as requests.
    assert after.get((name, "default", "allow"), 0) == 0


def test_ipv6_destinations_leave_from_the_reserved_ipv6_address(http_world: ProxyWorld) -> None:
    lab = http_world.lab
    done = curl(lab, "-x", PROXY, "http://[2001:db8:113::25]/v6")
    assert status_of(done) == "200", done.stderr
    assert SOURCE6 in peers(lab, "[2001:db8:113::25]:80")
    # The proxy itself answers on the pod's IPv6 address too.
    done = curl(lab, "-x", f"http://[{labmod.ROUTER_POD6.ip}]:8080", "http://[2001:db8:113::26]/")
    assert status_of(done) == "403"
    assert peers(lab, "[2001:db8:113::26]:80") == []


# --------------------------------------------------------------------------- the file, reloaded


def test_rules_file_is_reloaded_and_a_bad_edit_keeps_the_running_rules(
    tmp_path: Path,
) -> None:
    rules = tmp_path / "rules"
    rules.write_text("203.0.113.25\n")
    rules.chmod(0o644)
    env = {"EGRESS_HTTP_PROXY_DESTINATION_FILE": str(rules), "EGRESS_ROUTER_WATCH_SECONDS": "0.2"}
    gen = build("http-proxy", env)
    world = next(gen)
    try:
        lab = world.lab
        assert status_of(curl(lab, "-x", PROXY, "http://203.0.113.27/")) == "403"
        # CIDR, and a deny before the broader allow.
        rules.write_text("!203.0.113.26\n203.0.113.24/30\n")
        deadline = time.monotonic() + WAIT
        while status_of(curl(lab, "-x", PROXY, "http://203.0.113.27/cidr")) != "200":
            assert time.monotonic() < deadline, "the edit was not applied"
            time.sleep(0.3)
        assert SOURCE in peers(lab, "203.0.113.27:80")
        assert status_of(curl(lab, "-x", PROXY, "http://203.0.113.26/")) == "403"
        rules.write_text("203.0.113.24/30\nintranet\n")
        time.sleep(1.5)
        assert status_of(curl(lab, "-x", PROXY, "http://203.0.113.26/")) == "403"
        log = world.logs()
        assert "line 2 'intranet': 'intranet' is a single-label name" in log
        assert "the running rules stay" in log
        assert "denied GET http://203.0.113.26/ from 10.128.0.10: line 1: !203.0.113.26" in log
    finally:
        gen.close()


# --------------------------------------------------------------------------- DNS proxy

DNS_FORWARDS = (
    "5000 api.example.com 80\n5001 203.0.113.27 9000\n5002 multi.example.com 80\n"
    "5003 [2001:db8:113::25] 80\n"
)


@pytest.fixture(scope="module")
def dns_world() -> Iterator[ProxyWorld]:
    yield from build("dns-proxy", {"EGRESS_DNS_PROXY_DESTINATION": DNS_FORWARDS})


def test_every_port_forwards_from_the_reserved_address(dns_world: ProxyWorld) -> None:
    lab = dns_world.lab
    for port, server, source in (
        (5000, "203.0.113.27:80", SOURCE),
        (5001, "203.0.113.27:9000", SOURCE),
        (5003, "[2001:db8:113::25]:80", SOURCE6),
    ):
        result = labmod.dial(lab, "tcp", ROUTER, port)
        assert result.ok, result
        assert result.server == server
        assert str(result.peer_ip) == source
    # A port that forwards nothing is closed at once (no listener; nothing redirected).
    assert labmod.dial(lab, "tcp", ROUTER, 5009, timeout=2).error == "refused"
    # The pod's IPv6 address is a listener too.
    assert labmod.dial(lab, "tcp", str(labmod.ROUTER_POD6.ip), 5001).server == "203.0.113.27:9000"


def test_several_addresses_become_several_servers(dns_world: ProxyWorld) -> None:
    lab = dns_world.lab
    servers = {labmod.dial(lab, "tcp", ROUTER, 5002).server for _ in range(6)}
    assert servers == {"203.0.113.25:80", "203.0.113.26:80"}


def test_a_changed_address_is_followed_within_the_hold_time(dns_world: ProxyWorld) -> None:
    lab = dns_world.lab
    assert labmod.dial(lab, "tcp", ROUTER, 5000).server == "203.0.113.27:80"
    labmod.set_dns_records(lab, {**RECORDS, "api.example.com": {"A": ["203.0.113.25"], "ttl": 1}})
    try:
        deadline = time.monotonic() + 12  # hold valid 10s, resolved every second
        while labmod.dial(lab, "tcp", ROUTER, 5000).server != "203.0.113.25:80":
            assert time.monotonic() < deadline, "the new address was not followed"
            time.sleep(0.5)
    finally:
        labmod.set_dns_records(lab, RECORDS)


def test_the_physical_side_reaches_no_forwarded_port(dns_world: ProxyWorld) -> None:
    lab = dns_world.lab
    for host in (SOURCE,):
        result = labmod.dial(lab, "tcp", host, 5001, ns=lab.gw, timeout=2)
        assert not result.ok
    assert labmod.dial(lab, "tcp", ROUTER, 5001).ok  # the pod side still does


def test_dns_proxy_metrics_count_connections_and_servers(dns_world: ProxyWorld) -> None:
    lab = dns_world.lab
    assert labmod.dial(lab, "tcp", ROUTER, 5001).ok
    done = labmod.run_in(lab.client, ["curl", "-sS", "-m", "5", f"http://{ROUTER}:9090/metrics"])
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(done.stdout)
        for s in family.samples
    }
    assert samples[("egress_router_dns_proxy_connections_total", (("port", "5001"),))] >= 1
    assert samples[("egress_router_dns_proxy_servers", (
        ("port", "5002"), ("state", "up"), ("target", "multi.example.com")))] == 2


def test_dns_proxy_file_is_reloaded_and_a_bad_edit_keeps_the_running_forwards(
    tmp_path: Path,
) -> None:
    forwards = tmp_path / "forwards"
    forwards.write_text("5000 203.0.113.25 80\n")
    forwards.chmod(0o644)
    env = {"EGRESS_DNS_PROXY_DESTINATION_FILE": str(forwards),
           "EGRESS_ROUTER_WATCH_SECONDS": "0.2"}
    gen = build("dns-proxy", env)
    world = next(gen)
    try:
        lab = world.lab
        assert labmod.dial(lab, "tcp", ROUTER, 5000).server == "203.0.113.25:80"
        assert not labmod.dial(lab, "tcp", ROUTER, 5004, timeout=2).ok
        forwards.write_text("5000 203.0.113.26 80\n5004 203.0.113.27 9000\n")
        deadline = time.monotonic() + WAIT
        while labmod.dial(lab, "tcp", ROUTER, 5004, timeout=2).server != "203.0.113.27:9000":
            assert time.monotonic() < deadline, "the edit was not applied"
            time.sleep(0.3)
        assert labmod.dial(lab, "tcp", ROUTER, 5000).server == "203.0.113.26:80"
        forwards.write_text("5000 203.0.113.26 80\n5000 203.0.113.27 9000\n")
        time.sleep(1.5)
        assert labmod.dial(lab, "tcp", ROUTER, 5004).server == "203.0.113.27:9000"
        log = world.logs()
        assert "line 2 '5000 203.0.113.27 9000': port 5000 is already forwarded by line 1" in log
        assert "the running forwards stay" in log
    finally:
        gen.close()


def test_a_flood_of_slow_connections_cannot_exhaust_the_proxy_pods_endpoint(
    http_world: ProxyWorld,
) -> None:
    # The proxy pod's port 9090 is open to every pod, as the waiting container's is: 1,000
    # slow connections (a request sent one byte a second) for 10 s. The probes are answered
    # every time, the supervisor's thread count does not grow with the flood, the server lets
    # the slow connections go, and the proxy keeps serving.
    lab = http_world.lab
    pid = http_world.proc.pid
    assert status_of(curl(lab, f"http://{ROUTER}:9090/metrics")) == "200"
    def proxy_serves() -> None:
        assert status_of(curl(lab, "-x", PROXY, "http://203.0.113.25/")) == "200"

    done = flood(lab.client, ROUTER, pid, connections=1000, seconds=10, watch_seconds=8,
                 samples=12, during=proxy_serves)
    print(f"threads {done.calm} calm, at most {done.most} in the flood {done.figures}; "
          f"/readyz {done.codes}")
    assert done.figures["peak"] >= 500  # the flood was real
    assert done.figures["closed_by_server"] >= 200  # deadlines and evictions let them go
    assert done.codes and done.codes == [200] * len(done.codes)
    assert done.most <= done.calm + 1, (done.calm, done.most)
