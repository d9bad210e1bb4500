"""The one-way door against a hostile physical network and a hostile pod, with controls.

For every backend and family configuration (one lab each, shared by the tests
of that configuration), crafted frames are sent from the physical side (the
gateway's lan0, on the macvlan's L2) or from the client pod, and the far side
is observed: what the router sends into the pod network, what arrives on the
physical network, what the destination server received. Every test has a
control: the same probe with the protection under test taken out of the
ruleset gets through, so the test can fail.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

from egress_router.lab import world as labmod
from support import security, wire

pytestmark = pytest.mark.privileged

CLIENT_PORT_UDP = {4: 40053, 6: 40063}
CLIENT_PORT_TCP = {4: 40080, 6: 40090}


@pytest.fixture(scope="module", params=security.CONFIGS, ids=lambda c: f"{c[0]}-{c[1]}")
def world(request: pytest.FixtureRequest) -> Iterator[security.World]:
    # (Root and namespaces are checked before this runs: the `privileged` marker.)
    backend, family = request.param
    with security.world_for(backend, family, security.new_prefix()) as built:
        yield built


@pytest.fixture
def fresh(world: security.World) -> Iterator[security.World]:
    """The world, its rules and sysctls put back after the test (controls change them)."""
    yield world
    world.restore_rules()


def marker() -> bytes:
    return b"forged-" + secrets.token_hex(6).encode()


def addresses(family: int) -> dict[str, str]:
    if family == 4:
        return {"client": security.CLIENT4, "router": security.ROUTER4,
                "source": security.SOURCE4, "dest": security.DEST4,
                "phys_forged": security.PHYS_FORGED4, "pod_forged": security.POD_FORGED4}
    return {"client": security.CLIENT6, "router": security.ROUTER6,
            "source": security.SOURCE6, "dest": security.DEST6,
            "phys_forged": security.PHYS_FORGED6, "pod_forged": security.POD_FORGED6}


def udp_flow(world: security.World, family: int) -> None:
    """A live redirected UDP flow from the client's fixed port (answered by the destination)."""
    a = addresses(family)
    code = (
        "import socket, sys\n"
        f"s = socket.socket(socket.AF_INET{'6' if family == 6 else ''}, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(({a['client']!r}, {CLIENT_PORT_UDP[family]}))\n"
        "s.settimeout(3)\n"
        f"s.sendto(b'flow', ({a['router']!r}, 53))\n"
        "print(s.recvfrom(2048)[0].decode())\n"
    )
    out = security.run(world.lab.client, [sys.executable, "-c", code])
    assert "flow" in out, out


