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
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
)
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from egress_router.core import state
from egress_router.lab import server as labserver

# --------------------------------------------------------------------------- address plan
# DESIGN.md's test address plan; only ever configured inside the lab's namespaces.

POD_NET4 = IPv4Network("10.128.0.0/24")
POD_NET6 = IPv6Network("fd00:128::/64")
NODE_POD4 = IPv4Interface("10.128.0.1/24")  # cbr0, the pods' default gateway
NODE_POD6 = IPv6Interface("fd00:128::1/64")
ROUTER_POD4 = IPv4Interface("10.128.0.2/24")  # router pod eth0, what clients dial
ROUTER_POD6 = IPv6Interface("fd00:128::2/64")
CLIENT_POD4 = IPv4Interface("10.128.0.10/24")
CLIENT_POD6 = IPv6Interface("fd00:128::10/64")

PHYS_NET4 = IPv4Network("192.168.12.0/24")
PHYS_NET6 = IPv6Network("2001:db8:12::/64")
NODE_PHYS4 = IPv4Interface("192.168.12.10/24")  # node ens3
NODE_PHYS6 = IPv6Interface("2001:db8:12::10/64")
GATEWAY4 = IPv4Interface("192.168.12.1/24")  # gw lan0, the node's default gateway
GATEWAY6 = IPv6Interface("2001:db8:12::1/64")
EGRESS_SOURCE4 = IPv4Address("192.168.12.99")  # reserved source, configured by the product
EGRESS_SOURCE6 = IPv6Address("2001:db8:12::99")

EXT_NET4 = IPv4Network("203.0.113.0/24")
EXT_NET6 = IPv6Network("2001:db8:113::/64")
EXT_GATEWAY4 = IPv4Interface("203.0.113.1/24")  # gw wan0
EXT_GATEWAY6 = IPv6Interface("2001:db8:113::1/64")
DESTINATIONS4 = (
    IPv4Interface("203.0.113.25/24"),
    IPv4Interface("203.0.113.26/24"),
    IPv4Interface("203.0.113.27/24"),
)
DESTINATIONS6 = (
    IPv6Interface("2001:db8:113::25/64"),
    IPv6Interface("2001:db8:113::26/64"),
    IPv6Interface("2001:db8:113::27/64"),
)

DEFAULT_ENDPOINTS: tuple[str, ...] = (
    "tcp:203.0.113.25:80",
    "tcp:203.0.113.26:80",
    "tcp:203.0.113.26:443",
    "tcp:203.0.113.27:9000",
    "tcp:203.0.113.27:7000",
    "udp:203.0.113.25:53",
    "udp:203.0.113.27:9000",
    "tcp:[2001:db8:113::25]:80",
    "tcp:[2001:db8:113::26]:80",
    "tcp:[2001:db8:113::26]:443",
    "tcp:[2001:db8:113::27]:9000",
    "udp:[2001:db8:113::25]:53",
)

# --------------------------------------------------------------------------- names

ROLES = ("node", "client", "router", "gw", "ext")
BRIDGE = "cbr0"
NODE_NIC = "ens3"
POD_IF = "eth0"
MACVLAN_IF = "macvlan0"
MACVLAN_TMP = "mvtmp0"  # name in the node namespace before the move
CLIENT_VETH = "veth-client"  # node-side peers, enslaved to cbr0
ROUTER_VETH = "veth-router"
GW_LAN = "lan0"
GW_WAN = "wan0"
EXT_IF = "eth0"
DEFAULT_MTU = 1500

STATE_ROOT = Path("/run/egress-router-lab")
OWNER_FILE = "owner"
SERVER_PID_FILE = "server.pid"
SERVER_READY_FILE = "server.ready"
SERVER_OUTPUT_FILE = "server.out"
SERVED_LOG_FILE = "served.jsonl"

PREFIX_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,22}[a-z0-9])?$")
NO_MACVLAN = ("", "false")

IP_TIMEOUT = 10.0
SERVER_READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.02

