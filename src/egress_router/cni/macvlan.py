"""The plugin's side effects: the macvlan on the node, and everything inside the pod.

The plugin runs in the node's network namespace. Work on the node (find the
master, create the macvlan under a temporary name, move it) goes through
pyroute2 directly; work in the pod (rename, the engine's ruleset, plan and
announcements, CHECK's inspection, DEL's teardown) runs in a forked child
that entered ``CNI_NETNS`` (see `egress_router.kernel.netns`), so the ``nft``
binary and the raw sockets the engine uses act there too.

Everything the command layer needs is behind the `Kernel` protocol; unit
tests drive ADD/DEL/CHECK and their rollbacks with a fake.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from pyroute2.iproute import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from egress_router.cni import errors
from egress_router.cni.errors import CniError
from egress_router.cni.result import Interface
from egress_router.core import config, ha, plan, ruleset, state
from egress_router.kernel import announce, netlink, netns, nft, observe, preflight, vrrp
from egress_router.kernel import errors as kernel_errors
from egress_router.router import engine

log = logging.getLogger(__name__)

AF_INET = 2
AF_INET6 = 10
IFF_UP = 0x1
TEMP_PREFIX = "egr"
_TEMP_NAME = re.compile(rf"^{TEMP_PREFIX}[0-9a-f]{{12}}$")
POD_TIMEOUT = 30.0
TABLE = f"{ruleset.TABLE_FAMILY} {ruleset.TABLE}"
_TRANSIENT = (errno.EBUSY, errno.EAGAIN)


def temp_name(container_id: str, ifname: str) -> str:
    """The macvlan's name on the node before it moves: stable per attachment, 15 characters.

    Stable, so that a leftover of a crashed ADD is found again by the next
    ADD, DEL or GC of the same attachment.
    """
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return f"{TEMP_PREFIX}{digest[:12]}"


def is_temp_name(name: str) -> bool:
    return bool(_TEMP_NAME.match(name))


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
class _Answer:
    """A child's result: either ``value`` or a CNI error (code, msg)."""

    value: Any = None
    code: int = 0
    msg: str = ""


class Kernel(Protocol):
    """Every side effect (and every read of kernel state) the plugin needs."""

    def netns_exists(self, path: str) -> bool: ...

    def default_route_interface(self) -> str | None: ...

    def host_link(self, name: str) -> HostLink | None: ...

    def host_link_names(self) -> list[str]: ...

    def nft_problem(self) -> str | None: ...

    def ip_problem(self) -> str | None: ...

    def create_macvlan(self, name: str, master: HostLink, mode: str, mtu: int) -> None: ...

    def delete_host_macvlan(self, name: str) -> bool: ...

    def host_macvlans(self) -> list[str]: ...

    def move_to_netns(self, name: str, path: str) -> None: ...

    def probe_pod(self, path: str, ifname: str, pod_interface: str) -> PodProbe: ...

    def setup_pod(
        self, path: str, temp: str, cfg: config.Config, *, pod_side: bool = True
    ) -> Interface: ...

    def undo_pod(self, path: str, names: Sequence[str], probe: PodProbe) -> None: ...

    def teardown_pod(self, path: str, ifname: str) -> list[str]: ...

    def inspect_pod(self, path: str) -> state.Snapshot: ...

    def ruleset_listing(self, cfg: config.Config) -> str: ...


def _netlink_error(err: NetlinkError, what: str, code: int) -> CniError:
    transient = err.code in _TRANSIENT
    return CniError(
        errors.TRY_AGAIN_LATER if transient else code,
        f"cannot {what}: {os.strerror(err.code) if err.code else err}"
        + ("; try again" if transient else ""),
    )



