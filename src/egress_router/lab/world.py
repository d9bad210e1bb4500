"""A local model of an OpenShift egress-router world, built in network namespaces.

The egress router only means something between a pod network, a node with a
physical NIC, a gateway and external destinations that check source
addresses. This module builds that world on one machine, so that the
integration tests and the ``lab demo`` can run the real product against a
real kernel and judge it from the far side (which source address did the
destination see?).

The lab plays the platform (kubelet and the SDN), so it drives the kernel with
iproute2's ``ip`` command rather than with pyroute2 like the product does:
tests then read kernel state through a handle independent of the code under
test. Everything lives in namespaces named ``<prefix>-<role>``; nothing is
ever added to the root namespace, and :func:`down` needs nothing but the
prefix, so it also cleans up after a crash.

Topology (addresses below)::

    client eth0 ─┐                  node                       gw             ext
                 ├─ cbr0 (bridge) ─ ... ens3 ──────────── lan0 ⇄ wan0 ─────── eth0
    router eth0 ─┘                      └─ (macvlan0 in router, private mode)

The node does not forward pod traffic (its own masqueraded egress is not
modelled), and the gateway has no route to the pod network: whatever reaches
a destination came through the router's macvlan, and replies only find their
way back because the router SNATs to the reserved source.

This module builds and removes the namespaces; the address plan and names are in
`egress_router.lab.topology`, running things inside them in `egress_router.lab.processes`,
the demo in `egress_router.lab.demo`. Its users (tests, bench, the cli) import this one
module: the others' public names are re-exported here (``__all__``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Sequence
from ipaddress import (
    IPv4Interface,
    IPv6Interface,
)

from egress_router.lab import server as labserver
from egress_router.lab.processes import (
    DNS_LOG_FILE,
    DNS_READY_FILE,
    DNS_RECORDS_FILE,
    LAB_RESOLVER,
    NETNS_ETC,
    SERVICE_RESOLVER,
    Stream,
    dial,
    dns_queries,
    ip,
    ip_json,
    open_stream,
    process_record,
    recorded_process_alive,
    router_command,
    run,
    run_in,
    served,
    set_dns_records,
    spawn_router,
    start_dns,
    start_server,
    stop_dns,
    stop_server,
    sysctl,
    terminate,
)
from egress_router.lab.topology import (
    BRIDGE,
    CLIENT_POD4,
    CLIENT_POD6,
    CLIENT_VETH,
    DEFAULT_ENDPOINTS,
    DEFAULT_MTU,
    DEMO_DIALS,
    DEMO_ENV,
    DESTINATIONS4,
    DESTINATIONS6,
    EGRESS_SOURCE4,
    EGRESS_SOURCE6,
    EXT_GATEWAY4,
    EXT_GATEWAY6,
    EXT_IF,
    EXT_NET4,
    EXT_NET6,
    FORWARDING_ROLES,
    FORWARDING_SYSCTLS,
    GATEWAY4,
    GATEWAY6,
    GW_LAN,
    GW_WAN,
    IP_TIMEOUT,
    MACVLAN_IF,
    MACVLAN_TMP,
    NO_DAD,
    NO_MACVLAN,
    NODE_NIC,
    NODE_PHYS4,
    NODE_PHYS6,
    NODE_POD4,
    NODE_POD6,
    OWNER_FILE,
    PHYS_NET4,
    PHYS_NET6,
    POD_IF,
    POD_NET4,
    POD_NET6,
    POLL_INTERVAL,
    PREFIX_RE,
    ROLES,
    ROUTER_POD4,
    ROUTER_POD6,
    ROUTER_VETH,
    SERVED_LOG_FILE,
    SERVER_OUTPUT_FILE,
    SERVER_PID_FILE,
    SERVER_READY_FILE,
    SERVER_READY_TIMEOUT,
    STATE_ROOT,
    STOP_TIMEOUT,
    DialResult,
    Lab,
    LabError,
)

# --------------------------------------------------------------------------- namespaces


def _list_netns() -> list[str]:
    out = run(["ip", "-j", "netns", "list"], "list network namespaces")
    entries = json.loads(out) if out.strip() else []
    return [str(entry["name"]) for entry in entries if isinstance(entry, dict)]


def _netns_pids(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], f"list processes in {ns}")
    return [int(word) for word in out.split() if word.isdigit()]


def _remove(prefix: str, namespaces: Sequence[str]) -> list[str]:
    """Stop the lab's processes, delete the given namespaces and the state."""
    stop_server(prefix)
    stop_dns(prefix)
    # Processes inside a namespace keep it (and its links) alive after
    # `ip netns del`, so end them first. Only lab code starts processes there.
    pids = [pid for ns in namespaces for pid in _netns_pids(ns)]
    terminate(pids)
    removed: list[str] = []
    errors: list[str] = []
    for ns in namespaces:
        try:
            run(["ip", "netns", "delete", ns], f"delete namespace {ns}")
            removed.append(ns)
        except LabError as exc:
            errors.append(str(exc))
    shutil.rmtree(STATE_ROOT / prefix, ignore_errors=True)
    for ns in {*namespaces, f"{prefix}-router"}:
        if ns and "/" not in ns:
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
    with contextlib.suppress(OSError):
        NETNS_ETC.rmdir()  # only when empty: start_dns may have created it
    if errors:
        raise LabError("; ".join(errors))
    return removed


