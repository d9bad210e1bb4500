"""The CNI plugin as Multus runs it: real namespaces, real plugins, real packets.

The test plays container runtime and Multus. The lab builds a node (master
``ens3`` on the physical network, bridge ``cbr0`` for pods), a gateway,
external destinations and a client pod, and leaves the router pod's
namespace empty. Debian's reference ``bridge`` + ``host-local`` plugins give
it its primary ``eth0`` (host-local's state in a temporary directory, never
the host's /var/lib/cni); then ``egress-router-cni`` is invoked from the
node's namespace as the secondary network ``net1``. Success is judged from
the far side (the source address the destination server recorded) and from
kernel state read with ``ip -j`` and ``nft``, never through the plugin.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from egress_router.cni import macvlan
from egress_router.cni import runtime as cnirun
from egress_router.lab import world as labmod

pytestmark = pytest.mark.privileged

PLUGIN = "egress-router-cni"
REFERENCE_PLUGINS = "/usr/lib/cni"
CONTAINER_ID = "ert0router0pod"
ROUTER4 = "10.128.0.2"
ROUTER6 = "fd00:128::2"
SOURCE4 = "192.168.12.99"
SOURCE6 = "2001:db8:12::99"

# The decisions' example NetworkAttachmentDefinition config, as upstream writes it (/32 too).
UPSTREAM_CONF: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "egress-router",
    "type": "egress-router",
    "ip": {
        "addresses": ["192.168.12.99/24"],
        "gateway": "192.168.12.1",
        "destinations": [
            "80 tcp 203.0.113.25",
            "8080 tcp 203.0.113.26/32 80",
            "53 udp 203.0.113.25",
            "203.0.113.27",
        ],
    },
    "interfaceType": "macvlan",
    "interfaceArgs": {"master": "ens3", "mode": "private", "mtu": "1500"},
    "announceInterval": 0.05,
}
IPV6_CONF: dict[str, Any] = {
    **UPSTREAM_CONF,
    "ip": {
        "addresses": ["2001:db8:12::99/64"],
        "gateway": "2001:db8:12::1",
        "destinations": ["80 tcp 2001:db8:113::25/128", "53 udp 2001:db8:113::25"],
    },
}
DUAL_CONF: dict[str, Any] = {
    **UPSTREAM_CONF,
    "ip": {
        "addresses": ["192.168.12.99/24", "2001:db8:12::99/64"],
        "gateway": ["192.168.12.1", "2001:db8:12::1"],
        "destinations": ["80 tcp 203.0.113.25", "80 tcp 2001:db8:113::25"],
    },
}


def _bridge_conf(data_dir: Path) -> dict[str, Any]:
    """The router pod's primary network: Debian's bridge plugin on the node's cbr0."""
    return {
        "cniVersion": "1.0.0",
        "name": "pod-network",
        "type": "bridge",
        "bridge": labmod.BRIDGE,
        "isGateway": False,
        "ipam": {
            "type": "host-local",
            "dataDir": str(data_dir),
            "ranges": [
                [{"subnet": "10.128.0.0/24", "rangeStart": ROUTER4, "rangeEnd": ROUTER4,
                  "gateway": "10.128.0.1"}],
                [{"subnet": "fd00:128::/64", "rangeStart": ROUTER6, "rangeEnd": ROUTER6,
                  "gateway": "fd00:128::1"}],
            ],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
        },
    }


