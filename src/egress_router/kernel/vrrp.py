"""Run and watch Debian's keepalived, and the link-local address its adverts come from.

The election is keepalived's (see ``core.ha``); this module is its side
effects: the per-replica 169.254.0.0/16 address (ARP-probed before use, RFC
5227, so two replicas never advertise from one address), keepalived as a
child process, its notify FIFO read on a thread, and a raw socket that sees
the peer's adverts (for status and metrics, and to refuse a VRID another
group already uses).

The reserved address must never outlive this process: a dead router that
keeps answering ARP for it is worse than none. keepalived therefore runs in
its own process group with ``PR_SET_PDEATHSIG`` = SIGTERM (the kernel sends
it when we die, even by SIGKILL), and SIGTERM makes keepalived release the
address and send a priority-0 advert, which hands over at once instead of
after the ~0.35 s master-down timeout. On start, a reserved address a
killed predecessor left behind is removed before keepalived runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import json
import logging
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from egress_router.core import ha

log = logging.getLogger(__name__)

KEEPALIVED = "keepalived"
PR_SET_PDEATHSIG = 1
ETH_P_ARP = 0x0806
PROBE_WAIT = 0.15  # seconds per ARP probe; RFC 5227's 1-2 s are for hosts, not an L2 we own
PROBES = 2
STOP_GRACE = 3.0


class VrrpError(RuntimeError):
    """keepalived or its address cannot be set up; the message says why and what to do."""


# ---------------------------------------------------------------------- the advert address


def arp_probe(mac: bytes, address: ipaddress.IPv4Address) -> bytes:
    """An RFC 5227 ARP probe: who has ``address``, asked from 0.0.0.0 (changes no cache)."""
    eth = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + b"\0" * 4 + b"\0" * 6 + address.packed
    return eth + arp


def _claims(frame: bytes, address: ipaddress.IPv4Address, mac: bytes) -> bool:
    """Whether ``frame`` is an ARP packet from another host using (or probing for) ``address``."""
    if len(frame) < 42 or frame[12:14] != struct.pack("!H", ETH_P_ARP):
        return False
    sender_mac, sender_ip, target_ip = frame[22:28], frame[28:32], frame[38:42]
    if sender_mac == mac:
        return False
    probing = sender_ip == b"\0" * 4 and target_ip == address.packed
    return sender_ip == address.packed or probing


def address_in_use(ifname: str, mac: bytes, address: ipaddress.IPv4Address) -> bool:
    """ARP-probe ``address`` on ``ifname``: True when another host answers or probes for it."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as sock:
        sock.bind((ifname, 0))
        for _ in range(PROBES):
            sock.send(arp_probe(mac, address))
            deadline = time.monotonic() + PROBE_WAIT
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                if _claims(sock.recv(2048), address, mac):
                    return True
    return False


def _ip(*args: str) -> str:
    # iproute2, not pyroute2: importing pyroute2 would cost the waiting process ~20 MiB.
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise VrrpError(f"cannot run ip {' '.join(args)}: {err}") from None
    if done.returncode != 0:
        raise VrrpError(f"cannot run ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _addresses(ifname: str) -> list[dict[str, Any]] | None:
    """``ip -j addr show dev ifname``'s one link (None: no such interface)."""
    try:
        links = json.loads(_ip("-j", "addr", "show", "dev", ifname) or "[]")
    except VrrpError:
        return None
    return links if links else None


def ensure_advert_address(
    ifname: str,
    probe: Callable[[str, bytes, ipaddress.IPv4Address], bool] = address_in_use,
) -> ipaddress.IPv4Interface:
    """Put this replica's link-local advert source on ``ifname``; the address.

    A candidate already there (a restart) is kept; otherwise candidates
    derived from the MAC are probed in turn and the first free one is added
    with link scope (never chosen as the source of forwarded traffic).
    """
    links = _addresses(ifname)
    if links is None:
        raise VrrpError(f"cannot set up VRRP: interface {ifname!r} does not exist")
    mac = ha.parse_mac(str(links[0].get("address", "")))
    candidates = ha.advert_candidates(mac)
    present = {
        ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}")
        for a in links[0].get("addr_info", []) if a.get("family") == "inet"
    }
    for candidate in candidates:
        if candidate in present:
            return candidate
    for candidate in candidates:
        if probe(ifname, mac, candidate.ip):
            log.warning("%s is in use on %s's network; trying another", candidate.ip, ifname)
            continue
        _ip("addr", "replace", str(candidate), "dev", ifname, "scope", "link")
        log.info("VRRP adverts from %s on %s", candidate, ifname)
        return candidate
    raise VrrpError(
        f"cannot pick a link-local address for VRRP on {ifname}: the {len(candidates)} "
        "candidates derived from its MAC are all in use; check the network for a host "
        "answering ARP for all of 169.254.0.0/16"
    )


