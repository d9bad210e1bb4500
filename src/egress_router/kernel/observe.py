"""Read a network namespace back into a `state.Snapshot`, and change interfaces in a child.

The waiting container checks every few seconds that the kernel still holds
what `plan.plan_interfaces` asked for: someone may have taken the macvlan
down, deleted the default route or the reserved address. pyroute2, which
executes the plan, costs about 23 MiB of resident memory once imported,
which alone would break the waiting process's 40 MiB budget. So reads go
through iproute2's JSON output (``ip -j addr``, ``route``, ``rule``; parsed in
`egress_router.core.listing`), a well-kept tool already in the image, and
writes through pyroute2 in a child. `read_snapshot_in` reads a pod's
namespace the same way (CNI CHECK); `egress_router.core.drift` compares.

`CheckedNetlink` puts the two together behind the engine's `netlink.Netlink`
protocol: a step that already holds is skipped, and a step that must change
is executed by `netlink.PyrouteNetlink` in a short-lived child process
(``python -m egress_router.kernel.observe``), so the long-running process never
loads pyroute2 at all. Changes are rare (start-up, repairs); a child costs
a few tenths of a second each time, and nothing in between.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from egress_router.core import drift, listing, plan, ruleset, state
from egress_router.kernel import errors, netlink, netns

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


def encode_step(step: plan.Step) -> dict[str, Any]:
    """A plan step as JSON-able data (for the child process)."""
    if isinstance(step, plan.EnableForwarding):
        return {"step": "forwarding", "family": step.family}
    if isinstance(step, plan.SetSysctls):
        return {"step": "sysctls", "ifname": step.ifname, "values": [list(v) for v in step.values]}
    if isinstance(step, plan.RemoveAddresses):
        return {"step": "no-addresses", "ifname": step.ifname, "family": step.family}
    if isinstance(step, plan.LinkUp):
        return {"step": "link", "ifname": step.ifname}
    if isinstance(step, plan.SetAddress):
        return {"step": "address", "ifname": step.ifname, "interface": str(step.interface),
                "pool": [str(i) for i in step.pool]}
    if isinstance(step, plan.KeepPodReturnPath):
        return {"step": "return-path", "family": step.family, "pod": step.pod_ifname,
                "egress": step.egress_ifname}
    gateway = None if step.gateway is None else str(step.gateway)
    return {"step": "route", "ifname": step.ifname, "destination": str(step.destination),
            "gateway": gateway}


def decode_step(data: dict[str, Any]) -> plan.Step:
    """The inverse of `encode_step`."""
    kind = data["step"]
    if kind == "forwarding":
        return plan.EnableForwarding(int(data["family"]))
    if kind == "sysctls":
        values = tuple((str(k), str(v)) for k, v in data["values"])
        return plan.SetSysctls(str(data["ifname"]), values)
    if kind == "no-addresses":
        return plan.RemoveAddresses(str(data["ifname"]), int(data["family"]))
    if kind == "link":
        return plan.LinkUp(str(data["ifname"]))
    if kind == "address":
        pool = tuple(ipaddress.ip_interface(i) for i in data.get("pool", ()))
        return plan.SetAddress(
            str(data["ifname"]), ipaddress.ip_interface(data["interface"]), pool
        )
    if kind == "return-path":
        return plan.KeepPodReturnPath(int(data["family"]), str(data["pod"]), str(data["egress"]))
    gateway = data.get("gateway")
    return plan.SetRoute(
        str(data["ifname"]),
        ipaddress.ip_network(data["destination"]),
        None if gateway is None else ipaddress.ip_address(gateway),
    )


CHILD_TIMEOUT = 60.0


def apply_in_child(steps: Sequence[plan.Step]) -> None:
    """Execute ``steps`` in order through pyroute2 in a child process (same namespace).

    Raises `netlink.KernelRefusedError` with the child's message when a step
    fails; the steps after it are not attempted.
    """
    if not steps:
        return
    payload = json.dumps([encode_step(s) for s in steps])
    try:
        done = subprocess.run(
            [sys.executable, "-m", "egress_router.kernel.observe"],
            input=payload,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise netlink.KernelRefusedError(
            "cannot run the interface helper "
            f"({sys.executable} -m egress_router.kernel.observe): {err}"
        ) from None
    if done.returncode != 0:
        message = done.stderr.strip().splitlines()
        raise netlink.KernelRefusedError(
            message[-1] if message else f"interface helper exit status {done.returncode}"
        )


def main() -> int:
    """The child: read steps as JSON on stdin, execute them, report the first failure."""
    writer = netlink.PyrouteNetlink()
    try:
        for data in json.load(sys.stdin):
            writer.apply(decode_step(data))
    except (netlink.KernelRefusedError, ValueError, KeyError) as err:
        print(err, file=sys.stderr)
        return 3
    return 0


class CheckedNetlink:
    """The engine's `netlink.Netlink`: reads here, changes through pyroute2 in a child."""

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
        apply_in_child([step])

    def prepare(self, steps: Sequence[plan.Step]) -> None:
        """Bring every drifted step but forwarding in place at once (one child).

        Forwarding is left to the engine, which switches it on only after the
        ruleset is in place.
        """
        snapshot = read_snapshot()
        apply_in_child([
            step for step in steps
            if not isinstance(step, plan.EnableForwarding)
            and snapshot.link(step.ifname) is not None  # a missing one: the engine says so
            and drift.step_problem(step, snapshot) is not None
        ])


if __name__ == "__main__":
    sys.exit(main())