@dataclass
class Pods:
    """A lab whose router pod got its eth0 from the bridge plugin, and a runtime's invoker."""

    lab: labmod.Lab
    primary: dict[str, Any]  # the bridge plugin's ADD result

    def cni(
        self,
        command: str,
        conf: dict[str, Any] | str,
        *,
        prev_result: dict[str, Any] | None = None,
        ifname: str = "net1",
        netns: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> cnirun.Outcome:
        """Run egress-router-cni in the node's namespace, CNI_NETNS the router pod's."""
        outcome = cnirun.invoke(
            PLUGIN,
            command,
            conf,
            netns=self.lab.router if netns is None else netns,
            ifname=ifname,
            container_id=CONTAINER_ID,
            cni_path=(REFERENCE_PLUGINS,),
            prev_result=prev_result,
            in_netns=self.lab.node,
            extra_env=extra_env,
        )
        assert "Traceback" not in outcome.stdout + outcome.stderr, outcome.stderr
        return outcome

    def add(self, conf: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        outcome = self.cni("ADD", conf, **kwargs)
        assert outcome.ok, f"ADD failed ({outcome.returncode}): {outcome.stdout}{outcome.stderr}"
        result = outcome.json
        assert result is not None, outcome.stdout
        return result


@pytest.fixture
def pods(lab_prefix: str, tmp_path: Path) -> Iterator[Pods]:
    if not os.access(f"{REFERENCE_PLUGINS}/bridge", os.X_OK):
        message = f"needs Debian's CNI reference plugins in {REFERENCE_PLUGINS} " \
            "(apt install containernetworking-plugins)"
        if os.environ.get("EGRESS_ROUTER_REQUIRE_PRIVILEGED") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    lab = labmod.up(lab_prefix, macvlan=None, router_eth0=False)
    primary = cnirun.invoke(
        "bridge",
        "ADD",
        _bridge_conf(tmp_path / "host-local"),
        netns=lab.router,
        ifname="eth0",
        container_id=CONTAINER_ID,
        cni_path=(REFERENCE_PLUGINS,),
        in_netns=lab.node,
    )
    assert primary.ok, f"bridge plugin: {primary.stdout}{primary.stderr}"
    assert primary.json is not None
    yield Pods(lab, primary.json)


# ------------------------------------------------------------------ reading kernel state


def ip_json(ns: str, *args: str) -> Any:
    done = labmod.run_in(ns, ["ip", "-j", *args], timeout=10)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout or "[]")


def link_names(ns: str) -> set[str]:
    return {link["ifname"] for link in ip_json(ns, "link", "show")}


def ruleset(ns: str) -> str:
    done = labmod.run_in(ns, ["nft", "list", "ruleset"], timeout=10)
    assert done.returncode == 0, done.stderr
    return done.stdout


def pod_state(ns: str) -> dict[str, Any]:
    """Everything ADD may touch in the pod, read with ip, nft and sysctl."""
    return {
        "links": sorted(link_names(ns)),
        "routes4": ip_json(ns, "-4", "route", "show", "table", "all"),
        "routes6": ip_json(ns, "-6", "route", "show", "table", "all"),
        "addresses": ip_json(ns, "addr", "show"),
        "ruleset": ruleset(ns),
        "forwarding": labmod.run_in(
            ns, ["sysctl", "-n", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"],
            timeout=10,
        ).stdout,
    }


def node_links(lab: labmod.Lab) -> list[tuple[str, str]]:
    return sorted(
        (link["ifname"], link.get("linkinfo", {}).get("info_kind", ""))
        for link in ip_json(lab.node, "-d", "link", "show")
    )


def assert_redirected(
    pods: Pods, proto: str, host: str, port: int, *, expected: str, source: str
) -> None:
    result = labmod.dial(pods.lab, proto, host, port, timeout=3.0)
    assert result.ok, f"{proto} {host}:{port}: {result.error} {result.detail}"
    assert result.server == expected
    seen = [
        e for e in labmod.served(pods.lab)
        if e.get("server") == expected and e.get("proto") == proto
    ]
    assert seen, f"{expected} recorded nothing"
    assert seen[-1]["peer"].rsplit(":", 1)[0].strip("[]") == source


# ------------------------------------------------------------------ tests


def test_add_gives_a_working_router_with_upstreams_config(pods: Pods) -> None:
    node_before = node_links(pods.lab)
    result = pods.add(UPSTREAM_CONF)

    # The result describes what the kernel holds.
    link = ip_json(pods.lab.router, "-d", "link", "show", "dev", "net1")[0]
    assert result["cniVersion"] == "1.0.0"
    assert result["interfaces"] == [
        {"name": "net1", "mac": link["address"], "sandbox": f"/var/run/netns/{pods.lab.router}"}
    ]
    assert result["ips"] == [{"address": "192.168.12.99/24", "gateway": "192.168.12.1",
                              "interface": 0}]
    assert {"dst": "0.0.0.0/0", "gw": "192.168.12.1"} in result["routes"]
    assert link["linkinfo"]["info_kind"] == "macvlan"
    assert link["linkinfo"]["info_data"]["mode"] == "private"
    assert link["mtu"] == 1500
    assert "UP" in link["flags"]
    master = ip_json(pods.lab.node, "link", "show", "dev", "ens3")[0]
    assert link["link_index"] == master["ifindex"]
    assert node_links(pods.lab) == node_before  # the macvlan left the node

    # Real traffic from the client pod, judged by the destination.
    for proto, port, expected in (
        ("tcp", 80, "203.0.113.25:80"),
        ("tcp", 8080, "203.0.113.26:80"),
        ("udp", 53, "203.0.113.25:53"),
        ("tcp", 9000, "203.0.113.27:9000"),
        ("udp", 9000, "203.0.113.27:9000"),
    ):
        assert_redirected(pods, proto, ROUTER4, port, expected=expected, source=SOURCE4)


def test_ipv6_variant_chained_onto_the_primary_result(pods: Pods) -> None:
    primary = pods.primary
    result = pods.add({**IPV6_CONF, "cniVersion": "1.1.0"}, prev_result=primary)

    index = len(primary["interfaces"])
    assert result["interfaces"][:index] == primary["interfaces"]
    assert result["ips"][: len(primary["ips"])] == primary["ips"]
    ours = result["interfaces"][index]
    assert ours["name"] == "net1" and ours["mtu"] == 1500
    assert ours["mac"] == ip_json(pods.lab.router, "link", "show", "dev", "net1")[0]["address"]
    assert result["ips"][len(primary["ips"]):] == [
        {"address": "2001:db8:12::99/64", "gateway": "2001:db8:12::1", "interface": index}
    ]
    assert_redirected(pods, "tcp", ROUTER6, 80, expected="[2001:db8:113::25]:80", source=SOURCE6)
    assert_redirected(pods, "udp", ROUTER6, 53, expected="[2001:db8:113::25]:53", source=SOURCE6)


def test_check_reports_tampering_and_del_is_idempotent(pods: Pods) -> None:
    node_before = node_links(pods.lab)
    result = pods.add(DUAL_CONF)
    assert_redirected(pods, "tcp", ROUTER6, 80, expected="[2001:db8:113::25]:80", source=SOURCE6)

    ok = pods.cni("CHECK", DUAL_CONF, prev_result=result)
    assert ok.ok, ok.stdout
    assert ok.stdout == ""

    done = labmod.run_in(pods.lab.router, ["nft", "delete", "table", "inet", "egress_router"])
    assert done.returncode == 0, done.stderr
    done = labmod.run_in(pods.lab.router, ["ip", "-6", "route", "del", "default", "dev", "net1"])
    assert done.returncode == 0, done.stderr
    drifted = pods.cni("CHECK", DUAL_CONF, prev_result=result)
    assert drifted.code == 105, drifted.stdout
    error = drifted.json
    assert error is not None
    assert "details" not in error  # libcni prints msg and details: every line once
    assert error["msg"] == (
        f"egress router net1 in /var/run/netns/{pods.lab.router} differs from its "
        "configuration: no IPv6 default route via 2001:db8:12::1 dev net1; "
        "nftables table inet egress_router is missing; run DEL and ADD again (restart the pod) "
        "to repair"
    )

    for _ in range(2):  # DEL twice: the second finds nothing and still succeeds
        gone = pods.cni("DEL", DUAL_CONF, prev_result=result)
        assert gone.ok and gone.stdout == "", gone.stdout + gone.stderr
    assert link_names(pods.lab.router) == {"lo", "eth0"}
    assert "egress_router" not in ruleset(pods.lab.router)
    assert node_links(pods.lab) == node_before
    # Nothing of ADD's is left: no pod-return rules, table 25970 empty, and the pod network's
    # default routes (ADD kept them in table 25970) are back in main.
    for family in ("-4", "-6"):
        priorities = {r.get("priority") for r in ip_json(pods.lab.router, family, "rule")}
        assert not priorities & {25970, 25971, 25972, 25973}, priorities
        assert ip_json(pods.lab.router, family, "route", "show", "table", "25970") == []
    assert [(r["gateway"], r["dev"]) for r in ip_json(pods.lab.router, "-4", "route", "show",
                                                      "default")] == [("10.128.0.1", "eth0")]
    assert [(r["gateway"], r["dev"]) for r in ip_json(pods.lab.router, "-6", "route", "show",
                                                      "default")] == [("fd00:128::1", "eth0")]
    assert not [name for name, _ in node_links(pods.lab) if macvlan.is_temp_name(name)]

    # The pod is gone altogether (the runtime deleted the namespace first): DEL still succeeds.
    done_del = labmod.run_in(pods.lab.node, ["ip", "netns", "delete", pods.lab.router])
    assert done_del.returncode == 0, done_del.stderr
    assert pods.cni("DEL", DUAL_CONF, prev_result=result).ok


def test_check_fails_naming_a_deleted_return_path_rule(pods: Pods) -> None:
    result = pods.add(UPSTREAM_CONF)
    assert pods.cni("CHECK", UPSTREAM_CONF, prev_result=result).ok  # control: all in place

    rule = ["priority", "25970", "iif", "net1", "lookup", "main", "suppress_prefixlength", "0"]
    before = ip_json(pods.lab.router, "-4", "rule", "show")
    assert any(r.get("priority") == 25970 and r.get("iif") == "net1" for r in before), before
    done = labmod.run_in(pods.lab.router, ["ip", "-4", "rule", "del", *rule])
    assert done.returncode == 0, done.stderr
    assert not any(r.get("priority") == 25970 for r in ip_json(pods.lab.router, "-4", "rule",
                                                                "show"))
    drifted = pods.cni("CHECK", UPSTREAM_CONF, prev_result=result)
    assert drifted.code == 105, drifted.stdout
    error = drifted.json
    assert error is not None
    assert "details" not in error  # one difference: msg names it, nothing repeats
    assert error["msg"] == (
        f"egress router net1 in /var/run/netns/{pods.lab.router} differs from its "
        "configuration: IPv4 policy rules for replies to the pod network differ: missing ip "
        "rule add priority 25970 iif net1 lookup main suppress_prefixlength 0; run DEL and ADD "
        "again (restart the pod) to repair"
    )

    # Put exactly that rule back: CHECK passes again, so it was this rule CHECK missed.
    done = labmod.run_in(pods.lab.router, ["ip", "-4", "rule", "add", *rule])
    assert done.returncode == 0, done.stderr
    assert pods.cni("CHECK", UPSTREAM_CONF, prev_result=result).ok
    assert pods.cni("DEL", UPSTREAM_CONF, prev_result=result).ok


def test_failure_halfway_is_rolled_back(pods: Pods) -> None:
    # The IPv6 gateway is a local address of the pod (on lo): the IPv4 half of the plan
    # succeeds (default route replaced, forwarding on), then the kernel refuses the IPv6
    # default route. (Disabling IPv6 does not do it: the plan enables IPv6 on the egress
    # interface of an IPv6 router.)
    done = labmod.run_in(
        pods.lab.router, ["ip", "-6", "address", "add", "2001:db8:12::1/128", "dev", "lo"]
    )
    assert done.returncode == 0, done.stderr
    pod_before = pod_state(pods.lab.router)
    node_before = node_links(pods.lab)
    assert '"dst":"default","gateway":"10.128.0.1"' in json.dumps(
        pod_before["routes4"], separators=(",", ":")
    )

    failed = pods.cni("ADD", DUAL_CONF)

    assert failed.returncode != 0
    assert failed.code == 104, failed.stdout
    error = failed.json
    assert error is not None
    # Our words, then the engine's: which step the kernel refused, and why.
    assert error["msg"].startswith(
        f"cannot set up the egress router on net1 in /var/run/netns/{pods.lab.router}: "
        "cannot ip -6 route replace default via 2001:db8:12::1 dev net1"
    )
    assert pod_state(pods.lab.router) == pod_before
    assert node_links(pods.lab) == node_before


def test_bad_input_gets_the_right_code_and_changes_nothing(pods: Pods) -> None:
    pod_before = pod_state(pods.lab.router)
    node_before = node_links(pods.lab)
    bad_line = {**UPSTREAM_CONF, "ip": {**UPSTREAM_CONF["ip"], "destinations": [
        "80 tcp 203.0.113.25", "8080 tcp 999.999.999.999 80"]}}
    cases: list[tuple[str, dict[str, Any] | str, dict[str, Any], int, str]] = [
        ("ADD", bad_line, {}, 7,
         "cannot parse ip.destinations line 2 '8080 tcp 999.999.999.999 80': invalid "
         "destination address '999.999.999.999'; expected an IPv4 address such as "
         "203.0.113.25 or an IPv6 address such as 2001:db8::25"),
        ("ADD", {**UPSTREAM_CONF, "interfaceType": "ipvlan"}, {}, 2,
         'cannot use interfaceType "ipvlan": only "macvlan" is supported (leave '
         'interfaceType out or set it to "macvlan")'),
        ("ADD", {**UPSTREAM_CONF, "cniVersion": "9.9.9"}, {}, 1,
         "cannot use cniVersion '9.9.9': this plugin supports 0.3.0, 0.3.1, 0.4.0, 1.0.0, "
         "1.1.0"),
        ("ADD", '{"cniVersion": "1.0.0", ', {}, 6,
         "cannot decode the network configuration on stdin at line 1 column 25: Expecting "
         "property name enclosed in double quotes; expected one JSON object"),
        ("ADD", UPSTREAM_CONF, {"ifname": "bad/name"}, 4,
         "cannot use interface name 'bad/name' from CNI_IFNAME: it contains '/' (U+002F), "
         "which the kernel refuses in an interface name; expected ASCII letters, digits, '_', "
         "'-' and '.' (not first), at most 15"),
        ("ADD", UPSTREAM_CONF, {"netns": "/var/run/netns/ert-no-such-pod"}, 3,
         "cannot add net1 to container ert0router0pod: network namespace "
         "'/var/run/netns/ert-no-such-pod' does not exist"),
        ("ADD", {**UPSTREAM_CONF, "interfaceArgs": {"master": "ens3", "mtu": "9000"}}, {}, 7,
         "cannot parse interfaceArgs.mtu: 9000 is larger than master 'ens3''s MTU 1500; a "
         "macvlan cannot exceed its master (leave mtu out to use the master's)"),
        ("CHECK", UPSTREAM_CONF, {}, 7,
         "cannot check: prevResult is missing; the runtime must pass the result of the ADD "
         "being checked"),
    ]
    for command, conf, options, code, message in cases:
        outcome = pods.cni(command, conf, **options)
        assert outcome.returncode == 1, (command, conf, outcome.stdout)
        assert outcome.json is not None, outcome.stdout
        assert set(outcome.json) == {"cniVersion", "code", "msg"}
        assert (outcome.code, outcome.json["msg"]) == (code, message)
    assert pod_state(pods.lab.router) == pod_before
    assert node_links(pods.lab) == node_before


def test_missing_master_fails_clearly(pods: Pods) -> None:
    pod_before = pod_state(pods.lab.router)
    node_before = node_links(pods.lab)
    conf = {**UPSTREAM_CONF, "interfaceArgs": {"master": "ens9", "mode": "bridge"}}
    outcome = pods.cni("ADD", conf)
    assert outcome.code == 102
    assert outcome.json is not None
    candidates = ", ".join(sorted(name for name, _ in node_before if name != "lo"))
    assert outcome.json["msg"] == (
        "cannot create the macvlan: master interface 'ens9' (from interfaceArgs.master) does "
        "not exist on this node; bring it up on the node, or set interfaceArgs.master to one "
        f"of: {candidates}"
    )
    assert candidates.startswith("cbr0, ens3, veth")
    status = pods.cni("STATUS", {**conf, "cniVersion": "1.1.0"})
    assert status.code == 50, status.stdout
    assert status.json is not None
    assert status.json["msg"].startswith(
        "cannot serve ADD: master interface 'ens9' (from interfaceArgs.master) does not exist "
        "on this node; bring it up on the node"
    )
    assert pod_state(pods.lab.router) == pod_before
    assert node_links(pods.lab) == node_before


def test_default_master_status_and_gc(pods: Pods) -> None:
    # No master configured: the node's default-route interface (ens3), like upstream.
    conf = {**UPSTREAM_CONF, "cniVersion": "1.1.0", "interfaceArgs": {}}
    assert pods.cni("STATUS", conf).ok
    result = pods.add(conf)
    link = ip_json(pods.lab.router, "-d", "link", "show", "dev", "net1")[0]
    assert link["linkinfo"]["info_data"]["mode"] == "bridge"  # upstream's default mode
    assert link["link_index"] == ip_json(pods.lab.node, "link", "show", "dev", "ens3")[0][
        "ifindex"]
    assert result["interfaces"][0]["mtu"] == 1500
    assert_redirected(pods, "tcp", ROUTER4, 80, expected="203.0.113.25:80", source=SOURCE4)

    # Leftovers of interrupted ADDs on the node: GC removes those no valid attachment owns.
    stale = macvlan.temp_name("gone-container", "net1")
    live = macvlan.temp_name("live-container", "net1")
    for name in (stale, live):
        done = labmod.run_in(pods.lab.node, ["ip", "link", "add", name, "link", "ens3",
                                             "type", "macvlan", "mode", "private"])
        assert done.returncode == 0, done.stderr
    gc = pods.cni("GC", {**conf, "cni.dev/valid-attachments": [
        {"containerID": "live-container", "ifname": "net1"},
        {"containerID": CONTAINER_ID, "ifname": "net1"},
    ]})
    assert gc.ok and gc.stdout == "", gc.stdout
    names = link_names(pods.lab.node)
    assert live in names and "ens3" in names
    assert stale not in names
    assert pods.cni("CHECK", conf, prev_result=result).ok  # GC left the router alone

    # No valid attachments at all: the runtime leaves the list out (as upstream's cnitool gc
    # does), which means nothing is in use; the router in the pod is not on the node: untouched.
    no_list = pods.cni("GC", conf)
    assert no_list.ok and no_list.stdout == "", no_list.stdout
    assert not [n for n in link_names(pods.lab.node) if macvlan.is_temp_name(n)]
    assert pods.cni("CHECK", conf, prev_result=result).ok


def test_add_before_the_pod_network_is_completed_by_the_wait_configuration(
    lab_prefix: str, tmp_path: Path
) -> None:
    """podman runs a container's networks in no fixed order: ours first must work too."""
    lab = labmod.up(lab_prefix, macvlan=None, router_eth0=False)
    conf = {**UPSTREAM_CONF, "podInterface": "eth0"}

    def cni(plugin: str, command: str, body: dict[str, Any], ifname: str,
            prev: dict[str, Any] | None = None) -> cnirun.Outcome:
        return cnirun.invoke(plugin, command, body, netns=lab.router, ifname=ifname,
                             container_id=CONTAINER_ID, cni_path=(REFERENCE_PLUGINS,),
                             in_netns=lab.node, prev_result=prev)

    ours = cni(PLUGIN, "ADD", conf, "net1")
    assert ours.ok, ours.stdout + ours.stderr
    assert "setting up the egress side only" in ours.stderr
    assert ours.json is not None
    # The pod network's ADD next: its own default route must not collide with ours.
    primary = cni("bridge", "ADD", _bridge_conf(tmp_path / "host-local"), "eth0")
    assert primary.ok, primary.stdout + primary.stderr
    assert "egress_router" in ruleset(lab.router)
    # CHECK names exactly what is left to do.
    pending = cni(PLUGIN, "CHECK", conf, "net1", prev=ours.json)
    assert pending.code == 105, pending.stdout
    assert "no IPv4 default route via 192.168.12.1 dev net1" in pending.stdout

    # What the wait container does at start, from the same configuration (CNI mode).
    cni_json = tmp_path / "cni.json"
    cni_json.write_text(json.dumps(conf))
    done = labmod.run_in(lab.router, [
        "env", f"EGRESS_ROUTER_CNI_CONFIG={cni_json}", "EGRESS_INTERFACE=net1",
        "EGRESS_ROUTER_MODE=init", "EGRESS_ANNOUNCE_COUNT=0", sys.executable, "-m",
        "egress_router",
    ], timeout=60)
    assert done.returncode == 1, "EGRESS_ANNOUNCE_COUNT is the configuration's: refused"
    assert "is set together with EGRESS_ANNOUNCE_COUNT" in done.stderr
    done = labmod.run_in(lab.router, [
        "env", f"EGRESS_ROUTER_CNI_CONFIG={cni_json}", "EGRESS_INTERFACE=net1",
        "EGRESS_ROUTER_MODE=init", sys.executable, "-m", "egress_router",
    ], timeout=60)
    assert done.returncode == 0, done.stderr
    assert cni(PLUGIN, "CHECK", conf, "net1", prev=ours.json).ok
    pods = Pods(lab, primary.json or {})
    assert_redirected(pods, "tcp", ROUTER4, 80, expected="203.0.113.25:80", source=SOURCE4)
    assert_redirected(pods, "tcp", ROUTER4, 9000, expected="203.0.113.27:9000", source=SOURCE4)


def test_sigterm_during_add_rolls_back(pods: Pods) -> None:
    # A runtime that gives up on a slow ADD sends SIGTERM: the plugin unwinds its undo steps.
    pod_before = pod_state(pods.lab.router)
    node_before = node_links(pods.lab)
    slow = {**UPSTREAM_CONF, "announceCount": 20, "announceInterval": 1.0}  # ADD lasts ~19 s
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": CONTAINER_ID,
        "CNI_NETNS": f"/var/run/netns/{pods.lab.router}",
        "CNI_IFNAME": "net1",
        "CNI_PATH": REFERENCE_PLUGINS,
    }
    argv = ["ip", "netns", "exec", pods.lab.node, cnirun.find_plugin(PLUGIN, ())]
    with subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(slow))
        proc.stdin.close()
        deadline = time.monotonic() + 10
        while "egress_router" not in ruleset(pods.lab.router) or "192.168.12.99" not in \
                json.dumps(ip_json(pods.lab.router, "addr", "show")):
            assert proc.poll() is None, "the plugin ended before it was interrupted"
            assert time.monotonic() < deadline, "the router was never set up"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert proc.stdout is not None and proc.stderr is not None
        stdout, stderr = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == 1, stderr
    error = json.loads(stdout)
    assert (error["code"], error["msg"]) == (
        11, "interrupted by SIGTERM; what this invocation changed was undone, try again"
    )
    assert "Traceback" not in stdout + stderr
    assert pod_state(pods.lab.router) == pod_before
    assert node_links(pods.lab) == node_before


