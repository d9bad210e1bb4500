"""A two-node lab for the active/standby pair, and the failover measurements on it.

The single-router lab (``lab.world``) has one node; HA needs two nodes on one
L2, each with a router pod whose macvlan hangs off its own node's NIC, and a
client that reaches "the Service": whichever replica answers ``/readyz``
with 200, as kube-proxy would pick it. The lab judges from outside: who
holds the reserved address is read with ``ip -j addr`` in each router's
namespace, and a failover is over when the destination server reports a new
connection from the reserved address.

Topology (all inside ``<prefix>-*`` namespaces)::

    client ─┐                               ┌── n1 ens3 ─ macvlan0 (r1)
    r1 eth0 ├─ pods: cbr0 10.128.0.1/24     │
    r2 eth0 ┘                   lan: br0 ───┼── n2 ens3 ─ macvlan0 (r2)
                                            └── gw lan0 192.168.12.1 ⇄ wan0 ─ ext 203.0.113.25

With ``attachment="cni"`` the router pods are set up as Multus would: the
product's CNI plugin, run by ``python -m egress_router.cni.runtime ADD`` in
the node's namespace, creates ``macvlan0`` and the data path from a network
configuration with ``"ha"`` (everything but the reserved address), and the
``wait`` process reads that same configuration (``EGRESS_ROUTER_CNI_CONFIG``).

Failures: ``sigkill`` (the active's wait process, SIGKILL: keepalived hears
of it by PR_SET_PDEATHSIG and hands over), ``delete`` (the active pod is
deleted: everything in its namespace SIGKILLed, then the namespace removed,
so nothing says goodbye), ``linkdown`` (the active node's cable: its port on
the L2 goes down). After each, the failed replica comes back and must not
take the address back (nopreempt).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

from egress_router.lab import processes, topology, world
from egress_router.lab import server as labserver

RESERVED = "192.168.12.99"
GATEWAY = "192.168.12.1"
RESERVED6 = "2001:db8:12::99"  # dual-stack labs: moves with the IPv4 address
GATEWAY6 = "2001:db8:12::1"
DESTINATION = "203.0.113.25"
PORT = 80
HTTP_PORT = 9090
VRID = 51
POD_GW = IPv4Interface("10.128.0.1/24")
CLIENT = IPv4Interface("10.128.0.10/24")
REPLICAS = {"r1": IPv4Interface("10.128.0.2/24"), "r2": IPv4Interface("10.128.0.3/24")}
NODES = {"r1": "n1", "r2": "n2"}
SETTLE_TIMEOUT = 15.0
FAILOVER_TIMEOUT = 10.0
KINDS = ("sigkill", "delete", "linkdown")


CNI_IFNAME = "macvlan0"
CNI_PATH = "/usr/lib/cni"  # Debian's reference plugins; ours is found next to this Python
CNI_TIMEOUT = 60.0


def cni_config() -> dict[str, Any]:
    """The NetworkAttachmentDefinition's config both replicas' ADD (and wait) read."""
    return {
        "cniVersion": "1.0.0",
        "name": "egress-ha",
        "type": "egress-router",
        "ip": {"addresses": [f"{RESERVED}/24"], "gateway": GATEWAY,
               "destinations": [f"{PORT} tcp {DESTINATION}"]},
        "interfaceType": "macvlan",
        "interfaceArgs": {"master": "ens3", "mode": "private"},
        "httpPort": HTTP_PORT,
        "ha": {"mode": "vrrp", "vrid": VRID},
    }


def router_env(lab: HaLab | None = None) -> dict[str, str]:
    """Both replicas' configuration: identical, as a Deployment gives them."""
    if lab is not None and lab.attachment == "cni":
        return {
            "EGRESS_ROUTER_CNI_CONFIG": str(lab.cni_config_path),
            "EGRESS_INTERFACE": CNI_IFNAME,
            "EGRESS_ROUTER_MODE": "legacy",
            "EGRESS_ROUTER_RECONCILE_SECONDS": "1",
        }
    if lab is not None and lab.dual:
        return {**router_env(), "EGRESS_SOURCE": f"{RESERVED},{RESERVED6}",
                "EGRESS_GATEWAY": f"{GATEWAY},{GATEWAY6}"}
    return {
        "EGRESS_SOURCE": RESERVED,
        "EGRESS_GATEWAY": GATEWAY,
        "EGRESS_DESTINATION": f"{PORT} tcp {DESTINATION}",
        "EGRESS_ROUTER_MODE": "legacy",
        "EGRESS_ROUTER_HA": "vrrp",
        "EGRESS_HA_VRID": str(VRID),
        "EGRESS_ROUTER_HTTP_PORT": str(HTTP_PORT),
        "EGRESS_ROUTER_RECONCILE_SECONDS": "1",
    }


