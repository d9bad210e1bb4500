"""Announce the reserved address: gratuitous ARP (IPv4) and unsolicited neighbour adverts (IPv6).

When the router pod moves to another node, the reserved IP moves with a new
MAC. Switches and the gateway keep the old mapping until it expires, so
traffic would black-hole for minutes; announcing the new owner a few times
makes them update at once. Linux updates an existing neighbour entry on a
gratuitous ARP request and on an NA with the override flag, which is what we
send. Packet builders are pure (golden-tested); sending needs CAP_NET_RAW.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass, field
from typing import Protocol

from egress_router.kernel import errors

ETH_P_ARP = 0x0806
ARP_REQUEST = 1
ND_NEIGHBOR_ADVERT = 136
ND_OPT_TARGET_LL = 2
NA_FLAG_OVERRIDE = 0x20000000
ALL_NODES = "ff02::1"
BROADCAST_MAC = b"\xff" * 6


def mac_bytes(mac: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` to 6 bytes."""
    raw = bytes(int(part, 16) for part in mac.split(":"))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return raw


def gratuitous_arp(mac: str, address: ipaddress.IPv4Address) -> bytes:
    """An Ethernet frame carrying a gratuitous ARP request (sender = target = ``address``)."""
    hw = mac_bytes(mac)
    ip = address.packed
    eth = BROADCAST_MAC + hw + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, ARP_REQUEST) + hw + ip + b"\x00" * 6 + ip
    return eth + arp


def neighbour_advert(mac: str, address: ipaddress.IPv6Address) -> bytes:
    """An ICMPv6 unsolicited neighbour advertisement (override set) for ``address``.

    The checksum field is zero: the kernel fills it in for ICMPv6 raw sockets.
    """
    header = struct.pack("!BBHI", ND_NEIGHBOR_ADVERT, 0, 0, NA_FLAG_OVERRIDE)
    option = struct.pack("!BB", ND_OPT_TARGET_LL, 1) + mac_bytes(mac)
    return header + address.packed + option


class Announcer(Protocol):
    """Sends one announcement of ``address`` from interface ``ifname``."""

    def send(
        self, ifname: str, ifindex: int, mac: str, address: ipaddress.IPv4Address
        | ipaddress.IPv6Address
    ) -> None: ...


@dataclass
class FakeAnnouncer:
    """Records what would have been sent."""

    sent: list[tuple[str, str]] = field(default_factory=list)

    def send(
        self, ifname: str, ifindex: int, mac: str, address: ipaddress.IPv4Address
        | ipaddress.IPv6Address
    ) -> None:
        self.sent.append((ifname, str(address)))


class AnnounceError(errors.KernelError):
    """A raw socket refused to send an announcement."""

    default_kind = errors.Kind.NETLINK_REFUSED


class SocketAnnouncer:
    """Sends through raw sockets in the current network namespace."""

    def send(
        self, ifname: str, ifindex: int, mac: str, address: ipaddress.IPv4Address
        | ipaddress.IPv6Address
    ) -> None:
        try:
            self._send(ifname, ifindex, mac, address)
        except OSError as err:
            raise AnnounceError(f"cannot announce {address} on {ifname}: {err}") from None

    def _send(
        self, ifname: str, ifindex: int, mac: str, address: ipaddress.IPv4Address
        | ipaddress.IPv6Address
    ) -> None:
        if isinstance(address, ipaddress.IPv4Address):
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as sock:
                sock.bind((ifname, 0))
                sock.send(gratuitous_arp(mac, address))
            return
        with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
            # Neighbour discovery is only accepted with hop limit 255 (RFC 4861 7.1.2).
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
            sock.bind((str(address), 0, 0, ifindex))
            sock.sendto(neighbour_advert(mac, address), (ALL_NODES, 0, 0, ifindex))
