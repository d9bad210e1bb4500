"""What the node side and the pod side share: pyroute2 helpers, the links and answers they pass.

The helpers act in the current namespace: the node's, or the pod's inside a forked child.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2.iproute import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from egress_router.cni import errors
from egress_router.cni.errors import CniError
from egress_router.core import ruleset

log = logging.getLogger(__name__)

AF_INET = 2
AF_INET6 = 10
IFF_UP = 0x1
TABLE = f"{ruleset.TABLE_FAMILY} {ruleset.TABLE}"
TRANSIENT = (errno.EBUSY, errno.EAGAIN)


@dataclass(frozen=True)
class HostLink:
    """A link in the node's namespace."""

    name: str
    index: int
    mtu: int
    up: bool


@dataclass(frozen=True)
class PodProbe:
    """The pod before ADD touches it: what must not exist, what must, and what to restore."""

    ifname_exists: bool
    pod_interface_exists: bool
    default_routes: tuple[dict[str, Any], ...] = ()
    forwarding: tuple[tuple[int, bool], ...] = ()
    table_exists: bool = False
    unwritable: tuple[tuple[str, str], ...] = ()  # (sysctl key, why): ADD would fail half-way


@dataclass(frozen=True)
class Answer:
    """A child's result: either ``value`` or a CNI error (code, msg)."""

    value: Any = None
    code: int = 0
    msg: str = ""


def netlink_error(err: NetlinkError, what: str, code: int) -> CniError:
    transient = err.code in TRANSIENT
    return CniError(
        errors.TRY_AGAIN_LATER if transient else code,
        f"cannot {what}: {os.strerror(err.code) if err.code else err}"
        + ("; try again" if transient else ""),
    )


@contextmanager
def iproute() -> Iterator[Any]:
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def link_kind(link: Any) -> tuple[str | None, str | None]:
    info = link.get("IFLA_LINKINFO")
    if not info:
        return None, None
    kind = info.get("IFLA_INFO_KIND")
    data = info.get("IFLA_INFO_DATA")
    mode = data.get("IFLA_MACVLAN_MODE") if kind == "macvlan" and data else None
    return kind, mode


def lookup(ipr: Any, name: str) -> Any | None:
    found = ipr.link_lookup(ifname=name)
    return ipr.get_links(found[0])[0] if found else None


def delete_macvlan(ipr: Any, name: str) -> bool:
    link = lookup(ipr, name)
    if link is None:
        return False
    kind, _ = link_kind(link)
    if kind != "macvlan":
        log.warning("not deleting %s: it is a %s link, not a macvlan", name, kind or "plain")
        return False
    try:
        ipr.link("del", index=link["index"])
    except NetlinkError as err:
        if err.code == errno.ENODEV:
            return False
        raise
    return True
