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
ran. The interfaces and the rules are judged by the comparison `wait`
repairs from (`egress_router.core.drift`); this module only reads and
shows. DNS-named rules are checked for presence (the addresses are whatever
the waiting container last resolved), address rules for their exact target.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from egress_router.core import config, drift, plan, ruleset, state
from egress_router.kernel import conntrack, errors, iptables, nft, observe, vrrp
from egress_router.router import capacity

EXIT_DRIFT = 4



@dataclass
class Report:
    """Everything ``status`` shows; ``matches`` is the verdict."""

    configuration: dict[str, Any]
    interfaces: list[dict[str, Any]]
    ruleset: dict[str, Any]
    rules: list[drift.RuleStatus]
    problems: list[str]
    # the NAT's port space to the busiest destinations, and warnings past 80 %
    port_space: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ha: dict[str, Any] | None = None  # EGRESS_ROUTER_HA=vrrp: the role (see `ha_status`)
    proxy: dict[str, Any] | None = None  # the proxy modes: the proxy container's readiness

    @property
    def matches(self) -> bool:
        return not self.problems


def _configuration(cfg: config.Config) -> dict[str, Any]:
    return {
        "mode": cfg.mode.value if not cfg.mode.redirects else "redirect",
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


def collect(
    cfg: config.Config,
    *,
    runner: nft.Nft | None = None,
    xtables: iptables.Iptables | None = None,
    read_links: Callable[[], state.Snapshot] = observe.read_snapshot,
    tracker: conntrack.Conntrack | None = None,
    read_ha: Callable[[config.Config], dict[str, Any] | None] | None = None,
    ask_proxy: Callable[[int], str] | None = None,
) -> Report:
    """Read the kernel and compare it with ``cfg``."""
    read_ha = read_ha or _read_ha
    tracker = tracker or conntrack.ConntrackTool()
    interfaces, problems = _interfaces(cfg, read_links)
    sample = _sample(cfg, tracker)
    active = dict(sample.active) if sample is not None else {}
    try:
        if cfg.backend is config.Backend.NFTABLES:
            runner = runner or nft.NftCommand()
            text = runner.list_table_text()
            state, rules, found = drift.nftables_rules(cfg, text, active)
        else:
            xtables = xtables or iptables.IptablesCommand()
            dumps = {
                f: "".join(xtables.save(f, table) for table in ruleset.IPT_TABLES)
                for f in cfg.families()
            }
            state, rules, found = drift.iptables_rules(cfg, dumps, active)
    except errors.KernelError as err:
        state, rules, found = {"present": None}, [], [str(err)]
    state["backend"] = cfg.backend.value
    ha_state, ha_problems = ha_status(cfg, read_ha)
    proxy = proxy_status(cfg, ask_proxy)
    warnings = capacity.warnings(cfg, sample)
    if proxy is not None and proxy["ready"] is False:
        warnings.append(f"the {cfg.mode.value} container is not ready: {proxy['detail']}")
    return Report(
        _configuration(cfg), interfaces, state, rules, problems + found + ha_problems,
        port_space_rows(sample), warnings, ha_state, proxy,
    )


FOREIGN_REPORTED = 60.0  # seconds a foreign VRRP speaker's last advert is a problem for


def ha_status(
    cfg: config.Config, read: Callable[[config.Config], dict[str, Any] | None]
) -> tuple[dict[str, Any] | None, list[str]]:
    """The HA role: whether the kernel holds the address, and what the wait process reports."""
    if cfg.ha is None:
        return None, []
    reported = read(cfg)
    if reported is None:
        return {"role": "unknown"}, [
            "no HA role reported: the waiting container (keepalived's parent) is not running"
        ]
    problems = []
    if reported.get("role") == "active" and not reported.get("holds_address", True):
        problems.append("HA role is active but the reserved address is not on the interface")
    foreign = reported.get("foreign_speaker")
    if foreign and time.time() - float(foreign.get("last_seen", 0)) <= FOREIGN_REPORTED:
        problems.append(
            f"a foreign VRRP speaker on VRID {reported.get('vrid')}: {foreign.get('reason')} "
            f"(last seen {time.time() - float(foreign['last_seen']):.0f}s ago); VRRP has no "
            "authentication: it can keep both replicas from holding the reserved address"
        )
    return reported, problems


def _read_ha(cfg: config.Config) -> dict[str, Any] | None:
    reported = vrrp.read_state()
    if reported is not None:
        held = vrrp.held_addresses(cfg.egress_interface)
        reported["holds_address"] = all(str(s.address) in held for s in cfg.sources)
    return reported


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
    if report.ha is not None:
        data["ha"] = report.ha
    if report.proxy is not None:
        data["proxy"] = report.proxy
    return json.dumps(data, indent=2)


def proxy_status(
    cfg: config.Config, ask: Callable[[int], str] | None = None
) -> dict[str, Any] | None:
    """The proxy modes: what the proxy container's ``/readyz`` (same pod, same port) says."""
    if cfg.mode.redirects:
        return None
    if not cfg.http_port:
        return {"mode": cfg.mode.value, "ready": None, "detail": "no HTTP port to ask"}
    try:
        answer = (ask or _ask_readyz)(cfg.http_port)
    except OSError as err:
        return {"mode": cfg.mode.value, "ready": False,
                "detail": f"the proxy does not answer on port {cfg.http_port}: {err}"}
    head, _, body = answer.partition("\r\n\r\n")
    ready = head.split(" ", 2)[1:2] == ["200"]
    return {"mode": cfg.mode.value, "ready": ready, "detail": body.strip()}


def _ask_readyz(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
            if sum(map(len, chunks)) > 65536:
                break
    return b"".join(chunks).decode("utf-8", "replace")


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
    if report.ha is not None:
        role = Table(title="high availability (VRRP)", show_header=False)
        role.add_column("what")
        role.add_column("value")
        peer = report.ha.get("peer") or {}
        last = report.ha.get("last_transition")
        for name, value in (
            ("role", report.ha.get("role")),
            ("VRID", report.ha.get("vrid")),
            ("holds the reserved address", report.ha.get("holds_address")),
            ("advert source", report.ha.get("advert_source")),
            ("peer seen", peer.get("address", "none")),
            ("foreign VRRP speaker", (report.ha.get("foreign_speaker") or {}).get(
                "address", "none")),
            ("transitions", report.ha.get("transitions")),
            ("last transition", "-" if last is None else time.strftime(
                "%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(last)))),
        ):
            role.add_row(name, str(value))
        console.print(role)
    if report.proxy is not None:
        ready = report.proxy["ready"]
        shown = "[green]ready[/]" if ready else ("-" if ready is None else "[red]not ready[/]")
        console.print(f"[bold]{report.proxy['mode']} container[/]: {shown} "
                      f"({report.proxy['detail']})", highlight=False)
    for problem in report.problems:
        console.print(f"[red]problem:[/] {problem}", highlight=False)

