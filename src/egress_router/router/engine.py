"""Bring a validated `Config` into the kernel: ruleset, interface plan, announcements.

The engine is the one place that knows the order of operations, and it only
talks to the kernel through the `Netlink`, `Nft`/`Iptables` and `Announcer`
protocols, so unit tests drive it with fakes and the CNI plugin, the CLI and
the lab share it unchanged.

Order matters: interfaces are checked first (no side effect yet), the ruleset
is checked and applied atomically before forwarding is switched on (so there
is never a moment where the router forwards without its one-way-door policy),
then addresses and routes, and last the announcements.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from egress_router.core import config, listing, plan, ruleset
from egress_router.kernel import announce, errors, iptables, netlink, nft

log = logging.getLogger(__name__)


class ApplyError(errors.KernelError):
    """Setting up the router failed; the message says which step and why."""

    default_kind = errors.Kind.SETUP_FAILED


class Firewall(Protocol):
    """One backend of the data path."""

    name: str

    def render(self, cfg: config.Config) -> str: ...

    def check(self, cfg: config.Config) -> None: ...

    def apply(self, cfg: config.Config) -> None: ...

    def remove(self) -> None: ...

    def update(self, old: config.Config, new: config.Config) -> bool:
        """Change the rules in place from ``old`` to ``new``; False: only `apply` can."""
        ...

    def fingerprint(self) -> str | None:
        """A digest of our rules as the kernel holds them (None: not there), for drift checks."""
        ...


class NftablesFirewall:
    """The default backend: one ``nft -f`` transaction replacing our table."""

    name = "nftables"

    def __init__(self, runner: nft.Nft) -> None:
        self.runner = runner

    def render(self, cfg: config.Config) -> str:
        return ruleset.render_nftables(cfg)

    def check(self, cfg: config.Config) -> None:
        self.runner.run(self.render(cfg), check_only=True)

    def apply(self, cfg: config.Config) -> None:
        self.runner.run(self.render(cfg))

    def remove(self) -> None:
        self.runner.run(ruleset.render_nftables_removal())

    def update(self, old: config.Config, new: config.Config) -> bool:
        script = ruleset.render_nftables_update(old, new)
        if script is None:
            return False
        # No separate check: the kernel validates the whole transaction before it
        # commits any of it, and it fails as a whole if the table is not old's.
        self.runner.run(script)
        return True

    def fingerprint(self) -> str | None:
        text = self.runner.list_table_text(stateless=True)
        return None if text is None else listing.fingerprint_nftables(text)


class IptablesFirewall:
    """The compatibility backend: iptables-restore/ip6tables-restore of our own chains."""

    name = "iptables"

    def __init__(self, runner: iptables.Iptables) -> None:
        self.runner = runner

    def _jumps(self, family: int) -> set[tuple[str, str, str]]:
        dump = self.runner.save(family, "nat") + self.runner.save(family, "filter")
        return listing.iptables_jumps(dump)

    def _payloads(self, cfg: config.Config) -> list[tuple[int, str]]:
        payloads = []
        for family in (4, 6):
            if cfg.source(family) is not None:
                payloads.append(
                    (family, ruleset.render_iptables(cfg, family, self._jumps(family)))
                )
            else:
                jumps = self._jumps(family)
                if jumps:
                    payloads.append((family, ruleset.render_iptables_removal(family, jumps)))
        return payloads

    def render(self, cfg: config.Config) -> str:
        return render_iptables(cfg)

    def check(self, cfg: config.Config) -> None:
        for family, payload in self._payloads(cfg):
            self.runner.restore(family, payload, test=True)

    def apply(self, cfg: config.Config) -> None:
        for family, payload in self._payloads(cfg):
            self.runner.restore(family, payload)

    def remove(self) -> None:
        for family in (4, 6):
            dump = self.runner.save(family, "nat") + self.runner.save(family, "filter")
            if "EGRESS-ROUTER" not in dump:
                # Nothing of ours: a removal payload would create empty tables and chains.
                continue
            jumps = listing.iptables_jumps(dump)
            self.runner.restore(family, ruleset.render_iptables_removal(family, jumps))
            self.runner.delete_chains(family)

    def update(self, old: config.Config, new: config.Config) -> bool:
        return False  # our chains are always replaced whole (atomically per table)

    def fingerprint(self) -> str | None:
        dumps = [
            self.runner.save(family, table) for family in (4, 6) for table in ("nat", "filter")
        ]
        return listing.fingerprint_iptables(dumps)


def make_firewall(backend: config.Backend) -> Firewall:
    """The real backend for ``backend``."""
    if backend is config.Backend.IPTABLES:
        return IptablesFirewall(iptables.IptablesCommand())
    return NftablesFirewall(nft.NftCommand())


@dataclass
class Timings:
    """Seconds spent in each stage of a setup, in order (for logs and benchmarks)."""

    stages: dict[str, float] = field(default_factory=dict)

    def time(self, stage: str, started: float) -> None:
        self.stages[stage] = time.monotonic() - started


def setup(
    cfg: config.Config,
    links: netlink.Netlink,
    firewall: Firewall,
    announcer: announce.Announcer,
    *,
    sleep: Callable[[float], object] = time.sleep,
    stale: Firewall | None = None,
) -> Timings:
    """Make the kernel match ``cfg``; idempotent. Raises `ApplyError` naming the failed step.

    ``stale`` is the other backend: its rules, if a previous run left any,
    are removed after ours are in place (best effort, logged).
    """
    report = Timings()
    started = time.monotonic()
    for ifname in (cfg.pod_interface, cfg.egress_interface):
        if not links.has_link(ifname):
            raise ApplyError(
                f"cannot set up the egress router: interface {ifname!r} does not exist in "
                "this network namespace; check EGRESS_INTERFACE / EGRESS_POD_INTERFACE and "
                "that the platform attached the macvlan (annotation or CNI)"
            )
    report.time("check interfaces", started)
    try:
        started = time.monotonic()
        firewall.check(cfg)
        report.time(f"check {firewall.name} ruleset", started)
        started = time.monotonic()
        firewall.apply(cfg)
        report.time(f"apply {firewall.name} ruleset", started)
        log.info("%s ruleset applied (%d rules)", firewall.name, len(cfg.destinations.rules))
        started = time.monotonic()
        for step in plan.plan_interfaces(cfg):
            log.debug("%s", step.describe())
            links.apply(step)
        report.time("interface plan", started)
    except errors.KernelError as err:
        raise ApplyError(str(err), err.kind) from None
    if stale is not None:
        try:
            stale.remove()
        except errors.KernelError as err:
            log.debug("no %s rules to remove: %s", stale.name, err)
    started = time.monotonic()
    announce_all(cfg, links, announcer, sleep=sleep)
    report.time("announce", started)
    return report


def announce_all(
    cfg: config.Config,
    links: netlink.Netlink,
    announcer: announce.Announcer,
    *,
    sleep: Callable[[float], object] = time.sleep,
) -> None:
    """Send every announcement ``count`` times, ``interval`` apart; failures only warn."""
    steps = plan.plan_announcements(cfg)
    if not steps:
        return
    try:
        index, mac = links.link_info(cfg.egress_interface)
    except errors.KernelError as err:
        log.warning("cannot announce the reserved address: %s", err)
        return
    rounds = max(step.count for step in steps)
    for number in range(rounds):
        for step in steps:
            if number >= step.count:
                continue
            try:
                announcer.send(step.ifname, index, mac, step.address)
                log.debug("%s (%d/%d)", step.describe(), number + 1, step.count)
            except errors.KernelError as err:
                log.warning("%s", err)
        if number + 1 < rounds:
            sleep(cfg.announce_interval)


def render_iptables(cfg: config.Config) -> str:
    """The iptables-restore payloads of every family, as one readable text."""
    return "".join(
        f"# --- {'ip6tables' if family == 6 else 'iptables'}-restore --noflush\n"
        f"{ruleset.render_iptables(cfg, family)}"
        for family in cfg.families()
    )


def unit_test_report(cfg: config.Config) -> str:
    """What ``EGRESS_ROUTER_MODE=unit-test`` prints: the interface plan and the ruleset.

    Rendered without any backend object: nothing here may touch (or fake) the kernel.
    """
    if cfg.backend is config.Backend.IPTABLES:
        name, text = IptablesFirewall.name, render_iptables(cfg)
    else:
        name, text = NftablesFirewall.name, ruleset.render_nftables(cfg)
    return "# interface plan\n" + plan.describe_plan(cfg) + f"# {name} ruleset\n" + text