def remove_addresses(ifname: str, addresses: Iterable[ipaddress.IPv4Address |
                                                      ipaddress.IPv6Address]) -> list[str]:
    """Remove ``addresses`` from ``ifname`` (a killed predecessor's reserved address); removed."""
    wanted = {str(a) for a in addresses}
    links = _addresses(ifname) or []
    removed = []
    for addr in links[0].get("addr_info", []) if links else []:
        if addr.get("local") in wanted:
            text = f"{addr['local']}/{addr['prefixlen']}"
            _ip("addr", "del", text, "dev", ifname)
            log.warning("removed %s from %s: left behind by an earlier process", text, ifname)
            removed.append(text)
    return removed


def held_addresses(ifname: str) -> set[str]:
    """The addresses on ``ifname`` now (read for status and the role's sanity check)."""
    links = _addresses(ifname) or []
    return {str(a.get("local")) for link in links for a in link.get("addr_info", [])}


# ---------------------------------------------------------------------- the role, for `status`

STATE_DIR = "/run"


def state_path() -> str:
    """Where the wait process leaves its HA role for ``status``: one file per network namespace
    (two lab routers share one /run; a pod's containers share one namespace)."""
    inode = os.stat("/proc/self/ns/net").st_ino
    return os.path.join(STATE_DIR, f"egress-router-ha-{inode}.json")


def write_state(state: dict[str, Any]) -> None:
    path = state_path()
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(state, handle)
        os.replace(tmp, path)
    except OSError as err:
        log.debug("cannot write %s: %s", path, err)


