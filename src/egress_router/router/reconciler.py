"""What the long-running ``wait`` process decides: reload, repair, DNS refresh, readiness.

`Router` holds the desired state (the configuration, names resolved), what the kernel held right
after the last apply, and the loop's verbs (`load`, `start`, `poll_file`, `refresh_dns`,
`reconcile`, `announce`); the process shell in ``egress_router.wait`` only calls them. `Edges`
bundles the edges it drives, so unit tests hand it fakes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from egress_router.core import config, drift, listing, plan
from egress_router.kernel import announce, conntrack, errors, netlink, nft, observe
from egress_router.kernel.memory import HEAP
from egress_router.router import capacity, engine, metrics, resolve

log = logging.getLogger(__name__)



def read_drift(cfg: config.Config) -> list[tuple[plan.Step, str]]:
    """The interface plan's steps this namespace does not hold (`core.drift`), with the reason."""
    found = drift.interface_problems(plan.plan_interfaces(cfg), observe.read_snapshot())
    return [(p.step, p.reason) for p in found if p.step is not None]


ConntrackStats = conntrack.Stats  # in Kernel, the name conntrack is the field


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


def real_edges(backend: config.Backend, settings: config.WaitSettings) -> Edges:
    """The kernel of the current network namespace."""
    other = (
        config.Backend.IPTABLES
        if backend is config.Backend.NFTABLES
        else config.Backend.NFTABLES
    )
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
        conntrack=conntrack.ConntrackTool(),
        resolver=resolve.DnsResolver(min_ttl=settings.dns_min_ttl, max_ttl=settings.dns_max_ttl),
        counters=counters,
        stale=engine.make_firewall(other),
        generation=nft.generation,
        prepare=links.prepare,
        stats=conntrack.read_stats,
    )


def _kind(step: plan.Step) -> str:
    if isinstance(step, plan.LinkUp):
        return "link"
    if isinstance(step, plan.SetAddress):
        return "address"
    if isinstance(step, plan.SetRoute):
        return "route"
    return "forwarding"


