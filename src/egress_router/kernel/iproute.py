"""Execute interface plan steps with iproute2's ``ip -batch``, worked out from one snapshot.

The waiting process repairs drift (a deleted route or address, a link set
down, a policy rule gone) within about a second of the kernel's change event.
It never loads pyroute2 (about 20 MiB resident, see `egress_router.kernel.observe`),
and a child process that imports it costs ~0.4 s on an idle machine and over
a second on a busy one, most of the repair budget. ``ip``, which the reads
use already (``ip -j``), takes a few milliseconds: every step's commands go
into one ``ip -batch`` per address family (``-4``/``-6`` are global options
of a batch, not of its lines).

The commands converge like `netlink.PyrouteNetlink`'s steps: replaces, and
deletes of what the snapshot shows is in the way (stale addresses, other
default routes, rules that are not ours). The snapshot is the one `drift`
just compared, read right before. A delete that finds its object already
gone is no failure (someone was faster); any other refusal names its step.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from egress_router.core import plan, state
from egress_router.kernel import errors, netlink

IP_TIMEOUT = 10.0
# What a delete answers when its object is gone already (ESRCH, EADDRNOTAVAIL, ENOENT).
_GONE = ("No such process", "Cannot assign requested address", "No such file or directory")
_FAILED = re.compile(r"^Command failed -:(\d+)$")


@dataclass(frozen=True)
class Command:
    """One line of a batch, the step it serves, and whether it may find nothing to delete."""

    family: int
    line: str
    step: plan.Step
    delete: bool = False


def commands(steps: Sequence[plan.Step], snapshot: state.Snapshot) -> list[Command]:
    """The ``ip`` batch lines that bring ``steps`` about, given what ``snapshot`` holds.

    `plan.EnableForwarding` and `plan.SetSysctls` are /proc writes, not ``ip``
    commands: they are refused here (the caller writes them itself).
    """
    out: list[Command] = []
    for step in steps:
        if isinstance(step, plan.LinkUp):
            family = out[-1].family if out else 4
            out.append(Command(family, f"link set dev {step.ifname} up", step))
        elif isinstance(step, plan.SetAddress):
            out += _address(step, snapshot)
        elif isinstance(step, plan.RemoveAddresses):
            out += [
                Command(step.family, f"address del {a.interface.with_prefixlen} dev {step.ifname}",
                        step, delete=True)
                for a in _globals(snapshot, step.ifname, step.family)
            ]
        elif isinstance(step, plan.KeepPodReturnPath):
            out += _return_path(step, snapshot)
        elif isinstance(step, plan.SetRoute):
            out += _route(step, snapshot)
        else:
            raise ValueError(f"cannot run {step.describe()} through ip: it is a sysctl")
    return out


def _globals(snapshot: state.Snapshot, ifname: str, family: int) -> list[state.Address]:
    link = snapshot.link(ifname)
    if link is None:
        return []
    return [
        a for a in snapshot.addresses
        if a.index == link.index and a.scope == state.RT_SCOPE_UNIVERSE
        and a.interface.version == family
    ]


def _address(step: plan.SetAddress, snapshot: state.Snapshot) -> list[Command]:
    family = step.interface.version
    out = [
        Command(family, f"address del {a.interface.with_prefixlen} dev {step.ifname}", step,
                delete=True)
        for a in _globals(snapshot, step.ifname, family)
        if a.interface not in step.wanted()
    ]
    # nodad: the address is reserved for us; duplicate address detection would only
    # leave it "tentative" (unusable as a source) for a second or more.
    nodad = " nodad" if family == 6 else ""
    out.append(Command(
        family, f"address replace {step.interface.with_prefixlen} dev {step.ifname}{nodad}", step
    ))
    return out


def _name(snapshot: state.Snapshot, index: int | None) -> str | None:
    return next((link.name for link in snapshot.links if link.index == index), None)


def _route(step: plan.SetRoute, snapshot: state.Snapshot) -> list[Command]:
    family = step.destination.version
    link = snapshot.link(step.ifname)
    out: list[Command] = []
    if step.is_default:
        for route in snapshot.routes:
            if (route.family != family or route.table != state.MAIN_TABLE
                    or route.dst.prefixlen != 0 or route.kind != state.RTN_UNICAST):
                continue
            if link is not None and route.gateway == step.gateway and route.oif == link.index:
                continue
            via = f" via {route.gateway}" if route.gateway is not None else ""
            dev = _name(snapshot, route.oif)
            out.append(Command(family, f"route del default{via}"
                               f"{f' dev {dev}' if dev else ''} table main", step, delete=True))
    dst = "default" if step.is_default else step.destination.with_prefixlen
    via = f" via {step.gateway}" if step.gateway is not None else " scope link"
    # proto static: what pyroute2 (init, the CNI plugin) gives its routes, so either path
    # leaves the same kernel state.
    out.append(Command(
        family, f"route replace {dst}{via} dev {step.ifname} proto static table main", step
    ))
    return out


def _return_path(step: plan.KeepPodReturnPath, snapshot: state.Snapshot) -> list[Command]:
    family = step.family
    pod = snapshot.link(step.pod_ifname)
    if pod is None:
        return []
    out: list[Command] = []
    # The pod's own default route: in main on the first run, in our table on re-runs
    # (by then main's default points at the egress gateway, and our table is left alone).
    gateway = next((
        r.gateway for r in snapshot.routes
        if r.family == family and r.table == state.MAIN_TABLE and r.dst.prefixlen == 0
        and r.oif == pod.index and r.gateway is not None
    ), None)
    if gateway is not None:
        out.append(Command(family, f"route replace default via {gateway} dev {step.pod_ifname} "
                           f"proto static table {plan.POD_TABLE}", step))
    sources = sorted(str(a.interface.ip) for a in _globals(snapshot, step.pod_ifname, family))
    wanted = set(state.pod_return_rules(step, sources))
    present = {rule for fam, rule in snapshot.rules if fam == family}
    out += [Command(family, "rule del " + state.rule_selector(rule), step, delete=True)
            for rule in sorted(present - wanted, key=_order)]
    out += [Command(family, "rule add " + state.rule_selector(rule), step)
            for rule in sorted(wanted - present, key=_order)]
    return out


def _order(rule: state.RuleKey) -> tuple[int, str, str]:
    return rule[0], rule[1] or "", rule[2] or ""




def run(steps: Sequence[plan.Step], snapshot: state.Snapshot) -> None:
    """Bring ``steps`` about (`commands`), one ``ip -batch`` per run of one family.

    Raises `netlink.KernelRefusedError` naming the first step the kernel
    refused; the lines after it still run (``-force``), which only helps: each
    converges on its own, and the next reconcile sees what is left.
    """
    batch: list[Command] = []
    for command in commands(steps, snapshot):
        if batch and batch[-1].family != command.family:
            _run_batch(batch)
            batch = []
        batch.append(command)
    if batch:
        _run_batch(batch)


def _run_batch(batch: Sequence[Command]) -> None:
    family = batch[0].family
    text = "".join(c.line + "\n" for c in batch)
    try:
        done = subprocess.run(
            ["ip", f"-{family}", "-force", "-batch", "-"], input=text, capture_output=True,
            text=True, timeout=IP_TIMEOUT, check=False,
        )
    except FileNotFoundError:
        raise netlink.KernelRefusedError(
            "cannot run ip: install iproute2", errors.Kind.TOOL_MISSING
        ) from None
    except subprocess.TimeoutExpired:
        raise netlink.KernelRefusedError(
            f"cannot {batch[0].step.describe()}: ip gave no answer within {IP_TIMEOUT:g}s",
            errors.Kind.TIMED_OUT,
        ) from None
    except OSError as err:
        raise netlink.KernelRefusedError(f"cannot run ip: {err.strerror or err}") from None
    if done.returncode == 0:
        return
    message: list[str] = []
    for raw in done.stderr.splitlines():
        line = raw.strip()
        failed = _FAILED.match(line)
        if failed is None:
            if line:
                message.append(line)
            continue
        number, why = int(failed.group(1)), "; ".join(message) or "refused"
        message = []
        if not 1 <= number <= len(batch):
            continue
        command = batch[number - 1]
        if command.delete and any(gone in why for gone in _GONE):
            continue  # gone already: what the delete wanted
        raise netlink.KernelRefusedError(
            f"cannot {command.step.describe()}: ip {command.line}: {why}"
        )
    if message:  # a failure ip did not attribute to a line
        raise netlink.KernelRefusedError(
            f"cannot {batch[0].step.describe()}: ip: {'; '.join(message)}"
        )
