"""Craft and capture raw frames for the security tests (no scapy: a few formats, by hand).

Importable (the builders are pure functions the tests call to make hostile
frames) and runnable inside a lab namespace:

* ``wire.py send IFNAME HEX...`` sends each hex-encoded Ethernet frame on
  IFNAME through an AF_PACKET socket (below the firewall and routing of the
  sending namespace: any source, any MAC).
* ``wire.py capture IFNAME SECONDS`` prints ``ready`` once the socket is
  bound, then, after SECONDS (or when its stdin closes), one JSON list of the
  frames seen on IFNAME: ``{"hex": ..., "outgoing": bool}``.

Checksums are computed for real: the kernel drops a UDP/TCP/ICMP packet with
a bad one before conntrack or the firewall would see it, which would make a
test pass for the wrong reason.
"""

from __future__ import annotations

import ipaddress
import json
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
MAX_FRAMES = 5000


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def ethernet(dst: str, src: str, ethertype: int, payload: bytes) -> bytes:
    return mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", ethertype) + payload


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return s.packed + d.packed + struct.pack("!BBH", 0, proto, length)
    return s.packed + d.packed + struct.pack("!IxxxB", length, proto)


def ip_packet(src: str, dst: str, proto: int, payload: bytes, ttl: int = 64) -> bytes:
    """An IPv4 or IPv6 header (by the address family) in front of ``payload``."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x1234, 0x4000, ttl,
                             proto, 0, s.packed, d.packed)
        header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
        return header + payload
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), proto, ttl, s.packed,
                       d.packed) + payload


def udp(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    """A UDP datagram inside its IP packet."""
    length = 8 + len(data)
    segment = struct.pack("!HHHH", sport, dport, length, 0) + data
    check = checksum(_pseudo(src, dst, PROTO_UDP, length) + segment) or 0xFFFF
    segment = segment[:6] + struct.pack("!H", check) + segment[8:]
    return ip_packet(src, dst, PROTO_UDP, segment)


def tcp(src: str, dst: str, sport: int, dport: int, data: bytes, *, flags: int = 0x18,
        seq: int = 1, ack: int = 1) -> bytes:
    """A TCP segment (PSH|ACK unless ``flags`` says otherwise) inside its IP packet."""
    segment = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + data
    check = checksum(_pseudo(src, dst, PROTO_TCP, len(segment)) + segment)
    segment = segment[:16] + struct.pack("!H", check) + segment[18:]
    return ip_packet(src, dst, PROTO_TCP, segment)


def icmp(src: str, dst: str, kind: tuple[int, int], rest: bytes, body: bytes, *,
         hop_limit: int = 64) -> bytes:
    """An ICMP (IPv4) or ICMPv6 message of ``kind`` (type, code); ``rest``: the 4 bytes after
    the checksum."""
    message = struct.pack("!BBH", *kind, 0) + rest + body
    if ipaddress.ip_address(src).version == 4:
        check = checksum(message)
        proto = PROTO_ICMP
    else:
        check = checksum(_pseudo(src, dst, PROTO_ICMPV6, len(message)) + message)
        proto = PROTO_ICMPV6
    message = message[:2] + struct.pack("!H", check) + message[4:]
    return ip_packet(src, dst, proto, message, ttl=hop_limit)


def port_unreachable(src: str, dst: str, quoted: bytes) -> bytes:
    """An ICMP port unreachable from ``src`` to ``dst`` quoting ``quoted`` (an IP packet)."""
    if ipaddress.ip_address(src).version == 4:
        return icmp(src, dst, (3, 3), b"\0" * 4, quoted[:28 + 64])
    return icmp(src, dst, (1, 4), b"\0" * 4, quoted[:48 + 64])


def router_advert(src: str, src_mac: str, prefix: str, *, lifetime: int = 1800) -> bytes:
    """An ICMPv6 router advertisement to all nodes: default router, an autoconf prefix."""
    net = ipaddress.ip_network(prefix)
    rest = struct.pack("!BBH", 64, 0, lifetime)  # hop limit, flags, router lifetime
    body = struct.pack("!II", 0, 0)  # reachable time, retrans timer
    body += struct.pack("!BB", 1, 1) + mac_bytes(src_mac)  # source link-layer address
    body += struct.pack("!BBBBIII16s", 3, 4, net.prefixlen, 0xC0, 86400, 14400, 0,
                        net.network_address.packed)  # prefix information: on-link, autoconf
    return icmp(src, "ff02::1", (134, 0), rest, body, hop_limit=255)


def redirect4(src: str, dst: str, new_gateway: str, quoted: bytes) -> bytes:
    """An ICMP host redirect from ``src`` (the current gateway) to ``dst``."""
    return icmp(src, dst, (5, 1), ipaddress.ip_address(new_gateway).packed, quoted[:28])


def redirect6(src: str, dst: str, target: str, destination: str, target_mac: str) -> bytes:
    """An ICMPv6 redirect: reach ``destination`` through ``target`` (a link-local router)."""
    body = ipaddress.ip_address(target).packed + ipaddress.ip_address(destination).packed
    body += struct.pack("!BB", 2, 1) + mac_bytes(target_mac)  # target link-layer address
    return icmp(src, dst, (137, 0), b"\0" * 4, body, hop_limit=255)


def frame(dst_mac: str, src_mac: str, packet: bytes) -> bytes:
    ethertype = ETH_P_IP if packet[0] >> 4 == 4 else ETH_P_IPV6
    return ethernet(dst_mac, src_mac, ethertype, packet)


def ip_source(frame_bytes: bytes) -> str | None:
    """The IP source address of an Ethernet frame (None: not IP)."""
    ethertype = struct.unpack("!H", frame_bytes[12:14])[0]
    if ethertype == ETH_P_IP:
        return str(ipaddress.IPv4Address(frame_bytes[26:30]))
    if ethertype == ETH_P_IPV6:
        return str(ipaddress.IPv6Address(frame_bytes[22:38]))
    return None


# --------------------------------------------------------------------------- in a namespace


def _send(ifname: str, frames: list[str]) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((ifname, 0))
        for text in frames:
            sock.send(bytes.fromhex(text))
            time.sleep(0.01)


def _capture(ifname: str, seconds: float) -> None:
    seen: list[dict[str, object]] = []
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as sock:
        sock.bind((ifname, 0))
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        while len(seen) < MAX_FRAMES:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([sock, sys.stdin], [], [], left)
            if sys.stdin in ready and not sys.stdin.buffer.read1(1):
                break
            if sock in ready:
                data, addr = sock.recvfrom(65535)
                seen.append({"hex": data.hex(), "outgoing": addr[2] == PACKET_OUTGOING})
    print(json.dumps(seen), flush=True)


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "send":
        _send(argv[1], argv[2:])
        return 0
    if len(argv) == 3 and argv[0] == "capture":
        _capture(argv[1], float(argv[2]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
