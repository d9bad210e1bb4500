"""Tests of the lab itself, without the product: the world the product will run in.

If the lab were wrong, every product test built on it would prove nothing,
so its topology is read back through ``ip -j`` (not through the lab's own
code), and its servers and client are checked from the gateway, which can
reach the destinations without any egress router.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from ipaddress import IPv4Interface, IPv6Interface, ip_address, ip_interface
from pathlib import Path
from typing import Any

import pytest

from egress_router.lab import server as labserver
from egress_router.lab import world as labmod

IP_TIMEOUT = 10


def ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    """Kernel state through iproute2, independent of the lab module."""
    cp = subprocess.run(
        ["ip", "-j", "-n", ns, *args],
        capture_output=True,
        text=True,
        timeout=IP_TIMEOUT,
        check=True,
    )
    data = json.loads(cp.stdout) if cp.stdout.strip() else []
    assert isinstance(data, list)
    return data


def netns_names() -> list[str]:
    cp = subprocess.run(
        ["ip", "-j", "netns", "list"],
        capture_output=True,
        text=True,
        timeout=IP_TIMEOUT,
        check=True,
    )
    return [entry["name"] for entry in json.loads(cp.stdout or "[]")]


def addresses(ns: str, dev: str) -> set[IPv4Interface | IPv6Interface]:
    (link,) = ip_json(ns, "addr", "show", "dev", dev)
    return {
        ip_interface(f"{a['local']}/{a['prefixlen']}")
        for a in link["addr_info"]
        if a.get("scope") == "global"
    }


def sysctl(ns: str, key: str) -> str:
    cp = subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-n", key],
        capture_output=True,
        text=True,
        timeout=IP_TIMEOUT,
        check=True,
    )
    return cp.stdout.strip()


def assert_gone(lab: labmod.Lab) -> None:
    leftovers = [ns for ns in netns_names() if ns.startswith(f"{lab.prefix}-")]
    assert leftovers == []
    assert not lab.state_dir.exists()


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("text", "proto", "host", "port"),
    [
        ("tcp:203.0.113.25:80", "tcp", "203.0.113.25", 80),
        ("udp:[2001:db8:113::25]:53", "udp", "2001:db8:113::25", 53),
    ],
)
def test_parse_endpoint(text: str, proto: str, host: str, port: int) -> None:
    ep = labserver.parse_endpoint(text)
    assert (ep.proto, ep.host, ep.port) == (proto, ip_address(host), port)
    assert str(ep) == text


@pytest.mark.parametrize(
    "text", ["sctp:203.0.113.25:80", "tcp:203.0.113.25", "tcp:2001:db8::1:80", "tcp:1.2.3.4:0"]
)
def test_parse_endpoint_rejects(text: str) -> None:
    with pytest.raises(labserver.EndpointError, match="cannot parse endpoint"):
        labserver.parse_endpoint(text)


# --------------------------------------------------------------------------- topology


@pytest.mark.privileged
def test_topology_addresses_and_routes(lab: labmod.Lab) -> None:
    expected = {
        (lab.node, labmod.BRIDGE): {labmod.NODE_POD4, labmod.NODE_POD6},
        (lab.node, labmod.NODE_NIC): {labmod.NODE_PHYS4, labmod.NODE_PHYS6},
        (lab.client, labmod.POD_IF): {labmod.CLIENT_POD4, labmod.CLIENT_POD6},
        (lab.router, labmod.POD_IF): {labmod.ROUTER_POD4, labmod.ROUTER_POD6},
        (lab.gw, labmod.GW_LAN): {labmod.GATEWAY4, labmod.GATEWAY6},
        (lab.gw, labmod.GW_WAN): {labmod.EXT_GATEWAY4, labmod.EXT_GATEWAY6},
        (lab.ext, labmod.EXT_IF): {*labmod.DESTINATIONS4, *labmod.DESTINATIONS6},
    }
    for (ns, dev), addrs in expected.items():
        assert addresses(ns, dev) == addrs, f"{ns}/{dev}"
        (link,) = ip_json(ns, "link", "show", "dev", dev)
        assert "UP" in link["flags"], f"{ns}/{dev}"
        # nodad / accept_dad=0: no address may be stuck tentative
        (addr_link,) = ip_json(ns, "addr", "show", "dev", dev)
        assert not [a for a in addr_link["addr_info"] if a.get("tentative")], f"{ns}/{dev}"

    ports = {link["ifname"] for link in ip_json(lab.node, "link", "show", "master", "cbr0")}
    assert ports == {labmod.CLIENT_VETH, labmod.ROUTER_VETH}

    defaults = {
        lab.node: (labmod.GATEWAY4.ip, labmod.GATEWAY6.ip, labmod.NODE_NIC),
        lab.client: (labmod.NODE_POD4.ip, labmod.NODE_POD6.ip, labmod.POD_IF),
        lab.router: (labmod.NODE_POD4.ip, labmod.NODE_POD6.ip, labmod.POD_IF),
        lab.ext: (labmod.EXT_GATEWAY4.ip, labmod.EXT_GATEWAY6.ip, labmod.EXT_IF),
    }
    for ns, (via4, via6, dev) in defaults.items():
        (r4,) = ip_json(ns, "-4", "route", "show", "default")
        (r6,) = ip_json(ns, "-6", "route", "show", "default")
        assert (ip_address(r4["gateway"]), r4["dev"]) == (via4, dev), ns
        assert (ip_address(r6["gateway"]), r6["dev"]) == (via6, dev), ns
    assert ip_json(lab.gw, "-4", "route", "show", "default") == []
    assert ip_json(lab.gw, "-6", "route", "show", "default") == []
    assert not ip_json(lab.gw, "route", "show", "match", "10.128.0.10")


@pytest.mark.privileged
def test_only_the_gateway_forwards(lab: labmod.Lab) -> None:
    for ns in lab.namespaces:
        want = "1" if ns == lab.gw else "0"
        assert sysctl(ns, "net.ipv4.ip_forward") == want, ns
        assert sysctl(ns, "net.ipv6.conf.all.forwarding") == want, ns
        assert sysctl(ns, "net.ipv6.conf.default.accept_dad") == "0", ns


def macvlan_of(lab: labmod.Lab) -> dict[str, Any]:
    (link,) = ip_json(lab.router, "-d", "link", "show", "dev", labmod.MACVLAN_IF)
    return link


def assert_macvlan_on(lab: labmod.Lab, parent: str) -> None:
    link = macvlan_of(lab)
    (parent_link,) = ip_json(lab.node, "link", "show", "dev", parent)
    assert link["linkinfo"]["info_kind"] == "macvlan"
    assert link["linkinfo"]["info_data"]["mode"] == "private"
    assert link["mtu"] == parent_link["mtu"]
    # The parent lives in another namespace: the link names it by ifindex
    # within the namespace that the router knows under link_netnsid.
    assert link["link_index"] == parent_link["ifindex"]
    peers = {entry["nsid"]: entry.get("name") for entry in ip_json(lab.router, "netns", "list-id")}
    assert peers[link["link_netnsid"]] == lab.node
    # Left for the product: down, no addresses.
    assert "UP" not in link["flags"]
    (addr_link,) = ip_json(lab.router, "addr", "show", "dev", labmod.MACVLAN_IF)
    assert addr_link["addr_info"] == []
    # The temporary name is gone from the node.
    node_links = {entry["ifname"] for entry in ip_json(lab.node, "link", "show")}
    assert labmod.MACVLAN_TMP not in node_links


@pytest.mark.privileged
def test_macvlan_like_openshift_sdn(lab: labmod.Lab) -> None:
    assert_macvlan_on(lab, labmod.NODE_NIC)


@pytest.mark.privileged
@pytest.mark.parametrize(("macvlan", "mtu"), [("true", 9000), (labmod.NODE_NIC, 1400)])
def test_macvlan_takes_parent_mtu(
    lab_factory: Callable[..., labmod.Lab], macvlan: str, mtu: int
) -> None:
    lab = lab_factory(macvlan=macvlan, phys_mtu=mtu)
    assert_macvlan_on(lab, labmod.NODE_NIC)
    assert macvlan_of(lab)["mtu"] == mtu


@pytest.mark.privileged
@pytest.mark.parametrize("macvlan", [None, "false"])
def test_no_macvlan_when_not_asked(
    lab_factory: Callable[..., labmod.Lab], macvlan: str | None
) -> None:
    lab = lab_factory(macvlan=macvlan)
    names = {entry["ifname"] for entry in ip_json(lab.router, "link", "show")}
    assert names == {"lo", labmod.POD_IF}


# --------------------------------------------------------------------------- servers and dials


@pytest.mark.privileged
def test_gateway_reaches_every_destination(lab: labmod.Lab) -> None:
    for text in labmod.DEFAULT_ENDPOINTS:
        ep = labserver.parse_endpoint(text)
        r = labmod.dial(lab, ep.proto, ep.host, ep.port, payload=f"to {text}", ns=lab.gw)
        assert r.ok, r
        assert r.server == labserver.format_hostport(str(ep.host), ep.port)
        gw_wan = labmod.EXT_GATEWAY6.ip if ep.host.version == 6 else labmod.EXT_GATEWAY4.ip
        assert r.peer_ip == gw_wan
        assert r.data == f"to {text}"

    log = labmod.served(lab)
    assert [(e["proto"], e["server"], e["data"]) for e in log] == [
        (text.split(":")[0], text.split(":", 1)[1], f"to {text}")
        for text in labmod.DEFAULT_ENDPOINTS
    ]
    assert {ip_address(e["peer"].rpartition(":")[0].strip("[]")) for e in log} == {
        labmod.EXT_GATEWAY4.ip,
        labmod.EXT_GATEWAY6.ip,
    }


@pytest.mark.privileged
@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("host", ["203.0.113.25", "2001:db8:113::27"])
def test_unserved_port_is_refused(lab: labmod.Lab, proto: str, host: str) -> None:
    r = labmod.dial(lab, proto, host, 9999, ns=lab.gw)
    assert r.error == "refused", r
    assert labmod.served(lab) == []


@pytest.mark.privileged
def test_stream_holds_one_connection(lab: labmod.Lab) -> None:
    stream = labmod.open_stream(lab, "203.0.113.25", 80, count=5, interval=0.02, ns=lab.gw)
    greeting = stream.connected()
    assert greeting.peer_ip == labmod.EXT_GATEWAY4.ip
    summary = stream.result(timeout=20)
    assert summary["error"] is None, summary
    assert (summary["sent"], summary["echoed"]) == (5, 5)
    reply, end = labmod.served(lab)
    assert reply["data"] == "STREAM"
    assert (end["event"], end["lines"], end["peer"]) == ("stream-end", 5, reply["peer"])


@pytest.mark.privileged
def test_client_reaches_router_pod_over_the_bridge(lab: labmod.Lab) -> None:
    # Nothing listens in the router pod yet, so a RST proves the path.
    for host in (labmod.ROUTER_POD4.ip, labmod.ROUTER_POD6.ip):
        r = labmod.dial(lab, "tcp", host, 80)
        assert r.error == "refused", r


@pytest.mark.privileged
def test_client_cannot_reach_destinations_without_router(lab: labmod.Lab) -> None:
    for proto, host, port in (
        ("tcp", "203.0.113.25", 80),
        ("udp", "203.0.113.25", 53),
        ("tcp", "2001:db8:113::25", 80),
    ):
        r = labmod.dial(lab, proto, host, port, timeout=1.0)
        assert r.error in ("timeout", "unreachable"), r
    assert labmod.served(lab) == []


# --------------------------------------------------------------------------- life cycle


def server_pid(lab: labmod.Lab) -> int:
    return int((lab.state_dir / labmod.SERVER_PID_FILE).read_text().split()[0])


def running(pid: int) -> bool:
    """True unless the process is gone or a zombie (exited, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


@pytest.mark.privileged
def test_down_removes_everything_and_is_idempotent(
    lab_factory: Callable[..., labmod.Lab],
) -> None:
    lab = lab_factory()
    pid = server_pid(lab)
    assert running(pid)
    labmod.down(lab.prefix)
    assert_gone(lab)
    assert not running(pid)
    labmod.down(lab.prefix)
    assert_gone(lab)


@pytest.mark.privileged
def test_failed_up_leaves_nothing(lab_factory: Callable[..., labmod.Lab], lab_prefix: str) -> None:
    prefix = lab_prefix
    with pytest.raises(labmod.LabError, match="nosuch0"):
        lab_factory(prefix, macvlan="nosuch0")
    assert_gone(labmod.Lab(prefix))
    # Fails late, when the server cannot bind an address the lab lacks.
    with pytest.raises(labmod.LabError, match="cannot start destination server"):
        lab_factory(prefix, endpoints=["tcp:198.51.100.7:80"])
    assert_gone(labmod.Lab(prefix))


@pytest.mark.privileged
def test_up_over_leftovers_and_twice(
    lab_factory: Callable[..., labmod.Lab], lab_prefix: str
) -> None:
    prefix = lab_prefix
    stale = labmod.Lab(prefix)
    # What a crash halfway through up() leaves: some namespaces, one veth.
    for ns in (stale.node, stale.gw):
        subprocess.run(["ip", "netns", "add", ns], check=True, timeout=IP_TIMEOUT)
    subprocess.run(
        [
            "ip",
            "-n",
            stale.node,
            "link",
            "add",
            "ens3",
            "type",
            "veth",
            "peer",
            "name",
            "lan0",
            "netns",
            stale.gw,
        ],
        check=True,
        timeout=IP_TIMEOUT,
    )
    lab = lab_factory(prefix)
    assert labmod.dial(lab, "tcp", "203.0.113.25", 80, ns=lab.gw).ok
    lab = lab_factory(prefix)
    assert labmod.dial(lab, "tcp", "203.0.113.26", 443, ns=lab.gw).ok
    assert sorted(ns for ns in netns_names() if ns.startswith(f"{prefix}-")) == sorted(
        lab.namespaces
    )


@pytest.mark.privileged
def test_sweep_spares_live_owners_and_removes_crashed_labs(lab_prefix: str) -> None:
    prefix = lab_prefix
    lab = labmod.Lab(prefix)
    # Another process builds a lab and holds it until its stdin closes, then
    # exits without down(): a live owner first, a crashed one afterwards.
    script = (
        "import sys\nfrom egress_router.lab import world as lab\n"
        f"lab.up({prefix!r})\nprint('up', flush=True)\nsys.stdin.read()\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline() == "up\n"
        assert labmod.sweep(prefix) == []
        assert set(lab.namespaces) <= set(netns_names())
        owner.communicate(input="", timeout=30)
        assert owner.returncode == 0
        # The crashed owner's server still runs; sweep must end it too.
        pid = server_pid(lab)
        assert running(pid)
        assert sorted(labmod.sweep(prefix)) == sorted(lab.namespaces)
        assert_gone(lab)
        assert not running(pid)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.communicate(timeout=10)