def read_state() -> dict[str, Any] | None:
    try:
        with open(state_path(), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_state() -> None:
    with contextlib.suppress(OSError):
        os.unlink(state_path())


# ---------------------------------------------------------------------- keepalived


class Driver(Protocol):
    """What the HA role needs from keepalived (real or fake)."""

    def prepare(self) -> ha.Paths: ...

    def start(self, conf: str, on_notice: Callable[[ha.Notice], None]) -> None: ...

    def alive(self) -> bool: ...

    def stop(self) -> None: ...


def _die_with_parent() -> None:
    # Runs in the child between fork and exec. The kernel sends the signal when the
    # *thread* that forked exits, so `Keepalived.start` must run on the main thread.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl: do not outlive it by a moment
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Keepalived:
    """keepalived as our child: its files in a private directory, its FIFO on a thread."""

    binary: str = KEEPALIVED
    directory: str | None = None
    process: subprocess.Popen[bytes] | None = None
    _reader: threading.Thread | None = None
    _fifo_fd: int | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    def paths(self) -> ha.Paths:
        assert self.directory is not None
        return ha.Paths(
            config=os.path.join(self.directory, "keepalived.conf"),
            fifo=os.path.join(self.directory, "notify.fifo"),
            pidfile=os.path.join(self.directory, "keepalived.pid"),
            vrrp_pidfile=os.path.join(self.directory, "vrrp.pid"),
        )

    def prepare(self) -> ha.Paths:
        """Create the private directory and the FIFO (before the config is rendered)."""
        if shutil.which(self.binary) is None:
            raise VrrpError(
                f"cannot start VRRP: {self.binary} is not installed; use the egress-router "
                "image (it ships Debian's keepalived) or install the keepalived package"
            )
        base = "/run" if os.access("/run", os.W_OK) else None
        self.directory = tempfile.mkdtemp(prefix="egress-router-vrrp-", dir=base)
        paths = self.paths()
        os.mkfifo(paths.fifo, 0o600)
        # Read-write: the FIFO never reports EOF while keepalived restarts its writer.
        self._fifo_fd = os.open(paths.fifo, os.O_RDWR | os.O_NONBLOCK)
        return paths

    def start(self, conf: str, on_notice: Callable[[ha.Notice], None]) -> None:
        if self.directory is None:
            self.prepare()
        paths = self.paths()
        with open(paths.config, "w", encoding="utf-8") as handle:
            handle.write(conf)
        self._stopping.clear()
        self._reader = threading.Thread(
            target=self._read, args=(on_notice,), name="keepalived-fifo", daemon=True
        )
        self._reader.start()
        try:
            self.process = subprocess.Popen(
                ha.keepalived_argv(self.binary, paths),
                stdin=subprocess.DEVNULL,
                stdout=None,
                stderr=None,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (prctl: nothing else does it)
                process_group=0,
                close_fds=True,
            )
        except OSError as err:
            raise VrrpError(f"cannot start {self.binary}: {err}") from None
        log.info("keepalived started (pid %d)", self.process.pid)

    def _read(self, on_notice: Callable[[ha.Notice], None]) -> None:
        assert self._fifo_fd is not None
        pending = b""
        while not self._stopping.is_set():
            ready, _, _ = select.select([self._fifo_fd], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(self._fifo_fd, 4096)
            except BlockingIOError:
                continue
            except OSError:
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                notice = ha.parse_notify(line.decode(errors="replace"))
                log.debug("keepalived: %s", line.decode(errors="replace"))
                if notice is not None:
                    on_notice(notice)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM the group (keepalived releases the address), SIGKILL after a grace period."""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                log.warning("keepalived did not stop in %gs; killing it", STOP_GRACE)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(STOP_GRACE)
        if process is not None:
            # keepalived's VRRP child is in the same group; do not leave it orphaned.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        self._stopping.set()
        if self._reader is not None:
            self._reader.join(1.0)
        if self._fifo_fd is not None:
            os.close(self._fifo_fd)
            self._fifo_fd = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


@dataclass
class FakeDriver:
    """Records the configuration; tests call ``notify`` to play keepalived."""

    conf: str | None = None
    running: bool = False
    on_notice: Callable[[ha.Notice], None] | None = None
    stops: int = 0

    def prepare(self) -> ha.Paths:
        return ha.Paths("keepalived.conf", "notify.fifo", "keepalived.pid", "vrrp.pid")

    def start(self, conf: str, on_notice: Callable[[ha.Notice], None]) -> None:
        self.conf, self.running, self.on_notice = conf, True, on_notice

    def alive(self) -> bool:
        return self.running

    def stop(self) -> None:
        self.running = False
        self.stops += 1

    def notify(self, line: str) -> None:
        notice = ha.parse_notify(line)
        assert notice is not None and self.on_notice is not None
        self.on_notice(notice)


# ---------------------------------------------------------------------- watching adverts


ETH_P_IP = 0x0800
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_MULTICAST = 0
PACKET_OUTGOING = 4
VRRP_MAC4 = bytes.fromhex("01005e000012")  # 224.0.0.18's Ethernet group


def watch_adverts(ifname: str, seconds: float, on_advert: Callable[[ha.Advert], bool]) -> None:
    """Hand the VRRP adverts ``ifname`` receives for ``seconds`` to ``on_advert``; True stops.

    A packet socket, not the raw IP socket `AdvertListener` uses: this runs
    before the router has changed anything, when the interface may have no
    address at all, and an IP socket then hears nothing (reverse-path
    filtering drops a 169.254.x source the interface has no route for). The
    Ethernet group is joined so that a macvlan passes the frames up.
    """
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    except OSError as err:
        raise VrrpError(f"cannot watch VRRP adverts on {ifname}: {err}") from None
    with sock:
        try:
            sock.bind((ifname, ETH_P_IP))
            index = socket.if_nametoindex(ifname)
            mreq = struct.pack("@iHH8s", index, PACKET_MR_MULTICAST, 6, VRRP_MAC4)
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        except OSError as err:
            raise VrrpError(f"cannot watch VRRP adverts on {ifname}: {err}") from None
        deadline = time.monotonic() + max(0.0, min(seconds, 10.0))
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            packet, address = sock.recvfrom(2048)
            if address[2] == PACKET_OUTGOING:
                continue
            advert = ha.parse_advert(packet)
            if advert is not None and on_advert(advert):
                return


def link_is_up(ifname: str) -> bool:
    """Whether ``ifname`` is administratively up (``ip -j link``)."""
    links = json.loads(_ip("-j", "link", "show", "dev", ifname) or "[]")
    return bool(links) and "UP" in links[0].get("flags", [])


def set_link_down(ifname: str) -> None:
    _ip("link", "set", "dev", ifname, "down")


# Classic BPF for a packet socket of SOCK_DGRAM (data at the IP header): IP protocol 112
# only, so that the traffic the router forwards is never copied to this process.
SO_ATTACH_FILTER = 26
_VRRP_ONLY = (
    (0x30, 0, 0, 9),  # ldb [9]: the IP header's protocol
    (0x15, 0, 1, ha.VRRP_PROTO),  # jeq #112
    (0x06, 0, 0, 0xFFFF),  # ret: the packet
    (0x06, 0, 0, 0),  # ret: nothing
)


def _attach_vrrp_filter(sock: socket.socket) -> None:
    program = b"".join(struct.pack("HBBI", *insn) for insn in _VRRP_ONLY)
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(_VRRP_ONLY), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class AdvertListener:
    """A packet socket that hands every VRRP advert seen on ``ifname`` to a callback.

    A packet socket sees the adverts before the firewall does: those the ruleset
    drops (a foreign speaker on the pair's VRID) are still counted and named. A
    BPF filter passes IP protocol 112 only; the Ethernet group is joined so that
    a macvlan passes the frames up.
    """

    def __init__(self, ifname: str, on_advert: Callable[[ha.Advert], None]) -> None:
        self.ifname = ifname
        self.on_advert = on_advert
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def open(self) -> None:
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        except OSError as err:
            raise VrrpError(f"cannot watch VRRP adverts on {self.ifname}: {err}") from None
        try:
            _attach_vrrp_filter(sock)
            sock.bind((self.ifname, ETH_P_IP))
            index = socket.if_nametoindex(self.ifname)
            mreq = struct.pack("@iHH8s", index, PACKET_MR_MULTICAST, 6, VRRP_MAC4)
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        except OSError as err:
            sock.close()
            raise VrrpError(f"cannot watch VRRP adverts on {self.ifname}: {err}") from None
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="vrrp-adverts", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._sock], [], [], 0.2)
                if not ready:
                    continue
                packet, address = self._sock.recvfrom(2048)
            except OSError as err:
                if err.errno != errno.EINTR:
                    log.warning("cannot read VRRP adverts: %s", err)
                    return
                continue
            if address[2] == PACKET_OUTGOING:
                continue  # our own adverts
            advert = ha.parse_advert(packet)
            if advert is not None:
                self.on_advert(advert)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