@dataclass
class HaLab:
    prefix: str
    attachment: str = "annotation"  # or "cni": the pods' macvlan and data path by CNI ADD
    dual: bool = False  # the reserved addresses: IPv4 and IPv6 (annotation attachment)
    routers: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    logs: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def cni_config_path(self) -> Path:
        return self.base.state_dir / "cni.json"

    def cni_result_path(self, replica: str) -> Path:
        return self.base.state_dir / f"cni-{replica}.result.json"

    def container_id(self, replica: str) -> str:
        return f"{self.prefix}-{replica}"

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    @property
    def base(self) -> world.Lab:
        return world.Lab(self.prefix)  # its ext namespace and state directory are ours

    @property
    def namespaces(self) -> list[str]:
        return [self.ns(r) for r in ("lan", "pods", "n1", "n2", "r1", "r2", "client", "gw", "ext")]


def _ip(ns: str, *args: str) -> str:
    return processes.ip(ns, *args, what=f"ip {' '.join(args)} in {ns}")


def _pod(lab: HaLab, replica: str) -> None:
    """Create router pod ``replica``: eth0 on the pod network, macvlan0 on its node's NIC."""
    ns, node = lab.ns(replica), lab.ns(NODES[replica])
    processes.run(["ip", "netns", "add", ns], f"create namespace {ns}")
    processes.sysctl(ns, {"net.ipv4.ip_forward": "0", **topology.NO_DAD})
    _ip(ns, "link", "set", "lo", "up")
    world._veth(ns, "eth0", lab.ns("pods"), f"p{replica}")
    _ip(lab.ns("pods"), "link", "set", f"p{replica}", "master", "cbr0", "up")
    # A pod deleted and created again keeps its IP here, so it keeps its MAC too:
    # the client's neighbour entry must not point at the deleted pod's veth.
    mac = f"02:00:0a:80:00:{REPLICAS[replica].ip.packed[3]:02x}"
    _ip(ns, "link", "set", "eth0", "address", mac)
    _ip(ns, "link", "set", "eth0", "up")
    world._address(ns, "eth0", REPLICAS[replica])
    world._default_route(ns, POD_GW)
    if lab.attachment == "cni":
        cni(lab, "ADD", replica)
        return
    _ip(node, "link", "add", "mvtmp0", "link", "ens3", "type", "macvlan", "mode", "private")
    _ip(node, "link", "set", "mvtmp0", "netns", ns)
    _ip(ns, "link", "set", "mvtmp0", "name", "macvlan0")


