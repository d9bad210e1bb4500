"""The active/standby pair with its pods set up by the CNI plugin (Multus's way), in the HA lab.

Each router pod gets ``macvlan0`` and its data path from ``egress-router-cni``
ADD (run by ``cnirun`` in its node's namespace, as a runtime would) with the
``"ha"`` field, then ``wait`` reads the same configuration and runs
keepalived. Who holds the reserved address is read with ``ip -j addr`` in
each pod's namespace; a failover counts when the destination saw a new
connection from the reserved address through the other replica.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from egress_router.lab import ha as halab
from egress_router.lab import world

from .conftest import new_prefix, require_privileged

pytestmark = pytest.mark.privileged

FAILOVER_BOUND = 1.5  # s, as in test_ha.py


@pytest.fixture(scope="module")
def pair() -> Iterator[halab.HaLab]:
    require_privileged()
    if not os.access(f"{halab.CNI_PATH}/bridge", os.X_OK):
        pytest.fail(f"needs Debian's CNI reference plugins in {halab.CNI_PATH} (apt install "
                    "containernetworking-plugins)", pytrace=False)
    with halab.running(new_prefix(), attachment="cni") as lab:
        yield lab


def _addresses(ns: str) -> list[str]:
    links = json.loads(world.run_in(ns, ["ip", "-j", "-4", "addr", "show"]).stdout)
    return [a["local"] for link in links for a in link.get("addr_info", [])]


def test_add_leaves_the_address_to_keepalived_and_check_passes_on_both(
    pair: halab.HaLab,
) -> None:
    active = halab.settle(pair)
    standby = "r2" if active == "r1" else "r1"
    halab.standby_ready(pair, standby)
    assert halab.holders(pair) == [active]
    # The cached ADD result lists no address: the role decides who holds it.
    recorded = json.loads(pair.cni_result_path(standby).read_text())
    assert recorded["ips"] == [] and recorded["interfaces"][0]["name"] == "macvlan0"
    # The standby has ADD's data path: our table, the default route via the gateway.
    ns = pair.ns(standby)
    table = world.run_in(ns, ["nft", "list", "table", "inet", "egress_router"])
    assert table.returncode == 0 and "snat" in table.stdout
    routes = json.loads(world.run_in(ns, ["ip", "-j", "route"]).stdout)
    assert any(r["dst"] == "default" and r.get("gateway") == halab.GATEWAY
               and r.get("dev") == "macvlan0" for r in routes)
    # CHECK: neither the standby's missing address nor the active's address is drift.
    for replica in (standby, active):
        cp = halab.cni(pair, "CHECK", replica)
        assert cp.returncode == 0, cp.stdout + cp.stderr
    # The control: the same CHECK without "ha" reports the standby's missing address.
    plain = {k: v for k, v in halab.cni_config().items() if k != "ha"}
    cp = halab.cni(pair, "CHECK", standby, config=plain)
    assert cp.returncode == 1 and "192.168.12.99/24" in json.loads(cp.stdout)["msg"], cp.stdout


@pytest.mark.parametrize("kind", ["sigkill", "delete"])
def test_kill_the_active_and_the_standby_takes_over(pair: halab.HaLab, kind: str) -> None:
    client = halab.start_client(pair, 120)
    try:
        halab.wait_ready(pair, client, halab.settle(pair))
        trial = halab.trial(pair, client, kind)
    finally:
        client.close()
    assert trial.took_over != trial.failed
    assert trial.failover < FAILOVER_BOUND, trial
    assert trial.switchovers_on_return == 0, trial
    assert halab.holders(pair) == [trial.took_over]


def test_del_removes_what_add_and_keepalived_left(pair: halab.HaLab) -> None:
    active = halab.settle(pair)
    standby = "r2" if active == "r1" else "r1"
    halab.standby_ready(pair, standby)
    ns = pair.ns(active)
    pids = world._netns_pids(ns)
    assert any(Path(f"/proc/{p}/comm").read_text().strip() == "keepalived" for p in pids)
    # Everything in the pod stopped, then SIGKILLed: no process gets to release the
    # address (wait's death would SIGTERM keepalived, keepalived's its VRRP child).
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    pair.routers.pop(active).wait(10)
    assert halab.RESERVED in _addresses(ns)
    halab.cni(pair, "DEL", active)
    left: dict[str, Any] = {
        "addresses": [a for a in _addresses(ns) if a != "127.0.0.1"],
        "table": world.run_in(ns, ["nft", "list", "table", "inet", "egress_router"]).returncode,
        "links": [link["ifname"] for link in
                  json.loads(world.run_in(ns, ["ip", "-j", "link"]).stdout)],
        "rules": world.run_in(ns, ["ip", "rule"]).stdout,
    }
    assert left["addresses"] == [str(halab.REPLICAS[active].ip)]  # the pod's eth0 only
    assert left["table"] != 0
    assert "macvlan0" not in left["links"]
    assert "25970" not in left["rules"]  # the pod return path's policy rules are gone
    routes = json.loads(world.run_in(ns, ["ip", "-j", "route"]).stdout)
    assert [r.get("gateway") for r in routes if r["dst"] == "default"] == [str(halab.POD_GW.ip)]
    halab.wait_for(lambda: halab.holders(pair) == [standby], 5.0,
                   "see the standby take the address")
    # The pod comes back (ADD again) and joins as a standby.
    halab.new_pod(pair, active)
    halab.start_router(pair, active)
    halab.standby_ready(pair, active)
    assert halab.holders(pair) == [standby]


def test_add_refuses_a_vrid_another_group_uses_and_leaves_nothing(pair: halab.HaLab) -> None:
    active = halab.settle(pair)
    standby = "r2" if active == "r1" else "r1"
    halab.standby_ready(pair, standby)
    halab.stop_router(pair, standby)
    halab.cni(pair, "DEL", standby)  # the pod as the runtime leaves it: no router in it
    ns, node = pair.ns(standby), pair.ns(halab.NODES[standby])
    try:
        # Same VRID, another reserved address: another pair's, as far as the adverts say.
        clashing = {**halab.cni_config(),
                    "ip": {**halab.cni_config()["ip"], "addresses": ["192.168.12.98/24"]}}
        cp = halab.cni(pair, "ADD", standby, config=clashing, check=False)
        assert cp.returncode == 1, cp.stdout + cp.stderr
        error = json.loads(cp.stdout)
        assert error["code"] == 7
        assert error["msg"].startswith(
            "cannot parse ha.vrid '51': another VRRP group on the egress network uses this "
            "VRID (169.254."), error
        assert f"advertises VRID {halab.VRID} for 192.168.12.99" in error["msg"]
        # Read back: no macvlan in the pod or on the node, no table, the pod's own route.
        pod_links = [link["ifname"] for link in
                     json.loads(world.run_in(ns, ["ip", "-j", "link"]).stdout)]
        assert "macvlan0" not in pod_links
        node_links = [link["ifname"] for link in
                      json.loads(world.run_in(node, ["ip", "-j", "link"]).stdout)]
        assert not [name for name in node_links if name.startswith("egr")], node_links
        table = world.run_in(ns, ["nft", "list", "table", "inet", "egress_router"])
        assert table.returncode != 0
        routes = json.loads(world.run_in(ns, ["ip", "-j", "route"]).stdout)
        assert [r.get("gateway") for r in routes if r["dst"] == "default"] == \
            [str(halab.POD_GW.ip)]
        assert halab.holders(pair) == [active]
    finally:
        halab.cni(pair, "ADD", standby)  # the control: the pair's own configuration is taken
        halab.start_router(pair, standby)
    halab.standby_ready(pair, standby)
    assert halab.holders(pair) == [active]
