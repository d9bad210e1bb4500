"""Read a network namespace back into a `state.Snapshot`, and change interfaces with ``ip``.

The waiting container checks every few seconds that the kernel still holds
what `plan.plan_interfaces` asked for: someone may have taken the macvlan
down, deleted the default route or the reserved address. pyroute2, which
executes the plan, costs about 23 MiB of resident memory once imported,
which alone would break the waiting process's 40 MiB budget. So reads go
through iproute2's JSON output (``ip -j addr``, ``route``, ``rule``; parsed in
`egress_router.core.listing`), a well-kept tool already in the image, and
writes through the same tool (``ip -batch``, `egress_router.kernel.iproute`).
`read_snapshot_in` reads a pod's namespace the same way (CNI CHECK);
`egress_router.core.drift` compares.

`CheckedNetlink` puts the two together behind the engine's `netlink.Netlink`
protocol: a step that already holds is skipped, and a step that must change
becomes ``ip`` commands worked out from the snapshot just read, so the
long-running process never loads pyroute2 at all. A repair costs one snapshot
and one ``ip`` process per address family, a few milliseconds (a child process
importing pyroute2 took 0.4 s idle and over a second on a loaded machine).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from egress_router.core import drift, listing, plan, ruleset, state
from egress_router.kernel import errors, iproute, netlink, netns

IP_TIMEOUT = 10.0
NFT_TIMEOUT = 30.0


class ReadError(errors.KernelError):
    """The kernel's state could not be read (the message says which and why)."""

    default_kind = errors.Kind.READ_FAILED