_NO_DAD = {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"}
_FORWARDING = tuple(state.forwarding_sysctl(family) for family in (4, 6))
# Only the gateway routes. The node does not (see the module docstring); the
# router pod starts without forwarding, so the product has to enable it.
_FORWARDING_ROLES = ("gw",)


class LabError(RuntimeError):
    """The lab could not be built, used or removed; the message says why."""


# --------------------------------------------------------------------------- the lab


@dataclass(frozen=True)
class Lab:
    """Handle on a lab: its prefix, and everything derived from it."""

    prefix: str

    def __post_init__(self) -> None:
        if not PREFIX_RE.match(self.prefix):
            raise LabError(
                f"cannot use lab prefix {self.prefix!r}: use 1-24 characters a-z, 0-9 and '-',"
                " starting with a letter"
            )

    @property
    def node(self) -> str:
        return f"{self.prefix}-node"

    @property
    def client(self) -> str:
        return f"{self.prefix}-client"

    @property
    def router(self) -> str:
        return f"{self.prefix}-router"

    @property
    def gw(self) -> str:
        return f"{self.prefix}-gw"

    @property
    def ext(self) -> str:
        return f"{self.prefix}-ext"

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(f"{self.prefix}-{role}" for role in ROLES)

    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / self.prefix

    @property
    def served_log(self) -> Path:
        return self.state_dir / SERVED_LOG_FILE


@dataclass(frozen=True)
class DialResult:
    """What one dial got back: the server's reply, or why there was none.

    ``error`` is None on success, else ``refused``, ``timeout``,
    ``unreachable``, ``reset``, ``closed``, ``bad-reply`` or an errno name.
    """

    proto: str
    target: str
    error: str | None = None
    detail: str = ""
    server: str | None = None
    peer: str | None = None
    data: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def server_ip(self) -> IPv4Address | IPv6Address | None:
        """The destination that answered, without its port."""
        return _host_of(self.server)

    @property
    def peer_ip(self) -> IPv4Address | IPv6Address | None:
        """The source address the destination saw, without its port."""
        return _host_of(self.peer)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], proto: str, target: str) -> DialResult:
        if obj.get("error"):
            return cls(proto, target, error=str(obj["error"]), detail=str(obj.get("detail", "")))
        return cls(
            proto,
            target,
            server=str(obj.get("server")),
            peer=str(obj.get("peer")),
            data=str(obj.get("data")),
        )


def _host_of(hostport: str | None) -> IPv4Address | IPv6Address | None:
    if not hostport:
        return None
    host = hostport.rpartition(":")[0].strip("[]")
    try:
        return ip_address(host)
    except ValueError:
        return None


# --------------------------------------------------------------------------- processes


def _base_env() -> dict[str, str]:
    """A minimal environment, like a container's, that still finds this package."""
    path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    for extra in ("/usr/local/sbin", "/usr/sbin", "/sbin"):
        if extra not in path.split(":"):
            path = f"{path}:{extra}"
    return {"PATH": path, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


def _netns_exec(ns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def run_in(
    ns: str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in namespace ``ns`` and return its captured text output.

    ``env`` replaces the environment when given. A command still running
    after ``timeout`` seconds is killed and raises :class:`LabError`.
    """
    try:
        return subprocess.run(
            _netns_exec(ns, argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            input=input,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(
            f"cannot run {' '.join(argv)} in {ns}: still running after {timeout:g} s, killed"
        ) from exc
    except OSError as exc:
        raise LabError(f"cannot run {' '.join(argv)} in {ns}: {exc}") from exc


def _run(argv: Sequence[str], what: str, timeout: float = IP_TIMEOUT) -> str:
    """Run a platform command in the caller's namespace; stdout, or LabError."""
    try:
        cp = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"cannot {what}: {exc}") from exc
    if cp.returncode != 0:
        cause = cp.stderr.strip() or f"exit status {cp.returncode}"
        raise LabError(f"cannot {what}: {' '.join(argv)}: {cause}")
    return cp.stdout


def _ip(ns: str, *args: str, what: str) -> str:
    return _run(["ip", "-n", ns, *args], what)


def _ip_json(ns: str, *args: str, what: str) -> list[dict[str, Any]]:
    out = _run(["ip", "-j", "-n", ns, *args], what)
    data = json.loads(out) if out.strip() else []
    return data if isinstance(data, list) else []


def _sysctl(ns: str, settings: Mapping[str, str]) -> None:
    argv = ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())]
    cp = run_in(ns, argv, timeout=IP_TIMEOUT)
    if cp.returncode != 0:
        raise LabError(f"cannot set sysctls in {ns}: {cp.stderr.strip()}")


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks, or None if gone or a zombie.

    Together with the pid it identifies a process across pid reuse.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _process_record(pid: int) -> str:
    return f"{pid} {_start_time(pid)}\n"


