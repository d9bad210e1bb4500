"""The node's side of ADD/DEL/GC: find the master, make the macvlan under a temporary name, move it.

Work on the node goes through pyroute2 directly, in the plugin's own (the node's) namespace.
"""

from __future__ import annotations

import logging
import os

from pyroute2.netlink.exceptions import NetlinkError

from egress_router.cni import errors
from egress_router.cni.errors import CniError
from egress_router.cni.links import (
    AF_INET,
    AF_INET6,
    IFF_UP,
    HostLink,
    delete_macvlan,
    iproute,
    link_kind,
    lookup,
    netlink_error,
)
from egress_router.core import state
from egress_router.kernel import netns, nft

log = logging.getLogger(__name__)

class NodeKernel:
    """The `Kernel` protocol's node half (see `egress_router.cni.macvlan.RealKernel`)."""

    def netns_exists(self, path: str) -> bool:
        return netns.is_netns(path)

    def default_route_interface(self) -> str | None:
        with iproute() as ipr:
            for family in (AF_INET, AF_INET6):
                for route in ipr.get_routes(family=family, table=state.MAIN_TABLE):
                    if route["dst_len"] != 0 or route["type"] != state.RTN_UNICAST:
                        continue
                    index = route.get("RTA_OIF")
                    if index is None:
                        hops = route.get("RTA_MULTIPATH") or []
                        index = hops[0]["oif"] if hops else None
                    if index is None:
                        continue
                    links = ipr.get_links(index)
                    if links:
                        return str(links[0].get("IFLA_IFNAME"))
        return None

    def host_link(self, name: str) -> HostLink | None:
        with iproute() as ipr:
            link = lookup(ipr, name)
            if link is None:
                return None
            return HostLink(
                name=name,
                index=int(link["index"]),
                mtu=int(link.get("IFLA_MTU")),
                up=bool(link["flags"] & IFF_UP),
            )

    def host_link_names(self) -> list[str]:
        with iproute() as ipr:
            return sorted(str(link.get("IFLA_IFNAME")) for link in ipr.get_links())

    def nft_problem(self) -> str | None:
        if not nft.is_installed():
            return "the nft binary is not on the node; install nftables (apt install nftables)"
        return None

    def ip_problem(self) -> str | None:
        # CHECK reads the pod's links, addresses, routes and rules through `ip -j` (the one
        # reader of kernel state, kernel/observe); ADD and DEL need no ip(8).
        if not nft.is_installed("ip"):
            return (
                "the ip binary is not on the node (CHECK reads the pod through `ip -j`); "
                "install iproute2 (apt install iproute2)"
            )
        return None

    def create_macvlan(self, name: str, master: HostLink, mode: str, mtu: int) -> None:
        with iproute() as ipr:
            try:
                ipr.link(
                    "add",
                    ifname=name,
                    kind="macvlan",
                    link=master.index,
                    macvlan_mode=mode,
                    mtu=mtu,
                )
            except NetlinkError as err:
                raise netlink_error(
                    err,
                    f"create a {mode} macvlan on {master.name!r} (MTU {mtu})",
                    errors.INTERFACE_SETUP_FAILED,
                ) from None
        log.debug("created macvlan %s on %s (mode %s, MTU %d)", name, master.name, mode, mtu)

    def delete_host_macvlan(self, name: str) -> bool:
        with iproute() as ipr:
            deleted = delete_macvlan(ipr, name)
        if deleted:
            log.info("deleted macvlan %s from the node", name)
        return deleted

    def host_macvlans(self) -> list[str]:
        with iproute() as ipr:
            return sorted(
                str(link.get("IFLA_IFNAME"))
                for link in ipr.get_links()
                if link_kind(link)[0] == "macvlan"
            )

    def move_to_netns(self, name: str, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise CniError(
                errors.CONTAINER_UNKNOWN,
                f"cannot open network namespace {path!r}: {err.strerror or err}",
            ) from None
        try:
            with iproute() as ipr:
                found = ipr.link_lookup(ifname=name)
                if not found:
                    raise CniError(
                        errors.INTERFACE_SETUP_FAILED,
                        f"cannot move macvlan {name}: it vanished from the node",
                    )
                ipr.link("set", index=found[0], net_ns_fd=fd)
        except NetlinkError as err:
            raise netlink_error(
                err, f"move macvlan {name} into {path}", errors.INTERFACE_SETUP_FAILED
            ) from None
        finally:
            os.close(fd)
        log.debug("moved %s into %s", name, path)
