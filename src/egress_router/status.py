"""``egress-router status``: what the router is doing, for a person at the terminal.

Someone paged about egress at night wants one screen: the configuration,
whether the macvlan, its address and routes are in place, and for every
rule where the kernel sends it, how many connections and bytes went through
and how many are open now. ``--json`` gives scripts the same document. The
exit status says whether the kernel matches the configuration, so the
command doubles as a probe.

Everything is read from the kernel of the current network namespace
(``nft list table``, ``ip -j``, the conntrack table), never from the waiting
container's memory: the command also works where only the init container
ran. The interfaces are judged by the comparison `wait` repairs from
(`egress_router.core.drift`). DNS-named rules are checked for presence (the
addresses are whatever the waiting container last resolved), address rules
for their exact target.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from egress_router.core import config, drift, listing, plan, ruleset, state
from egress_router.kernel import conntrack, errors, iptables, nft, observe
from egress_router.router import capacity, metrics

EXIT_DRIFT = 4



@dataclass
class RuleStatus:
    """One rule (or fallback, port ``*``) as configured and as the kernel holds it."""

    family: str
    protocol: str
    port: str
    destination: str
    kernel: list[str] = field(default_factory=list)
    connections: int | None = None
    packets: int | None = None
    bytes: int | None = None
    active: int | None = None
    problem: str | None = None


@dataclass
class Report:
    """Everything ``status`` shows; ``matches`` is the verdict."""

    configuration: dict[str, Any]
    interfaces: list[dict[str, Any]]
    ruleset: dict[str, Any]
    rules: list[RuleStatus]
    problems: list[str]
    # the NAT's port space to the busiest destinations, and warnings past 80 %
    port_space: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        return not self.problems


def _endpoint(address: str, port: str | None) -> str:
    if port is None:
        return address
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def kernel_targets(table: listing.Listing, family: int) -> dict[ruleset.Key, list[str]]:
    """Where the kernel sends each rule key of ``family``: redirect map and spread chains."""
    found: dict[ruleset.Key, list[str]] = {}
    for element in table.elements("map", ruleset.redirect_map(family)):
        key_text, _, value = element.partition(" : ")
        key = listing.element_key(key_text)
        address, _, port = value.partition(" . ")
        if key is not None:
            found[key] = [_endpoint(address.strip(), port.strip() or None)]
    for element in table.elements("map", ruleset.spread_map(family)):
        key_text, _, verdict = element.partition(" : ")
        key = listing.element_key(key_text)
        chain = verdict.replace("jump", "").strip()
        if key is None:
            continue
        rule = " ".join(table.lines("chain", chain))
        found[key] = [_endpoint(a, p) for a, p in listing.numgen_targets(rule)]
    return found


def kernel_fallback(table: listing.Listing, family: int) -> list[str]:
    """The fallback addresses of ``family`` in the prerouting chain."""
    nfproto = f"meta nfproto ipv{family} meta l4proto"
    for line in table.lines("chain", ruleset.CHAIN_PREROUTING):
        if line.startswith(nfproto) and "dnat" in line and "th dport map" not in line:
            return listing.dnat_addresses(line)
    return []


def _rule_counts(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, block in listing.parse_table(text).of_kind("chain").items():
        if name in (
            ruleset.CHAIN_PREROUTING,
            ruleset.CHAIN_POSTROUTING,
            ruleset.CHAIN_FORWARD,
            ruleset.CHAIN_INPUT,
        ):
            counts[name] = len([line for line in block.lines if not line.startswith("type ")])
    return counts


def _configuration(cfg: config.Config) -> dict[str, Any]:
    return {
        "sources": [str(s.interface) for s in cfg.sources],
        "gateways": [str(g) for g in cfg.gateways],
        "pod_interface": cfg.pod_interface,
        "egress_interface": cfg.egress_interface,
        "backend": cfg.backend.value,
        "http_port": cfg.http_port,
        "rules": len(cfg.destinations.rules) + len(cfg.destinations.named),
        "fallbacks": len(cfg.destinations.fallbacks) + len(cfg.destinations.named_fallbacks),
        "dns_names": list(cfg.destinations.hosts()),
    }


def _interfaces(
    cfg: config.Config, read: Callable[[], state.Snapshot]
) -> tuple[list[dict[str, Any]], list[str]]:
    try:
        snapshot = read()
    except errors.KernelError as err:
        return [], [f"cannot read the interfaces: {err}"]
    rows = []
    problems = []
    for step in plan.plan_interfaces(cfg):
        problem = drift.step_problem(step, snapshot)
        rows.append({"step": step.describe(), "ok": problem is None, "problem": problem})
        if problem is not None:
            problems.append(problem)
    return rows, problems


def _configured_rules(cfg: config.Config) -> list[tuple[int, config.Proto, int, str, str | None]]:
    """(family, proto, port, destination label, exact endpoint or None for a name)."""
    rows: list[tuple[int, config.Proto, int, str, str | None]] = []
    families = cfg.families()
    for rule in cfg.destinations.rules:
        endpoint = _endpoint(str(rule.address), str(rule.remote_port))
        rows.append((rule.family, rule.proto, rule.port, ruleset.rule_label(rule), endpoint))
    for named in cfg.destinations.named:
        rows += [
            (family, named.proto, named.port, ruleset.rule_label(named), None)
            for family in families
        ]
    return sorted(rows, key=lambda r: (r[0], r[1].value, r[2]))


def _sample(cfg: config.Config, tracker: conntrack.Conntrack) -> capacity.Sample | None:
    """One conntrack pass: live connections per rule and the NAT's port space."""
    try:
        return capacity.take_sample(
            cfg, (f for family in cfg.families() for f in tracker.flows(family))
        )
    except conntrack.ConntrackError:
        return None


