"""Send or capture one SCTP INIT with raw sockets (this kernel has no SCTP socket support).

Run inside a lab namespace: ``sctp_probe.py send DST PORT`` sends an INIT from an
ephemeral port; ``sctp_probe.py recv ADDR SECONDS`` prints, as JSON, the source
address and the ports of the first SCTP packet addressed to ADDR. Conntrack
checks SCTP's CRC32c, so the checksum is computed for real.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys

IPPROTO_SCTP = 132
_POLY = 0x82F63B78  # CRC32c (Castagnoli), reflected
_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def init_packet(src_port: int, dst_port: int) -> bytes:
    tag = int.from_bytes(os.urandom(4), "big") or 1
    # INIT chunk: type 1, flags 0, length 20, initiate tag, a_rwnd, out/in streams, initial TSN
    chunk = struct.pack("!BBHIIHHI", 1, 0, 20, tag, 65535, 10, 10, tag)
    header = struct.pack("!HHII", src_port, dst_port, 0, 0)
    checksum = crc32c(header + chunk)
    # The checksum is stored little-endian (RFC 4960 appendix B).
    return struct.pack("!HHI", src_port, dst_port, 0) + struct.pack("<I", checksum) + chunk


def send(dst: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_SCTP) as sock:
        sock.sendto(init_packet(40000 + os.getpid() % 20000, port), (dst, 0))


def recv(address: str, seconds: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_SCTP) as sock:
        sock.settimeout(seconds)
        print("ready", flush=True)
        try:
            while True:
                packet, _ = sock.recvfrom(65535)
                ihl = (packet[0] & 0x0F) * 4
                src = socket.inet_ntoa(packet[12:16])
                dst = socket.inet_ntoa(packet[16:20])
                sport, dport = struct.unpack("!HH", packet[ihl : ihl + 4])
                if dst == address:
                    print(json.dumps({"src": src, "dst": dst, "sport": sport, "dport": dport}))
                    return
        except TimeoutError:
            print(json.dumps({"error": "timeout"}))


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(sys.argv[2], int(sys.argv[3]))
    else:
        recv(sys.argv[2], float(sys.argv[3]))
