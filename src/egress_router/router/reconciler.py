"""What the long-running ``wait`` process decides: reload, repair, DNS refresh, readiness.

`Router` holds the desired state (the configuration, names resolved), what the kernel held right
after the last apply, and the loop's verbs (`load`, `start`, `poll_file`, `refresh_dns`,
`reconcile`, `announce`); the process shell in ``egress_router.wait`` only calls them. `Edges`
bundles the edges it drives, so unit tests hand it fakes.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from egress_router.core import config, drift, plan
from egress_router.kernel import (
    announce,
    conntrack,
    errors,
    files,
    netlink,
    nft,
    observe,
    preflight,
    resolvers,
    vrrp,
)
from egress_router.kernel.memory import HEAP
from egress_router.router import (
    capacity,
    destfile,
    engine,
    fingerprint,
    metrics,
    pacing,
    resolve,
    scrape,
)
from egress_router.router import ha as ha_role

log = logging.getLogger(__name__)



def read_drift(cfg: config.Config) -> list[tuple[plan.Step, str]]:
    """The interface plan's steps this namespace does not hold (`core.drift`), with the reason."""
    found = drift.interface_problems(plan.plan_interfaces(cfg), observe.read_snapshot())
    return [(p.step, p.reason) for p in found if p.step is not None]


ConntrackStats = conntrack.Stats  # in Kernel, the name conntrack is the field
PodRoutes = tuple[tuple[config.IPAddress, config.IPAddress], ...]


@dataclass
class Edges:
    """The edges the router drives; tests replace them with fakes."""

    firewall: engine.Firewall
    links: netlink.Netlink
    announcer: announce.Announcer
    conntrack: conntrack.Conntrack
    resolver: resolve.Resolver
    drift: Callable[[config.Config], list[tuple[plan.Step, str]]] = read_drift
    counters: Callable[[], Iterable[str]] | None = None  # nft list table (None: no counters)
    stale: engine.Firewall | None = None  # the other backend, cleaned up at start
    generation: Callable[[], int | None] = lambda: None  # nftables generation (None: unknown)
    prepare: Callable[[Sequence[plan.Step]], None] | None = None  # batch of interface steps
    stats: Callable[[], ConntrackStats | None] = lambda: None  # conntrack's counters
    # (resolver, pod gateway) routes the router's own lookups need (None: none looked for)
    pod_routes: Callable[[config.Config], PodRoutes] | None = None
    # On-link networks of an interface: DNS answers inside the pod network are refused.
    networks: Callable[[str], Sequence[config.IPNetwork]] = lambda _ifname: ()
    probe: preflight.Probe | None = None  # programs and sysctls checked before any change
    pair: ha_role.PairFactory = ha_role.make_pair  # EGRESS_ROUTER_HA=vrrp: keepalived's role


def real_edges(backend: config.Backend, settings: config.WaitSettings) -> Edges:
    """The kernel of the current network namespace."""
    links = observe.CheckedNetlink()
    counters: Callable[[], Iterable[str]] | None = None
    if backend is config.Backend.NFTABLES:
        lister = nft.NftCommand()
        firewall: engine.Firewall = engine.NftablesFirewall(lister)
        counters = lister.table_lines
    else:
        firewall = engine.make_firewall(backend)
    return Edges(
        firewall=firewall,
        links=links,
        announcer=announce.SocketAnnouncer(),
        conntrack=conntrack.CtNetlink(),
        resolver=resolve.DnsResolver(min_ttl=settings.dns_min_ttl, max_ttl=settings.dns_max_ttl),
        counters=counters,
        stale=engine.stale_firewall(backend),
        generation=nft.generation,
        prepare=links.prepare,
        stats=conntrack.read_stats,
        pod_routes=resolvers.pod_routes,
        networks=observe.interface_networks,
        probe=preflight.SystemProbe(),
    )


class _Silent:
    """An announcer that sends nothing (start-up announces after readiness instead)."""

    def send(self, ifname: str, ifindex: int, mac: str, address: config.IPAddress) -> None:
        del ifname, ifindex, mac, address


_SILENT = _Silent()


class _Pending:
    """A `netlink.Netlink` that applies only the steps found due (the rest are in place)."""

    def __init__(self, links: netlink.Netlink, due: set[plan.Step]) -> None:
        self.links = links
        self.due = due

    def has_link(self, ifname: str) -> bool:
        return self.links.has_link(ifname)

    def link_info(self, ifname: str) -> tuple[int, str]:
        return self.links.link_info(ifname)

    def apply(self, step: plan.Step) -> None:
        if step in self.due:
            self.links.apply(step)




