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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from egress_router.core import config, listing, plan, ruleset
from egress_router.kernel import announce, errors, iptables, netlink, nft, observe
from egress_router.kernel import preflight as preflight_module

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

    def _dump(self, family: int) -> str:
        return "".join(self.runner.save(family, table) for table in ruleset.IPT_TABLES)

    def _jumps(self, family: int) -> set[tuple[str, str, str]]:
        return listing.iptables_jumps(self._dump(family))

    def _payloads(self, cfg: config.Config) -> list[tuple[int, str]]:
        # Both families always: one without a source gets the closed policy, so that
        # (for example) the HTTP port is not open over IPv6 link-local on an IPv4 router.
        return [
            (family, ruleset.render_iptables(cfg, family, self._jumps(family)))
            for family in (4, 6)
        ]

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
            dump = self._dump(family)
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
            self.runner.save(family, table) for family in (4, 6) for table in ruleset.IPT_TABLES
        ]
        return listing.fingerprint_iptables(dumps)


def make_firewall(backend: config.Backend) -> Firewall:
    """The real backend for ``backend``."""
    if backend is config.Backend.IPTABLES:
        return IptablesFirewall(iptables.IptablesCommand())
    return NftablesFirewall(nft.NftCommand())


def stale_firewall(backend: config.Backend) -> Firewall:
    """The other backend, whose rules a setup with ``backend`` removes (a switch of backend)."""
    other = (config.Backend.IPTABLES if backend is config.Backend.NFTABLES
             else config.Backend.NFTABLES)
    return make_firewall(other)


@dataclass
class Timings:
    """Seconds spent in each stage of a setup, in order (for logs and benchmarks)."""

    stages: dict[str, float] = field(default_factory=dict)

    def time(self, stage: str, started: float) -> None:
        self.stages[stage] = time.monotonic() - started


def required_programs(
    cfg: config.Config, links: netlink.Netlink, firewall: Firewall
) -> tuple[str, ...]:
    """The programs a setup of ``cfg`` runs (pyroute2 needs none; the waiting container's
    netlink reads through iproute2's ``ip -j``)."""
    names: list[str] = []
    if isinstance(firewall, NftablesFirewall):
        names.append("nft")
    elif isinstance(firewall, IptablesFirewall):
        for family in cfg.families():
            prefix = "ip6" if family == 6 else "ip"
            names += [f"{prefix}tables-restore", f"{prefix}tables-save"]
    if isinstance(links, observe.CheckedNetlink):
        names.append("ip")
    return tuple(names)


def sysctl_values(steps: Iterable[plan.Step]) -> dict[str, str]:
    """The sysctls (keys relative to ``/proc/sys``) the plan writes, and their values."""
    values: dict[str, str] = {}
    for step in steps:
        if isinstance(step, plan.EnableForwarding):
            values[step.sysctl.replace(".", "/")] = "1"
        # Steps that write several sysctls carry ``values``: (key under /proc/sys, value).
        for key, value in getattr(step, "values", ()):
            values[str(key)] = str(value)
    return values


def sysctl_keys(steps: Iterable[plan.Step]) -> tuple[str, ...]:
    """The sysctls (relative to ``/proc/sys``) the plan writes."""
    return tuple(sysctl_values(steps))


def preflight(
    cfg: config.Config,
    links: netlink.Netlink,
    firewall: Firewall,
    probe: preflight_module.Probe | None = None,
) -> None:
    """Check what can be checked before the first change; `ApplyError` listing every problem.

    Both interfaces must exist; with a ``probe``, the programs the backend runs
    must be on PATH and every sysctl the plan writes must be writable. Nothing
    has been changed when this raises.
    """
    problems: list[str] = []
    missing: list[str] = []
    if probe is not None:
        missing = probe.missing_programs(required_programs(cfg, links, firewall))
        if missing:
            problems.append(
                f"{', '.join(missing)} not found on PATH; install it in the image "
                "(nftables, iptables, iproute2)"
            )
    if "ip" not in missing:  # the waiting container looks for links through ip(8)
        for ifname in (cfg.pod_interface, cfg.egress_interface):
            try:
                present = links.has_link(ifname)
            except errors.KernelError as err:
                problems.append(f"cannot look for interface {ifname!r}: {err}")
                continue
            if not present:
                problems.append(
                    f"interface {ifname!r} does not exist in this network namespace; check "
                    "EGRESS_INTERFACE / EGRESS_POD_INTERFACE and that the platform attached "
                    "the macvlan (annotation or CNI)"
                )
    # Per-interface keys exist only once the interface does: checked above first.
    wanted = sysctl_values(plan.plan_interfaces(cfg))
    if probe is not None and not problems:
        problems += [
            f"sysctl {key.replace('/', '.')} {why}; run the container privileged "
            "or with a writable /proc/sys"
            for key, why in probe.unwritable(list(wanted), wanted)
        ]
    if problems:
        kind = errors.Kind.TOOL_MISSING if missing else errors.Kind.SETUP_FAILED
        raise ApplyError(
            f"cannot set up the egress router: {'; '.join(problems)}; nothing was changed", kind
        )