def _pod_error(err: netns.NetnsError, what: str) -> CniError:
    """A failure inside the pod's namespace as the CNI error its kind means."""
    if isinstance(err, netns.NamespaceGoneError):
        return CniError(errors.CONTAINER_UNKNOWN, f"cannot {what}: {err}")
    if err.details:
        log.debug("%s", err.details)
    timed_out = err.kind is kernel_errors.Kind.TIMED_OUT
    return CniError(errors.TIMED_OUT if timed_out else errors.INTERNAL, f"cannot {what}: {err}")

@contextmanager
def _ipr() -> Iterator[Any]:
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _kind(link: Any) -> tuple[str | None, str | None]:
    info = link.get("IFLA_LINKINFO")
    if not info:
        return None, None
    kind = info.get("IFLA_INFO_KIND")
    data = info.get("IFLA_INFO_DATA")
    mode = data.get("IFLA_MACVLAN_MODE") if kind == "macvlan" and data else None
    return kind, mode


def _lookup(ipr: Any, name: str) -> Any | None:
    found = ipr.link_lookup(ifname=name)
    return ipr.get_links(found[0])[0] if found else None


def _delete_macvlan(ipr: Any, name: str) -> bool:
    link = _lookup(ipr, name)
    if link is None:
        return False
    kind, _ = _kind(link)
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


def _table_exists() -> bool:
    return nft.NftCommand().list_table_text() is not None


def _firewall() -> engine.NftablesFirewall:
    """The same nftables edge (and `Firewall.remove`) as the init container and wait."""
    return engine.NftablesFirewall(nft.NftCommand())


_FORWARDING_KEYS = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding")


def _default_routes(ipr: Any) -> tuple[dict[str, Any], ...]:
    routes = []
    for family in (AF_INET, AF_INET6):
        for route in ipr.get_routes(family=family, table=state.MAIN_TABLE):
            if route["dst_len"] != 0 or route["type"] != state.RTN_UNICAST:
                continue
            spec: dict[str, Any] = {
                "dst": "0.0.0.0/0" if family == AF_INET else "::/0",
                "family": family,
                "table": state.MAIN_TABLE,
                "oif": route.get("RTA_OIF"),
                "proto": route["proto"],
            }
            if route.get("RTA_GATEWAY"):
                spec["gateway"] = route.get("RTA_GATEWAY")
            if route.get("RTA_PRIORITY"):
                spec["priority"] = route.get("RTA_PRIORITY")
            routes.append(spec)
    return tuple(routes)


def _vrid_clash(cfg: config.Config, links: netlink.Netlink) -> _Answer | None:
    """An HA replica's VRID another VRRP group uses, refused before the data path (in the pod).

    The macvlan is hardened and brought up to listen (`ha.CLASH_WINDOW`,
    as ``wait`` does); a refusal leaves it to ADD's undo steps.
    """
    assert cfg.ha is not None
    settings = cfg.ha
    try:
        links.apply(plan.harden_egress(cfg))
        links.apply(plan.LinkUp(cfg.egress_interface))
    except Exception as err:  # the engine's setup reports the same failure with its context
        log.debug("cannot raise %s for the VRID check: %s", cfg.egress_interface, err)
        return None
    found: list[str] = []

    def seen(advert: ha.Advert) -> bool:
        reason = ha.clash(advert, settings, cfg)
        if reason is not None:
            found.append(reason)
        return reason is not None

    try:
        vrrp.watch_adverts(cfg.egress_interface, ha.CLASH_WINDOW, seen)
    except vrrp.VrrpError as err:
        return _Answer(code=errors.ROUTER_SETUP_FAILED, msg=str(err))
    if not found:
        return None
    return _Answer(code=errors.INVALID_CONFIG,
                   msg=str(ha.clash_error(found[0], settings.vrid, "ha.vrid")))