def _ip_json(*args: str) -> list[dict[str, Any]]:
    try:
        done = subprocess.run(
            ["ip", "-j", *args], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise ReadError("cannot run ip: install iproute2", errors.Kind.TOOL_MISSING) from None
    except subprocess.TimeoutExpired:
        raise ReadError(
            f"cannot run ip {' '.join(args)}: no answer", errors.Kind.TIMED_OUT
        ) from None
    except OSError as err:
        raise ReadError(f"cannot run ip {' '.join(args)}: {err.strerror or err}") from None
    if done.returncode != 0:
        raise ReadError(f"cannot run ip {' '.join(args)}: {done.stderr.strip()}")
    parsed: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    return parsed


def read_snapshot(*, table: bool = False) -> state.Snapshot:
    """Read the current network namespace: links, addresses, routes, our rules, forwarding.

    Through iproute2's JSON output rather than pyroute2: importing pyroute2
    costs the long-running process about 23 MiB of resident memory, and a
    read needs none of it. With ``table``, also ``nft list table`` of our
    table (CNI CHECK compares it; `wait` compares cheaper fingerprints).
    """
    links, addresses = listing.parse_ip_addr(_ip_json("-d", "addr", "show"))
    index_of = {link.name: link.index for link in links}
    routes = [
        route
        for family, flag in ((4, "-4"), (6, "-6"))
        for route in listing.parse_ip_route(
            _ip_json(flag, "route", "show", "table", "main"), family, index_of
        )
    ]
    rules = [
        rule
        for family, flag in ((4, "-4"), (6, "-6"))
        for rule in listing.parse_ip_rule(_ip_json(flag, "rule", "show"), family)
    ]
    return state.Snapshot(
        tuple(links), tuple(addresses), tuple(routes), tuple(rules),
        forwarding=read_forwarding(), table=_nft_table() if table else None,
        sysctls=read_sysctls(links),
    )


def interface_networks(
    ifname: str, snapshot: state.Snapshot | None = None
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The on-link networks of ``ifname``'s global addresses (the pod network, seen from here)."""
    if snapshot is None:
        try:
            links, addresses = listing.parse_ip_addr(_ip_json("addr", "show", "dev", ifname))
        except ReadError:
            return ()  # no such interface (or no ip): nothing known, nothing refused
        snapshot = state.Snapshot(tuple(links), tuple(addresses), ())
    link = snapshot.link(ifname)
    if link is None:
        return ()
    return tuple(dict.fromkeys(
        a.interface.network
        for a in snapshot.addresses
        if a.index == link.index and a.scope == state.RT_SCOPE_UNIVERSE
    ))


def read_snapshot_in(path: str, *, table: bool = True, timeout: float = 30.0) -> state.Snapshot:
    """`read_snapshot` inside the network namespace at ``path`` (a forked child enters it).

    Raises `netns.NamespaceGoneError` when there is no such namespace.
    """
    return netns.run(path, lambda: read_snapshot(table=table), timeout=timeout)


def read_forwarding() -> tuple[tuple[int, bool], ...]:
    """The forwarding sysctl of each family this namespace has (IPv6 may be off)."""
    values = []
    for family in (4, 6):
        try:
            with open(state.forwarding_path(family), encoding="ascii") as fh:
                values.append((family, fh.read().strip() == "1"))
        except OSError:
            continue
    return tuple(values)


def read_sysctls(links: Sequence[state.Link]) -> tuple[tuple[str, str], ...]:
    """The hardening sysctls (`plan.hardening_keys`) of every link: ``missing`` when a key is
    absent; keys of a family the kernel does not have at all are left out."""
    found: list[tuple[str, str]] = []
    for link in links:
        for key in plan.hardening_keys(link.name):
            path = netlink.sysctl_path(key)
            if path is None:
                continue
            try:
                found.append((key, path.read_text().strip()))
            except OSError:
                found.append((key, "missing"))
    return tuple(dict(found).items())


def _nft_table() -> str | None:
    binary = shutil.which("nft")
    if binary is None:
        return None
    try:
        done = subprocess.run(
            [binary, "list", "table", ruleset.TABLE_FAMILY, ruleset.TABLE],
            capture_output=True, text=True, timeout=NFT_TIMEOUT, check=False,
        )
    except subprocess.TimeoutExpired:
        raise ReadError(
            "cannot list the nftables table: no answer", errors.Kind.TIMED_OUT
        ) from None
    return done.stdout if done.returncode == 0 else None


class CheckedNetlink:
    """The engine's `netlink.Netlink`: reads here, changes through ``ip -batch`` (`iproute`)."""

    def has_link(self, ifname: str) -> bool:
        return read_snapshot().link(ifname) is not None

    def link_info(self, ifname: str) -> tuple[int, str]:
        link = read_snapshot().link(ifname)
        if link is None:
            raise netlink.KernelRefusedError(
                f"cannot find interface {ifname!r} in this network namespace; "
                "check EGRESS_INTERFACE / EGRESS_POD_INTERFACE"
            )
        return link.index, link.mac

    def apply(self, step: plan.Step) -> None:
        snapshot = read_snapshot()
        if drift.step_problem(step, snapshot) is None:
            return
        if not isinstance(step, plan.EnableForwarding) and snapshot.link(step.ifname) is None:
            raise netlink.KernelRefusedError(
                f"cannot {step.describe()}: interface {step.ifname} does not exist in this "
                "network namespace; the platform (or the CNI plugin) has to create it again"
            )
        if isinstance(step, plan.EnableForwarding | plan.SetSysctls):
            netlink.PyrouteNetlink().apply(step)  # /proc writes: no pyroute2 involved
            return
        iproute.run([step], snapshot)

    def prepare(self, steps: Sequence[plan.Step]) -> None:
        """Bring every drifted step but forwarding in place at once (one ``ip`` batch).

        Forwarding is left to the engine, which switches it on only after the
        ruleset is in place; the sysctls are written here, first, as the plan orders.
        """
        snapshot = read_snapshot()
        due = [
            step for step in steps
            if not isinstance(step, plan.EnableForwarding)
            and snapshot.link(step.ifname) is not None  # a missing one: the engine says so
            and drift.step_problem(step, snapshot) is not None
        ]
        for step in due:
            if isinstance(step, plan.SetSysctls):
                netlink.write_sysctls(step)
        iproute.run([step for step in due if not isinstance(step, plan.SetSysctls)], snapshot)
