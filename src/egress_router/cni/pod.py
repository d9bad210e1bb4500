"""The pod's side of ADD/DEL/CHECK: everything inside ``CNI_NETNS``, run in a forked child.

The rename, the engine's ruleset, plan and announcements, CHECK's inspection and DEL's
teardown run in a child that entered the pod's namespace (`egress_router.kernel.netns`), so the
``nft`` binary and the raw sockets the engine uses act there too. A failure in there comes back
as a `netns.NetnsError` whose kind (not its text) decides the CNI error code.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from egress_router.cni import errors
from egress_router.cni.errors import CniError
from egress_router.cni.links import (
    AF_INET,
    AF_INET6,
    TABLE,
    Answer,
    PodProbe,
    delete_macvlan,
    iproute,
    lookup,
    netlink_error,
)
from egress_router.cni.result import Interface
from egress_router.cni.vrid import (
    _vrid_clash,
)
from egress_router.core import config, plan, ruleset, state
from egress_router.kernel import announce, netlink, netns, nft, observe, preflight
from egress_router.kernel import errors as kernel_errors
from egress_router.router import engine

log = logging.getLogger(__name__)

def _pod_error(err: netns.NetnsError, what: str) -> CniError:
    """A failure inside the pod's namespace as the CNI error its kind means."""
    if isinstance(err, netns.NamespaceGoneError):
        return CniError(errors.CONTAINER_UNKNOWN, f"cannot {what}: {err}")
    if err.details:
        log.debug("%s", err.details)
    timed_out = err.kind is kernel_errors.Kind.TIMED_OUT
    return CniError(errors.TIMED_OUT if timed_out else errors.INTERNAL, f"cannot {what}: {err}")


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


class PodKernel:
    """The `Kernel` protocol's pod half (see `egress_router.cni.macvlan.RealKernel`)."""

    pod_timeout: float

    def _in_pod(self, path: str, fn: Any, what: str, timeout: float | None = None) -> Any:
        try:
            answer: Answer = netns.run(path, fn, timeout=timeout or self.pod_timeout)
        except netns.NetnsError as err:
            raise _pod_error(err, what) from None
        if answer.code:
            raise CniError(answer.code, answer.msg)
        return answer.value

    def probe_pod(self, path: str, ifname: str, pod_interface: str) -> PodProbe:
        def probe() -> Answer:
            with iproute() as ipr:
                return Answer(
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

        def setup() -> Answer:
            with iproute() as ipr:
                found = ipr.link_lookup(ifname=temp)
                if not found:
                    return Answer(
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
                    failure = netlink_error(err, f"rename {temp} to {ifname} in {path}", code)
                    return Answer(code=failure.code, msg=failure.msg)
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
                return Answer(
                    code=errors.ROUTER_SETUP_FAILED,
                    msg=f"cannot set up the egress router on {ifname} in {path}: {err}",
                )
            for stage, seconds in report.stages.items():
                log.debug("%s: %.3fs", stage, seconds)
            if isinstance(links, EgressSideOnly):
                log.info("left to the wait container: %s", "; ".join(links.skipped))
            with iproute() as ipr:
                link = lookup(ipr, ifname)
                assert link is not None
                return Answer(
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
        def undo() -> Answer:
            undone: list[str] = []
            with iproute() as ipr:
                for name in names:
                    if delete_macvlan(ipr, name):
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
            return Answer(undone)

        undone: list[str] = self._in_pod(path, undo, f"undo the partial setup in {path}")
        if undone:
            log.info("rolled back in %s: %s", path, ", ".join(undone))

    def teardown_pod(self, path: str, ifname: str) -> list[str]:
        def teardown() -> Answer:
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
                    return Answer(
                        code=errors.ROUTER_SETUP_FAILED,
                        msg=f"cannot remove table {TABLE} from {path}: {err}",
                    )
                removed.append(f"table {TABLE}")
            with iproute() as ipr:
                try:
                    if delete_macvlan(ipr, ifname):
                        removed.append(f"macvlan {ifname}")
                    # ADD moved the pod's default route into table 25970 (the return path)
                    # and replaced it with ours, which went with the macvlan.
                    restored = _restore_pod_default_routes(ipr)
                    count = netlink.remove_pod_return_path(ipr)
                except NetlinkError as err:
                    failure = netlink_error(
                        err, f"delete {ifname} in {path}", errors.INTERFACE_SETUP_FAILED
                    )
                    return Answer(code=failure.code, msg=failure.msg)
                if count:
                    removed.append(
                        f"the pod return path (policy rules {plan.RULE_PRIORITY}-"
                        f"{plan.RULE_PRIORITY + 3}, table {plan.POD_TABLE}'s default route)"
                    )
                removed += [f"restored {r}" for r in restored]
            return Answer(removed)

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

        def render() -> Answer:
            runner = nft.NftCommand()
            try:
                runner.run(script)
                return Answer(runner.list_table_text() or "")
            except nft.NftError as err:
                failure = f"cannot render the expected ruleset: {err}"
                return Answer(code=errors.INTERNAL, msg=failure)

        try:
            answer: Answer = netns.run(None, render, timeout=self.pod_timeout)
        except netns.NetnsError as err:
            raise CniError(errors.INTERNAL, f"cannot render the expected ruleset: {err}") from None
        if answer.code:
            raise CniError(answer.code, answer.msg)
        listing: str = answer.value
        return listing