def _recorded_process_alive(path: Path) -> int | None:
    """The pid recorded in ``path`` if that very process still runs."""
    try:
        pid_text, _, start_text = path.read_text(encoding="utf-8").strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    start = _start_time(pid)
    return pid if start is not None and str(start) == start_text else None


def _wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Poll until the processes are gone (zombies count as gone); the survivors."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive:
        alive = [pid for pid in alive if _start_time(pid) is not None]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL)
    return alive


def _terminate(pids: Sequence[int]) -> None:
    """SIGTERM, then SIGKILL what is left after a grace period."""
    pids = [pid for pid in pids if pid != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        pids = _wait_gone(pids, STOP_TIMEOUT)
        if not pids:
            return


# Servers started by this process, so that down() can reap them (no zombies).
_SERVERS: dict[str, subprocess.Popen[bytes]] = {}


def _start_server(lab: Lab, endpoints: Sequence[str]) -> None:
    state = lab.state_dir
    ready = state / SERVER_READY_FILE
    output = state / SERVER_OUTPUT_FILE
    ready.unlink(missing_ok=True)
    argv = _netns_exec(
        lab.ext,
        [
            sys.executable,
            "-m",
            "egress_router.lab.server",
            "serve",
            "--log",
            str(lab.served_log),
            "--ready",
            str(ready),
            *endpoints,
        ],
    )
    with output.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_base_env(),
            start_new_session=True,
        )
    _SERVERS[lab.prefix] = proc
    # `ip netns exec` execs the command, so this pid is the server itself.
    (state / SERVER_PID_FILE).write_text(_process_record(proc.pid), encoding="utf-8")
    deadline = time.monotonic() + SERVER_READY_TIMEOUT
    while not ready.exists():
        if proc.poll() is not None:
            text = output.read_text(encoding="utf-8", errors="replace").strip()
            raise LabError(
                f"cannot start destination server in {lab.ext}: exit status {proc.returncode}:"
                f" {text}"
            )
        if time.monotonic() >= deadline:
            raise LabError(
                f"cannot start destination server in {lab.ext}: not ready after"
                f" {SERVER_READY_TIMEOUT:g} s (see {output})"
            )
        time.sleep(POLL_INTERVAL)


def _stop_server(prefix: str) -> None:
    proc = _SERVERS.pop(prefix, None)
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
    pid = _recorded_process_alive(STATE_ROOT / prefix / SERVER_PID_FILE)
    if pid is not None:
        _terminate([pid])


# --------------------------------------------------------------------------- namespaces


def _list_netns() -> list[str]:
    out = _run(["ip", "-j", "netns", "list"], "list network namespaces")
    entries = json.loads(out) if out.strip() else []
    return [str(entry["name"]) for entry in entries if isinstance(entry, dict)]


def _netns_pids(ns: str) -> list[int]:
    out = _run(["ip", "netns", "pids", ns], f"list processes in {ns}")
    return [int(word) for word in out.split() if word.isdigit()]