def port_space_rows(sample: capacity.Sample | None) -> list[dict[str, Any]]:
    """The busiest destinations, per source address: ports in use of the capacity."""
    if sample is None:
        return []
    return [
        {
            "destination": f"{address}:{port}" if family == 4 else f"[{address}]:{port}",
            "protocol": proto, "source": str(source), "in_use": in_use,
            "capacity": capacity.PORTS_PER_SOURCE,
        }
        for (family, proto, address, port), by_source in sample.ports.items()
        for source, in_use in by_source.items()
    ]


def collect_nftables(
    cfg: config.Config,
    text: str | None,
    active: dict[tuple[int, str, int], int],
) -> tuple[dict[str, Any], list[RuleStatus], list[str]]:
    """Compare ``nft list table`` text with the configuration (pure, for tests)."""
    if text is None:
        absent = [
            RuleStatus(f"ipv{f}", p.value, str(port), label, problem="no table")
            for f, p, port, label, _e in _configured_rules(cfg)
        ]
        missing = f"table {ruleset.TABLE_FAMILY} {ruleset.TABLE} is missing"
        return {"present": False}, absent, [missing]
    table = listing.parse_table(text)
    counters = listing.read_counters(text.splitlines())
    problems: list[str] = []
    rules: list[RuleStatus] = []
    configured = _configured_rules(cfg)
    by_family: dict[int, dict[ruleset.Key, list[str]]] = {
        f: kernel_targets(table, f) for f in cfg.families()
    }
    for family, proto, port, label, exact in configured:
        key = (proto, port)
        found = by_family.get(family, {}).pop(key, None)
        conns = metrics.lookup(counters, ruleset.conns_set(family), key)
        traffic = metrics.lookup(counters, ruleset.traffic_set(family), key)
        row = RuleStatus(
            f"ipv{family}", proto.value, str(port), label, kernel=found or [],
            connections=conns[0] if conns else None,
            packets=traffic[0] if traffic else None,
            bytes=traffic[1] if traffic else None,
            active=active.get((family, proto.value, port), 0),
        )
        if found is None:
            named = exact is None
            row.problem = "not resolved yet" if named else "missing in the kernel"
        elif exact is not None and found != [exact]:
            row.problem = f"the kernel sends it to {', '.join(found)}"
        elif conns is None or traffic is None:
            row.problem = "its counters are missing"
        if row.problem is not None:
            problems.append(f"{proto.value} port {port} (IPv{family}): {row.problem}")
        rules.append(row)
    for family, left in by_family.items():
        for (proto, port), targets in sorted(left.items(), key=lambda i: (i[0][0].value, i[0][1])):
            rules.append(RuleStatus(
                f"ipv{family}", proto.value, str(port), "-", kernel=targets,
                problem="in the kernel but not in the configuration",
            ))
            problems.append(f"{proto.value} port {port} (IPv{family}) is not configured")
    for family in cfg.families():
        wanted = [str(f.address) for f in cfg.destinations.fallbacks if f.family == family]
        names = [f.host for f in cfg.destinations.named_fallbacks]
        present = kernel_fallback(table, family)
        if not wanted and not names and not present:
            continue
        label = ", ".join(wanted + names) or "(none)"
        row = RuleStatus(f"ipv{family}", ruleset.L4_PROTOS, "*", label, kernel=present)
        if wanted and present != wanted:
            row.problem = "missing in the kernel" if not present else "a different fallback"
        elif names and not present:
            row.problem = "not resolved yet"
        elif not wanted and not names:
            row.problem = "in the kernel but not in the configuration"
        if row.problem:
            problems.append(f"IPv{family} fallback: {row.problem}")
        rules.append(row)
    expected = _rule_counts(ruleset.render_nftables(cfg))
    actual = _rule_counts(text)
    chains: dict[str, Any] = {}
    for chain, count in expected.items():
        have = actual.get(chain)
        chains[chain] = have
        if have is None:
            problems.append(f"chain {chain} is missing")
        elif chain != ruleset.CHAIN_PREROUTING and have != count:
            problems.append(f"chain {chain} has {have} rules, expected {count}")
    snat = [line for line in table.lines("chain", ruleset.CHAIN_POSTROUTING) if " snat " in line]
    for source in cfg.sources:
        # A pool's addresses stand in one map: match the address as a whole word.
        word = re.compile(rf"(?<![\w:.]){re.escape(str(source.address))}(?![\w:.])")
        if not any(word.search(line) for line in snat):
            problems.append(f"no SNAT to {source.address}")
    return {"present": True, "chains": chains}, rules, problems


