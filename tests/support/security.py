"""Shared by the test_security_* modules: a lab per backend and family, hostile frames, controls.

A `World` is one lab with the router set up (``init``) for one backend and
one family configuration. Tests send crafted frames from the physical side
(the gateway's ``lan0``, on the macvlan's L2) or from the client pod, and
observe the far side with AF_PACKET captures (`wire.py`) or the destination
server's log. Controls apply the same ruleset with one protection taken out
(`World.apply_without`), so each test shows that its probe does get through
without the protection; `World.restore` puts the full setup back.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from egress_router.core import config, plan, ruleset
from egress_router.kernel import files
from egress_router.lab import world as labmod
from support import wire

WIRE_PATH = Path(wire.__file__)  # also run as a program inside lab namespaces

ROUTER4, ROUTER6 = str(labmod.ROUTER_POD4.ip), str(labmod.ROUTER_POD6.ip)
CLIENT4, CLIENT6 = str(labmod.CLIENT_POD4.ip), str(labmod.CLIENT_POD6.ip)
SOURCE4, SOURCE6 = str(labmod.EGRESS_SOURCE4), str(labmod.EGRESS_SOURCE6)
GATEWAY4, GATEWAY6 = str(labmod.GATEWAY4.ip), str(labmod.GATEWAY6.ip)
DEST4, DEST6 = str(labmod.DESTINATIONS4[0].ip), str(labmod.DESTINATIONS6[0].ip)
# What a pod forges as its source: a live host on the physical network (so that anything
# sent to it resolves its MAC address and goes on the wire), and vice versa.
PHYS_FORGED4, PHYS_FORGED6 = GATEWAY4, GATEWAY6
POD_FORGED4, POD_FORGED6 = CLIENT4, CLIENT6
CLOSED_PORT = 7777  # no rule, no fallback: the router refuses it

FAMILIES = {
    "ipv4": {"EGRESS_SOURCE": f"{SOURCE4}/24", "EGRESS_GATEWAY": GATEWAY4,
             "EGRESS_DESTINATION": f"53 udp {DEST4}\n80 tcp {DEST4}\n"},
    "ipv6": {"EGRESS_SOURCE": f"{SOURCE6}/64", "EGRESS_GATEWAY": GATEWAY6,
             "EGRESS_DESTINATION": f"53 udp {DEST6}\n80 tcp {DEST6}\n"},
    "dual": {"EGRESS_SOURCE": f"{SOURCE4}/24,{SOURCE6}/64",
             "EGRESS_GATEWAY": f"{GATEWAY4},{GATEWAY6}",
             "EGRESS_DESTINATION": f"53 udp {DEST4}\n80 tcp {DEST4}\n"
                                   f"53 udp {DEST6}\n80 tcp {DEST6}\n"},
}
BACKENDS = ("nftables", "iptables")
CONFIGS = [(backend, family) for backend in BACKENDS for family in FAMILIES]

# What each protection is in each backend's rendered text (lines taken out by a control).
PROTECTIONS: dict[str, dict[str, str]] = {
    "rpfilter": {"nftables": r"fib saddr \. iif", "iptables": r"-m rpfilter"},
    "guard": {"nftables": r"not from a reserved address",
              "iptables": r"^-A EGRESS-ROUTER-OUTPUT -o \S+ -j DROP$"},
    "family": {"nftables": r"is not configured on",
               "iptables": r"^-A EGRESS-ROUTER-(ANTISPOOF|INPUT) -i macvlan0 -j DROP$"},
    "http": {"nftables": r"HTTP only from the pod side|iifname \"macvlan0\" .* drop$",
             "iptables": r"--dport 9090 -j DROP|^-A EGRESS-ROUTER-INPUT -i macvlan0 .*-j DROP$"},
}

# Today's forward accepts (before the direction binding), for the direction controls.
_LOOSE_NFT = (
    "\t\tct state established,related accept\n"
    '\t\tiifname "eth0" oifname "macvlan0" ct state new ct status dnat accept\n'
)
_LOOSE_IPT = (
    "-A EGRESS-ROUTER-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
    "-A EGRESS-ROUTER-FORWARD -i eth0 -o macvlan0 -m conntrack --ctstate NEW "
    "-m conntrack --ctstate DNAT -j ACCEPT\n"
)


def loosen_direction(text: str, backend: str) -> str:
    """The ruleset with today's unbound ``established,related accept`` in the forward chain."""
    if backend == "nftables":
        bound = re.compile(r"^\t\tiifname \S+ oifname \S+ ct direction \w+ ct status dnat accept\n",
                           re.M)
        first = bound.search(text)
        assert first is not None, "no direction-bound accept to loosen"
        return text[:first.start()] + _LOOSE_NFT + bound.sub("", text[first.start():])
    bound = re.compile(r"^-A EGRESS-ROUTER-FORWARD .*--ctdir \w+ .*\n", re.M)
    first = bound.search(text)
    if first is None:
        return text  # a family without a source: nothing is forwarded at all
    return text[:first.start()] + _LOOSE_IPT + bound.sub("", text[first.start():])