def _remove(prefix: str, namespaces: Sequence[str]) -> list[str]:
    """Stop the lab's processes, delete the given namespaces and the state."""
    _stop_server(prefix)
    _stop_dns(prefix)
    # Processes inside a namespace keep it (and its links) alive after
    # `ip netns del`, so end them first. Only lab code starts processes there.
    pids = [pid for ns in namespaces for pid in _netns_pids(ns)]
    _terminate(pids)
    removed: list[str] = []
    errors: list[str] = []
    for ns in namespaces:
        try:
            _run(["ip", "netns", "delete", ns], f"delete namespace {ns}")
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
    pid = _recorded_process_alive(STATE_ROOT / prefix / OWNER_FILE)
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
        _run(["ip", "netns", "add", probe], "create a network namespace")
    except LabError as exc:
        return str(exc)
    try:
        _run(["ip", "netns", "delete", probe], "delete a network namespace")
    except LabError as exc:
        return str(exc)
    return None


def _macvlan_parent(lab: Lab, macvlan: str) -> str:
    if macvlan != "true":
        return macvlan
    # As openshift-sdn does: the interface of the node's IPv4 default route.
    routes = _ip_json(lab.node, "-4", "route", "show", "default", what="read node routes")
    for route in routes:
        if route.get("dev"):
            return str(route["dev"])
    raise LabError(f"cannot create {MACVLAN_IF}: no IPv4 default route in {lab.node}")