def collect_iptables(
    cfg: config.Config, dumps: dict[int, str], active: dict[tuple[int, str, int], int]
) -> tuple[dict[str, Any], list[RuleStatus], list[str]]:
    """Check the compatibility backend: jumps in place and one DNAT line per rule target."""
    problems: list[str] = []
    rules: list[RuleStatus] = []
    present = all(
        listing.iptables_jumps(dumps.get(family, "")) == set(ruleset.IPT_JUMPS)
        for family in cfg.families()
    )
    if not present:
        problems.append("the jumps to our iptables chains are missing")
    for family, proto, port, label, exact in _configured_rules(cfg):
        found = listing.iptables_dnat_targets(dumps.get(family, ""), proto, port)
        row = RuleStatus(f"ipv{family}", proto.value, str(port), label, kernel=found,
                         active=active.get((family, proto.value, port), 0))
        if not found:
            row.problem = "not resolved yet" if exact is None else "missing in the kernel"
        elif exact is not None and found != [exact]:
            row.problem = f"the kernel sends it to {', '.join(found)}"
        if row.problem:
            problems.append(f"{proto.value} port {port} (IPv{family}): {row.problem}")
        rules.append(row)
    return {"present": present}, rules, problems


def collect(
    cfg: config.Config,
    *,
    runner: nft.Nft | None = None,
    xtables: iptables.Iptables | None = None,
    read_links: Callable[[], state.Snapshot] = observe.read_snapshot,
    tracker: conntrack.Conntrack | None = None,
) -> Report:
    """Read the kernel and compare it with ``cfg``."""
    tracker = tracker or conntrack.ConntrackTool()
    interfaces, problems = _interfaces(cfg, read_links)
    sample = _sample(cfg, tracker)
    active = dict(sample.active) if sample is not None else {}
    try:
        if cfg.backend is config.Backend.NFTABLES:
            runner = runner or nft.NftCommand()
            text = runner.list_table_text()
            state, rules, found = collect_nftables(cfg, text, active)
        else:
            xtables = xtables or iptables.IptablesCommand()
            dumps = {f: xtables.save(f, "nat") + xtables.save(f, "filter") for f in cfg.families()}
            state, rules, found = collect_iptables(cfg, dumps, active)
    except errors.KernelError as err:
        state, rules, found = {"present": None}, [], [str(err)]
    state["backend"] = cfg.backend.value
    return Report(
        _configuration(cfg), interfaces, state, rules, problems + found,
        port_space_rows(sample), capacity.warnings(cfg, sample),
    )