def without(text: str, pattern: str) -> str:
    """``text`` without the lines matching ``pattern``."""
    found = re.compile(pattern)
    return "".join(line for line in text.splitlines(keepends=True)
                   if not found.search(line.rstrip("\n")))


def run(ns: str, argv: list[str], *, input: str | None = None, timeout: float = 20) -> str:
    done = labmod.run_in(ns, argv, input=input, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(argv)} in {ns}: {done.stderr.strip()}"
    return done.stdout


def ip_json(ns: str, *args: str) -> Any:
    return json.loads(run(ns, ["ip", "-j", *args]) or "[]")


def mac_of(ns: str, ifname: str) -> str:
    return str(ip_json(ns, "link", "show", "dev", ifname)[0]["address"])


def link_local_of(ns: str, ifname: str) -> str | None:
    for entry in ip_json(ns, "-6", "addr", "show", "dev", ifname):
        for info in entry.get("addr_info", []):
            if info.get("scope") == "link" and "local" in info:
                return str(info["local"])
    return None


@dataclass
class Capture:
    """Frames seen on one interface while the ``with`` block ran."""

    frames: list[bytes] = field(default_factory=list)
    incoming: list[bytes] = field(default_factory=list)

    def containing(self, marker: bytes) -> list[bytes]:
        return [f for f in self.frames if marker in f]