def _kind(step: plan.Step) -> str:
    if isinstance(step, plan.LinkUp):
        return "link"
    if isinstance(step, plan.SetAddress):
        return "address"
    if isinstance(step, plan.SetRoute):
        return "route"
    if isinstance(step, plan.SetSysctls):
        return "sysctl"
    if isinstance(step, plan.RemoveAddresses):
        return "address"
    return "forwarding"


def _identity(rule: config.PortRule | config.NamedRule) -> tuple[object, ...]:
    """What makes a rule the same rule across an edit: local port and the destination as written.

    The destination is the name (a string with a letter) or the address itself,
    which never equal each other; not formatted (10,000 str() calls per edit).
    """
    if isinstance(rule, config.NamedRule):
        return (rule.proto, rule.port, rule.host, rule.remote_port)
    return (rule.proto, rule.port, rule.host or rule.address, rule.remote_port)


def removed_flows(old: config.Config, new_parsed: config.Config) -> conntrack.Cut:
    """The flows of ``old``'s rules and fallbacks that ``new_parsed`` took away.

    A rule stays when its identity (local port, destination as written) does;
    a removed fallback's flows are cut on the ports no rule of the new
    configuration owns (those are the new rule's business now).
    """
    keep = {_identity(r) for r in new_parsed.destinations.rules}
    keep |= {_identity(n) for n in new_parsed.destinations.named}
    targets = frozenset(
        (r.family, r.proto.value, r.port, r.address, r.remote_port)
        for r in old.destinations.rules
        if _identity(r) not in keep
    )
    kept_fallbacks = {str(f.address) for f in new_parsed.destinations.fallbacks} | {
        f.host for f in new_parsed.destinations.named_fallbacks
    }
    fallbacks = frozenset(
        (f.family, f.address)
        for f in old.destinations.fallbacks
        if (f.host or str(f.address)) not in kept_fallbacks
    )
    kept = frozenset((r.family, r.proto.value, r.port) for r in new_parsed.destinations.rules)
    return conntrack.Cut(targets, fallbacks, kept if fallbacks else frozenset())


