"""Build the ADD result, chained onto a ``prevResult``, in the shape the requested cniVersion wants.

The runtime caches this result and hands it back as ``prevResult`` to CHECK
and DEL, so it is also the record of what ADD made: the interface (name,
MAC, sandbox) and the addresses on it. Versions differ in small ways: before
1.0.0 every IP carries a ``version`` field; 1.1.0 adds the interface's
``mtu``. Pure functions, unit-tested without privilege.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from egress_router.cni import netconf
from egress_router.core import config


@dataclass(frozen=True)
class Interface:
    """What the kernel says about the macvlan after ADD."""

    name: str
    mac: str
    mtu: int
    sandbox: str


def _list(result: Mapping[str, Any], key: str) -> list[Any]:
    value = result.get(key)
    return copy.deepcopy(value) if isinstance(value, list) else []


def build(
    conf: netconf.NetConf, link: Interface, prev_result: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ADD result: ``prev_result``'s entries (if chained) followed by ours."""
    prev = prev_result or {}
    interfaces = _list(prev, "interfaces")
    ips = _list(prev, "ips")
    routes = _list(prev, "routes")
    index = len(interfaces)
    ours: dict[str, Any] = {"name": link.name, "mac": link.mac}
    if netconf.version_tuple(conf.cni_version) >= (1, 1, 0):
        ours["mtu"] = link.mtu
    ours["sandbox"] = link.sandbox
    interfaces.append(ours)
    # An HA replica holds the reserved address only while active, and the role changes
    # after ADD: the result, cached by the runtime, cannot say, so it lists no address.
    for source in conf.sources if conf.ha is None else ():
        gateway = next(g for g in conf.gateways if g.version == source.family)
        ips.append(
            {
                "address": source.interface.with_prefixlen,
                "gateway": str(gateway),
                "interface": index,
            }
        )
    for family in sorted({s.family for s in conf.sources}):  # a pool: its routes once
        gateway = next(g for g in conf.gateways if g.version == family)
        default = "0.0.0.0/0" if family == 4 else "::/0"
        host = ipaddress.ip_network(f"{gateway}/{gateway.max_prefixlen}")
        routes.append({"dst": str(host)})
        routes.append({"dst": default, "gw": str(gateway)})
    result: dict[str, Any] = {
        "cniVersion": conf.cni_version,
        "interfaces": interfaces,
        "ips": [_ip_for_version(ip, conf.cni_version) for ip in ips],
        "routes": routes,
    }
    # A plugin earlier in the chain owns DNS; otherwise the configuration's "dns".
    dns = prev.get("dns") or conf.dns
    if isinstance(dns, dict) and dns:
        result["dns"] = copy.deepcopy(dns)
    return result


def _ip_for_version(ip: Mapping[str, Any], version: str) -> dict[str, Any]:
    out = dict(ip)
    if netconf.version_tuple(version) >= (1, 0, 0):
        out.pop("version", None)
    elif "version" not in out:
        address = str(out.get("address", ""))
        out["version"] = "6" if ":" in address else "4"
    return out


@dataclass(frozen=True)
class Recorded:
    """What a ``prevResult`` says ADD made for our interface."""

    mac: str | None
    addresses: tuple[config.IPInterface, ...]


def recorded(prev_result: Mapping[str, Any], ifname: str, sandbox: str) -> Recorded | None:
    """Our interface in ``prev_result`` (matched by name and sandbox) and its addresses.

    None when the result has no such interface: CHECK then has nothing to
    compare against and says so.
    """
    interfaces = prev_result.get("interfaces")
    if not isinstance(interfaces, list):
        return None
    index = None
    for number, item in enumerate(interfaces):
        if (
            isinstance(item, dict)
            and item.get("name") == ifname
            and item.get("sandbox", sandbox) in (sandbox, "")
        ):
            index = number
    if index is None:
        return None
    mac = interfaces[index].get("mac")
    addresses: list[config.IPInterface] = []
    for ip in prev_result.get("ips") or []:
        if not isinstance(ip, dict) or ip.get("interface") != index:
            continue
        try:
            addresses.append(ipaddress.ip_interface(str(ip.get("address"))))
        except ValueError:
            continue
    return Recorded(mac=str(mac) if mac else None, addresses=tuple(addresses))
