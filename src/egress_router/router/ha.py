"""The HA role of one replica: active (holds the reserved address) or standby.

`Pair` is what the reconciler consults when ``EGRESS_ROUTER_HA=vrrp``. The
data path (ruleset, routes, the pod return path) is the same on both
replicas and set up by the engine as always; only the reserved address is
keepalived's, on the active replica. So a standby that takes over has
nothing to build: keepalived adds the address and sends gratuitous ARP, and
``/readyz`` turns 200, which brings clients to it through the Service.

The role comes from keepalived's notify FIFO; the peer from the adverts a
raw socket sees (only the active advertises, so the standby sees the active
and the active sees nobody, unless the pair is split). A VRID that another
VRRP group already uses on the L2 is refused before the router changes
anything (`Pair.check_vrid`, called before the data path is applied).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from egress_router.core import config, ha
from egress_router.kernel import vrrp
from egress_router.router.metrics import CollectorRegistry, Counter, Gauge

log = logging.getLogger(__name__)

CLASH_WINDOW = ha.CLASH_WINDOW  # listened before the data path is applied
WATCH_INTERVAL = 0.1  # how often keepalived's liveness is checked (its death frees the address)
PREFIX = "egress_router_ha"


class HaMetrics:
    """The role's metrics, in the router's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.role = Gauge(f"{PREFIX}_role", "1 for this replica's current role (active, standby, "
                          "fault, starting, stopped), 0 for the others.", ["role"],
                          registry=registry)
        self.transitions = Counter(f"{PREFIX}_transitions", "Role changes reported by keepalived, "
                                   "by the role entered.", ["role"], registry=registry)
        self.last_transition = Gauge(f"{PREFIX}_last_transition_timestamp_seconds",
                                     "When the role last changed (Unix time).", registry=registry)
        self.peer_seen = Gauge(f"{PREFIX}_peer_last_seen_timestamp_seconds",
                               "When an advert of the peer (the other replica) was last seen "
                               "(Unix time; 0: never).", registry=registry)
        self.clashes = Counter(f"{PREFIX}_vrid_clashes", "Adverts of another VRRP group using "
                               "this VRID.", registry=registry)
        self.restarts = Counter(f"{PREFIX}_keepalived_restarts", "keepalived found dead and "
                                "started again.", registry=registry)
        self.foreign_adverts = Counter(
            f"{PREFIX}_foreign_adverts", "Adverts for this VRID from a VRRP speaker that is not "
            "the pair (another source or priority): VRRP has no authentication, and one that "
            "outbids the pair keeps every replica from holding the address.", registry=registry)
        self.foreign_seen = Gauge(
            f"{PREFIX}_foreign_last_seen_timestamp_seconds", "When an advert of a foreign VRRP "
            "speaker on this VRID was last seen (Unix time; 0: never).", registry=registry)
        for role in ha.Role:
            self.role.labels(role=role.value).set(1 if role is ha.Role.STARTING else 0)
            self.transitions.labels(role=role.value)


@dataclass
class Peer:
    address: str
    seen: float  # monotonic
    seen_wall: float
    priority: int


@dataclass
class Foreign:
    """The last foreign VRRP speaker seen on the pair's VRID."""

    reason: str
    address: str
    priority: int
    seen: float  # monotonic
    seen_wall: float


FOREIGN_RECENT = 3.0  # seconds a foreign speaker's last advert is reported for (30 intervals)
# A second link-local speaker at the pair's priority is foreign when the peer was heard this
# recently (the peer's adverts stop when it becomes a standby; a new pod has a new address).
PEER_RECENT = 1.0


