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

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from egress_router.core import listing, plan, ruleset, state

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
        return f"interface {step.ifname} does not exist"
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