def down(prefix: str) -> None:
    """Stop the lab's servers and delete its namespaces; idempotent.

    Needs nothing but the prefix, so it also cleans up after a crash.
    Deleting a namespace deletes the veths and macvlans in it.
    """
    lab = Lab(prefix)
    existing = set(_list_netns())
    _remove(prefix, [ns for ns in lab.namespaces if ns in existing])


def _owned_elsewhere(prefix: str) -> bool:
    """True if another live process built the lab with this prefix."""
    pid = recorded_process_alive(STATE_ROOT / prefix / OWNER_FILE)
    return pid is not None and pid != os.getpid()


def sweep(prefix_start: str) -> list[str]:
    """Delete leftovers of earlier runs: namespaces and state of labs whose
    prefix starts with ``prefix_start``. Labs that another live process built
    are left alone (a parallel test run). Returns the deleted namespaces.
    """
    if not prefix_start:
        raise LabError("cannot sweep: give a non-empty prefix")
    groups: dict[str, list[str]] = {}
    for ns in _list_netns():
        if ns.startswith(prefix_start):
            head, sep, _ = ns.rpartition("-")
            groups.setdefault(head if sep else ns, []).append(ns)
    if STATE_ROOT.is_dir():
        for entry in STATE_ROOT.iterdir():
            if entry.name.startswith(prefix_start):
                groups.setdefault(entry.name, [])
    removed: list[str] = []
    for prefix, namespaces in sorted(groups.items()):
        if not _owned_elsewhere(prefix):
            removed += _remove(prefix, sorted(namespaces))
    return removed


# --------------------------------------------------------------------------- building


def check_host() -> str | None:
    """Why the lab cannot run on this machine, or None if it can."""
    if os.geteuid() != 0:
        return "the lab needs root (it creates network namespaces)"
    for tool in ("ip", "sysctl"):
        if shutil.which(tool) is None:
            return f"the lab needs {tool!r} on PATH"
    probe = f"erlprobe{os.getpid()}"
    try:
        run(["ip", "netns", "add", probe], "create a network namespace")
    except LabError as exc:
        return str(exc)
    try:
        run(["ip", "netns", "delete", probe], "delete a network namespace")
    except LabError as exc:
        return str(exc)
    return None


def _macvlan_parent(lab: Lab, macvlan: str) -> str:
    if macvlan != "true":
        return macvlan
    # As openshift-sdn does: the interface of the node's IPv4 default route.
    routes = ip_json(lab.node, "-4", "route", "show", "default", what="read node routes")
    for route in routes:
        if route.get("dev"):
            return str(route["dev"])
    raise LabError(f"cannot create {MACVLAN_IF}: no IPv4 default route in {lab.node}")


def _add_macvlan(lab: Lab, macvlan: str) -> None:
    """Give the router pod a macvlan0 the way the platform does: private mode,
    the parent's MTU, left down and without addresses for the product."""
    parent = _macvlan_parent(lab, macvlan)
    what = f"create {MACVLAN_IF} on {parent}"
    links = ip_json(lab.node, "link", "show", "dev", parent, what=what)
    if not links:
        raise LabError(f"cannot {what}: no interface {parent} in {lab.node}")
    mtu = str(links[0]["mtu"])
    ip(
        lab.node,
        "link",
        "add",
        MACVLAN_TMP,
        "link",
        parent,
        "mtu",
        mtu,
        "type",
        "macvlan",
        "mode",
        "private",
        what=what,
    )
    ip(lab.node, "link", "set", MACVLAN_TMP, "netns", lab.router, what=what)
    ip(lab.router, "link", "set", MACVLAN_TMP, "name", MACVLAN_IF, what=what)