@dataclass
class Pair:
    """keepalived driven for this replica, and what it reports."""

    cfg: config.Config
    settings: ha.Settings
    metrics: HaMetrics
    driver: vrrp.Driver = field(default_factory=vrrp.Keepalived)
    listen: bool = True  # watch adverts (raw socket); False in unit tests
    ensure_address: Callable[[str], ipaddress.IPv4Interface] = vrrp.ensure_advert_address
    remove_addresses: Callable[[str, Any], list[str]] = vrrp.remove_addresses
    held: Callable[[str], set[str]] = vrrp.held_addresses
    watch_adverts: Callable[[str, float, Callable[[ha.Advert], bool]], None] = (
        vrrp.watch_adverts
    )
    link_is_up: Callable[[str], bool] = vrrp.link_is_up
    set_link_down: Callable[[str], None] = vrrp.set_link_down
    save: Callable[[dict[str, Any]], None] = vrrp.write_state  # for `status`
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    role: ha.Role = ha.Role.STARTING
    transitions: int = 0
    last_transition: float | None = None  # Unix time
    peer: Peer | None = None
    clash: str | None = None
    foreign: Foreign | None = None
    _foreign_logged: set[str] = field(default_factory=set)
    advert_source: ipaddress.IPv4Interface | None = None
    started: bool = False
    _listener: vrrp.AdvertListener | None = None
    _saved_at: float = 0.0
    _watcher: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _dead: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def reserved(self) -> list[config.IPAddress]:
        return [s.address for s in self.cfg.sources]

    def check_vrid(self, raise_link: Callable[[], None]) -> None:
        """Refuse a VRID another VRRP group on the L2 uses, before the router changes anything.

        Listens `CLASH_WINDOW` (more than three adverts of a 0.1 s pair) on the
        egress interface. A down interface hears nothing, so ``raise_link``
        brings it up first (hardened, as the plan does), and down again on a
        refusal: then the namespace is as it was but for the egress sysctls.
        Raises `config.ConfigError` naming ``EGRESS_HA_VRID`` and its value.
        """
        ifname = self.cfg.egress_interface
        was_up = self.link_is_up(ifname)
        if not was_up:
            raise_link()
        found: list[str] = []

        def seen(advert: ha.Advert) -> bool:
            reason = ha.clash(advert, self.settings, self.cfg)
            if reason is not None:
                found.append(reason)
            return reason is not None

        self.watch_adverts(ifname, CLASH_WINDOW, seen)
        if found:
            self.clash = found[0]
            self.metrics.clashes.inc()
            if not was_up:
                self.set_link_down(ifname)
            raise ha.clash_error(found[0], self.settings.vrid)

    def start(self) -> None:
        """Join the pair as a standby; must run on the main thread (see `vrrp`).

        `check_vrid` has run before the data path was applied; the advert watch
        started here keeps looking for a clash (reported as a problem). Raises
        `vrrp.VrrpError` when keepalived cannot run.
        """
        ifname = self.cfg.egress_interface
        self.started = True
        self.remove_addresses(ifname, self.reserved)
        self.advert_source = self.ensure_address(ifname)
        if self.listen:
            self._listener = vrrp.AdvertListener(ifname, self._advert)
            self._listener.open()
        self._start_keepalived()
        self._watcher = threading.Thread(target=self._watch, name="keepalived-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        """keepalived killed on its own (OOM, SIGKILL) cannot release the address: we do.

        Otherwise the old active would keep answering ARP for it next to the
        standby that took over. The restart waits for the next reconcile,
        on the main thread (PR_SET_PDEATHSIG is bound to the forking thread).
        """
        while not self._stopping.wait(WATCH_INTERVAL):
            if self._dead or self.driver.alive():
                continue
            self._dead = True
            log.error("keepalived died; removing the reserved address until it runs again")
            try:
                self.remove_addresses(self.cfg.egress_interface, self.reserved)
            except (vrrp.VrrpError, OSError) as err:
                log.error("cannot remove the reserved address: %s", err)
            self._notice(ha.Notice(ha.Role.STARTING, "keepalived died", 0))

    def _start_keepalived(self) -> None:
        assert self.advert_source is not None
        paths = self.driver.prepare()
        conf = ha.render_keepalived(self.cfg, self.settings, self.advert_source, paths)
        self.driver.start(conf, self._notice)

    def _notice(self, notice: ha.Notice) -> None:
        with self._lock:
            if notice.role is self.role:
                return
            old, self.role = self.role, notice.role
            self.transitions += 1
            self.last_transition = self.wall()
        log.warning("HA role: %s -> %s (keepalived %s)", old.value, notice.role.value,
                    notice.state)
        self.metrics.role.labels(role=old.value).set(0)
        self.metrics.role.labels(role=notice.role.value).set(1)
        self.metrics.transitions.labels(role=notice.role.value).inc()
        self.metrics.last_transition.set(self.last_transition or 0)
        self.save(self.status())

    def _advert(self, advert: ha.Advert) -> None:
        if self.advert_source is not None and advert.source == self.advert_source.ip:
            return
        reason = ha.clash(advert, self.settings, self.cfg)
        if reason is not None:
            if self.clash != reason:
                log.error("%s", ha.clash_error(reason, self.settings.vrid))
            self.clash = reason
            self.metrics.clashes.inc()
            return
        if advert.vrid != self.settings.vrid:
            return
        why = ha.foreign(advert, self.settings)
        peer = self.peer
        if why is None and peer is not None and peer.address != str(advert.source) and (
            self.clock() - peer.seen < PEER_RECENT
        ):
            why = (f"{advert.source} advertises VRID {advert.vrid} next to the peer "
                   f"{peer.address}: a third speaker")
        if why is not None:
            self._foreign(advert, why)
            return
        now = self.wall()
        new = self.peer is None or self.peer.address != str(advert.source)
        self.peer = Peer(str(advert.source), self.clock(), now, advert.priority)
        self.metrics.peer_seen.set(now)
        if new or now - self._saved_at >= 1.0:  # adverts come ten times a second
            self._saved_at = now
            self.save(self.status())

    def _foreign(self, advert: ha.Advert, why: str) -> None:
        now = self.wall()
        source = str(advert.source)
        self.foreign = Foreign(why, source, advert.priority, self.clock(), now)
        self.metrics.foreign_adverts.inc()
        self.metrics.foreign_seen.set(now)
        if source not in self._foreign_logged:  # one line per speaker, not 20 a second
            self._foreign_logged.add(source)
            log.error("a foreign VRRP speaker on VRID %d: %s; VRRP has no authentication, so "
                      "a speaker that outbids the pair keeps both replicas from holding the "
                      "reserved address (find the host on the egress network)",
                      self.settings.vrid, why)
            self.save(self.status())

    def foreign_now(self) -> Foreign | None:
        """The foreign speaker if one was heard within `FOREIGN_RECENT` seconds."""
        found = self.foreign
        if found is None or self.clock() - found.seen > FOREIGN_RECENT:
            return None
        return found

    def readiness(self, *, check_kernel: bool = True) -> tuple[bool, str] | None:
        """None when the role lets the data path's readiness decide; else (False, why).

        ``check_kernel=False`` (the /readyz path, which must not touch the kernel)
        trusts keepalived's MASTER notice, sent after it added the address; the
        reconcile checks the address itself.
        """
        role = self.role
        if role is ha.Role.ACTIVE:
            if not check_kernel:
                return None
            held = self.held(self.cfg.egress_interface)
            missing = [str(a) for a in self.reserved if str(a) not in held]
            if missing:
                return False, f"active but {', '.join(missing)} is not on the interface"
            return None
        if role is ha.Role.STANDBY:
            found = self.foreign_now()
            if found is not None:
                return False, f"standby; a foreign VRRP speaker: {found.reason}"
            return False, "standby"
        if role is ha.Role.FAULT:
            return False, f"fault: keepalived cannot take part on {self.cfg.egress_interface} " \
                "(link down or no IPv4 address)"
        return False, role.value

    def reconcile(self) -> list[str]:
        """Restart keepalived if it died; the problems to report."""
        problems: list[str] = []
        if not self.driver.alive():
            log.error("keepalived is not running; starting it again as a standby")
            self.metrics.restarts.inc()
            self.driver.stop()
            self._notice(ha.Notice(ha.Role.STARTING, "restart", 0))
            try:
                self.remove_addresses(self.cfg.egress_interface, self.reserved)
                self.advert_source = self.ensure_address(self.cfg.egress_interface)
                self._start_keepalived()
                self._dead = False
            except (vrrp.VrrpError, OSError) as err:
                problems.append(f"cannot restart keepalived: {err}")
        if self.clash is not None:
            problems.append(str(ha.clash_error(self.clash, self.settings.vrid)))
        gate = self.readiness()
        if self.role is ha.Role.ACTIVE and gate is not None:
            problems.append(gate[1])
        return problems

    def stop(self) -> None:
        """Stop keepalived (it releases the address) and the advert watch."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(1.0)
        self.driver.stop()
        self.role = ha.Role.STOPPED
        self.save(self.status())
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def status(self) -> dict[str, Any]:
        """The role as ``status`` and the state file show it."""
        peer = self.peer
        return {
            "mode": "vrrp",
            "vrid": self.settings.vrid,
            "role": self.role.value,
            "advert_source": None if self.advert_source is None else str(self.advert_source.ip),
            "transitions": self.transitions,
            "last_transition": self.last_transition,
            "peer": None if peer is None else {
                "address": peer.address,
                "last_seen": peer.seen_wall,
                "priority": peer.priority,
            },
            "vrid_clash": self.clash,
            "foreign_speaker": None if self.foreign is None else {
                "address": self.foreign.address,
                "priority": self.foreign.priority,
                "last_seen": self.foreign.seen_wall,
                "reason": self.foreign.reason,
            },
        }


def make_pair(cfg: config.Config, settings: ha.Settings, registry: CollectorRegistry) -> Pair:
    """The real pair: Debian's keepalived, the kernel's addresses and adverts."""
    return Pair(cfg, settings, HaMetrics(registry))


PairFactory: TypeAlias = Callable[[config.Config, ha.Settings, CollectorRegistry], Pair]