def _add_macvlan(lab: Lab, macvlan: str) -> None:
    """Give the router pod a macvlan0 the way the platform does: private mode,
    the parent's MTU, left down and without addresses for the product."""
    parent = _macvlan_parent(lab, macvlan)
    what = f"create {MACVLAN_IF} on {parent}"
    links = _ip_json(lab.node, "link", "show", "dev", parent, what=what)
    if not links:
        raise LabError(f"cannot {what}: no interface {parent} in {lab.node}")
    mtu = str(links[0]["mtu"])
    _ip(
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
    _ip(lab.node, "link", "set", MACVLAN_TMP, "netns", lab.router, what=what)
    _ip(lab.router, "link", "set", MACVLAN_TMP, "name", MACVLAN_IF, what=what)


def _veth(ns: str, name: str, peer_ns: str, peer: str, mtu: int | None = None) -> None:
    # Created inside the namespaces with the peer placed directly in its own:
    # no veth end ever exists in the root namespace.
    mtu_args = ["mtu", str(mtu)] if mtu else []
    _ip(
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
    _ip(ns, "addr", "add", str(addr), "dev", dev, *extra, what=f"add {addr} to {ns}/{dev}")


def _default_route(ns: str, via: IPv4Interface | IPv6Interface) -> None:
    family = f"-{via.version}"
    _ip(
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
        _run(["ip", "netns", "add", ns], f"create namespace {ns}")
        forwarding = "1" if role in _FORWARDING_ROLES else "0"
        _sysctl(ns, {**_NO_DAD, **dict.fromkeys(_FORWARDING, forwarding)})
        _ip(ns, "link", "set", "lo", "up", what=f"bring up lo in {ns}")

    _veth(lab.node, NODE_NIC, lab.gw, GW_LAN, phys_mtu)
    _veth(lab.client, POD_IF, lab.node, CLIENT_VETH)
    if router_eth0:
        _veth(lab.router, POD_IF, lab.node, ROUTER_VETH)
    _veth(lab.ext, EXT_IF, lab.gw, GW_WAN)
    # Without a multicast querier, snooping can starve IPv6 neighbour discovery.
    _ip(
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
        _ip(lab.node, "link", "set", port, "master", BRIDGE, what=f"attach {port} to {BRIDGE}")

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
            _ip(ns, "link", "set", dev, "up", what=f"bring up {ns}/{dev}")

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
        (lab.state_dir / OWNER_FILE).write_text(_process_record(os.getpid()), encoding="utf-8")
        _build(lab, macvlan, phys_mtu, router_eth0)
        _start_server(lab, endpoints)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            down(prefix)
        if isinstance(exc, Exception) and not isinstance(exc, LabError):
            raise LabError(f"cannot build lab {prefix}: {exc}") from exc
        raise
    return lab


# --------------------------------------------------------------------------- using the lab


def router_command(
    lab: Lab, env: Mapping[str, str], timeout: float = 60, args: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Run the product in the router pod as its init container would.

    ``env`` (EGRESS_SOURCE, EGRESS_ROUTER_MODE, ...) is merged over a minimal
    environment; nothing else of the caller's environment leaks in. ``args``
    are command-line arguments (e.g. ``["status", "--json"]``).
    """
    return run_in(
        lab.router,
        [sys.executable, "-m", "egress_router", *args],
        env={**_base_env(), **env},
        timeout=timeout,
    )


def spawn_router(
    lab: Lab, env: Mapping[str, str], args: Sequence[str] = ()
) -> subprocess.Popen[str]:
    """Start the product in the router pod without waiting (``legacy`` mode).

    ``args`` are command-line arguments (e.g. ``["wait"]``). The caller ends
    it; :func:`down` ends it anyway.
    """
    return subprocess.Popen(
        _netns_exec(lab.router, [sys.executable, "-m", "egress_router", *args]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_base_env(), **env},
        start_new_session=True,
    )


def _labserver_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "egress_router.lab.server", *args]


def _last_json(text: str, what: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        obj = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise LabError(f"cannot {what}: no JSON result in {text!r}") from exc
    if not isinstance(obj, dict):
        raise LabError(f"cannot {what}: unexpected result {obj!r}")
    return obj


def dial(
    lab: Lab,
    proto: str,
    host: str | IPv4Address | IPv6Address,
    port: int,
    *,
    payload: str = "hello",
    timeout: float = 3.0,
    ns: str | None = None,
) -> DialResult:
    """Send one payload from the client pod (or namespace ``ns``) and report.

    Failures to connect are results (``error`` set), not exceptions;
    :class:`LabError` means the dial program itself could not run.
    """
    ns = ns or lab.client
    target = labserver.format_hostport(str(host), port)
    what = f"dial {proto} {target} from {ns}"
    argv = _labserver_argv(
        "dial", proto, str(host), str(port), f"--payload={payload}", f"--timeout={timeout}"
    )
    cp = run_in(ns, argv, env=_base_env(), timeout=timeout + 15)
    if cp.returncode != 0:
        raise LabError(f"cannot {what}: {cp.stderr.strip()}")
    return DialResult.from_json(_last_json(cp.stdout, what), proto, target)


def served(lab: Lab) -> list[dict[str, Any]]:
    """The destination server's log: one dict per event, oldest first.

    Each has ``proto``, ``server``, ``peer``, ``data``, ``event`` (``reply``,
    or ``stream-end`` with ``lines``) and ``ts``.
    """
    try:
        text = lab.served_log.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    entries: list[dict[str, Any]] = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # being written right now
        entries.append(json.loads(line))
    return entries


class Stream:
    """A long-lived TCP connection from the client pod, held by a subprocess.

    It sends ``count`` lines ``interval`` seconds apart and expects each one
    echoed. Use :meth:`connected` to wait until the connection stands, then
    change things, then :meth:`result` for the summary (``error`` is None if
    every line came back).
    """

    def __init__(self, proc: subprocess.Popen[bytes], what: str) -> None:
        self._proc = proc
        self._what = what
        self._buffer = b""

    def connected(self, timeout: float = 5.0) -> DialResult:
        """Wait for the server's greeting (bounded) and return it."""
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    raise LabError(f"cannot {self._what}: no greeting within {timeout:g} s")
                chunk = os.read(self._proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                self._buffer += chunk
        line = self._buffer.partition(b"\n")[0].decode(errors="replace")
        return DialResult.from_json(_last_json(line, self._what), "tcp", self._what)

    def result(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait (bounded) for the stream to finish; its summary."""
        try:
            out, err = self._proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.close()
            raise LabError(f"cannot {self._what}: not finished after {timeout:g} s") from exc
        text = (self._buffer + out).decode(errors="replace")
        if self._proc.returncode != 0:
            raise LabError(f"cannot {self._what}: {err.decode(errors='replace').strip()}")
        return _last_json(text, self._what)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.communicate()


def open_stream(
    lab: Lab,
    host: str | IPv4Address | IPv6Address,
    port: int,
    *,
    count: int = 20,
    interval: float = 0.1,
    timeout: float = 3.0,
    ns: str | None = None,
) -> Stream:
    """Start a :class:`Stream` from the client pod (or namespace ``ns``)."""
    ns = ns or lab.client
    what = f"stream to {labserver.format_hostport(str(host), port)} from {ns}"
    argv = _labserver_argv(
        "stream",
        str(host),
        str(port),
        f"--count={count}",
        f"--interval={interval}",
        f"--timeout={timeout}",
    )
    proc = subprocess.Popen(
        _netns_exec(ns, argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_base_env(),
        bufsize=0,
        start_new_session=True,
    )
    return Stream(proc, what)


# --------------------------------------------------------------------------- DNS for the router

# `ip netns exec NS` bind-mounts every file of /etc/netns/NS over /etc in the
# process it starts: a resolv.conf there is the namespace's resolver, as a
# pod's /etc/resolv.conf is the pod's.
NETNS_ETC = Path("/etc/netns")
DNS_RECORDS_FILE = "dns.json"
DNS_LOG_FILE = "dns.jsonl"
DNS_READY_FILE = "dns.ready"
LAB_RESOLVER = "127.0.0.1"

_DNS_SERVERS: dict[str, subprocess.Popen[bytes]] = {}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def set_dns_records(lab: Lab, records: Mapping[str, Mapping[str, Any]]) -> None:
    """Replace the lab resolver's records: ``{name: {"A": [...], "AAAA": [...], "ttl": s}}``."""
    _write_atomic(lab.state_dir / DNS_RECORDS_FILE, json.dumps(records))


def start_dns(lab: Lab, records: Mapping[str, Mapping[str, Any]]) -> None:
    """Give the router pod a DNS resolver whose answers the test controls.

    Starts `labdns` on 127.0.0.1:53 inside the router namespace and writes
    ``/etc/netns/<router>/resolv.conf`` pointing at it, so every process
    started in the router pod from now on (`router_command`, `spawn_router`)
    resolves through it. :func:`down` stops it and removes the file.
    """
    set_dns_records(lab, records)
    etc = NETNS_ETC / lab.router
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(
        f"# egress-router lab {lab.prefix}: removed by `lab down`\n"
        f"nameserver {LAB_RESOLVER}\noptions timeout:1 attempts:2\n",
        encoding="utf-8",
    )
    ready = lab.state_dir / DNS_READY_FILE
    ready.unlink(missing_ok=True)
    argv = _netns_exec(
        lab.router,
        [
            sys.executable, "-m", "egress_router.lab.nameserver",
            "--listen", LAB_RESOLVER,
            "--records", str(lab.state_dir / DNS_RECORDS_FILE),
            "--log", str(lab.state_dir / DNS_LOG_FILE),
            "--ready", str(ready),
        ],
    )
    output = (lab.state_dir / "dns.out").open("wb")
    with output:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            env=_base_env(), start_new_session=True,
        )
    _DNS_SERVERS[lab.prefix] = proc
    deadline = time.monotonic() + SERVER_READY_TIMEOUT
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() >= deadline:
            text = (lab.state_dir / "dns.out").read_text(errors="replace").strip()
            _stop_dns(lab.prefix)
            raise LabError(f"cannot start the lab DNS server in {lab.router}: {text}")
        time.sleep(POLL_INTERVAL)


def dns_queries(lab: Lab) -> list[dict[str, Any]]:
    """The lab resolver's log: one dict per query (``name``, ``type``, ``answer``, ``ts``)."""
    try:
        text = (lab.state_dir / DNS_LOG_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def _stop_dns(prefix: str) -> None:
    proc = _DNS_SERVERS.pop(prefix, None)
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT)


# --------------------------------------------------------------------------- the demo

DEMO_ENV = {
    "EGRESS_SOURCE": f"{EGRESS_SOURCE4}/{PHYS_NET4.prefixlen}",
    "EGRESS_GATEWAY": str(GATEWAY4.ip),
    "EGRESS_DESTINATION": "\n".join(
        (
            "80 tcp 203.0.113.25",
            "8080 tcp 203.0.113.26 80",
            "8443 tcp 203.0.113.26 443",
            "53 udp 203.0.113.25",
            "203.0.113.27",
        )
    ),
    "EGRESS_ROUTER_MODE": "init",
}

# (proto, port dialled at the router, destination expected to answer)
DEMO_DIALS: tuple[tuple[str, int, str], ...] = (
    ("tcp", 80, "203.0.113.25:80"),
    ("tcp", 8080, "203.0.113.26:80"),
    ("tcp", 8443, "203.0.113.26:443"),
    ("tcp", 9000, "203.0.113.27:9000"),
    ("udp", 53, "203.0.113.25:53"),
    ("udp", 9000, "203.0.113.27:9000"),
)


@contextlib.contextmanager
def _lab_for_demo(prefix: str, keep: bool, console: Console, macvlan: str) -> Iterator[Lab]:
    lab = up(prefix, macvlan=macvlan)
    try:
        yield lab
    finally:
        if keep:
            console.print(
                f"kept the lab: try [bold]ip netns exec {lab.client} bash[/]; remove it with"
                f" [bold]egress-router lab down --prefix {prefix}[/]"
            )
        else:
            down(prefix)


def demo(
    prefix: str, keep: bool = False, console: Console | None = None, macvlan: str = "true"
) -> int:
    """Build the lab, set up the router with the classic example, dial through it.

    Prints a table of what the client dialled, who answered and which source
    the destination saw. Returns 0 if every dial left from the reserved source
    and reached the expected destination, else 1. Tears the lab down unless
    ``keep``. ``macvlan`` is the annotation's value, as for :func:`up`.
    """
    console = console or Console()
    console.print(f"building lab [bold]{prefix}[/] (namespaces {prefix}-*) ...")
    try:
        with _lab_for_demo(prefix, keep, console, macvlan) as lab:
            console.print(f"setting up the router in [bold]{lab.router}[/]:")
            for name, value in DEMO_ENV.items():
                first, *more = value.splitlines()
                console.print(
                    f"  {name}={first}",
                    *(f"    {line}" for line in more),
                    sep="\n",
                    markup=False,
                    highlight=False,
                )
            cp = router_command(lab, DEMO_ENV)
            if cp.returncode != 0:
                console.print(f"[red]router setup failed (exit status {cp.returncode}):[/]")
                console.print(cp.stderr.rstrip() or "(no output)", markup=False, highlight=False)
                return 1
            table = Table(title=f"client {CLIENT_POD4.ip} dials router {ROUTER_POD4.ip}")
            for column in ("dialled", "expected", "answered by", "source seen", "result"):
                table.add_column(column, no_wrap=True)
            failures = 0
            for proto, port, expected in DEMO_DIALS:
                r = dial(lab, proto, ROUTER_POD4.ip, port)
                ok = r.ok and r.server == expected and r.peer_ip == EGRESS_SOURCE4
                failures += not ok
                table.add_row(
                    f"{proto} {port}",
                    expected,
                    r.server or f"({r.error})",
                    str(r.peer_ip or "-"),
                    "[green]OK[/]" if ok else "[red]FAIL[/]",
                )
            console.print(table)
            return 1 if failures else 0
    except LabError as exc:
        console.print(f"[red]{escape(str(exc))}[/]", highlight=False)
        return 1
