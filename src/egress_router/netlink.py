"""Execute the interface plan through netlink (pyroute2), and a fake for unit tests.

This is one of the two modules that touch the kernel (with `nft`/`iptables`).
Every operation is a replace or a check-then-delete, so running the same plan
again converges instead of failing with "File exists".

pyroute2 is imported on first use, not with this module: it costs about
20 MiB, which the long-running ``wait`` process (it watches kernel state
through the small read-only `linkstate` module) only pays once it has to
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

from egress_router import plan

log = logging.getLogger(__name__)

AF_INET = 2
AF_INET6 = 10
MAIN_TABLE = 254
SCOPE_UNIVERSE = 0
SCOPE_LINK = 253
IFA_F_NODAD = 0x02
_FAMILY = {4: AF_INET, 6: AF_INET6}


class KernelRefusedError(RuntimeError):
    """The kernel refused a step of the interface plan (the message says which and why)."""


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


def _forwarding_path(family: int) -> Path:
    if family == 4:
        return Path("/proc/sys/net/ipv4/ip_forward")
    return Path("/proc/sys/net/ipv6/conf/all/forwarding")


class PyrouteNetlink:
    """The real kernel, through pyroute2, in the current (or a named) network namespace."""

    def __init__(self, netns: str | None = None) -> None:
        self._netns = netns

    @contextmanager
    def _ipr(self) -> Iterator[Any]:
        from pyroute2 import IPRoute  # noqa: PLC0415 (lazy: see the module docstring)

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
            if current != wanted:
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
        path = _forwarding_path(step.family)
        if path.read_text().strip() != "1":
            path.write_text("1\n")