def cni(lab: HaLab, command: str, replica: str, config: dict[str, Any] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the CNI plugin for ``replica``'s pod as its node's runtime would (``cnirun``).

    ADD saves its result (libcni's cache), CHECK and DEL pass it back as
    prevResult. ADD and DEL raise LabError on failure (unless ``check`` is
    False); CHECK's outcome is the caller's to judge. ``config`` replaces the
    lab's configuration.
    """
    path = lab.cni_config_path
    if config is not None:
        path = lab.base.state_dir / f"cni-{command.lower()}-{replica}.json"
        path.write_text(json.dumps(config), encoding="utf-8")
    argv = [sys.executable, "-m", "egress_router.cni.runtime", command, str(path),
            "--netns", lab.ns(replica), "--ifname", CNI_IFNAME,
            "--container-id", lab.container_id(replica), "--cni-path", CNI_PATH,
            "--in-netns", lab.ns(NODES[replica]), "--timeout", f"{CNI_TIMEOUT:g}"]
    result = lab.cni_result_path(replica)
    if command == "ADD":
        argv += ["--save-result", str(result)]
    elif result.exists():
        argv += ["--prev-result", str(result)]
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=CNI_TIMEOUT + 10,
                            check=False, env=processes._base_env())
    except subprocess.TimeoutExpired as err:
        raise world.LabError(f"cannot run CNI {command} for {replica}: {err}") from None
    if check and cp.returncode != 0 and command in ("ADD", "DEL"):
        raise world.LabError(f"cannot run CNI {command} for {replica}: {cp.stdout}{cp.stderr}")
    return cp


def up(prefix: str, attachment: str = "annotation", dual: bool = False) -> HaLab:
    """Build the two-node lab and start the destination server (not the routers)."""
    lab = HaLab(prefix, attachment, dual)
    down(prefix)
    try:
        lab.base.state_dir.mkdir(parents=True, exist_ok=True)
        if attachment == "cni":
            lab.cni_config_path.write_text(json.dumps(cni_config()), encoding="utf-8")
        # A parallel test run's sweep leaves a lab alone while its owner lives.
        owner = lab.base.state_dir / world.OWNER_FILE
        owner.write_text(processes.process_record(os.getpid()), encoding="utf-8")
        for role in ("lan", "pods", "n1", "n2", "client", "gw", "ext"):
            ns = lab.ns(role)
            processes.run(["ip", "netns", "add", ns], f"create namespace {ns}")
            forwarding = "1" if role == "gw" else "0"
            processes.sysctl(ns, {"net.ipv4.ip_forward": forwarding, **topology.NO_DAD})
            _ip(ns, "link", "set", "lo", "up")
        for bridge_ns, bridge in ((lab.ns("lan"), "br0"), (lab.ns("pods"), "cbr0")):
            _ip(bridge_ns, "link", "add", bridge, "type", "bridge", "mcast_snooping", "0")
            _ip(bridge_ns, "link", "set", bridge, "up")
        for node in ("n1", "n2"):
            world._veth(lab.ns(node), "ens3", lab.ns("lan"), node)
            _ip(lab.ns(node), "link", "set", "ens3", "up")
        world._veth(lab.ns("gw"), "lan0", lab.ns("lan"), "gw")
        for port in ("n1", "n2", "gw"):
            _ip(lab.ns("lan"), "link", "set", port, "master", "br0", "up")
        world._veth(lab.ns("client"), "eth0", lab.ns("pods"), "pclient")
        _ip(lab.ns("pods"), "link", "set", "pclient", "master", "cbr0", "up")
        world._address(lab.ns("pods"), "cbr0", POD_GW)
        _ip(lab.ns("client"), "link", "set", "eth0", "up")
        world._address(lab.ns("client"), "eth0", CLIENT)
        world._default_route(lab.ns("client"), POD_GW)
        world._veth(lab.ns("ext"), "eth0", lab.ns("gw"), "wan0")
        for ns, dev in ((lab.ns("gw"), "lan0"), (lab.ns("gw"), "wan0"), (lab.ns("ext"), "eth0")):
            _ip(ns, "link", "set", dev, "up")
        world._address(lab.ns("gw"), "lan0", world.GATEWAY4)
        world._address(lab.ns("gw"), "wan0", world.EXT_GATEWAY4)
        world._address(lab.ns("ext"), "eth0", world.DESTINATIONS4[0])
        world._default_route(lab.ns("ext"), world.EXT_GATEWAY4)
        for replica in REPLICAS:
            _pod(lab, replica)
        processes.start_server(lab.base, [f"tcp:{DESTINATION}:{PORT}"])
    except BaseException:
        with contextlib.suppress(Exception):
            down(prefix)
        raise
    return lab


# A host on the egress L2 (the gateway's namespace) that speaks VRRPv3 for the pair's VRID and
# reserved address from its own address: argv = source, vrid, priority, rate, seconds.
FOREIGN_SPEAKER = r"""
import socket, struct, sys, time
source, vrid, priority = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rate, seconds, address = float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
group = "224.0.0.18"
def checksum(data):
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
body = struct.pack("!BBBBH", 0x31, vrid, priority, 1, 100) + b"\0\0" + socket.inet_aton(address)
pseudo = socket.inet_aton(source) + socket.inet_aton(group) + struct.pack("!BBH", 0, 112, len(body))
body = body[:6] + struct.pack("!H", checksum(pseudo + body)) + body[8:]
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
sock.bind((source, 0))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(source))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
sent, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    sock.sendto(body, (group, 0)); sent += 1
    time.sleep(1 / rate)
print(sent, flush=True)
"""


def foreign_speaker(lab: HaLab, seconds: float = 5.0, priority: int = 255,
                    rate: float = 20.0, source: str = GATEWAY) -> subprocess.Popen[str]:
    """Start a foreign VRRP speaker on the pair's VRID from the gateway (it prints the count).

    ``source`` must be an address of the gateway's ``lan0`` (`gateway_address`).
    """
    argv = [sys.executable, "-c", FOREIGN_SPEAKER, source, str(VRID), str(priority),
            str(rate), str(seconds), RESERVED]
    return subprocess.Popen(["ip", "netns", "exec", lab.ns("gw"), *argv],
                            stdout=subprocess.PIPE, text=True)


def gateway_address(lab: HaLab, address: str, add: bool) -> None:
    """Add (or delete) an address on the gateway's L2 interface (a foreign speaker's source)."""
    _ip(lab.ns("gw"), "address", "add" if add else "del", address, "dev", "lan0")


def down(prefix: str) -> None:
    """Stop everything the lab started and delete its namespaces; idempotent."""
    lab = HaLab(prefix)
    existing = set(world._list_netns())
    world._remove(prefix, [ns for ns in lab.namespaces if ns in existing])


# ---------------------------------------------------------------------- the routers


def start_router(lab: HaLab, replica: str) -> subprocess.Popen[str]:
    """Start the product's wait process in ``replica`` (legacy mode, HA on)."""
    log_dir = lab.base.state_dir
    out = (log_dir / f"{replica}.{len(lab.logs.get(replica, []))}.log")
    lab.logs.setdefault(replica, []).append(out)
    with out.open("a") as handle:
        proc = subprocess.Popen(
            processes._netns_exec(lab.ns(replica), [sys.executable, "-m", "egress_router"]),
            stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, text=True,
            env={**processes._base_env(), **router_env(lab)}, start_new_session=True,
        )
    lab.routers[replica] = proc
    return proc


