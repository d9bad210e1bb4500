"""A source-address pool in the lab: placed, spread over, repaired, and its port space seen.

``egress-router wait`` runs in a fresh lab's router pod with three source addresses. The
destination server records the peer of every connection (which pool address it came
from); the addresses are read back with ``ip -j`` in the router's namespace; the port-space
metric is read from ``/metrics`` as Prometheus would, from the client pod.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator

import pytest

from egress_router.lab import world as labmod
from support import httpget as http
from support.waiting import eventually

pytestmark = pytest.mark.privileged

ROUTER4 = "10.128.0.2"
POOL = ("192.168.12.99", "192.168.12.100", "192.168.12.101")
ENV = {
    "EGRESS_SOURCE": ",".join(f"{a}/24" for a in POOL),
    "EGRESS_GATEWAY": "192.168.12.1",
    "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n",
    "EGRESS_ANNOUNCE_INTERVAL": "0.1",
    "EGRESS_ANNOUNCE_COUNT": "1",
    "EGRESS_ROUTER_WATCH_SECONDS": "0.2",
    "EGRESS_ROUTER_RECONCILE_SECONDS": "1",
    "EGRESS_ROUTER_CONNTRACK_SAMPLE_SECONDS": "1",
}
IN_USE = "egress_router_nat_ports_in_use"


def scrape(lab: labmod.Lab, path: str = "/metrics") -> tuple[int, str]:
    answer = http.get(lab.client, f"http://{ROUTER4}:9090{path}")
    return (answer.status, answer.body) if answer.status is not None else (0, answer.error)


def in_use(lab: labmod.Lab) -> dict[str, float]:
    """``egress_router_nat_ports_in_use`` to 203.0.113.25:80, by source address."""
    _status, body = scrape(lab)
    found: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith(IN_USE + "{") and 'destination="203.0.113.25",port="80"' in line:
            source = line.split('source="', 1)[1].split('"', 1)[0]
            found[source] = float(line.rsplit(" ", 1)[1])
    return found


def addresses(lab: labmod.Lab) -> list[str]:
    done = labmod.run_in(lab.router, ["ip", "-j", "-4", "address", "show", "dev", "macvlan0"],
                         timeout=10)
    return sorted(
        a["local"] for link in json.loads(done.stdout) for a in link.get("addr_info", [])
        if a.get("scope") == "global"
    )


@pytest.fixture
def router(lab: labmod.Lab) -> Iterator[subprocess.Popen[str]]:
    proc = labmod.spawn_router(lab, ENV, args=["wait"])
    try:
        eventually(lambda: proc.poll() is None and scrape(lab, "/readyz")[0] == 200, 30,
                   "the router became ready")
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)


def test_connections_leave_from_every_pool_address_which_stay_and_are_counted(
    lab: labmod.Lab, router: subprocess.Popen[str]
) -> None:
    assert addresses(lab) == sorted(POOL)
    assert sum(in_use(lab).values()) == 0  # nothing tracked yet: nothing in use
    # Two clients: the client pod and the node (10.128.0.1, as a host-network pod).
    for n in range(30):
        assert labmod.dial(lab, "tcp", ROUTER4, 80, ns=lab.node if n % 2 else None).ok
    peers = Counter(
        e["peer"].rsplit(":", 1)[0] for e in labmod.served(lab) if e["server"] == "203.0.113.25:80"
    )
    # Spread by a hash of client address and port: every address takes some (all three
    # miss one with a chance of 3 * (2/3)**30 < 2e-5).
    assert set(peers) == set(POOL) and sum(peers.values()) == 30, peers
    # The port space moves: 30 tracked connections (TIME_WAIT holds their ports).
    eventually(lambda: in_use(lab) == {a: float(n) for a, n in peers.items()}, 10,
               "the port-space metric counts the connections")
    _status, body = scrape(lab)
    assert 'egress_router_nat_ports_capacity{family="ipv4",protocol="tcp",' \
        'source="192.168.12.100",destination="203.0.113.25",port="80"} 64512' in body
    assert "egress_router_conntrack_insert_failed_total 0" in body

    # One pool address deleted behind the router's back: repaired, and used again.
    labmod.run_in(lab.router, ["ip", "address", "del", "192.168.12.100/24", "dev", "macvlan0"],
                  timeout=10)
    assert "192.168.12.100" not in addresses(lab)
    eventually(lambda: addresses(lab) == sorted(POOL), 10, "the address repaired")
    before = len(labmod.served(lab))

    def left_from_100() -> bool:
        assert labmod.dial(lab, "tcp", ROUTER4, 80).ok
        return any(e["peer"].startswith("192.168.12.100:") for e in labmod.served(lab)[before:])

    eventually(left_from_100, 20, "a connection from the repaired address")