class EgressSideOnly:
    """The engine's netlink while the pod interface is not in the namespace yet.

    The runtime ran the egress network's ADD before the pod network's (podman keeps no
    order). Everything on the egress side is set up; the default route (the pod network's
    ADD is about to install its own, and would fail on ours) and the pod return path need
    the pod interface, so they are skipped, and the wait container completes them.
    """

    def __init__(self, inner: netlink.Netlink, pod_interface: str) -> None:
        self.inner = inner
        self.pod_interface = pod_interface
        self.skipped: list[str] = []

    def has_link(self, ifname: str) -> bool:
        return ifname == self.pod_interface or self.inner.has_link(ifname)

    def link_info(self, ifname: str) -> tuple[int, str]:
        return self.inner.link_info(ifname)

    def apply(self, step: plan.Step) -> None:
        if isinstance(step, plan.KeepPodReturnPath) or (
            isinstance(step, plan.SetRoute) and step.is_default
        ):
            self.skipped.append(step.describe())
            return
        self.inner.apply(step)


def _restore_pod_default_routes(ipr: Any) -> list[str]:
    """Put the pod network's default routes (kept in table 25970 by ADD) back into main."""
    restored = []
    for family in (AF_INET, AF_INET6):
        if any(r["dst_len"] == 0 for r in ipr.get_routes(family=family, table=state.MAIN_TABLE)):
            continue
        for route in ipr.get_routes(family=family, table=plan.POD_TABLE):
            gateway, oif = route.get("RTA_GATEWAY"), route.get("RTA_OIF")
            if route["dst_len"] != 0 or not gateway or not oif:
                continue
            try:
                ipr.route("add", dst="0.0.0.0/0" if family == AF_INET else "::/0",
                          family=family, table=state.MAIN_TABLE, gateway=gateway, oif=oif)
                restored.append(f"default route via {gateway}")
            except NetlinkError as err:
                log.warning("cannot restore the default route via %s: %s", gateway, err)
    return restored