def setup(
    cfg: config.Config,
    links: netlink.Netlink,
    firewall: Firewall,
    announcer: announce.Announcer,
    *,
    sleep: Callable[[float], object] = time.sleep,
    stale: Firewall | None = None,
    probe: preflight_module.Probe | None = None,
    caller_undoes: bool = False,
    checked: bool = False,
    announce: bool = True,
) -> Timings:
    """Make the kernel match ``cfg``; idempotent. Raises `ApplyError` naming the failed step.

    `preflight` runs first (``probe``: the programs and sysctls too). A failure
    after the first change says what was left applied: the ruleset and the
    steps before the failed one stay (a re-run converges; deleting the pod's
    namespace removes them all). ``caller_undoes``: the caller rolls back
    (CNI ADD), so the message ends with the failure itself.

    ``stale`` is the other backend: its rules, if a previous run left any,
    are removed after ours are in place (best effort, logged). ``checked``:
    the caller ran `preflight` already; ``announce=False``: the caller
    announces later (``wait`` does, once it is ready).
    """
    report = Timings()
    started = time.monotonic()
    if not checked:
        preflight(cfg, links, firewall, probe)
    report.time("check interfaces", started)
    done: list[str] = []
    try:
        if firewall.name != NftablesFirewall.name:
            # One restore per family: check both before either. Not for nft: its apply is
            # one transaction the kernel checks whole before committing any of it, and a
            # `nft -c` first costs one more nft process (as much again at 10,000 rules).
            started = time.monotonic()
            firewall.check(cfg)
            report.time(f"check {firewall.name} ruleset", started)
        started = time.monotonic()
        firewall.apply(cfg)
        done.append(f"the {firewall.name} ruleset")
        report.time(f"apply {firewall.name} ruleset", started)
        log.info("%s ruleset applied (%d rules)", firewall.name, len(cfg.destinations.rules))
        started = time.monotonic()
        for step in plan.plan_interfaces(cfg):
            log.debug("%s", step.describe())
            links.apply(step)
            done.append(step.describe())
        report.time("interface plan", started)
    except errors.KernelError as err:
        message = str(err) if caller_undoes else f"{err}; {left_applied(done)}"
        raise ApplyError(message, err.kind) from None
    if stale is not None:
        try:
            stale.remove()
        except errors.KernelError as err:
            log.debug("no %s rules to remove: %s", stale.name, err)
    started = time.monotonic()
    if announce:
        announce_all(cfg, links, announcer, sleep=sleep)
    report.time("announce", started)
    return report


def left_applied(done: Sequence[str]) -> str:
    """What a failed setup leaves behind, for its error message."""
    if not done:
        return "nothing was changed"
    return (
        f"left applied: {'; '.join(done)} (re-running the setup converges; deleting the pod "
        "removes them with its network namespace)"
    )


def announce_all(
    cfg: config.Config,
    links: netlink.Netlink,
    announcer: announce.Announcer,
    *,
    sleep: Callable[[float], object] = time.sleep,
) -> None:
    """Send every announcement ``count`` times, ``interval`` apart; failures only warn."""
    number = 0
    while announce_round(cfg, links, announcer, number):
        sleep(cfg.announce_interval)
        number += 1


def announce_round(
    cfg: config.Config, links: netlink.Netlink, announcer: announce.Announcer, number: int
) -> bool:
    """Send round ``number`` (from 0) of the announcements; True if another round follows.

    The waiting process schedules the rounds in its loop (`Router.announce`), so that
    kernel change events are acted on between them; ``init`` sleeps (`announce_all`).
    """
    steps = plan.plan_announcements(cfg)
    if not steps:
        return False
    try:
        index, mac = links.link_info(cfg.egress_interface)
    except errors.KernelError as err:
        log.warning("cannot announce the reserved address: %s", err)
        return False
    rounds = max(step.count for step in steps)
    for step in steps:
        if number >= step.count:
            continue
        try:
            announcer.send(step.ifname, index, mac, step.address)
            log.debug("%s (%d/%d)", step.describe(), number + 1, step.count)
        except errors.KernelError as err:
            log.warning("%s", err)
    return number + 1 < rounds


def render_iptables(cfg: config.Config) -> str:
    """The iptables-restore payloads of both families (one without a source gets the closed
    policy), as one readable text."""
    return "".join(
        f"# --- {'ip6tables' if family == 6 else 'iptables'}-restore --noflush\n"
        f"{ruleset.render_iptables(cfg, family)}"
        for family in (4, 6)
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