def _veth(ns: str, name: str, peer_ns: str, peer: str, mtu: int | None = None) -> None:
    # Created inside the namespaces with the peer placed directly in its own:
    # no veth end ever exists in the root namespace.
    mtu_args = ["mtu", str(mtu)] if mtu else []
    ip(
        ns,
        "link",
        "add",
        name,
        *mtu_args,
        "type",
        "veth",
        "peer",
        "name",
        peer,
        *mtu_args,
        "netns",
        peer_ns,
        what=f"create veth {ns}/{name} - {peer_ns}/{peer}",
    )


def _address(ns: str, dev: str, addr: IPv4Interface | IPv6Interface) -> None:
    # nodad: usable at once, no tentative phase (DAD is also off by sysctl).
    extra = ["nodad"] if addr.version == 6 else []
    ip(ns, "addr", "add", str(addr), "dev", dev, *extra, what=f"add {addr} to {ns}/{dev}")


def _default_route(ns: str, via: IPv4Interface | IPv6Interface) -> None:
    family = f"-{via.version}"
    ip(
        ns,
        family,
        "route",
        "add",
        "default",
        "via",
        str(via.ip),
        what=f"add default route via {via.ip} in {ns}",
    )


def _build(lab: Lab, macvlan: str | None, phys_mtu: int, router_eth0: bool = True) -> None:
    for role, ns in zip(ROLES, lab.namespaces, strict=True):
        run(["ip", "netns", "add", ns], f"create namespace {ns}")
        forwarding = "1" if role in FORWARDING_ROLES else "0"
        sysctl(ns, {**NO_DAD, **dict.fromkeys(FORWARDING_SYSCTLS, forwarding)})
        ip(ns, "link", "set", "lo", "up", what=f"bring up lo in {ns}")

    _veth(lab.node, NODE_NIC, lab.gw, GW_LAN, phys_mtu)
    _veth(lab.client, POD_IF, lab.node, CLIENT_VETH)
    if router_eth0:
        _veth(lab.router, POD_IF, lab.node, ROUTER_VETH)
    _veth(lab.ext, EXT_IF, lab.gw, GW_WAN)
    # Without a multicast querier, snooping can starve IPv6 neighbour discovery.
    ip(
        lab.node,
        "link",
        "add",
        BRIDGE,
        "type",
        "bridge",
        "mcast_snooping",
        "0",
        what=f"create bridge {BRIDGE}",
    )
    for port in (CLIENT_VETH, ROUTER_VETH) if router_eth0 else (CLIENT_VETH,):
        ip(lab.node, "link", "set", port, "master", BRIDGE, what=f"attach {port} to {BRIDGE}")

    up_links = {
        lab.node: (BRIDGE, CLIENT_VETH, ROUTER_VETH, NODE_NIC),
        lab.client: (POD_IF,),
        lab.router: (POD_IF,),
        lab.gw: (GW_LAN, GW_WAN),
        lab.ext: (EXT_IF,),
    }
    if not router_eth0:  # a CNI plugin (e.g. bridge) gives the router pod its eth0 later
        up_links[lab.node] = (BRIDGE, CLIENT_VETH, NODE_NIC)
        del up_links[lab.router]
    for ns, devs in up_links.items():
        for dev in devs:
            ip(ns, "link", "set", dev, "up", what=f"bring up {ns}/{dev}")

    addresses: list[tuple[str, str, IPv4Interface | IPv6Interface]] = [
        (lab.node, BRIDGE, NODE_POD4),
        (lab.node, BRIDGE, NODE_POD6),
        (lab.node, NODE_NIC, NODE_PHYS4),
        (lab.node, NODE_NIC, NODE_PHYS6),
        (lab.client, POD_IF, CLIENT_POD4),
        (lab.client, POD_IF, CLIENT_POD6),
        (lab.router, POD_IF, ROUTER_POD4),
        (lab.router, POD_IF, ROUTER_POD6),
        (lab.gw, GW_LAN, GATEWAY4),
        (lab.gw, GW_LAN, GATEWAY6),
        (lab.gw, GW_WAN, EXT_GATEWAY4),
        (lab.gw, GW_WAN, EXT_GATEWAY6),
        *((lab.ext, EXT_IF, addr) for addr in (*DESTINATIONS4, *DESTINATIONS6)),
    ]
    for ns, dev, addr in addresses:
        if router_eth0 or ns != lab.router:
            _address(ns, dev, addr)

    for ns, via4, via6 in (
        (lab.node, GATEWAY4, GATEWAY6),
        (lab.client, NODE_POD4, NODE_POD6),
        (lab.router, NODE_POD4, NODE_POD6),
        (lab.ext, EXT_GATEWAY4, EXT_GATEWAY6),
    ):
        if ns == lab.router and not router_eth0:
            continue
        _default_route(ns, via4)
        _default_route(ns, via6)

    if macvlan not in (None, *NO_MACVLAN):
        assert macvlan is not None
        _add_macvlan(lab, macvlan)


