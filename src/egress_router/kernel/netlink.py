"""Execute the interface plan through netlink (pyroute2), and a fake for unit tests.

This is one of the two modules that touch the kernel (with `nft`/`iptables`).
Every operation is a replace or a check-then-delete, so running the same plan
again converges instead of failing with "File exists".

pyroute2 is imported on first use, not with this module: it costs about
20 MiB, which the long-running ``wait`` process (it watches kernel state
through the small read-only `observe` module) only pays once it has to
repair something.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from egress_router.core import plan, state
from egress_router.core.state import MAIN_TABLE
from egress_router.kernel import errors

log = logging.getLogger(__name__)

AF_INET = 2
AF_INET6 = 10
SCOPE_UNIVERSE = 0
SCOPE_LINK = 253
IFA_F_NODAD = 0x02
_FAMILY = {4: AF_INET, 6: AF_INET6}


class KernelRefusedError(errors.KernelError):
    """The kernel refused a step of the interface plan (the message says which and why)."""

    default_kind = errors.Kind.NETLINK_REFUSED


class Netlink(Protocol):
    """What the engine needs from the kernel's networking state."""

    def has_link(self, ifname: str) -> bool: ...

    def link_info(self, ifname: str) -> tuple[int, str]:
        """Index and MAC address of ``ifname``."""
        ...

    def apply(self, step: plan.Step) -> None: ...


@dataclass
class FakeNetlink:
    """Records steps instead of executing them (the knftables Fake pattern)."""

    links: dict[str, str] = field(
        default_factory=lambda: {"eth0": "0a:58:0a:80:00:02", "macvlan0": "02:00:c0:a8:0c:63"}
    )
    applied: list[plan.Step] = field(default_factory=list)
    fail_on: type[plan.Step] | None = None

    def has_link(self, ifname: str) -> bool:
        return ifname in self.links

    def link_info(self, ifname: str) -> tuple[int, str]:
        names = sorted(self.links)
        return names.index(ifname) + 2, self.links[ifname]

    def apply(self, step: plan.Step) -> None:
        if self.fail_on is not None and isinstance(step, self.fail_on):
            raise KernelRefusedError(f"cannot {step.describe()}: injected failure")
        self.applied.append(step)


def rule_key(rule: Any) -> state.RuleKey:
    """A pyroute2 rule message as a `RuleKey`."""
    table = rule.get("FRA_TABLE") or rule["table"]
    suppress = rule.get("FRA_SUPPRESS_PREFIXLEN")
    return (
        int(rule.get("FRA_PRIORITY") or 0),
        rule.get("FRA_IIFNAME"),
        rule.get("FRA_SRC"),
        int(table),
        suppress == 0,
    )


def remove_pod_return_path(ipr: Any) -> int:
    """Delete the rules and table of `plan.KeepPodReturnPath` (an undo); returns how many."""
    removed = 0
    for family, default in ((AF_INET, "0.0.0.0/0"), (AF_INET6, "::/0")):
        for rule in ipr.get_rules(family=family):
            priority = rule.get("FRA_PRIORITY") or 0
            if plan.RULE_PRIORITY <= priority <= plan.RULE_PRIORITY + 3:
                # With only a priority, the kernel deletes the first rule that has it.
                ipr.rule("del", family=family, priority=priority)
                removed += 1
        for route in ipr.get_routes(family=family, table=plan.POD_TABLE):
            if route.get("RTA_TABLE") == plan.POD_TABLE and route["dst_len"] == 0:
                ipr.route("del", dst=default, family=family, table=plan.POD_TABLE)
                removed += 1
    return removed


def _rule_selector(iif: str | None, src: str | None, family: int) -> dict[str, Any]:
    if iif is not None:
        return {"iifname": iif}
    if src is not None:
        return {"src": src, "src_len": 32 if family == 4 else 128}
    return {}


def _suppress(suppress: bool) -> dict[str, Any]:
    # pyroute2 spells FRA_SUPPRESS_PREFIXLEN "suppress_prefixlen" (another spelling is
    # silently ignored).
    return {"suppress_prefixlen": 0} if suppress else {}


PROC_SYS = Path("/proc/sys")