@contextlib.contextmanager
def capture(ns: str, ifname: str, seconds: float = 8.0, settle: float = 0.7) -> Iterator[Capture]:
    """Capture on ``ifname`` in ``ns`` around the block (and ``settle`` seconds after it)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, str(WIRE_PATH), "capture", ifname,
         str(seconds)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    result = Capture()
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", "the capture did not start"
        yield result
        time.sleep(settle)
    finally:
        out, err = proc.communicate(input="", timeout=seconds + 10)
    assert proc.returncode == 0, err
    for item in json.loads(out.strip().splitlines()[-1]):
        data = bytes.fromhex(item["hex"])
        result.frames.append(data)
        if not item["outgoing"]:
            result.incoming.append(data)


@dataclass
class World:
    """One lab, the router set up for ``backend`` and ``family`` (see `FAMILIES`)."""

    lab: labmod.Lab
    backend: str
    family: str

    @property
    def env(self) -> dict[str, str]:
        return {**FAMILIES[self.family], "EGRESS_ROUTER_MODE": "init",
                "EGRESS_ROUTER_BACKEND": self.backend, "EGRESS_ANNOUNCE_COUNT": "1"}

    @property
    def families(self) -> tuple[int, ...]:
        return {"ipv4": (4,), "ipv6": (6,), "dual": (4, 6)}[self.family]

    @property
    def cfg(self) -> config.Config:
        return files.load_config(self.env)

    def restore(self) -> None:
        """The full setup again (ruleset and interface plan), as a pod restart would."""
        done = labmod.router_command(self.lab, self.env)
        assert done.returncode == 0, f"router init failed: {done.stderr}"

    def restore_rules(self) -> None:
        """Only the full ruleset and the hardening sysctls again (enough after a ruleset or
        sysctl control; cheaper than `restore`, which starts the product)."""
        self.apply_variant(lambda text: text)
        settings = [f"{key.replace('/', '.')}={value}"
                    for key, value in plan.harden_egress(self.cfg).values]
        run(self.lab.router, ["sysctl", "-q", "-w", *settings])

    def rendered(self) -> dict[int, str]:
        """Our rules as the router applies them: {0: nft text} or {4: ..., 6: ...}."""
        if self.backend == "nftables":
            return {0: ruleset.render_nftables(self.cfg)}
        return {family: ruleset.render_iptables(self.cfg, family, ruleset.IPT_JUMPS)
                for family in (4, 6)}

    def apply_variant(self, change: Any) -> None:
        """Apply our rules with ``change(text) -> text`` made to each (a control)."""
        for family, text in self.rendered().items():
            changed = change(text)
            if family == 0:
                run(self.lab.router, ["nft", "-f", "-"], input=changed)
            else:
                tool = "iptables-restore" if family == 4 else "ip6tables-restore"
                run(self.lab.router, [tool, "--noflush"], input=changed)

    def apply_without(self, *protections: str) -> None:
        def change(text: str) -> str:
            for name in protections:
                text = without(text, PROTECTIONS[name][self.backend])
            return text

        self.apply_variant(change)

    def sysctl(self, **values: str) -> None:
        """Set sysctls of the router's egress interface (``accept_ra="2"`` etc.)."""
        settings = []
        for key, value in values.items():
            family, _, name = key.partition("__")
            settings.append(f"net.{family}.conf.macvlan0.{name}={value}")
        run(self.lab.router, ["sysctl", "-q", "-w", *settings])

    # ------------------------------------------------------------------ frames

    @property
    def router_mac(self) -> str:
        return mac_of(self.lab.router, labmod.MACVLAN_IF)

    @property
    def router_pod_mac(self) -> str:
        return mac_of(self.lab.router, labmod.POD_IF)

    def send(self, ns: str, ifname: str, frames: list[bytes]) -> None:
        run(ns, [sys.executable, str(WIRE_PATH), "send", ifname, *(f.hex() for f in frames)])

    def from_physical(self, packets: list[bytes]) -> None:
        """Send IP packets from the gateway's lan0, addressed at L2 to the router's macvlan0."""
        gw_mac = mac_of(self.lab.gw, labmod.GW_LAN)
        dst = self.router_mac
        self.send(self.lab.gw, labmod.GW_LAN, [wire.frame(dst, gw_mac, p) for p in packets])

    def from_pod(self, packets: list[bytes]) -> None:
        """Send IP packets from the client pod's eth0, addressed at L2 to the router's eth0."""
        client_mac = mac_of(self.lab.client, labmod.POD_IF)
        dst = self.router_pod_mac
        self.send(self.lab.client, labmod.POD_IF, [wire.frame(dst, client_mac, p) for p in packets])

    def pod_side(self, seconds: float = 8.0) -> contextlib.AbstractContextManager[Capture]:
        """What the router sends into the pod network (its eth0's peer on the node)."""
        return capture(self.lab.node, labmod.ROUTER_VETH, seconds)

    def physical_side(self, seconds: float = 8.0) -> contextlib.AbstractContextManager[Capture]:
        """What arrives on the physical network (the gateway's lan0)."""
        return capture(self.lab.gw, labmod.GW_LAN, seconds)


def new_prefix() -> str:
    """A lab prefix the conftest's sweep recognises as this run's (``ert`` + 5 hex digits)."""
    return "ert" + secrets.token_hex(3)[:5]


@contextlib.contextmanager
def world_for(backend: str, family: str, prefix: str) -> Iterator[World]:
    lab = labmod.up(prefix)
    try:
        world = World(lab, backend, family)
        world.restore()
        yield world
    finally:
        labmod.down(prefix)