@dataclass
class RealKernel:
    """The node's namespace through pyroute2, the pod's through forked children."""

    pod_timeout: float = POD_TIMEOUT

    # ------------------------------------------------------------------ the node

    def netns_exists(self, path: str) -> bool:
        return netns.is_netns(path)

    def default_route_interface(self) -> str | None:
        with _ipr() as ipr:
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
        with _ipr() as ipr:
            link = _lookup(ipr, name)
            if link is None:
                return None
            return HostLink(
                name=name,
                index=int(link["index"]),
                mtu=int(link.get("IFLA_MTU")),
                up=bool(link["flags"] & IFF_UP),
            )

    def host_link_names(self) -> list[str]:
        with _ipr() as ipr:
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
        with _ipr() as ipr:
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
                raise _netlink_error(
                    err,
                    f"create a {mode} macvlan on {master.name!r} (MTU {mtu})",
                    errors.INTERFACE_SETUP_FAILED,
                ) from None
        log.debug("created macvlan %s on %s (mode %s, MTU %d)", name, master.name, mode, mtu)

    def delete_host_macvlan(self, name: str) -> bool:
        with _ipr() as ipr:
            deleted = _delete_macvlan(ipr, name)
        if deleted:
            log.info("deleted macvlan %s from the node", name)
        return deleted

    def host_macvlans(self) -> list[str]:
        with _ipr() as ipr:
            return sorted(
                str(link.get("IFLA_IFNAME"))
                for link in ipr.get_links()
                if _kind(link)[0] == "macvlan"
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
            with _ipr() as ipr:
                found = ipr.link_lookup(ifname=name)
                if not found:
                    raise CniError(
                        errors.INTERFACE_SETUP_FAILED,
                        f"cannot move macvlan {name}: it vanished from the node",
                    )
                ipr.link("set", index=found[0], net_ns_fd=fd)
        except NetlinkError as err:
            raise _netlink_error(
                err, f"move macvlan {name} into {path}", errors.INTERFACE_SETUP_FAILED
            ) from None
        finally:
            os.close(fd)
        log.debug("moved %s into %s", name, path)

    # ------------------------------------------------------------------ the pod

    def _in_pod(self, path: str, fn: Any, what: str, timeout: float | None = None) -> Any:
        try:
            answer: _Answer = netns.run(path, fn, timeout=timeout or self.pod_timeout)
        except netns.NetnsError as err:
            raise _pod_error(err, what) from None
        if answer.code:
            raise CniError(answer.code, answer.msg)
        return answer.value

    def probe_pod(self, path: str, ifname: str, pod_interface: str) -> PodProbe:
        def probe() -> _Answer:
            with _ipr() as ipr:
                return _Answer(
                    PodProbe(
                        ifname_exists=bool(ipr.link_lookup(ifname=ifname)),
                        pod_interface_exists=bool(ipr.link_lookup(ifname=pod_interface)),
                        default_routes=_default_routes(ipr),
                        forwarding=observe.read_forwarding(),
                        table_exists=_table_exists(),
                        unwritable=tuple(preflight.SystemProbe().unwritable(_FORWARDING_KEYS)),
                    )
                )

        probe_result: PodProbe = self._in_pod(path, probe, f"inspect the container {path}")
        return probe_result

    def setup_pod(
        self, path: str, temp: str, cfg: config.Config, *, pod_side: bool = True
    ) -> Interface:
        ifname = cfg.egress_interface

        def setup() -> _Answer:
            with _ipr() as ipr:
                found = ipr.link_lookup(ifname=temp)
                if not found:
                    return _Answer(
                        code=errors.INTERFACE_SETUP_FAILED,
                        msg=f"cannot rename {temp} to {ifname}: it is not in {path}",
                    )
                try:
                    ipr.link("set", index=found[0], ifname=ifname)
                except NetlinkError as err:
                    # EEXIST: the name was taken between the probe and now.
                    code = (
                        errors.INTERFACE_EXISTS
                        if err.code == errno.EEXIST
                        else errors.INTERFACE_SETUP_FAILED
                    )
                    failure = _netlink_error(err, f"rename {temp} to {ifname} in {path}", code)
                    return _Answer(code=failure.code, msg=failure.msg)
            links: netlink.Netlink = netlink.PyrouteNetlink()
            if cfg.ha is not None:
                refused = _vrid_clash(cfg, links)
                if refused is not None:
                    return refused
            if not pod_side:
                links = EgressSideOnly(links, cfg.pod_interface)
            try:
                report = engine.setup(
                    cfg,
                    links,
                    engine.make_firewall(config.Backend.NFTABLES),
                    announce.SocketAnnouncer(),
                    probe=preflight.SystemProbe(),
                    caller_undoes=True,  # ADD's ExitStack undoes it all
                )
            except engine.ApplyError as err:
                return _Answer(
                    code=errors.ROUTER_SETUP_FAILED,
                    msg=f"cannot set up the egress router on {ifname} in {path}: {err}",
                )
            for stage, seconds in report.stages.items():
                log.debug("%s: %.3fs", stage, seconds)
            if isinstance(links, EgressSideOnly):
                log.info("left to the wait container: %s", "; ".join(links.skipped))
            with _ipr() as ipr:
                link = _lookup(ipr, ifname)
                assert link is not None
                return _Answer(
                    Interface(
                        name=ifname,
                        mac=str(link.get("IFLA_ADDRESS")),
                        mtu=int(link.get("IFLA_MTU")),
                        sandbox=path,
                    )
                )

        announcing = cfg.announce_count * cfg.announce_interval
        link: Interface = self._in_pod(
            path, setup, f"set up the egress router in {path}", self.pod_timeout + announcing
        )
        return link

    def undo_pod(self, path: str, names: Sequence[str], probe: PodProbe) -> None:
        def undo() -> _Answer:
            undone: list[str] = []
            with _ipr() as ipr:
                for name in names:
                    if _delete_macvlan(ipr, name):
                        undone.append(f"deleted {name}")
                present = _default_routes(ipr)
                for route in probe.default_routes:
                    if route in present:
                        continue
                    try:
                        ipr.route("add", **route)
                        undone.append(f"restored default route via {route.get('gateway')}")
                    except NetlinkError as err:
                        log.warning("cannot restore default route %s: %s", route, err)
                if netlink.remove_pod_return_path(ipr):
                    undone.append("removed the pod return-path rules")
            try:
                if _table_exists():
                    _firewall().remove()
                    undone.append(f"removed table {TABLE}")
            except nft.NftError as err:
                log.warning("cannot remove table %s: %s", TABLE, err)
            for family, on in probe.forwarding:
                if dict(observe.read_forwarding()).get(family) != on:
                    with open(state.forwarding_path(family), "w", encoding="ascii") as fh:
                        fh.write("1\n" if on else "0\n")
                    undone.append(f"IPv{family} forwarding back to {int(on)}")
            return _Answer(undone)

        undone: list[str] = self._in_pod(path, undo, f"undo the partial setup in {path}")
        if undone:
            log.info("rolled back in %s: %s", path, ", ".join(undone))

    def teardown_pod(self, path: str, ifname: str) -> list[str]:
        def teardown() -> _Answer:
            removed: list[str] = []
            try:
                present = _table_exists()
            except nft.NftError as err:  # e.g. no nft: there can be no table to remove either
                log.warning("cannot look for table %s: %s", TABLE, err)
                present = False
            if present:
                try:
                    _firewall().remove()
                except nft.NftError as err:
                    return _Answer(
                        code=errors.ROUTER_SETUP_FAILED,
                        msg=f"cannot remove table {TABLE} from {path}: {err}",
                    )
                removed.append(f"table {TABLE}")
            with _ipr() as ipr:
                try:
                    if _delete_macvlan(ipr, ifname):
                        removed.append(f"macvlan {ifname}")
                    # ADD moved the pod's default route into table 25970 (the return path)
                    # and replaced it with ours, which went with the macvlan.
                    restored = _restore_pod_default_routes(ipr)
                    count = netlink.remove_pod_return_path(ipr)
                except NetlinkError as err:
                    failure = _netlink_error(
                        err, f"delete {ifname} in {path}", errors.INTERFACE_SETUP_FAILED
                    )
                    return _Answer(code=failure.code, msg=failure.msg)
                if count:
                    removed.append(
                        f"the pod return path (policy rules {plan.RULE_PRIORITY}-"
                        f"{plan.RULE_PRIORITY + 3}, table {plan.POD_TABLE}'s default route)"
                    )
                removed += [f"restored {r}" for r in restored]
            return _Answer(removed)

        removed: list[str] = self._in_pod(path, teardown, f"remove the egress router from {path}")
        return removed

    def inspect_pod(self, path: str) -> state.Snapshot:
        """The pod's namespace as a `state.Snapshot`, read by the one reader (kernel/observe)."""
        what = f"inspect the container {path}"
        try:
            return observe.read_snapshot_in(path, table=True, timeout=self.pod_timeout)
        except netns.NetnsError as err:
            raise _pod_error(err, what) from None

    def ruleset_listing(self, cfg: config.Config) -> str:
        script = ruleset.render_nftables(cfg)

        def render() -> _Answer:
            runner = nft.NftCommand()
            try:
                runner.run(script)
                return _Answer(runner.list_table_text() or "")
            except nft.NftError as err:
                failure = f"cannot render the expected ruleset: {err}"
                return _Answer(code=errors.INTERNAL, msg=failure)

        try:
            answer: _Answer = netns.run(None, render, timeout=self.pod_timeout)
        except netns.NetnsError as err:
            raise CniError(errors.INTERNAL, f"cannot render the expected ruleset: {err}") from None
        if answer.code:
            raise CniError(answer.code, answer.msg)
        listing: str = answer.value
        return listing