def sysctl_path(key: str, root: Path = PROC_SYS) -> Path | None:
    """Where ``key`` (``net/ipv6/conf/x/accept_ra``) lives; None when the kernel has no such
    family at all (``net/ipv6`` missing: IPv6 is off in this kernel, nothing to set)."""
    family_root = root.joinpath(*key.split("/")[:2])
    if not family_root.is_dir():
        return None
    return root / key


def write_sysctls(step: plan.SetSysctls, root: Path = PROC_SYS) -> None:
    """Write the values of ``step`` in order, each only when it differs."""
    for key, value in step.values:
        path = sysctl_path(key, root)
        if path is None:
            continue
        try:
            if path.read_text().strip() != value:
                path.write_text(f"{value}\n")
        except FileNotFoundError:
            raise KernelRefusedError(
                f"cannot set {key.replace('/', '.')}={value}: no such sysctl (does "
                f"interface {step.ifname!r} exist in this network namespace?)"
            ) from None
        except OSError as err:
            raise KernelRefusedError(
                f"cannot set {key.replace('/', '.')}={value}: {err.strerror or err}; the "
                "container needs a writable /proc/sys (privileged, as for ip_forward)"
            ) from None


class PyrouteNetlink:
    """The real kernel, through pyroute2, in the current (or a named) network namespace."""

    def __init__(self, netns: str | None = None) -> None:
        self._netns = netns

    @contextmanager
    def _ipr(self) -> Iterator[Any]:
        from pyroute2.iproute import IPRoute  # noqa: PLC0415 (lazy: see the module docstring)

        ipr = IPRoute(netns=self._netns) if self._netns else IPRoute()
        try:
            yield ipr
        finally:
            ipr.close()

    def _index(self, ipr: Any, ifname: str) -> int:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise KernelRefusedError(
                f"cannot find interface {ifname!r} in this network namespace; "
                "check EGRESS_INTERFACE / EGRESS_POD_INTERFACE and the pod's macvlan annotation"
            )
        return int(found[0])

    def has_link(self, ifname: str) -> bool:
        with self._ipr() as ipr:
            return bool(ipr.link_lookup(ifname=ifname))

    def link_info(self, ifname: str) -> tuple[int, str]:
        with self._ipr() as ipr:
            index = self._index(ipr, ifname)
            link = ipr.get_links(index)[0]
            return index, str(link.get("IFLA_ADDRESS"))

    def apply(self, step: plan.Step) -> None:
        if isinstance(step, plan.SetSysctls):
            write_sysctls(step)  # /proc writes: pyroute2 not needed
            return
        if isinstance(step, plan.EnableForwarding):
            try:
                self._forwarding(step)  # a /proc write: pyroute2 not needed
            except OSError as err:
                raise KernelRefusedError(
                    f"cannot {step.describe()}: {err.strerror or err}"
                ) from None
            return
        from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415 (lazy)

        try:
            with self._ipr() as ipr:
                index = self._index(ipr, step.ifname)
                if isinstance(step, plan.LinkUp):
                    ipr.link("set", index=index, state="up")
                elif isinstance(step, plan.SetAddress):
                    self._address(ipr, index, step)
                elif isinstance(step, plan.KeepPodReturnPath):
                    self._return_path(ipr, index, step)
                elif isinstance(step, plan.RemoveAddresses):
                    self._remove_addresses(ipr, index, step)
                else:
                    self._route(ipr, index, step)
        except NetlinkError as err:
            raise KernelRefusedError(f"cannot {step.describe()}: {err.args[-1]}") from None
        except OSError as err:
            raise KernelRefusedError(f"cannot {step.describe()}: {err.strerror or err}") from None

    def _address(self, ipr: Any, index: int, step: plan.SetAddress) -> None:
        wanted = step.interface
        family = _FAMILY[wanted.version]
        for addr in ipr.get_addr(index=index, family=family):
            if addr["scope"] != SCOPE_UNIVERSE:
                continue
            current = ipaddress.ip_interface(f"{addr.get('IFA_ADDRESS')}/{addr['prefixlen']}")
            if current not in step.wanted():
                log.info("removing stale address %s from %s", current, step.ifname)
                ipr.addr("del", index=index, address=str(current.ip), prefixlen=addr["prefixlen"])
        # NODAD: the address is reserved for us; duplicate address detection would
        # only leave it "tentative" (unusable as a source) for a second or more.
        flags = IFA_F_NODAD if wanted.version == 6 else 0
        ipr.addr(
            "replace",
            index=index,
            address=str(wanted.ip),
            prefixlen=wanted.network.prefixlen,
            flags=flags,
        )

    @staticmethod
    def _remove_addresses(ipr: Any, index: int, step: plan.RemoveAddresses) -> None:
        for addr in ipr.get_addr(index=index, family=_FAMILY[step.family]):
            if addr["scope"] == SCOPE_UNIVERSE:
                log.info("removing %s from %s: IPv%d is not configured",
                         addr.get("IFA_ADDRESS"), step.ifname, step.family)
                ipr.addr("del", index=index, address=addr.get("IFA_ADDRESS"),
                         prefixlen=addr["prefixlen"])

    def _return_path(self, ipr: Any, pod_index: int, step: plan.KeepPodReturnPath) -> None:
        family = _FAMILY[step.family]
        default = "0.0.0.0/0" if step.family == 4 else "::/0"
        # The pod's own default route: in main on the first run, in our table on re-runs
        # (by then main's default points at the egress gateway).
        gateway = next(
            (
                r.get("RTA_GATEWAY")
                for r in ipr.get_routes(family=family, table=MAIN_TABLE)
                if r["dst_len"] == 0 and r.get("RTA_OIF") == pod_index and r.get("RTA_GATEWAY")
            ),
            None,
        )
        if gateway is not None:
            ipr.route(
                "replace", dst=default, gateway=gateway, oif=pod_index, family=family,
                table=plan.POD_TABLE,
            )
        elif not ipr.get_routes(family=family, table=plan.POD_TABLE):
            log.info(
                "%s has no IPv%d default route: replies reach only its own subnet and routes",
                step.pod_ifname, step.family,
            )
        wanted = set(state.pod_return_rules(step, self._pod_sources(ipr, pod_index, family)))
        present = {
            rule_key(rule)
            for rule in ipr.get_rules(family=family)
            if plan.RULE_PRIORITY <= (rule.get("FRA_PRIORITY") or 0) <= plan.RULE_PRIORITY + 3
        }
        for priority, iif, src, table, suppress in present - wanted:
            ipr.rule("del", family=family, priority=priority, table=table,
                     **_rule_selector(iif, src, step.family), **_suppress(suppress))
        for priority, iif, src, table, suppress in wanted - present:
            ipr.rule("add", family=family, priority=priority, table=table,
                     **_rule_selector(iif, src, step.family), **_suppress(suppress))

    @staticmethod
    def _pod_sources(ipr: Any, index: int, family: int) -> list[str]:
        return sorted(
            str(a.get("IFA_ADDRESS"))
            for a in ipr.get_addr(index=index, family=family)
            if a["scope"] == SCOPE_UNIVERSE
        )

    def _route(self, ipr: Any, index: int, step: plan.SetRoute) -> None:
        family = _FAMILY[step.destination.version]
        if step.is_default:
            for route in ipr.get_routes(family=family, table=MAIN_TABLE):
                if route["dst_len"] != 0 or route["type"] != 1:  # 1: RTN_UNICAST
                    continue
                same = route.get("RTA_GATEWAY") == str(step.gateway) and route.get(
                    "RTA_OIF"
                ) == index
                if not same:
                    log.info("removing default route via %s", route.get("RTA_GATEWAY"))
                    self._delete_route(ipr, route)
        spec: dict[str, Any] = {
            "dst": step.destination.with_prefixlen,
            "oif": index,
            "family": family,
            "table": MAIN_TABLE,
        }
        if step.gateway is not None:
            spec["gateway"] = str(step.gateway)
        else:
            spec["scope"] = SCOPE_LINK
        ipr.route("replace", **spec)

    @staticmethod
    def _delete_route(ipr: Any, route: Any) -> None:
        from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415 (lazy)

        try:
            ipr.route("del", **{
                "dst": "0.0.0.0/0" if route["family"] == AF_INET else "::/0",
                "family": route["family"],
                "table": MAIN_TABLE,
                "priority": route.get("RTA_PRIORITY") or 0,
                "gateway": route.get("RTA_GATEWAY"),
                "oif": route.get("RTA_OIF"),
            })
        except NetlinkError as err:
            if err.code != errno.ESRCH:
                raise

    @staticmethod
    def _forwarding(step: plan.EnableForwarding) -> None:
        path = Path(state.forwarding_path(step.family))
        if path.read_text().strip() != "1":
            path.write_text("1\n")