def to_json(report: Report) -> str:
    """The report as one JSON document (``--json``)."""
    data = {
        "matches": report.matches,
        "problems": report.problems,
        "configuration": report.configuration,
        "interfaces": report.interfaces,
        "ruleset": report.ruleset,
        "rules": [dataclasses.asdict(r) for r in report.rules],
        "port_space": report.port_space,
        "warnings": report.warnings,
    }
    return json.dumps(data, indent=2)


def _number(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def show(report: Report, console: Console) -> None:
    """The report as tables on a terminal."""
    verdict = (
        "[green]the kernel matches the configuration[/]"
        if report.matches
        else f"[red]the kernel does not match the configuration ({len(report.problems)} "
        "problem(s))[/]"
    )
    console.print(f"[bold]egress-router status[/]: {verdict}")
    settings = Table(title="configuration", show_header=False)
    settings.add_column("setting")
    settings.add_column("value")
    for name, value in report.configuration.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        settings.add_row(name.replace("_", " "), shown or "-")
    console.print(settings)
    links = Table(title="interfaces, addresses, routes")
    links.add_column("plan step")
    links.add_column("state")
    for row in report.interfaces:
        links.add_row(row["step"], "[green]ok[/]" if row["ok"] else f"[red]{row['problem']}[/]")
    console.print(links)
    rules = Table(title=f"rules ({report.ruleset.get('backend', '?')})")
    for column in ("port", "proto", "family", "destination", "kernel sends to", "connections",
                   "packets", "bytes", "live", "state"):
        rules.add_column(column, justify="right" if column in (
            "port", "connections", "packets", "bytes", "live") else "left")
    for rule in report.rules:
        rules.add_row(
            rule.port, rule.protocol, rule.family, rule.destination,
            ", ".join(rule.kernel) or "-", _number(rule.connections), _number(rule.packets),
            _number(rule.bytes), _number(rule.active),
            "[green]ok[/]" if rule.problem is None else f"[red]{rule.problem}[/]",
        )
    console.print(rules)
    if report.port_space:
        ports = Table(title="NAT port space, busiest destinations (TIME_WAIT included)")
        for column in ("destination", "proto", "source", "ports in use", "of", "used"):
            ports.add_column(column, justify="right" if column in (
                "ports in use", "of", "used") else "left")
        for row in report.port_space:
            share = row["in_use"] / row["capacity"]
            used = f"{share:.0%}" if share < capacity.WARN_RATIO else f"[yellow]{share:.0%}[/]"
            ports.add_row(row["destination"], row["protocol"], row["source"],
                          f"{row['in_use']:,}", f"{row['capacity']:,}", used)
        console.print(ports)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    for problem in report.problems:
        console.print(f"[red]problem:[/] {problem}", highlight=False)

