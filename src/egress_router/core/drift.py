"""One comparison: what the interface plan and the ruleset want, against a `state.Snapshot`.

`wait` repairs, `status` reports and CNI CHECK fails from this one list of problems, as the CNI
reference plugins share ``ip.ValidateExpected*``: before it, each had its own copy, and the copies
disagreed (CHECK never looked at the pod-return policy rules that `wait` repairs). A problem
names the plan step that would repair it, so `wait` can execute exactly that step; the ruleset
and the macvlan's shape (CHECK only) have no such step.

Pure: the snapshot is read by ``egress_router.kernel.observe``, the expected ruleset listing is
rendered by the caller.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from egress_router.core import config, listing, nftables, plan, ruleset, state

MAX_REPORTED = 20
TABLE_NAME = f"{ruleset.TABLE_FAMILY} {ruleset.TABLE}"


@dataclass(frozen=True)
class Problem:
    """One difference, in words a person can act on; ``step`` repairs it (None: none does)."""

    reason: str
    step: plan.Step | None = None

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class MacvlanShape:
    """What CHECK knows about the macvlan beyond the plan: mode, MTU, the MAC ADD reported."""

    ifname: str
    mode: str
    mtu: int | None = None
    mac: str | None = None
    parent: int | None = None  # the master's index on the node (None: the master is gone)
    master: str | None = None


# ----------------------------------------------------------------------------- the plan


def step_problem(step: plan.Step, snapshot: state.Snapshot) -> str | None:
    """Why ``step`` does not hold in ``snapshot`` (None when it does)."""
    if isinstance(step, plan.EnableForwarding):
        return None if snapshot.forwarding_on(step.family) else f"{step.sysctl} is not 1"
    link = snapshot.link(step.ifname)
    if link is None:
        # A missing interface is the link step's problem (and repair), named once.
        if isinstance(step, plan.SetSysctls | plan.RemoveAddresses):
            return None
        return f"interface {step.ifname} does not exist"
    if isinstance(step, plan.SetSysctls):
        return _sysctl_problem(step, snapshot)
    if isinstance(step, plan.RemoveAddresses):
        extra = [
            str(a.interface)
            for a in snapshot.addresses
            if a.index == link.index
            and a.interface.version == step.family
            and a.scope == state.RT_SCOPE_UNIVERSE
        ]
        if extra:
            return (f"{step.ifname} has IPv{step.family} addresses, which is not configured: "
                    f"{', '.join(extra)}")
        return None
    if isinstance(step, plan.LinkUp):
        return None if link.up else f"interface {step.ifname} is down"
    if isinstance(step, plan.SetAddress):
        wanted = step.interface
        present = [
            a.interface
            for a in snapshot.addresses
            if a.index == link.index
            and a.interface.version == wanted.version
            and a.scope == state.RT_SCOPE_UNIVERSE
        ]
        if wanted not in present:
            return f"address {wanted} is missing on {step.ifname}"
        extra = [str(a) for a in present if a not in step.wanted()]
        return f"{step.ifname} has other addresses: {', '.join(extra)}" if extra else None
    if isinstance(step, plan.KeepPodReturnPath):
        return _return_path_problem(step, link, snapshot)
    return _route_problem(step, link, snapshot)


def _sysctl_problem(step: plan.SetSysctls, snapshot: state.Snapshot) -> str | None:
    if snapshot.sysctls is None:
        return None
    observed = dict(snapshot.sysctls)
    wrong = [
        f"{key.replace('/', '.')} is {observed[key]}, not {value}"
        for key, value in step.values
        if key in observed and observed[key] != value  # absent: the kernel lacks the family
    ]
    return "; ".join(wrong) or None


def _return_path_problem(
    step: plan.KeepPodReturnPath, pod: state.Link, snapshot: state.Snapshot
) -> str | None:
    sources = sorted(
        str(a.interface.ip)
        for a in snapshot.addresses
        if a.index == pod.index and a.interface.version == step.family
        and a.scope == state.RT_SCOPE_UNIVERSE
    )
    wanted = state.pod_return_rules(step, sources)
    present = [rule for family, rule in snapshot.rules if family == step.family]
    missing = [r for r in wanted if r not in present]
    unexpected = [r for r in present if r not in wanted]
    if not missing and not unexpected:
        return None
    parts = [f"missing {state.describe_rule(step.family, r)}" for r in missing]
    parts += [f"unexpected {state.describe_rule(step.family, r)}" for r in unexpected]
    return (
        f"IPv{step.family} policy rules for replies to the pod network differ: "
        + "; ".join(parts)
    )


def _route_problem(step: plan.SetRoute, link: state.Link, snapshot: state.Snapshot) -> str | None:
    family = step.destination.version
    if step.is_default:
        defaults = [
            r
            for r in snapshot.routes
            if r.family == family and r.dst.prefixlen == 0 and r.kind == state.RTN_UNICAST
        ]
        good = [r for r in defaults if r.gateway == step.gateway and r.oif == link.index]
        if not good:
            return f"no IPv{family} default route via {step.gateway} dev {step.ifname}"
        if len(defaults) > 1:
            return f"{len(defaults) - 1} other IPv{family} default route(s)"
        return None
    found = any(
        r.dst == step.destination and r.oif == link.index and r.gateway == step.gateway
        for r in snapshot.routes
    )
    return None if found else f"route {step.destination} dev {step.ifname} is missing"


def interface_problems(steps: Iterable[plan.Step], snapshot: state.Snapshot) -> list[Problem]:
    """The steps of the interface plan that ``snapshot`` does not hold, each with the reason."""
    found: list[Problem] = []
    for step in steps:
        reason = step_problem(step, snapshot)
        if reason is not None:
            found.append(Problem(reason, step))
    return found


# ----------------------------------------------------------------------------- the macvlan


def macvlan_problems(shape: MacvlanShape, snapshot: state.Snapshot) -> list[Problem]:
    """How the macvlan differs from what ADD made (a missing link is the plan's problem)."""
    found: list[Problem] = []
    if shape.master is not None and shape.parent is None:
        found.append(Problem(f"master interface {shape.master} no longer exists on the node"))
    link = snapshot.link(shape.ifname)
    if link is None:
        return found
    name = shape.ifname
    if link.kind != "macvlan":
        found.append(Problem(f"interface {name} is a {link.kind or 'plain'} link, not a macvlan"))
    elif link.mode != shape.mode:
        found.append(Problem(f"macvlan {name} is in {link.mode} mode, expected {shape.mode}"))
    if shape.mac and link.mac.lower() != shape.mac.lower():
        found.append(Problem(f"interface {name} has MAC {link.mac}, but ADD reported {shape.mac}"))
    if shape.mtu is not None and link.mtu != shape.mtu:
        found.append(Problem(f"interface {name} has MTU {link.mtu}, expected {shape.mtu}"))
    if shape.parent is not None and link.parent is not None and link.parent != shape.parent:
        found.append(Problem(f"macvlan {name} is not on master {shape.master}"))
    return found


# ----------------------------------------------------------------------------- the ruleset


def _comparable(text: str) -> dict[str, tuple[list[str], set[str]]]:
    """Each block's statements in order and its elements as a set, without counter values."""
    return {
        key: (
            [listing.strip_counters(line) for line in block.lines],
            {listing.strip_counters(e) for e in block.elements},
        )
        for key, block in listing.parse_table(text).blocks.items()
    }


def ruleset_problems(expected: str, observed: str | None) -> list[Problem]:
    """Every difference between two ``nft list table`` texts of our table, in nft's words.

    Both sides should come from the same nft binary (CHECK lists the expected
    ruleset applied in a scratch namespace), so formatting and element order
    agree and only real differences remain.
    """
    if observed is None:
        return [Problem(f"nftables table {TABLE_NAME} is missing")]
    want = _comparable(expected)
    have = _comparable(observed)
    found: list[str] = []
    for key, (lines, elements) in want.items():
        if key not in have:
            found.append(f"nftables {key} is missing")
            continue
        other_lines, other_elements = have[key]
        missing = Counter(lines) - Counter(other_lines)
        extra = Counter(other_lines) - Counter(lines)
        found += [f"nftables {key}: missing {line!r}" for line in missing.elements()]
        found += [f"nftables {key}: unexpected {line!r}" for line in extra.elements()]
        if not missing and not extra and lines != other_lines:
            found.append(f"nftables {key}: the rules are in a different order")
        gone, new = sorted(elements - other_elements), sorted(other_elements - elements)
        found += [f"nftables {key}: missing element {e!r}" for e in gone]
        found += [f"nftables {key}: unexpected element {e!r}" for e in new]
    found += [f"nftables {key} is unexpected" for key in have if key not in want]
    return [Problem(reason) for reason in found]


# ----------------------------------------------------------------------------- rule by rule


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


_COUNTED = (
    ruleset.CHAIN_PREROUTING, ruleset.CHAIN_POSTROUTING, ruleset.CHAIN_FORWARD,
    ruleset.CHAIN_INPUT,
)


def _rule_counts(text: str) -> dict[str, int]:
    """The rules of the counted chains in the kernel's listing (the hook line is no rule)."""
    chains = listing.parse_table(text).of_kind("chain")
    return {
        name: len([line for line in block.lines if not line.startswith("type ")])
        for name, block in chains.items()
        if name in _COUNTED
    }


def _expected_counts(cfg: config.Config) -> dict[str, int]:
    """The same counts from our table's model, not from a re-parse of our own text."""
    return {
        obj.name: len(obj.rules)
        for obj in ruleset.table_of(cfg).objects
        if isinstance(obj, nftables.Chain) and obj.name in _COUNTED
    }


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


def nftables_rules(
    cfg: config.Config,
    text: str | None,
    active: dict[tuple[int, str, int], int],
) -> tuple[dict[str, Any], list[RuleStatus], list[str]]:
    """Each configured rule as the ``nft list table`` text holds it: targets, counters, problems."""
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
        conns = listing.lookup(counters, ruleset.conns_set(family), key)
        traffic = listing.lookup(counters, ruleset.traffic_set(family), key)
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
    expected = _expected_counts(cfg)
    actual = _rule_counts(text)
    chains: dict[str, Any] = {}
    for chain, count in expected.items():
        have = actual.get(chain)
        chains[chain] = have
        if have is None:
            problems.append(f"chain {chain} is missing")
        elif chain != ruleset.CHAIN_PREROUTING and have != count:
            problems.append(f"chain {chain} has {have} rules, expected {count}")
    snat = {
        ipaddress.ip_address(address)
        for line in table.lines("chain", ruleset.CHAIN_POSTROUTING)
        for address in listing.snat_addresses(line)
    }
    for source in cfg.sources:
        if source.address not in snat:
            problems.append(f"no SNAT to {source.address}")
    return {"present": True, "chains": chains}, rules, problems


def iptables_rules(
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


# ----------------------------------------------------------------------------- all of it


def compare(
    steps: Iterable[plan.Step],
    snapshot: state.Snapshot,
    *,
    ruleset_listing: str | None = None,
    macvlan: MacvlanShape | None = None,
) -> list[Problem]:
    """Everything that differs, most fundamental first; empty when the kernel is as planned.

    ``ruleset_listing`` (the expected ``nft list table``) is compared with
    ``snapshot.table`` when given; ``macvlan`` adds CHECK's view of the link.
    """
    found = macvlan_problems(macvlan, snapshot) if macvlan is not None else []
    found += interface_problems(steps, snapshot)
    if ruleset_listing is not None:
        found += ruleset_problems(ruleset_listing, snapshot.table)
    return found


def reasons(problems: Iterable[Problem]) -> list[str]:
    """Each distinct reason once, in order (a missing link fails every step on it)."""
    return list(dict.fromkeys(p.reason for p in problems))


def summarise(found: list[str]) -> str:
    """One line (a CNI error's ``msg``): the first differences and how many more."""
    shown = "; ".join(found[:MAX_REPORTED])
    more = len(found) - MAX_REPORTED
    return shown + (f"; and {more} more" if more > 0 else "")
