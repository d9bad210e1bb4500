"""Where the router's own DNS lookups go, and the pod gateway that reaches them.

Once the plan has replaced the default route with the egress gateway, the
router pod's own packets to the cluster side follow it out of the egress
interface, so a resolver on the service network (what the kubelet writes
into ``/etc/resolv.conf``) is out of reach and DNS-named destinations never
resolve. Both ``init`` and the waiting container therefore route each resolver
address through the pod interface, via the pod's own default gateway, which
`plan.KeepPodReturnPath` keeps in table `plan.POD_TABLE` (on a fresh pod it is
still the main table's default route). The forward chain
accepts new connections only from the pod interface to the egress interface,
so redirected or physical-side traffic cannot use these routes.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

from egress_router.core import config, plan

RESOLV_CONF = Path("/etc/resolv.conf")
IP_TIMEOUT = 5.0


def nameservers(path: Path = RESOLV_CONF) -> tuple[config.IPAddress, ...]:
    """The resolvers of ``path`` that need a route (none when it cannot be read)."""
    try:
        return plan.parse_nameservers(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return ()


def pod_gateway(family: int, pod_ifname: str) -> config.IPAddress | None:
    """The pod's own default gateway of ``family``: as kept in table `plan.POD_TABLE`, or
    before the plan ran (``init`` on a fresh pod), the main table's default route on the pod
    interface."""
    for table in (str(plan.POD_TABLE), "main"):
        try:
            done = subprocess.run(
                ["ip", "-j", f"-{family}", "route", "show", "table", table, "default", "dev",
                 pod_ifname],
                capture_output=True, text=True, timeout=IP_TIMEOUT, check=False,
            )
            routes = json.loads(done.stdout or "[]") if done.returncode == 0 else []
        except (OSError, subprocess.TimeoutExpired, ValueError):
            continue
        for route in routes:
            if "gateway" in route:
                return ipaddress.ip_address(route["gateway"])
    return None


def _connected(ifname: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    found: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for family in (4, 6):
        try:
            done = subprocess.run(
                ["ip", "-j", f"-{family}", "route", "show", "dev", ifname, "scope", "link"],
                capture_output=True, text=True, timeout=IP_TIMEOUT, check=False,
            )
            routes = json.loads(done.stdout or "[]") if done.returncode == 0 else []
        except (OSError, subprocess.TimeoutExpired, ValueError):
            continue
        for route in routes:
            dst = str(route.get("dst", ""))
            if dst and dst != "default":
                try:
                    found.append(ipaddress.ip_network(dst, strict=False))
                except ValueError:
                    continue
    return found


def pod_routes(cfg: config.Config, path: Path = RESOLV_CONF) -> tuple[
    tuple[config.IPAddress, config.IPAddress], ...
]:
    """(resolver, pod gateway) for each resolver of a family the router serves."""
    routes: list[tuple[config.IPAddress, config.IPAddress]] = []
    gateways: dict[int, config.IPAddress | None] = {}
    on_link = _connected(cfg.pod_interface)
    for address in nameservers(path):
        if address.version not in cfg.families() or any(address in net for net in on_link):
            continue  # on the pod's own subnet: its connected route already goes there
        if address.version not in gateways:
            gateways[address.version] = pod_gateway(address.version, cfg.pod_interface)
        via = gateways[address.version]
        if via is not None:
            routes.append((address, via))
    return tuple(routes)
