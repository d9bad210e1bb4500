"""The router end to end in the lab: real packets, asserted from the far side.

Each test builds a fresh lab, runs the product in the router namespace as the
init container would, sends real TCP and UDP traffic from the client pod, and
checks what the destination server recorded (which destination answered,
which source address it saw). Kernel state is read back through `ip -j` and
`nft -j`, a handle independent of the product's pyroute2 code.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from egress_router.lab import world as labmod

pytestmark = pytest.mark.privileged

ROUTER4 = "10.128.0.2"
ROUTER6 = "fd00:128::2"
SOURCE4 = "192.168.12.99"
SOURCE6 = "2001:db8:12::99"

# The demo's own configuration (the seed example plus a UDP rule), so the demo is what is tested.
SEED = {**labmod.DEMO_ENV, "EGRESS_ROUTER_MODE": "init", "EGRESS_ANNOUNCE_INTERVAL": "0.1"}
DUAL = {
    **SEED,
    "EGRESS_SOURCE": "192.168.12.99/24,2001:db8:12::99/64",
    "EGRESS_GATEWAY": "192.168.12.1,2001:db8:12::1",
    "EGRESS_DESTINATION": (
        "80 tcp 203.0.113.25\n80 tcp 2001:db8:113::25\n8443 tcp 2001:db8:113::26 443\n"
        "53 udp 2001:db8:113::25\n5000 sctp 2001:db8:113::25\n"
        "203.0.113.27\n2001:db8:113::27\n"
    ),
}



def init(lab: labmod.Lab, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = labmod.router_command(lab, env)
    assert done.returncode == 0, f"router init failed ({done.returncode}): {done.stderr}"
    return done


def ip_json(ns: str, *args: str) -> Any:
    done = labmod.run_in(ns, ["ip", "-j", *args], timeout=10)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout or "[]")


def nft_table(ns: str) -> list[dict[str, Any]] | None:
    done = labmod.run_in(ns, ["nft", "-j", "list", "table", "inet", "egress_router"], timeout=10)
    if done.returncode != 0:
        return None
    items: list[dict[str, Any]] = json.loads(done.stdout)["nftables"]

    def strip(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k != "handle"}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    # Handles are renumbered when the table is replaced; what matters is the content.
    return [strip(item) for item in items if "metainfo" not in item]


def kernel_state(lab: labmod.Lab) -> dict[str, Any]:
    addrs = [
        (a["family"], a["local"], a["prefixlen"])
        for link in ip_json(lab.router, "addr", "show", "dev", "macvlan0")
        for a in link["addr_info"]
        if a.get("scope") == "global"
    ]
    return {
        "addresses": sorted(addrs),
        "link_up": "UP" in ip_json(lab.router, "link", "show", "dev", "macvlan0")[0]["flags"],
        "routes4": ip_json(lab.router, "-4", "route", "show", "table", "main"),
        "routes6": [
            r for r in ip_json(lab.router, "-6", "route", "show", "table", "main")
            if not r["dst"].startswith("fe80")
        ],
        "nft": nft_table(lab.router),
        "forwarding": labmod.run_in(
            lab.router, ["sysctl", "-n", "net.ipv4.ip_forward"], timeout=10
        ).stdout.strip(),
    }


def assert_redirected(
    lab: labmod.Lab, proto: str, host: str, port: int, *, expected: str, source: str
) -> None:
    result = labmod.dial(lab, proto, host, port, timeout=3.0)
    assert result.ok, f"{proto} {host}:{port}: {result.error} {result.detail}"
    assert result.server == expected
    assert str(result.peer_ip) == source
    # The destination's own log (not the client's view) records the source it saw.
    seen = [
        e for e in labmod.served(lab) if e.get("server") == expected and e.get("proto") == proto
    ]
    assert seen, f"{expected} recorded nothing"
    assert seen[-1]["peer"].rsplit(":", 1)[0].strip("[]") == source


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_seed_example_end_to_end(lab: labmod.Lab, backend: str) -> None:
    init(lab, {**SEED, "EGRESS_ROUTER_BACKEND": backend})
    for proto, port, expected in labmod.DEMO_DIALS:
        assert_redirected(lab, proto, ROUTER4, port, expected=expected, source=SOURCE4)


def test_without_fallback_other_ports_are_refused_promptly(lab: labmod.Lab) -> None:
    init(lab, {**SEED, "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n53 udp 203.0.113.25\n"})
    assert_redirected(lab, "tcp", ROUTER4, 80, expected="203.0.113.25:80", source=SOURCE4)
    for proto in ("tcp", "udp"):
        result = labmod.dial(lab, proto, ROUTER4, 9000, timeout=3.0)
        assert result.error == "refused", result  # a refusal (RST / port unreachable), no timeout
    assert not [e for e in labmod.served(lab) if e.get("server") == "203.0.113.27:9000"]


def test_dual_stack(lab: labmod.Lab) -> None:
    init(lab, DUAL)
    assert_redirected(lab, "tcp", ROUTER6, 80, expected="[2001:db8:113::25]:80", source=SOURCE6)
    assert_redirected(lab, "tcp", ROUTER6, 8443, expected="[2001:db8:113::26]:443", source=SOURCE6)
    assert_redirected(lab, "udp", ROUTER6, 53, expected="[2001:db8:113::25]:53", source=SOURCE6)
    assert_redirected(lab, "tcp", ROUTER6, 9000, expected="[2001:db8:113::27]:9000", source=SOURCE6)
    assert_redirected(lab, "tcp", ROUTER4, 80, expected="203.0.113.25:80", source=SOURCE4)
    assert_redirected(lab, "tcp", ROUTER4, 9000, expected="203.0.113.27:9000", source=SOURCE4)
    elements = json.dumps(nft_table(lab.router))
    assert '"sctp"' in elements  # the SCTP rule is in the kernel's map (no SCTP sockets here)


def test_init_three_times_gives_identical_kernel_state(lab: labmod.Lab) -> None:
    states = []
    for _ in range(3):
        init(lab, DUAL)
        states.append(kernel_state(lab))
    assert states[0] == states[1] == states[2]
    state = states[0]
    assert state["addresses"] == [("inet", SOURCE4, 24), ("inet6", SOURCE6, 64)]
    assert state["link_up"]
    assert state["forwarding"] == "1"
    defaults4 = [r for r in state["routes4"] if r["dst"] == "default"]
    assert defaults4 == [
        {"dst": "default", "gateway": "192.168.12.1", "dev": "macvlan0", "protocol": "static",
         "flags": []}
    ]
    assert [r["dst"] for r in state["routes6"] if r["dst"] == "default"] == ["default"]
    assert state["nft"] is not None
    chains = [i["chain"]["name"] for i in state["nft"] if "chain" in i]
    assert sorted(chains) == [
        "antispoof", "forward", "guard", "input", "postrouting", "prerouting", "source_guard"
    ]
    # Only our table: looking for stale iptables rules must not create empty xtables tables.
    tables = labmod.run_in(lab.router, ["nft", "list", "tables"], timeout=10).stdout.split("\n")
    assert [t for t in tables if t.strip()] == ["table inet egress_router"]
    assert_redirected(lab, "tcp", ROUTER4, 80, expected="203.0.113.25:80", source=SOURCE4)


def test_bad_config_after_good_changes_nothing(lab: labmod.Lab) -> None:
    init(lab, SEED)
    before = kernel_state(lab)
    bad = {**SEED, "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n8080 tcp 999.999.999.999 80\n"}
    done = labmod.router_command(lab, bad)
    assert done.returncode == 1
    assert "EGRESS_DESTINATION line 2 '8080 tcp 999.999.999.999 80'" in done.stderr
    assert "Traceback" not in done.stderr
    missing = labmod.router_command(lab, {**SEED, "EGRESS_INTERFACE": "net9"})
    assert missing.returncode == 3
    assert "interface 'net9' does not exist" in missing.stderr
    assert kernel_state(lab) == before
    assert_redirected(lab, "tcp", ROUTER4, 8080, expected="203.0.113.26:80", source=SOURCE4)


def _start_listener(
    ns: str, endpoints: list[str], log: Path, tmp: Path
) -> subprocess.Popen[bytes]:
    ready = tmp / f"ready-{ns}"
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "egress_router.lab.server", "serve",
         "--ready", str(ready), "--log", str(log), *endpoints],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "listener did not start"
        time.sleep(0.05)
    return proc


def _arrived(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_one_way_door_from_the_physical_side(lab: labmod.Lab, tmp_path: Path) -> None:
    init(lab, SEED)
    log = tmp_path / "client-pod.log"
    listener = _start_listener(
        lab.client, ["tcp:10.128.0.10:2222", "udp:10.128.0.10:2222"], log, tmp_path
    )
    try:
        # The physical side cannot use a redirect: the reserved address's port 80 is closed.
        served_before = len(labmod.served(lab))
        for proto, port in (("tcp", 80), ("udp", 53), ("tcp", 9000)):
            result = labmod.dial(lab, proto, SOURCE4, port, timeout=1.0, ns=lab.gw)
            assert not result.ok, result
        assert len(labmod.served(lab)) == served_before
        # Nor reach the pod network through the router, even with a route pointing at it:
        # nothing arrives in the client pod.
        labmod.run_in(lab.gw, ["ip", "route", "replace", "10.128.0.0/24", "via", SOURCE4])
        blocked = labmod.dial(lab, "tcp", "10.128.0.10", 2222, timeout=1.0, ns=lab.gw)
        assert not blocked.ok
        labmod.dial(lab, "udp", "10.128.0.10", 2222, timeout=1.0, ns=lab.gw)
        assert _arrived(log) == []
        # Control: without our table the same datagram does arrive, so it is the policy that
        # blocks it, not the topology.
        labmod.run_in(lab.router, ["nft", "delete", "table", "inet", "egress_router"])
        labmod.dial(lab, "udp", "10.128.0.10", 2222, timeout=1.0, ns=lab.gw)
        arrived = _arrived(log)
        assert [e["peer"].split(":")[0] for e in arrived] == ["192.168.12.1"]
    finally:
        listener.terminate()
        listener.wait(timeout=10)


def test_ten_thousand_rules_from_a_file(lab: labmod.Lab, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    lines = [f"{port} tcp 203.0.113.25 80" for port in range(10000, 19999)]
    lines += ["19999 tcp 203.0.113.26 443", "# fallback-free: other ports refused"]
    rules.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in SEED.items() if k != "EGRESS_DESTINATION"}
    env |= {"EGRESS_DESTINATION_FILE": str(rules), "EGRESS_ROUTER_DEBUG": "true",
            "EGRESS_ANNOUNCE_COUNT": "1"}
    done = init(lab, env)
    stages = dict(re.findall(r"DEBUG: (.+?): ([0-9.]+)s$", done.stderr, re.MULTILINE))
    # One nft process: no `nft -c` before the apply (one transaction, checked whole).
    assert "check nftables ruleset" not in stages, stages
    assert "apply nftables ruleset" in stages, stages  # its time: `python -m bench wait`
    table = nft_table(lab.router)
    assert table is not None
    (redirect,) = [i["map"] for i in table if "map" in i]
    assert len(redirect["elem"]) == 10000
    assert_redirected(lab, "tcp", ROUTER4, 19999, expected="203.0.113.26:443", source=SOURCE4)
    assert_redirected(lab, "tcp", ROUTER4, 10000, expected="203.0.113.25:80", source=SOURCE4)


def _neighbour(lab: labmod.Lab, address: str) -> str | None:
    for entry in ip_json(lab.gw, "neigh", "show", "dev", "lan0"):
        if entry["dst"] == address:
            return str(entry.get("lladdr"))
    return None


@pytest.mark.parametrize(("count", "learns"), [("0", False), ("3", True)])
def test_announcement_updates_stale_neighbours(
    lab: labmod.Lab, count: str, learns: bool
) -> None:
    stale = "02:00:00:00:de:ad"
    for address in (SOURCE4, SOURCE6):
        labmod.run_in(lab.gw, ["ip", "neigh", "replace", address, "lladdr", stale,
                               "dev", "lan0", "nud", "stale"])
    init(lab, {**DUAL, "EGRESS_ANNOUNCE_COUNT": count})
    mac = ip_json(lab.router, "link", "show", "dev", "macvlan0")[0]["address"]
    expected = mac if learns else stale
    assert _neighbour(lab, SOURCE4) == expected
    assert _neighbour(lab, SOURCE6) == expected


def test_legacy_mode_waits_and_exits_on_sigterm(lab: labmod.Lab) -> None:
    proc = labmod.spawn_router(lab, {**SEED, "EGRESS_ROUTER_MODE": "legacy"})
    try:
        deadline = time.monotonic() + 20
        while nft_table(lab.router) is None or not labmod.dial(
            lab, "tcp", ROUTER4, 80, timeout=1.0
        ).ok:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "legacy mode never became ready"
            time.sleep(0.1)
        time.sleep(0.5)
        assert proc.poll() is None  # still waiting after setup
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0  # how quickly: measured by `python -m bench wait`
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def test_iptables_backend_converges_without_duplicates(lab: labmod.Lab) -> None:
    env = {**DUAL, "EGRESS_ROUTER_BACKEND": "iptables"}
    for _ in range(3):
        init(lab, env)
    for save in ("iptables-save", "ip6tables-save"):
        dump = labmod.run_in(lab.router, [save], timeout=10).stdout
        assert dump.count("-A PREROUTING -j EGRESS-ROUTER-PREROUTING") == 1, dump
        assert dump.count("-A FORWARD -j EGRESS-ROUTER-FORWARD") == 1
    assert_redirected(lab, "tcp", ROUTER6, 80, expected="[2001:db8:113::25]:80", source=SOURCE6)
    # Switching back to nftables removes the iptables rules (no double NAT, no stale policy).
    init(lab, DUAL)
    dump = labmod.run_in(lab.router, ["iptables-save"], timeout=10).stdout
    assert "EGRESS-ROUTER" not in dump.replace(":EGRESS-ROUTER", "")
    assert_redirected(lab, "tcp", ROUTER4, 80, expected="203.0.113.25:80", source=SOURCE4)


def test_clients_beyond_the_pod_subnet_get_their_replies(lab: labmod.Lab) -> None:
    """A client on another subnet (another node) is answered through the pod network.

    The router pod only has its own subnet as a connected route; its default
    route, the way to the rest of the cluster, is replaced by the egress
    gateway. Policy rules keep replies on the pod side: a redirected
    connection (replies arrive on macvlan0) and a refusal (the router's own
    RST from its pod address) both reach the remote client.
    """
    remote = f"{lab.prefix}-remote"
    labmod.run_in(lab.node, ["true"])  # the lab exists
    subprocess.run(["ip", "netns", "add", remote], check=True, timeout=10)
    try:
        for argv in (
            ["ip", "-n", lab.node, "link", "add", "rc0", "type", "veth", "peer", "name", "eth0",
             "netns", remote],
            ["ip", "-n", lab.node, "addr", "add", "10.129.0.1/24", "dev", "rc0"],
            ["ip", "-n", lab.node, "link", "set", "rc0", "up"],
            ["ip", "netns", "exec", lab.node, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
            ["ip", "-n", remote, "link", "set", "lo", "up"],
            ["ip", "-n", remote, "addr", "add", "10.129.0.10/24", "dev", "eth0"],
            ["ip", "-n", remote, "link", "set", "eth0", "up"],
            ["ip", "-n", remote, "route", "add", "default", "via", "10.129.0.1"],
        ):
            subprocess.run(argv, check=True, timeout=10)
        init(lab, {**SEED, "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n"})
        result = labmod.dial(lab, "tcp", ROUTER4, 80, timeout=3.0, ns=remote)
        assert result.ok, result
        assert result.server == "203.0.113.25:80"
        assert str(result.peer_ip) == SOURCE4
        assert labmod.dial(lab, "tcp", ROUTER4, 9000, timeout=3.0, ns=remote).error == "refused"
        rules = ip_json(lab.router, "rule", "show")
        assert {r["priority"] for r in rules} >= {25970, 25971, 25972, 25973}
        # Control: without the rules both replies leave through macvlan0 and are lost.
        for priority in ("25971", "25973"):
            labmod.run_in(lab.router, ["ip", "rule", "del", "priority", priority])
        assert labmod.dial(lab, "tcp", ROUTER4, 80, timeout=1.5, ns=remote).error == "timeout"
        assert labmod.dial(lab, "tcp", ROUTER4, 9000, timeout=1.5, ns=remote).error == "timeout"
        # A re-run (pod restart) restores them, reading the pod gateway from our table.
        init(lab, {**SEED, "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n"})
        assert labmod.dial(lab, "tcp", ROUTER4, 80, timeout=3.0, ns=remote).ok
    finally:
        subprocess.run(["ip", "netns", "del", remote], check=False, timeout=10)


# TCP to port 53: an answer, even a refusal, means the packet got there and back.
_REACH = (
    "import socket, sys\n"
    "s = socket.socket(); s.settimeout(1.5)\n"
    "try:\n    s.connect((sys.argv[1], 53)); print('reached')\n"
    "except ConnectionRefusedError:\n    print('reached')\n"
    "except OSError as e:\n    print('lost', e)\n"
)


def test_init_routes_the_resolver_so_names_resolve_when_run_again(lab: labmod.Lab) -> None:
    # The resolver is a cluster DNS Service: on the service network, reachable only through
    # the pod network's gateway (the node), not on-link and not behind the egress gateway.
    labmod.start_dns(lab, {"api.lab.test": {"A": ["203.0.113.25"], "ttl": 60}},
                     service_network=True)
    resolver = labmod.SERVICE_RESOLVER
    env = {**SEED, "EGRESS_DESTINATION": "80 tcp api.lab.test\n"}
    init(lab, env)  # a fresh pod: its default route still goes to the pod gateway
    routes = ip_json(lab.router, "route", "show", resolver)
    assert [(r.get("gateway"), r["dev"]) for r in routes] == [("10.128.0.1", "eth0")]
    reach = [sys.executable, "-c", _REACH]
    assert labmod.run_in(lab.router, [*reach, resolver]).stdout.startswith("reached")
    # Control: without that route the resolver is out of reach (the default route now
    # points at the egress gateway), as a second init would find it without the fix.
    labmod.run_in(lab.router, ["ip", "route", "del", resolver])
    assert labmod.run_in(lab.router, [*reach, resolver]).stdout.startswith("lost")
    queries = len(labmod.dns_queries(lab))
    # init again (an init container re-run in a surviving network namespace): the route
    # comes back before the lookup, the name resolves, the rules redirect to its address.
    done = init(lab, env)
    assert "the router's own lookups" in done.stderr, done.stderr
    assert [q["name"].rstrip(".") for q in labmod.dns_queries(lab)[queries:]].count(
        "api.lab.test") >= 1
    routes = ip_json(lab.router, "route", "show", resolver)
    assert [(r.get("gateway"), r["dev"]) for r in routes] == [("10.128.0.1", "eth0")]
    assert_redirected(lab, "tcp", ROUTER4, 80, expected="203.0.113.25:80", source=SOURCE4)
    # Only the router's own traffic takes it: the physical side's default is unchanged.
    defaults = [r for r in ip_json(lab.router, "-4", "route", "show", "table", "main")
                if r["dst"] == "default"]
    assert [(r["gateway"], r["dev"]) for r in defaults] == [("192.168.12.1", "macvlan0")]
