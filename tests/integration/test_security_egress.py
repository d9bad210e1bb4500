"""The egress interface takes no configuration from the physical network; HTTP stays pod-side.

Per backend and family configuration (one lab each): a router advertisement
and an ICMP redirect sent from the physical side change nothing (no default
route, no SLAAC address, no redirected route); a family that is not
configured leaves no address on the egress interface; the HTTP endpoint is
unreachable from the physical side on every address, IPv6 link-local
included. Each with a control that shows the probe works without the
protection (sysctls put back to the kernel's defaults, rules taken out).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from egress_router.lab import world as labmod
from support import httpget as http
from support import security, wire

pytestmark = pytest.mark.privileged

HTTP_PORT = 9090


@pytest.fixture(scope="module", params=security.CONFIGS, ids=lambda c: f"{c[0]}-{c[1]}")
def world(request: pytest.FixtureRequest) -> Iterator[Any]:
    backend, family = request.param
    with security.world_for(backend, family, security.new_prefix()) as built:
        yield built


@pytest.fixture
def fresh(world: Any) -> Iterator[Any]:
    yield world
    world.restore()


def ra_effects(world: Any) -> tuple[list[str], list[str]]:
    """IPv6 default routes and global addresses on the egress interface not configured by us."""
    ns = world.lab.router
    routes = [f"{r['dst']} via {r.get('gateway')}"
              for r in security.ip_json(ns, "-6", "route", "show", "dev", labmod.MACVLAN_IF)
              if r["dst"] == "default" and str(r.get("gateway", "")).startswith("fe80")]
    ours = {security.SOURCE6}
    addresses = [info["local"]
                 for entry in security.ip_json(ns, "-6", "addr", "show", "dev", labmod.MACVLAN_IF)
                 for info in entry.get("addr_info", [])
                 if info.get("scope") == "global" and info.get("local") not in ours]
    return routes, addresses


def send_ra(world: Any) -> None:
    gw_mac = security.mac_of(world.lab.gw, labmod.GW_LAN)
    gw_ll = security.link_local_of(world.lab.gw, labmod.GW_LAN)
    assert gw_ll is not None
    ra = wire.router_advert(gw_ll, gw_mac, str(labmod.PHYS_NET6))
    world.send(world.lab.gw, labmod.GW_LAN, [wire.frame("33:33:00:00:00:01", gw_mac, ra)])


def wait_for(check: Any, seconds: float = 3.0) -> Any:
    deadline = time.monotonic() + seconds
    result = check()
    while not any(result) and time.monotonic() < deadline:
        time.sleep(0.2)
        result = check()
    return result


def test_router_advertisements_from_the_physical_side_change_nothing(fresh: Any) -> None:
    world = fresh
    send_ra(world)
    time.sleep(1.5)
    assert ra_effects(world) == ([], [])
    # The firewall alone is not what stops it: with its rules for an unconfigured family
    # taken out, the sysctls still hold.
    world.apply_without("family")
    send_ra(world)
    time.sleep(1.5)
    assert ra_effects(world) == ([], [])
    # Control: the kernel's defaults for RAs (2: even while forwarding) on the interface.
    world.sysctl(ipv6__disable_ipv6="0", ipv6__accept_ra="2", ipv6__autoconf="1")
    time.sleep(0.3)
    send_ra(world)
    routes, addresses = wait_for(lambda: ra_effects(world))
    assert routes, "control: the RA installed no default route"
    (addresses,) = wait_for(lambda: (ra_effects(world)[1],))
    assert addresses, "control: the RA gave the interface no SLAAC address"


def route_via(world: Any, destination: str) -> str:
    out = security.run(world.lab.router, ["ip", "-4", "route", "get", destination])
    return out.split(" via ")[1].split()[0] if " via " in out else out


def send_redirect(world: Any) -> None:
    # The quoted packet is an echo reply (as the kernel sends them): ICMP's error handler
    # applies a redirect for those; UDP's only when a local socket matches.
    quoted = wire.icmp(security.SOURCE4, security.DEST4, (0, 0), b"\0\4\0\4", b"redirect-me")
    world.from_physical([wire.redirect4(security.GATEWAY4, security.SOURCE4, NEW_GATEWAY4,
                                        quoted)])


NEW_GATEWAY4 = "192.168.12.50"


def test_icmp_redirects_from_the_physical_side_change_nothing(fresh: Any) -> None:
    world = fresh
    if 4 not in world.families:
        # An IPv6 router: no IPv4 route out of the egress interface, nothing to redirect.
        routes = security.ip_json(world.lab.router, "-4", "route", "show", "dev",
                                  labmod.MACVLAN_IF)
        assert routes == []
        return
    # A resolved neighbour for the new gateway: the kernel only installs a redirect to one.
    gw_mac = security.mac_of(world.lab.gw, labmod.GW_LAN)
    security.run(world.lab.router, ["ip", "neigh", "replace", NEW_GATEWAY4, "lladdr", gw_mac,
                                    "dev", labmod.MACVLAN_IF, "nud", "permanent"])
    try:
        assert route_via(world, security.DEST4) == security.GATEWAY4
        send_redirect(world)
        time.sleep(0.5)
        assert route_via(world, security.DEST4) == security.GATEWAY4
        world.sysctl(ipv4__accept_redirects="1")  # control: the kernel's defaults
        security.run(world.lab.router, ["sysctl", "-q", "-w",
                                        "net.ipv4.conf.all.accept_redirects=1"])
        send_redirect(world)
        time.sleep(0.5)
        assert route_via(world, security.DEST4) == NEW_GATEWAY4, "control: redirect ignored"
    finally:
        security.run(world.lab.router, ["ip", "route", "flush", "cache"])
        labmod.run_in(world.lab.router, ["ip", "neigh", "del", NEW_GATEWAY4, "dev",
                                         labmod.MACVLAN_IF], timeout=10)


def egress_addresses(world: Any, family: int) -> list[str]:
    entries = security.ip_json(world.lab.router, f"-{family}", "addr", "show", "dev",
                               labmod.MACVLAN_IF)
    return [f"{i['local']}/{i['prefixlen']} {i.get('scope')}"
            for e in entries for i in e.get("addr_info", []) if "local" in i]


def test_a_family_not_configured_has_no_address_on_the_egress_interface(fresh: Any) -> None:
    world = fresh
    if world.families == (4, 6):  # both configured: the reserved addresses, nothing else
        assert [a.split()[0] for a in egress_addresses(world, 4)] == [f"{security.SOURCE4}/24"]
        assert f"{security.SOURCE6}/64 global" in egress_addresses(world, 6)
        return
    if world.families == (4,):
        assert egress_addresses(world, 6) == []  # not even a link-local address
        world.sysctl(ipv6__disable_ipv6="0")  # control: the kernel's default
        assert wait_for(lambda: egress_addresses(world, 6)), "control: no IPv6 address appeared"
        return
    # IPv6 only: a global IPv4 address left by someone goes at the next setup; a
    # link-local one (a future HA pair's VRRP address) stays.
    ns = world.lab.router
    security.run(ns, ["ip", "addr", "add", "192.168.12.77/24", "dev", labmod.MACVLAN_IF])
    security.run(ns, ["ip", "addr", "add", "169.254.12.1/16", "dev", labmod.MACVLAN_IF,
                      "scope", "link"])
    assert len(egress_addresses(world, 4)) == 2  # control: the kernel holds both now
    world.restore()
    assert egress_addresses(world, 4) == ["169.254.12.1/16 link"]


def http_from(world: Any, ns: str, host: str, timeout: float = 2.0) -> str:
    """GET /healthz from ``ns``: the status code, or why there was none."""
    answer = http.get(ns, http.url(host, HTTP_PORT, "/healthz"), timeout=timeout)
    return answer.error if answer.status is None else str(answer.status)


def physical_targets(world: Any) -> list[str]:
    """Every address the physical side could try: reserved, pod addresses, link-local."""
    targets = [security.SOURCE4, security.ROUTER4, security.SOURCE6, security.ROUTER6]
    link_local = security.link_local_of(world.lab.router, labmod.MACVLAN_IF)
    if link_local is not None:
        targets.append(f"{link_local}%{labmod.GW_LAN}")
    return targets


@pytest.fixture
def routes_to_router(world: Any) -> Iterator[None]:
    """Routes on the gateway to the router's pod addresses through its macvlan (an attacker's)."""
    ns = world.lab.gw
    added = []
    for family, dst, via in ((4, security.ROUTER4, security.SOURCE4),
                             (6, security.ROUTER6, security.SOURCE6)):
        if family in world.families:
            security.run(ns, ["ip", f"-{family}", "route", "replace", dst, "via", via])
            added.append((family, dst))
    yield
    for family, dst in added:
        labmod.run_in(ns, ["ip", f"-{family}", "route", "del", dst], timeout=10)


def reachable(world: Any) -> dict[str, str]:
    answers = {target: http_from(world, world.lab.gw, target) for target in physical_targets(world)}
    return {target: answer for target, answer in answers.items() if answer.isdigit()}


@pytest.mark.slow
def test_http_endpoint_is_unreachable_from_the_physical_side(
    fresh: Any, routes_to_router: None
) -> None:
    world = fresh
    env = {**{k: v for k, v in world.env.items() if k != "EGRESS_ROUTER_MODE"},
           "EGRESS_ROUTER_HTTP_PORT": str(HTTP_PORT), "EGRESS_ROUTER_RECONCILE_SECONDS": "3600"}
    proc = labmod.spawn_router(world.lab, env, args=["wait"])
    try:
        deadline = time.monotonic() + 30
        while http_from(world, world.lab.client, security.ROUTER4) != "200":
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the router never answered on the pod side"
            time.sleep(0.3)
        assert reachable(world) == {}
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    # Control, with a plain listener on the same port (the wait loop would repair the
    # changes): IPv6 back on the interface, the HTTP rules and the source guard (which
    # drops replies from link-local addresses of an unconfigured family) taken out.
    listener = subprocess.Popen(
        ["ip", "netns", "exec", world.lab.router, sys.executable, "-m", "http.server",
         str(HTTP_PORT), "--bind", "::"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while http_from(world, world.lab.client, security.ROUTER4) not in ("200", "404"):
            assert time.monotonic() < deadline, "the stand-in listener did not start"
            time.sleep(0.3)
        assert reachable(world) == {}  # the stand-in is held like the real server
        world.sysctl(ipv6__disable_ipv6="0")
        time.sleep(0.5)
        world.apply_without("http", "family", "guard")
        assert reachable(world), "control: the HTTP port was not reachable without the rules"
    finally:
        listener.kill()
        listener.communicate()