def _identity(rule: config.PortRule | config.NamedRule) -> tuple[str, int, str, int]:
    """What makes a rule the same rule across an edit: local port and the destination as written."""
    if isinstance(rule, config.NamedRule) or rule.host is not None:
        target = str(rule.host)
    else:
        target = str(rule.address)
    return (rule.proto.value, rule.port, target, rule.remote_port)


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
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.env = dict(env)
        self.settings = settings
        self.kernel = kernel
        self.metrics = registry
        self._sleep = sleep
        self._clock = clock
        self._wall = wall
        self._lock = threading.RLock()
        self.dns = resolve.Cache(kernel.resolver, retry=settings.dns_min_ttl, clock=clock)
        self.parsed: config.Config | None = None  # the configuration, names unresolved
        self.applied: config.Config | None = None  # what the kernel got, names resolved
        self.expected: str | None = None  # fingerprint of our rules right after that apply
        self._verified: int | None = None  # nftables generation at which they last matched
        self.problems: list[str] = ["not started"]
        self._source: tuple[int, int, int, int] | None = None
        self._digest: str | None = None
        self.generation = 0
        # live connections and the NAT's port space: one conntrack pass per interval
        self.sampler = capacity.Sampler(settings.sample, clock=clock)

    # ------------------------------------------------------------------ start

    @property
    def path(self) -> str | None:
        return self.env.get(config.ENV_DESTINATION_FILE, "").strip() or None

    def load(self) -> config.Config:
        """Read and validate the configuration; `config.ConfigError` when it is bad."""
        if self.path is not None:
            self._source = self._stat(self.path)
        text = self._read() if self.path is not None else None
        cfg = config.load_config(self.env, None if text is None else lambda _path: text)
        if text is not None:
            self._digest = hashlib.sha256(text.encode()).hexdigest()
        self.parsed = cfg
        return cfg

    def start(self) -> None:
        """Apply the loaded configuration (as ``init`` would) and announce.

        Raises `engine.ApplyError` when the kernel refuses: the container then
        exits and is restarted.
        """
        cfg = self.parsed if self.parsed is not None else self.load()
        self._refresh_names(cfg, force=True)
        desired = resolve.resolve_config(cfg, self.dns.answers())
        with self._lock:
            if self.kernel.prepare is not None:
                # Links, addresses and routes in one go (forwarding stays off until
                # the engine has put the ruleset in place), so that a fresh pod
                # (legacy mode) costs one helper process, not one per step.
                try:
                    self.kernel.prepare(plan.plan_interfaces(desired))
                except errors.KernelError as err:
                    raise engine.ApplyError(str(err)) from None
            engine.setup(
                desired,
                self.kernel.links,
                self.kernel.firewall,
                self.kernel.announcer,
                sleep=self._sleep,
                stale=self.kernel.stale,
            )
            self.metrics.announcements.inc()
            self._applied(desired)
            self.problems = []
            self.metrics.ready.set(1)
        log.info(
            "egress router ready: %s via %s, %d rules%s; HTTP port %s",
            ", ".join(str(s.interface) for s in cfg.sources),
            ", ".join(str(g) for g in cfg.gateways),
            len(desired.destinations.rules) + len(desired.destinations.fallbacks),
            f", watching {self.path}" if self.path else "",
            cfg.http_port or "off",
        )

    def _applied(self, desired: config.Config) -> None:
        self.applied = desired
        self._remember_rules()
        self.generation += 1
        self.metrics.generation.set(self.generation)
        self.metrics.last_apply.set(self._wall())
        self.metrics.rules.set(len(desired.destinations.rules))
        self.metrics.applies.labels(result="ok").inc()
        HEAP.release()

    def _remember_rules(self) -> None:
        generation = self.kernel.generation()  # read first: a later commit must not be missed
        self.expected = self.kernel.firewall.fingerprint()
        self._verified = generation

    def _rules_match(self) -> bool:
        """Whether our rules in the kernel are still those of the last apply."""
        generation = self.kernel.generation()
        if generation is not None and generation == self._verified:
            return True  # no nftables commit at all since they last matched
        matches = self.kernel.firewall.fingerprint() == self.expected
        self._verified = generation if matches else None
        return matches

    # ------------------------------------------------------------------ the destination file

    @staticmethod
    def _stat(path: str) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(path)  # follows the ConfigMap's ..data symlink
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> str:
        assert self.path is not None
        _variable, text = config.read_destination_text(self.env)
        return text

    def poll_file(self) -> bool:
        """Apply the destination file if it changed; True if new rules were applied."""
        if self.path is None:
            return False
        source = self._stat(self.path)
        if source == self._source:
            return False
        self._source = source
        try:
            text = self._read()
        except config.ConfigError as err:
            return self._refuse(err)
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest == self._digest:
            return False
        self._digest = digest
        try:
            cfg = config.load_config(self.env, lambda _path: text)
        except config.ConfigError as err:
            return self._refuse(err)
        log.info("%s changed: applying the new rules", self.path)
        self.parsed = cfg
        self._refresh_names(cfg)
        return self._apply(resolve.resolve_config(cfg, self.dns.answers()), edited=True)

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
                self._transaction(old, desired)
            except errors.KernelError as err:
                log.error("cannot apply the new rules: %s; the running rules stay", err)
                self.metrics.applies.labels(result="failed").inc()
                return False
            self._applied(desired)
        if edited and old is not None and self.parsed is not None:
            self._cut_removed(old, self.parsed)
        return True

    def _transaction(self, old: config.Config | None, desired: config.Config) -> None:
        firewall = self.kernel.firewall
        if old is not None and self._rules_match():
            try:
                if firewall.update(old, desired):
                    return
            except errors.KernelError as err:
                log.warning("cannot update the rules in place (%s); replacing them whole", err)
        elif old is not None:
            self.metrics.repairs.labels(kind="ruleset").inc()
            log.warning("our rules in the kernel had drifted; replacing them whole")
        firewall.check(desired)
        firewall.apply(desired)

    def _cut_removed(self, old: config.Config, new_parsed: config.Config) -> None:
        """Delete the conntrack entries of rules (and fallbacks) the edit took away."""
        keep = {_identity(r) for r in new_parsed.destinations.rules}
        keep |= {_identity(n) for n in new_parsed.destinations.named}
        targets = {
            (r.family, r.proto, r.port, r.address, r.remote_port)
            for r in old.destinations.rules
            if _identity(r) not in keep
        }
        kept_fallbacks = {str(f.address) for f in new_parsed.destinations.fallbacks} | {
            f.host for f in new_parsed.destinations.named_fallbacks
        }
        new_keys = {(r.family, r.proto.value, r.port) for r in new_parsed.destinations.rules}
        for fallback in old.destinations.fallbacks:
            if (fallback.host or str(fallback.address)) in kept_fallbacks:
                continue
            try:
                flows = list(self.kernel.conntrack.flows(fallback.family))
            except conntrack.ConntrackError as err:
                log.warning("%s", err)
                break
            for flow in flows:
                key = (flow.family, flow.proto, flow.port)
                if flow.destination == fallback.address and key not in new_keys:
                    targets.add((flow.family, config.Proto(flow.proto), flow.port,
                                 flow.destination, flow.remote_port))
        cut = 0
        for family, proto, port, address, remote in sorted(targets, key=str):
            try:
                cut += self.kernel.conntrack.cut(family, proto, port, address, remote)
            except conntrack.ConntrackError as err:
                log.warning("%s", err)
                break
        if cut:
            log.info("cut %d connection(s) of removed rules", cut)
            self.metrics.connections_cut.inc(cut)

    # ------------------------------------------------------------------ DNS

    def _refresh_names(self, cfg: config.Config, *, force: bool = False) -> resolve.Refresh:
        hosts = cfg.destinations.hosts()
        if not hosts:
            self.dns.refresh((), cfg.families())
            return resolve.Refresh()
        result = self.dns.refresh(hosts, cfg.families(), force=force)
        for host, _why in result.failed:
            self.metrics.dns_failures.labels(name=host).inc()
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
        desired = resolve.resolve_config(self.parsed, self.dns.answers())
        return self._apply(desired, edited=False)

    def next_dns(self) -> float | None:
        return self.dns.next_due()

    # ------------------------------------------------------------------ drift

    def reconcile(self) -> list[str]:
        """Compare the kernel with the desired state and repair drift; the problems left."""
        self.metrics.reconciles.inc()
        problems: list[str] = []
        announce_again = False
        with self._lock:
            desired = self.applied
            if desired is None:
                return ["no rules applied yet"]
            firewall = self.kernel.firewall
            try:
                matches = self._rules_match()
            except errors.KernelError as err:
                matches = False
                log.warning("cannot read our rules back: %s", err)
            if not matches:
                log.warning("drift: our %s rules were changed from outside; re-applying",
                            firewall.name)
                try:
                    firewall.check(desired)
                    firewall.apply(desired)
                    self._remember_rules()
                    self.metrics.repairs.labels(kind="ruleset").inc()
                except errors.KernelError as err:
                    log.error("cannot repair the %s rules: %s", firewall.name, err)
                    self.metrics.repair_failures.labels(kind="ruleset").inc()
                    problems.append(f"ruleset: {err}")
            try:
                drifted = self.kernel.drift(desired)
            except errors.KernelError as err:
                drifted = []
                problems.append(str(err))
            for step, reason in drifted:
                kind = _kind(step)
                log.warning("drift: %s; repairing: %s", reason, step.describe())
                try:
                    self.kernel.links.apply(step)
                except errors.KernelError as err:
                    log.error("cannot repair %s: %s", kind, err)
                    self.metrics.repair_failures.labels(kind=kind).inc()
                    problems.append(f"{reason} ({err})")
                    continue
                self.metrics.repairs.labels(kind=kind).inc()
                announce_again |= kind in ("link", "address")
            self.problems = problems
            self.metrics.ready.set(0 if problems else 1)
        HEAP.release()
        if announce_again:
            self.announce()
        return problems

    def readiness(self) -> tuple[bool, str]:
        """Whether the kernel holds the desired state right now (checked, not repaired)."""
        try:
            return self._readiness()
        finally:
            HEAP.release()

    def _readiness(self) -> tuple[bool, str]:
        with self._lock:
            if self.applied is None:
                return False, "rules not applied yet"
            try:
                if not self._rules_match():
                    return False, "our rules in the kernel differ from the applied ones"
                drifted = self.kernel.drift(self.applied)
            except errors.KernelError as err:
                return False, f"cannot read the kernel's state: {err}"
            if drifted:
                return False, "; ".join(reason for _step, reason in drifted)
            if self.problems:
                return False, "; ".join(self.problems)
            return True, "ok"

    # ------------------------------------------------------------------ announcements

    def announce(self) -> None:
        """Announce the reserved address(es) again (SIGHUP, and after an address repair)."""
        cfg = self.applied
        if cfg is None:
            return
        log.info("announcing %s", ", ".join(str(s.address) for s in cfg.sources))
        engine.announce_all(cfg, self.kernel.links, self.kernel.announcer, sleep=self._sleep)
        self.metrics.announcements.inc()

    # ------------------------------------------------------------------ metrics

    def _flows(self, cfg: config.Config) -> Iterator[conntrack.Flow]:
        for family in cfg.families():
            yield from self.kernel.conntrack.flows(family)

    def write_rule_metrics(self, write: Callable[[str], object]) -> None:
        """The per-rule metric families, read from the kernel now."""
        cfg = self.applied
        if cfg is None:
            return
        counters: listing.Counters | None = None
        if self.kernel.counters is not None:
            try:
                counters = listing.read_counters(self.kernel.counters())
            except errors.KernelError as err:
                log.warning("cannot read rule counters: %s", err)
                counters = {}
        sample = self.sampler.latest(cfg, lambda: self._flows(cfg))
        active = sample.active if sample is not None else {}
        metrics.write_rule_metrics(write, cfg, counters, active)
        capacity.write_metrics(write, sample, self.kernel.stats())
        del counters, active, sample
        HEAP.release()