def stop_router(lab: HaLab, replica: str, sig: int = signal.SIGTERM) -> None:
    proc = lab.routers.pop(replica, None)
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def holders(lab: HaLab, address: str = RESERVED) -> list[str]:
    """The replicas whose macvlan0 holds ``address`` now (read with ``ip -j``)."""
    found = []
    for replica in REPLICAS:
        cp = subprocess.run(
            ["ip", "-j", "-n", lab.ns(replica), "addr", "show", "dev", "macvlan0"],
            capture_output=True, text=True, timeout=5, check=False,
        )
        if cp.returncode != 0 or not cp.stdout.strip():
            continue
        for link in json.loads(cp.stdout):
            if any(a.get("local") == address for a in link.get("addr_info", [])):
                found.append(replica)
    return found


def wait_for(predicate: Any, timeout: float, what: str, step: float = 0.02) -> float:
    """Poll ``predicate`` until true; the time it took, or LabError."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise world.LabError(f"cannot {what}: not after {timeout:g} s")
        time.sleep(step)
    return time.monotonic() - start


def settle(lab: HaLab) -> str:
    """Wait until exactly one replica holds the address; that replica."""
    found: list[str] = []

    def one() -> bool:
        nonlocal found
        found = holders(lab)
        return len(found) == 1

    wait_for(one, SETTLE_TIMEOUT, "elect one active replica")
    return found[0]


# ---------------------------------------------------------------------- the client


@dataclass
class Client:
    """The client pod, dialling through "the Service" in its own process (``client`` below)."""

    proc: subprocess.Popen[str]
    path: Path

    def records(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_client(lab: HaLab, duration: float) -> Client:
    path = lab.base.state_dir / f"client.{time.monotonic_ns()}.jsonl"
    endpoints = ",".join(str(i.ip) for i in REPLICAS.values())
    argv = [sys.executable, "-m", "egress_router.lab.ha", "client", "--endpoints", endpoints,
            "--out", str(path), "--duration", f"{duration:g}"]
    proc = subprocess.Popen(
        processes._netns_exec(lab.ns("client"), argv), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        env=processes._base_env(), start_new_session=True,
    )
    return Client(proc, path)


def _ready(endpoint: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(
            f"http://{endpoint}:{HTTP_PORT}/readyz", timeout=timeout
        ) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def run_client(endpoints: Sequence[str], out: Path, duration: float) -> None:
    """Open a new connection to the destination every 10 ms through a ready endpoint.

    One prober thread per endpoint plays kube-proxy: it asks ``/readyz``
    every 20 ms and the dialler uses the first endpoint that last said 200.
    Each dial runs on its own thread, so one hanging through a dead replica
    does not hold back the next (new connections keep arriving, as from
    many clients). One JSON line per dial.
    """
    duration = min(duration, 600.0)
    end = time.monotonic() + duration
    ready = dict.fromkeys(endpoints, False)
    lock = threading.Lock()
    handle = out.open("a", encoding="utf-8")

    def probe(endpoint: str) -> None:
        while time.monotonic() < end:
            ready[endpoint] = _ready(endpoint, 0.5)
            time.sleep(0.02)

    def dial(via: str, started: float) -> None:
        reply = labserver.dial("tcp", via, PORT, timeout=0.3)
        record = {"t0": started, "t1": time.monotonic(), "via": via, **reply}
        with lock:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    for endpoint in endpoints:
        threading.Thread(target=probe, args=(endpoint,), daemon=True).start()
    dials: list[threading.Thread] = []
    while time.monotonic() < end:
        chosen = next((e for e in endpoints if ready[e]), None)
        if chosen is not None:
            dials = [t for t in dials if t.is_alive()]
            if len(dials) < 64:  # bounded: at most 64 dials in flight
                thread = threading.Thread(target=dial, args=(chosen, time.monotonic()),
                                          daemon=True)
                thread.start()
                dials.append(thread)
        time.sleep(0.01)
    for thread in dials:
        thread.join(1.0)
    handle.close()


def _peer_host(record: dict[str, Any]) -> str | None:
    peer = record.get("peer")
    return None if not peer else str(peer).rsplit(":", 1)[0].strip("[]")


def first_success(client: Client, after: float, via: str) -> float | None:
    """When the first dial started after ``after`` through ``via`` came back from the
    reserved address (the destination's view), or None."""
    for record in client.records():
        if (record["t0"] >= after and record.get("via") == via and not record.get("error")
                and _peer_host(record) == RESERVED):
            return float(record["t1"])
    return None


# ---------------------------------------------------------------------- failures


def fail(lab: HaLab, kind: str, replica: str) -> None:
    """Make ``replica`` fail the way ``kind`` says."""
    if kind == "sigkill":
        stop_router(lab, replica, signal.SIGKILL)
    elif kind == "delete":
        proc = lab.routers.pop(replica, None)
        ns = lab.ns(replica)
        for pid in world._netns_pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        processes.run(["ip", "netns", "delete", ns], f"delete namespace {ns}")
        if proc is not None:
            proc.wait(10)
    elif kind == "linkdown":
        _ip(lab.ns("lan"), "link", "set", NODES[replica], "down")
    else:
        raise world.LabError(f"cannot fail {replica}: unknown failure {kind!r}")


def recover(lab: HaLab, kind: str, replica: str) -> None:
    """Bring the failed replica back (a restarted container, a new pod, the cable back)."""
    if kind == "sigkill":
        start_router(lab, replica)
    elif kind == "delete":
        new_pod(lab, replica)
        start_router(lab, replica)
    elif kind == "linkdown":
        _ip(lab.ns("lan"), "link", "set", NODES[replica], "up")


def new_pod(lab: HaLab, replica: str) -> None:
    """A fresh, empty pod for ``replica`` (its router not started): the old one deleted first."""
    stop_router(lab, replica)
    existing = set(world._list_netns())
    if lab.attachment == "cni":
        cni(lab, "DEL", replica)  # as the runtime does when a pod goes, its netns gone or not
    if lab.ns(replica) in existing:
        processes.run(["ip", "netns", "delete", lab.ns(replica)],
                      f"delete namespace {lab.ns(replica)}")
    if _has_link(lab.ns("pods"), f"p{replica}"):
        _ip(lab.ns("pods"), "link", "del", f"p{replica}")
    _pod(lab, replica)


def _has_link(ns: str, dev: str) -> bool:
    cp = subprocess.run(["ip", "-n", ns, "link", "show", dev], capture_output=True, timeout=5,
                        check=False)
    return cp.returncode == 0


def count_switchovers(lab: HaLab, seconds: float, holder: str) -> int:
    """How often the holder changed (or the address was held by none or two) over ``seconds``."""
    changes = 0
    current = [holder]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = holders(lab)
        if now != current:
            changes += 1
            current = now
        time.sleep(0.02)
    return changes


def wait_ready(lab: HaLab, client: Client, replica: str, timeout: float = SETTLE_TIMEOUT) -> None:
    """Until the client has had a good dial through ``replica`` (the pair is up end to end)."""
    start = time.monotonic()
    wait_for(lambda: first_success(client, start, str(REPLICAS[replica].ip)) is not None,
             timeout, f"reach the destination through {replica}")


def standby_ready(lab: HaLab, replica: str, timeout: float = SETTLE_TIMEOUT) -> None:
    """Until ``replica``'s keepalived is a standby (its log says so)."""
    log = lab.logs[replica][-1]
    wait_for(lambda: "-> standby" in log.read_text(errors="replace"), timeout,
             f"see {replica} join as a standby")


@dataclass
class Trial:
    kind: str
    failed: str
    took_over: str
    failover: float  # seconds from the failure to the first new connection from the reserved IP
    switchovers_on_return: int


def trial(lab: HaLab, client: Client, kind: str, observe_return: float = 2.0) -> Trial:
    """One failure of the active replica, measured; the failed one is brought back."""
    active = settle(lab)
    other = "r2" if active == "r1" else "r1"
    via = str(REPLICAS[other].ip)
    standby_ready(lab, other)
    started = time.monotonic()
    fail(lab, kind, active)
    wait_for(lambda: first_success(client, started, via) is not None, FAILOVER_TIMEOUT,
             f"fail over from {active} to {other} ({kind})", step=0.01)
    took = first_success(client, started, via)
    assert took is not None
    recover(lab, kind, active)
    if kind != "linkdown":
        standby_ready(lab, active)
    switchovers = count_switchovers(lab, observe_return, other)
    return Trial(kind, active, other, took - started, switchovers)


def partition(lab: HaLab, on: bool) -> None:
    """Cut (or heal) the L2 between the two nodes; both still reach the gateway."""
    if on:
        script = (
            "table bridge ha_partition {\n chain forward {\n"
            "  type filter hook forward priority 0; policy accept;\n"
            '  iifname "n1" oifname "n2" drop\n  iifname "n2" oifname "n1" drop\n }\n}\n'
        )
        cp = world.run_in(lab.ns("lan"), ["nft", "-f", "-"], input=script, timeout=10)
    else:
        cp = world.run_in(lab.ns("lan"), ["nft", "delete", "table", "bridge", "ha_partition"],
                          timeout=10)
    if cp.returncode != 0:
        raise world.LabError(f"cannot {'cut' if on else 'heal'} the partition: {cp.stderr}")


def heal_trial(lab: HaLab, split_timeout: float = 5.0) -> float:
    """Split the pair (both become active), heal it; seconds until exactly one holder."""
    settle(lab)
    partition(lab, True)
    try:
        wait_for(lambda: len(holders(lab)) == 2, split_timeout, "see both replicas active")
    finally:
        partition(lab, False)
    started = time.monotonic()
    wait_for(lambda: len(holders(lab)) == 1, FAILOVER_TIMEOUT, "heal the split", step=0.01)
    return time.monotonic() - started


@contextlib.contextmanager
def running(prefix: str, attachment: str = "annotation", dual: bool = False) -> Iterator[HaLab]:
    """The lab with both routers started, removed afterwards whatever happens."""
    lab = up(prefix, attachment, dual)
    try:
        start_router(lab, "r1")
        start_router(lab, "r2")
        settle(lab)
        yield lab
    finally:
        for replica in list(lab.routers):
            with contextlib.suppress(Exception):
                stop_router(lab, replica)
        down(prefix)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "max": max(values), "min": min(values)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m egress_router.lab.ha")
    sub = parser.add_subparsers(dest="command", required=True)
    client = sub.add_parser("client", help="dial through the ready endpoint (in the client ns)")
    client.add_argument("--endpoints", required=True)
    client.add_argument("--out", required=True, type=Path)
    client.add_argument("--duration", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.command == "client":
        run_client(args.endpoints.split(","), args.out, args.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