def test_add_in_dns_proxy_mode_sets_up_the_network_for_the_proxy_container(pods: Pods) -> None:
    conf = {**UPSTREAM_CONF, "mode": "dns-proxy",
            "ip": {"addresses": ["192.168.12.99/24"], "gateway": "192.168.12.1"}}
    pods.add(conf)
    assert "dnat" not in ruleset(pods.lab.router).replace("ct status dnat", "")
    # Nothing redirected: a former rule's port is refused... by nobody listening.
    assert not labmod.dial(pods.lab, "tcp", ROUTER4, 80, timeout=2).ok
    proxy = labmod.spawn_router(
        pods.lab, {"EGRESS_DNS_PROXY_DESTINATION": "5000 203.0.113.25 80\n"}
    )
    try:
        deadline = time.monotonic() + 20
        result = labmod.dial(pods.lab, "tcp", ROUTER4, 5000, timeout=2)
        while not result.ok and time.monotonic() < deadline:
            assert proxy.poll() is None, proxy.communicate()[1]
            time.sleep(0.3)
            result = labmod.dial(pods.lab, "tcp", ROUTER4, 5000, timeout=2)
        assert result.ok and result.server == "203.0.113.25:80", result
        assert str(result.peer_ip) == SOURCE4
        # The physical side reaches no proxy port through the reserved address.
        assert not labmod.dial(pods.lab, "tcp", SOURCE4, 5000, ns=pods.lab.gw, timeout=2).ok
    finally:
        proxy.terminate()
        proxy.communicate(timeout=15)