def tcp_flow(world: security.World, family: int) -> subprocess.Popen[str]:
    """A live redirected TCP connection from the client's fixed port, held for a while."""
    a = addresses(family)
    code = (
        "import socket, sys, time\n"
        f"s = socket.socket(socket.AF_INET{'6' if family == 6 else ''}, socket.SOCK_STREAM)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(({a['client']!r}, {CLIENT_PORT_TCP[family]}))\n"
        "s.settimeout(3)\n"
        f"s.connect(({a['router']!r}, 80))\n"
        "s.sendall(b'flow\\n'); print(s.recv(2048).decode().strip(), flush=True)\n"
        "time.sleep(12)\n"
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", world.lab.client, sys.executable, "-c", code],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip(), f"the TCP flow did not start: {proc.stderr.read() if proc.stderr else ''}"
    return proc


def forged_original(family: int, proto: str, mark: bytes) -> bytes:
    """The original tuple of the client's live flow, as the physical side forges it."""
    a = addresses(family)
    if proto == "udp":
        return wire.udp(a["client"], a["router"], CLIENT_PORT_UDP[family], 53, mark)
    if proto == "tcp":
        return wire.tcp(a["client"], a["router"], CLIENT_PORT_TCP[family], 80, mark)
    # ICMP error that conntrack relates to the flow in its original direction: it quotes
    # a reply-direction packet (router -> client), as if the client refused a reply.
    quoted = wire.udp(a["router"], a["client"], 53, CLIENT_PORT_UDP[family], mark)
    return wire.port_unreachable(a["client"], a["router"], quoted)


# ----------------------------------------------------------------------------- 1. direction


@pytest.mark.parametrize("proto", ["udp", "tcp", "icmp-error"])
def test_forged_original_direction_from_the_physical_side_is_not_forwarded(
    fresh: security.World, proto: str
) -> None:
    world = fresh
    # The reverse-path check alone would drop these (forged pod sources): take it out, so
    # that the direction binding is what is tested.
    world.apply_without("rpfilter")
    # Worst case for TCP: a peer that knows the window (conntrack accepts any sequence).
    security.run(world.lab.router, ["sysctl", "-q", "-w",
                                    "net.netfilter.nf_conntrack_tcp_be_liberal=1"])
    holds: list[subprocess.Popen[str]] = []
    try:
        for family in world.families:
            if proto == "tcp":
                holds.append(tcp_flow(world, family))
            else:
                udp_flow(world, family)
        marks = {family: marker() for family in world.families}
        with world.pod_side() as bound:
            world.from_physical([forged_original(f, proto, marks[f]) for f in world.families])
        assert not [m for m in marks.values() if bound.containing(m)]

        # Control: the same probe, with today's unbound `established,related accept`.
        world.apply_variant(lambda text: security.without(
            security.loosen_direction(text, world.backend),
            security.PROTECTIONS["rpfilter"][world.backend]))
        marks = {family: marker() for family in world.families}
        with world.pod_side() as loose:
            world.from_physical([forged_original(f, proto, marks[f]) for f in world.families])
        for family, mark in marks.items():
            assert loose.containing(mark), f"control: IPv{family} {proto} probe did not get through"
    finally:
        security.run(world.lab.router, ["sysctl", "-q", "-w",
                                        "net.netfilter.nf_conntrack_tcp_be_liberal=0"])
        for proc in holds:
            proc.kill()
            proc.communicate()


# ----------------------------------------------------------------------------- 2. spoofing


def test_pod_forging_a_physical_source_is_not_redirected(fresh: security.World) -> None:
    world = fresh

    def probes(marks: dict[int, bytes]) -> list[bytes]:
        return [wire.udp(addresses(f)["phys_forged"], addresses(f)["router"], 41000, 53, marks[f])
                for f in world.families]

    def received(mark: bytes) -> bool:
        return any(e.get("data") == mark.decode() for e in labmod.served(world.lab))

    marks = {family: marker() for family in world.families}
    with world.physical_side(3):
        world.from_pod(probes(marks))
    assert not [m for m in marks.values() if received(m)]

    world.apply_without("rpfilter")  # control
    marks = {family: marker() for family in world.families}
    with world.physical_side(3):
        world.from_pod(probes(marks))
    for family, mark in marks.items():
        assert received(mark), f"control: the IPv{family} forged probe was not redirected"


def test_physical_side_forging_a_pod_source_gets_nothing_into_the_pod_network(
    fresh: security.World,
) -> None:
    world = fresh

    def probes(marks: dict[int, bytes]) -> list[bytes]:
        out = []
        for family in world.families:
            a = addresses(family)
            echo = (8, 0) if family == 4 else (128, 0)
            out.append(wire.icmp(a["pod_forged"], a["router"], echo, b"\0\1\0\1", marks[family]))
        return out

    marks = {family: marker() for family in world.families}
    with world.pod_side() as seen:
        world.from_physical(probes(marks))
    assert not [m for m in marks.values() if seen.containing(m)]

    world.apply_without("rpfilter")  # control: the router answers into the pod network
    marks = {family: marker() for family in world.families}
    with world.pod_side() as seen:
        world.from_physical(probes(marks))
    for family, mark in marks.items():
        assert seen.containing(mark), f"control: no IPv{family} echo reply into the pod network"


def nat_port(world: security.World, family: int) -> int:
    """The port the client's live UDP flow leaves from after SNAT (its reply tuple's dport)."""
    out = security.run(world.lab.router, [
        "conntrack", "-L", "-f", "ipv4" if family == 4 else "ipv6", "-p", "udp",
        "--orig-port-src", str(CLIENT_PORT_UDP[family]), "--orig-port-dst", "53"])
    ports = re.findall(r"dport=(\d+)", out)
    assert len(ports) == 2, f"no single conntrack entry of the IPv{family} flow: {out!r}"
    return int(ports[1])


def test_pod_forging_a_reply_of_a_live_flow_gets_nothing_into_the_pod_network(
    fresh: security.World,
) -> None:
    """The reverse-path check also sees packets that match a live conntrack entry.

    Established packets of a redirected flow skip the route lookup only on the interface
    and in the direction their flow allows; a pod that forges the reply tuple of another
    flow (the destination's address and port, to the reserved source and NAT port) is in
    the reply direction on the pod interface, and is checked and dropped.
    """
    world = fresh
    router_pod_mac = wire.mac_bytes(world.router_pod_mac)

    def forge() -> dict[int, bytes]:
        marks = {}
        probes = []
        for family in world.families:
            udp_flow(world, family)
            a = addresses(family)
            marks[family] = marker()
            probes.append(wire.udp(a["dest"], a["source"], 53, nat_port(world, family),
                                   marks[family]))
        with world.pod_side() as seen:
            world.from_pod(probes)
        # What the router sent into the pod network (not the probe on its way in).
        sent = [f for f in seen.incoming if f[6:12] == router_pod_mac]
        return {family: mark for family, mark in marks.items()
                if any(mark in f for f in sent)}

    assert forge() == {}
    # The reverse-path check alone holds it (with today's unbound forward accept) ...
    world.apply_variant(lambda text: security.loosen_direction(text, world.backend))
    assert forge() == {}, "the reverse-path check let a forged reply of a live flow through"
    # ... and without both, the router forwards it into the pod network (the control).
    world.apply_variant(lambda text: security.without(
        security.loosen_direction(text, world.backend),
        security.PROTECTIONS["rpfilter"][world.backend]))
    assert set(forge()) == set(world.families), "control: the forged reply did not get through"


def _foreign_sources(world: security.World, seen: security.Capture) -> set[str]:
    """IP sources of frames the router's macvlan0 put on the physical network, not reserved."""
    mac = wire.mac_bytes(world.router_mac)
    reserved = {str(s.address) for s in world.cfg.sources}
    foreign = set()
    for data in seen.frames:
        source = wire.ip_source(data)
        if data[6:12] != mac or source is None or source in reserved:
            continue
        address = ipaddress.ip_address(source)
        if address.version == 6 and (address.is_link_local or address.is_unspecified) \
                and data[20] in (wire.PROTO_ICMPV6, 0):  # 0: hop-by-hop (MLD)
            continue  # neighbour discovery and MLD
        foreign.add(source)
    return foreign


def _provoke(world: security.World) -> None:
    """Everything that could make the router speak on the physical network from another source."""
    for family in world.families:
        a = addresses(family)
        for proto in ("tcp", "udp"):
            assert labmod.dial(world.lab, proto, a["router"], 80 if proto == "tcp" else 53).ok
    packets = []
    for family in (4, 6):
        a = addresses(family)
        echo = (8, 0) if family == 4 else (128, 0)
        # A pod forging a physical source at a refused port, and pinging the router.
        packets.append(wire.udp(a["phys_forged"], a["router"], 41001, security.CLOSED_PORT,
                                b"probe"))
        packets.append(wire.tcp(a["phys_forged"], a["router"], 41002, 9090, b"", flags=0x02))
        packets.append(wire.icmp(a["phys_forged"], a["router"], echo, b"\0\2\0\2", b"probe"))
    world.from_pod(packets)
    # The physical side pinging the router's pod address through it.
    physical = [wire.icmp(security.GATEWAY4, security.ROUTER4, (8, 0), b"\0\3\0\3", b"probe"),
                wire.icmp(security.GATEWAY6, security.ROUTER6, (128, 0), b"\0\3\0\3", b"probe")]
    world.from_physical(physical)


def test_only_reserved_sources_leave_the_egress_interface(fresh: security.World) -> None:
    world = fresh
    with world.physical_side() as hardened:
        _provoke(world)
    assert _foreign_sources(world, hardened) == set()
    # The guard alone holds the line (the reverse-path check, which stops the forged
    # pod-side probes before, taken out; pings of the pod address from the physical side
    # pass the reverse-path check, only the guard stops their replies) ...
    world.apply_without("rpfilter")
    with world.physical_side() as seen:
        _provoke(world)
    assert _foreign_sources(world, seen) == set(), "the guard alone let something out"
    # ... and without both, the router speaks from its pod address (the control).
    world.apply_without("rpfilter", "guard")
    with world.physical_side() as loose:
        _provoke(world)
    assert _foreign_sources(world, loose) & {security.ROUTER4, security.ROUTER6}