class Router:
    """The desired state, what the kernel holds, and what to do about the difference.

    The main loop calls `poll_file`, `refresh_dns`, `reconcile` and `announce`;
    the HTTP threads call `readiness` and `write_rule_metrics`. A lock keeps
    kernel work of the two apart.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        settings: config.WaitSettings,
        kernel: Edges,
        registry: metrics.Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        reread: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self.env = dict(env)
        self.settings = settings
        self.kernel = kernel
        self.metrics = registry
        self._clock = clock
        self._wall = wall
        self._lock = threading.RLock()
        self.dns = resolve.Cache(kernel.resolver, retry=settings.dns_min_ttl, clock=clock)
        self.parsed: config.Config | None = None  # the configuration, names unresolved
        self.applied: config.Config | None = None  # what the kernel got, names resolved
        self.rules = fingerprint.OurRules(kernel, self._lock, clock)  # still ours?
        self.problems: list[str] = ["not started"]
        # What /readyz answers: the last check's verdict, so that a probe never waits on
        # the kernel or on the lock (an apply of 10,000 rules holds it for a second).
        self.ready: tuple[bool, str] = (False, "rules not applied yet")
        self.pacer = pacing.Pacer(settings.reconcile, clock)  # repairs slowed while fought
        self._pod_routes: PodRoutes = ()
        # EGRESS_DESTINATION_FILE, polled; in CNI mode (``reread``: the environment completed
        # afresh from the plugin's configuration, the mounted ConfigMap) that file instead, its
        # rules reloaded the same way (any other change needs a new pod: the Deployment rolls it).
        self.file = destfile.DestinationFile(lambda: self.env, reread)
        self._cni = reread is not None
        self.generation = 0
        # live connections and the NAT's port space: one conntrack pass per interval
        self.sampler = capacity.Sampler(settings.sample, clock=clock)
        self.ha: ha_role.Pair | None = None  # EGRESS_ROUTER_HA=vrrp
        self._announce_round = 0
        self._announce_next: float | None = None  # when the next round is due (None: none)
        self.scrape = scrape.Scrape(registry, kernel, lambda: self.applied,
                                    settings.metrics_rules, self.sampler)

    # ------------------------------------------------------------------ start

    @property
    def path(self) -> str | None:
        return self.file.path

    def _environment(self, text: str | None) -> dict[str, str]:
        """The environment to load ``text`` (the rules just read) with."""
        if not self._cni or text is None:
            return self.env
        return {**self.env, config.ENV_DESTINATION: text}

    def load(self) -> config.Config:
        """Read and validate the configuration; `config.ConfigError` when it is bad."""
        text = self.file.first()
        cfg = files.load_config(
            self._environment(text), None if text is None else lambda _path: text
        )
        self.parsed = cfg
        self.metrics.names(cfg.destinations.hosts())
        return cfg

    def start(self, on_ready: Callable[[], object] = lambda: None) -> None:
        """Apply the loaded configuration (as ``init`` would) and announce.

        ``on_ready`` is called once the start-up's own changes are made, just
        before readiness is announced: the loop forgets the kernel events they
        caused there, and every later event (a drift in the very first second)
        is acted on. Raises `engine.ApplyError` when the kernel refuses: the
        container then exits and is restarted.
        """
        cfg = self.parsed if self.parsed is not None else self.load()
        self._refresh_names(cfg, force=True)
        desired = self._desired(cfg)
        with self._lock:
            # Before the first change (prepare changes links, addresses and routes).
            engine.preflight(desired, self.kernel.links, self.kernel.firewall, self.kernel.probe)
            if desired.ha is not None and self.ha is None:
                # Still before the first change: a VRID another group uses is refused
                # with this namespace as it was (no rules, no address, no route).
                pair = self.kernel.pair(desired, desired.ha, self.metrics.registry)
                try:
                    pair.check_vrid(lambda: self._raise_egress_link(desired))
                except vrrp.VrrpError as err:
                    raise engine.ApplyError(str(err)) from None
                self.ha = pair
            if self.kernel.prepare is not None:
                # Links, addresses and routes in one go (forwarding stays off until
                # the engine has put the ruleset in place), so that a fresh pod
                # (legacy mode) costs one helper process, not one per step.
                try:
                    self.kernel.prepare(plan.plan_interfaces(desired))
                except errors.KernelError as err:
                    raise engine.ApplyError(str(err)) from None
            # Announcements come after readiness (`announce`, called next by the
            # loop): three rounds a second apart would keep /readyz failing meanwhile.
            engine.setup(
                desired,
                self._prepared(desired),
                self.kernel.firewall,
                _SILENT,
                sleep=lambda _seconds: None,
                stale=self.kernel.stale,
                probe=self.kernel.probe,
                checked=True,
                announce=False,
            )
            self._applied(desired)
            on_ready()
            self.problems = []
            self.metrics.ready.set(1)
            self.ready = (True, "ok")
            # The router's own lookups after readiness: the data path does not need
            # them (names were resolved above), and their route costs a helper process.
            self.applied = self._route_resolvers(desired)
        if self.ha is not None and not self.ha.started:
            # The data path is ready; now join the pair, as a standby (no address yet).
            try:
                self.ha.start()
            except vrrp.VrrpError as err:
                raise engine.ApplyError(str(err)) from None
        log.info(
            "egress router ready: %s via %s, %d rules%s; HTTP port %s",
            ", ".join(str(s.interface) for s in cfg.sources),
            ", ".join(str(g) for g in cfg.gateways),
            len(desired.destinations.rules) + len(desired.destinations.fallbacks),
            f", watching {self.path}" if self.path else "",
            cfg.http_port or "off",
        )
        self.announce()

    def _raise_egress_link(self, desired: config.Config) -> None:
        """The egress link up for the VRID check, hardened first as `plan_interfaces` does."""
        for step in (plan.harden_egress(desired), plan.LinkUp(desired.egress_interface)):
            try:
                self.kernel.links.apply(step)
            except errors.KernelError as err:
                raise engine.ApplyError(str(err)) from None

    def _prepared(self, desired: config.Config) -> netlink.Netlink:
        """The links for the start-up setup: only the steps `prepare` left undone are applied.

        One drift read instead of one per step (each read is five ``ip`` runs).
        """
        if self.kernel.prepare is None:
            return self.kernel.links
        try:
            due = {step for step, _reason in self.kernel.drift(desired)}
        except errors.KernelError:
            return self.kernel.links  # each step checks for itself then
        return _Pending(self.kernel.links, due)

    def _desired(self, cfg: config.Config) -> config.Config:
        """``cfg`` with its names resolved and the router's own routes to the cluster side."""
        return dataclasses.replace(
            resolve.resolve_config(cfg, self.dns.answers()), pod_routes=self._pod_routes
        )

    def _route_resolvers(self, desired: config.Config) -> config.Config:
        """Route the resolvers through the pod interface, now that its gateway is kept."""
        if self.kernel.pod_routes is None:
            return desired
        self._pod_routes = self.kernel.pod_routes(desired)
        if not self._pod_routes:
            return desired
        desired = dataclasses.replace(desired, pod_routes=self._pod_routes)
        for step in plan.plan_interfaces(desired):
            if isinstance(step, plan.SetRoute) and step.ifname == desired.pod_interface:
                log.info("the router's own lookups: %s", step.describe())
                try:
                    self.kernel.links.apply(step)
                except errors.KernelError as err:
                    raise engine.ApplyError(str(err)) from None
        return desired

    def _applied(self, desired: config.Config, before: int | None = None) -> None:
        self.applied = desired
        self.rules.remember(before, applied=True)
        self.generation += 1
        self.metrics.generation.set(self.generation)
        self.metrics.last_apply.set(self._wall())
        self.metrics.rules.set(len(desired.destinations.rules))
        self.metrics.applies.labels(result="ok").inc()
        HEAP.release()

    def settle(self, *, background: bool = False) -> bool:
        """Take the fingerprint the last apply deferred (`fingerprint.OurRules.settle`)."""
        return self.rules.settle(background=background)

    @property
    def expected(self) -> str | None:
        """The fingerprint of our rules right after the last apply (None: not taken yet)."""
        return self.rules.expected

    # ------------------------------------------------------------------ the destination file

    def poll_file(self) -> bool:
        """Apply the destination file if it changed; True if new rules were applied."""
        try:
            text = self.file.changed()
        except config.ConfigError as err:
            return self._refuse(err)
        if text is None:
            return False
        try:
            cfg = config.load_config(self._environment(text), lambda _path: text)
        except config.ConfigError as err:
            return self._refuse(err)
        log.info("%s changed: applying the new rules", self.path)
        started = self._clock()
        self.parsed = cfg
        self.metrics.names(cfg.destinations.hosts())
        self._refresh_names(cfg)
        done = self._apply(self._desired(cfg), edited=True)
        if done:
            log.info("edit applied (generation %d, %d rules) in %.2fs", self.generation,
                     len(cfg.destinations.rules) + len(cfg.destinations.named),
                     self._clock() - started)
        return done

    def _refuse(self, err: config.ConfigError) -> bool:
        log.error("%s; the running rules stay", err)
        self.metrics.applies.labels(result="invalid").inc()
        HEAP.release()
        return False

    # ------------------------------------------------------------------ applying

    def _apply(self, desired: config.Config, *, edited: bool) -> bool:
        """Bring the kernel to ``desired`` in one transaction.

        After an ``edited`` configuration the connections of removed rules are
        cut; after a changed DNS answer they are not (the old address did not
        stop being the service's just because DNS now names another).
        """
        with self._lock:
            old = self.applied
            if desired == old:
                log.info("no change to the rules")
                return False
            try:
                before = self._transaction(old, desired)
            except errors.KernelError as err:
                log.error("cannot apply the new rules: %s; the running rules stay", err)
                self.metrics.applies.labels(result="failed").inc()
                return False
            self._applied(desired, before)
        if edited and old is not None and self.parsed is not None:
            self._cut_removed(old, self.parsed)
        return True

    def _transaction(self, old: config.Config | None, desired: config.Config) -> int | None:
        """Commit ``desired``; the generation read right before it (`OurRules.remember`)."""
        firewall = self.kernel.firewall
        if old is not None and self.rules.match():
            try:
                before = self.rules.generation_before()
                if firewall.update(old, desired):
                    return before
            except errors.KernelError as err:
                log.warning("cannot update the rules in place (%s); replacing them whole", err)
        elif old is not None:
            self.metrics.repairs.labels(kind="ruleset").inc()
            log.warning("our rules in the kernel had drifted; replacing them whole")
        if firewall.name != engine.NftablesFirewall.name:
            firewall.check(desired)  # one restore per family: check both before either
        # No `nft -c` first: an nft apply is one transaction, which the kernel checks
        # whole before it commits any of it (a refused one leaves the running rules),
        # and at 10,000 rules a check costs as much as the apply.
        before = self.rules.generation_before()
        firewall.apply(desired)
        return before

    def _cut_removed(self, old: config.Config, new_parsed: config.Config) -> None:
        """Delete the conntrack entries of rules (and fallbacks) the edit took away, in one pass."""
        selection = removed_flows(old, new_parsed)
        if not selection:
            return
        started = self._clock()
        try:
            cut = self.kernel.conntrack.cut(selection)
        except conntrack.ConntrackError as err:
            log.warning("%s", err)
            return
        if cut:
            log.info("cut %d connection(s) of removed rules in %.2fs", cut, self._clock() - started)
            self.metrics.connections_cut.inc(cut)

    # ------------------------------------------------------------------ DNS

    def _refresh_names(self, cfg: config.Config, *, force: bool = False) -> resolve.Refresh:
        hosts = cfg.destinations.hosts()
        if not hosts:
            self.dns.refresh((), cfg.families())
            return resolve.Refresh()
        pod_networks = self.kernel.networks(cfg.pod_interface)
        policy = resolve.policy_for(cfg, pod_networks)
        result = self.dns.refresh(hosts, cfg.families(), force=force, policy=policy)
        for host, _why in result.failed:
            self.metrics.dns_failures.labels(name=host).inc()
        if result.refused:
            self.metrics.dns_refused.inc(len(result.refused))
        return result

    def refresh_dns(self) -> bool:
        """Look up names whose TTL ran out; apply when an answer changed."""
        if self.parsed is None:
            return False
        due = self.dns.next_due()
        if due is None or due > self._clock():
            return False
        result = self._refresh_names(self.parsed)
        if not result.changed:
            return False
        for host in result.changed:
            self.metrics.dns_changes.labels(name=host).inc()
        return self._apply(self._desired(self.parsed), edited=False)

    def next_dns(self) -> float | None:
        return self.dns.next_due()

    # ------------------------------------------------------------------ drift

    def reconcile(self) -> list[str]:
        """Compare the kernel with the desired state and repair drift; the problems left."""
        self.metrics.reconciles.inc()
        problems: list[str] = []
        announce_again = False
        repaired = 0
        with self._lock:
            desired = self.applied
            if desired is None:
                return ["no rules applied yet"]
            firewall = self.kernel.firewall
            try:
                matches = self.rules.match()
            except errors.KernelError as err:
                matches = False
                log.warning("cannot read our rules back: %s", err)
            if not matches:
                log.warning("drift: our %s rules were changed from outside; re-applying",
                            firewall.name)
                try:
                    # No `nft -c` first: this very ruleset went in before, and the apply is
                    # one transaction anyway (at 10,000 rules the check costs as much again).
                    before = self.rules.generation_before()
                    firewall.apply(desired)
                    self.rules.remember(before)
                    self.metrics.repairs.labels(kind="ruleset").inc()
                    repaired += 1
                except errors.KernelError as err:
                    log.error("cannot repair the %s rules: %s", firewall.name, err)
                    self.metrics.repair_failures.labels(kind="ruleset").inc()
                    problems.append(f"ruleset: {err}")
            try:
                drifted = self.kernel.drift(desired)
            except errors.KernelError as err:
                drifted = []
                problems.append(str(err))
            batched = self._repair_together(drifted)
            for step, reason in drifted:
                kind = _kind(step)
                if step in batched:
                    self.metrics.repairs.labels(kind=kind).inc()
                    repaired += 1
                    announce_again |= kind in ("link", "address")
                    continue
                log.warning("drift: %s; repairing: %s", reason, step.describe())
                try:
                    self.kernel.links.apply(step)
                except errors.KernelError as err:
                    log.error("cannot repair %s: %s", kind, err)
                    self.metrics.repair_failures.labels(kind=kind).inc()
                    problems.append(f"{reason} ({err})")
                    continue
                self.metrics.repairs.labels(kind=kind).inc()
                repaired += 1
                announce_again |= kind in ("link", "address")
            if self.ha is not None:
                problems += self.ha.reconcile()
            self.problems = problems
            self.metrics.ready.set(0 if problems else 1)
            self._pace(repaired)
            self.ready = (not problems, "; ".join(problems) or self._fighting() or "ok")
        HEAP.release()
        if announce_again:
            self.announce()
        return problems

    def _repair_together(self, drifted: list[tuple[plan.Step, str]]) -> set[plan.Step]:
        """Repair the interface steps of ``drifted`` in one helper process; those repaired.

        A link set down loses its routes too: three steps, one process instead
        of three. Forwarding (a /proc write) and a batch that fails are left to
        the one-by-one path, which names the step that fails.
        """
        steps = [step for step, _ in drifted if not isinstance(step, plan.EnableForwarding)]
        if self.kernel.prepare is None or len(steps) < 2:
            return set()
        for step, reason in drifted:
            if step in steps:
                log.warning("drift: %s; repairing: %s", reason, step.describe())
        try:
            self.kernel.prepare(steps)
        except errors.KernelError as err:
            log.warning("cannot repair them together (%s); one by one", err)
            return set()
        return set(steps)

    @property
    def backoff(self) -> float:
        """How long event-driven reconciles wait now (0: none; `pacing`)."""
        return self.pacer.backoff

    def _pace(self, repaired: int) -> None:
        self.metrics.backoff.set(self.pacer.note(repaired))

    def _fight(self) -> str:
        return self.pacer.fight()

    def _fighting(self) -> str:
        return f"ok, but {self._fight()}" if self.backoff else ""

    def verify(self) -> bool:
        """Check (not repair) the kernel while repairs are held back; False if it is broken.

        A kernel change whose repair the backoff postpones may leave the data path
        broken for seconds: once that is known, `readiness` says so (503 with the
        reason), so that a Service drops the endpoint and the HA pair can move;
        the repair sets it back.
        """
        try:
            with self._lock:
                if self.applied is None:
                    return False
                try:
                    broken = [] if self.rules.match() else [
                        "our rules in the kernel differ from the applied ones"]
                    broken += [reason for _step, reason in self.kernel.drift(self.applied)]
                except errors.KernelError as err:
                    broken = [f"cannot read the kernel's state: {err}"]
                if not broken:
                    return True
                why = "; ".join(broken)
                pending = self._fight() or "the repair is pending"
                log.warning("drift: %s; not repaired yet: %s", why, pending)
                self.metrics.ready.set(0)
                self.ready = (False, f"{why}; not repaired yet: {pending}")
                return False
        finally:
            HEAP.release()

    def readiness(self) -> tuple[bool, str]:
        """Whether the kernel held the desired state at the last check (no kernel access)."""
        if self.ha is not None and (gate := self.ha.readiness(check_kernel=False)) is not None:
            return gate  # the standby's data path is ready, but the Service must skip it
        return self.ready

    def check(self) -> tuple[bool, str]:
        """Whether the kernel holds the desired state right now (checked, not repaired)."""
        try:
            return self._check()
        finally:
            HEAP.release()

    def _check(self) -> tuple[bool, str]:
        with self._lock:
            if self.applied is None:
                return False, "rules not applied yet"
            if self.ha is not None and (gate := self.ha.readiness()) is not None:
                return gate  # the standby's data path is ready, but the Service must skip it
            try:
                if not self.rules.match():
                    return False, "our rules in the kernel differ from the applied ones"
                drifted = self.kernel.drift(self.applied)
            except errors.KernelError as err:
                return False, f"cannot read the kernel's state: {err}"
            if drifted:
                return False, "; ".join(reason for _step, reason in drifted)
            if self.problems:
                return False, "; ".join(self.problems)
            return True, "ok"

    def stop(self) -> None:
        """Leave the pair (keepalived releases the reserved address); the rules stay."""
        if self.ha is not None:
            self.ha.stop()

    # ------------------------------------------------------------------ announcements

    def announce(self) -> None:
        """Announce the reserved address(es) again (SIGHUP, and after an address repair).

        The first round goes out now; the loop sends the others when they are due
        (`announce_due`), so that it acts on kernel change events between them.
        """
        cfg = self.applied
        if cfg is None:
            return
        log.info("announcing %s", ", ".join(str(s.address) for s in cfg.sources))
        self.metrics.announcements.inc()
        self._announce_round = 0
        self._announce_next = self._clock()
        self.announce_due()

    def next_announcement(self) -> float | None:
        """When the next round of announcements is due (None: none)."""
        return self._announce_next

    def announce_due(self) -> None:
        """Send the next round of announcements if it is due."""
        cfg = self.applied
        if cfg is None or self._announce_next is None or self._clock() < self._announce_next:
            return
        more = engine.announce_round(
            cfg, self.kernel.links, self.kernel.announcer, self._announce_round
        )
        self._announce_round += 1
        self._announce_next = self._clock() + cfg.announce_interval if more else None

    # ------------------------------------------------------------------ metrics

    def write_rule_metrics(self, write: Callable[[str], object]) -> None:
        """The whole scrape (`scrape.Scrape.write`)."""
        self.scrape.write(write)