def up(
    prefix: str,
    macvlan: str | None = "true",
    endpoints: Sequence[str] = DEFAULT_ENDPOINTS,
    *,
    phys_mtu: int = DEFAULT_MTU,
    router_eth0: bool = True,
) -> Lab:
    """Build the lab, start the destination server and wait until it is ready.

    ``macvlan`` is the value of the ``pod.network.openshift.io/assign-macvlan``
    annotation: ``"true"`` puts macvlan0 on the node's default-route
    interface, an interface name on that interface, and None or ``"false"``
    gives the router no macvlan (as for a CNI plugin that creates it).
    ``phys_mtu`` is the MTU of the node's physical NIC. ``router_eth0=False``
    leaves the router pod without its pod-network interface (an empty
    namespace, as a runtime creates it) for a CNI plugin such as Debian's
    ``bridge`` to attach it to the node's ``cbr0``. An existing lab with
    the same prefix is replaced. On any failure everything built so far is
    removed and :class:`LabError` raised.
    """
    lab = Lab(prefix)
    for text in endpoints:
        try:
            labserver.parse_endpoint(text)
        except labserver.EndpointError as exc:
            raise LabError(str(exc)) from exc
    down(prefix)
    try:
        lab.state_dir.mkdir(parents=True, exist_ok=True)
        (lab.state_dir / OWNER_FILE).write_text(process_record(os.getpid()), encoding="utf-8")
        _build(lab, macvlan, phys_mtu, router_eth0)
        start_server(lab, endpoints)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            down(prefix)
        if isinstance(exc, Exception) and not isinstance(exc, LabError):
            raise LabError(f"cannot build lab {prefix}: {exc}") from exc
        raise
    return lab


# The lab as one module for its users (tests, bench, cli): the parts re-exported here.
__all__ = [
    "BRIDGE",
    "CLIENT_POD4",
    "CLIENT_POD6",
    "CLIENT_VETH",
    "DEFAULT_ENDPOINTS",
    "DEFAULT_MTU",
    "DEMO_DIALS",
    "DEMO_ENV",
    "DESTINATIONS4",
    "DESTINATIONS6",
    "DNS_LOG_FILE",
    "DNS_READY_FILE",
    "DNS_RECORDS_FILE",
    "EGRESS_SOURCE4",
    "EGRESS_SOURCE6",
    "EXT_GATEWAY4",
    "EXT_GATEWAY6",
    "EXT_IF",
    "EXT_NET4",
    "EXT_NET6",
    "FORWARDING_ROLES",
    "FORWARDING_SYSCTLS",
    "GATEWAY4",
    "GATEWAY6",
    "GW_LAN",
    "GW_WAN",
    "IP_TIMEOUT",
    "LAB_RESOLVER",
    "MACVLAN_IF",
    "MACVLAN_TMP",
    "NETNS_ETC",
    "NODE_NIC",
    "NODE_PHYS4",
    "NODE_PHYS6",
    "NODE_POD4",
    "NODE_POD6",
    "NO_DAD",
    "NO_MACVLAN",
    "OWNER_FILE",
    "PHYS_NET4",
    "PHYS_NET6",
    "POD_IF",
    "POD_NET4",
    "POD_NET6",
    "POLL_INTERVAL",
    "PREFIX_RE",
    "ROLES",
    "ROUTER_POD4",
    "ROUTER_POD6",
    "ROUTER_VETH",
    "SERVED_LOG_FILE",
    "SERVER_OUTPUT_FILE",
    "SERVER_PID_FILE",
    "SERVER_READY_FILE",
    "SERVER_READY_TIMEOUT",
    "SERVICE_RESOLVER",
    "STATE_ROOT",
    "STOP_TIMEOUT",
    "DialResult",
    "Lab",
    "LabError",
    "Stream",
    "check_host",
    "dial",
    "dns_queries",
    "down",
    "ip",
    "ip_json",
    "open_stream",
    "process_record",
    "recorded_process_alive",
    "router_command",
    "run",
    "run_in",
    "served",
    "set_dns_records",
    "spawn_router",
    "start_dns",
    "start_server",
    "stop_dns",
    "stop_server",
    "sweep",
    "sysctl",
    "terminate",
    "up",
]
