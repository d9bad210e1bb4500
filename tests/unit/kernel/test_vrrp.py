"""kernel.vrrp's pure parts: the ARP probe frame and what counts as a conflict."""

from __future__ import annotations

import ipaddress

from egress_router.kernel import vrrp

MAC = bytes.fromhex("020000000001")
OTHER = bytes.fromhex("020000000002")
ADDRESS = ipaddress.IPv4Address("169.254.7.8")


def _arp(sender_mac: bytes, sender_ip: str, target_ip: str, op: int = 2) -> bytes:
    return (b"\xff" * 6 + sender_mac + b"\x08\x06" + bytes.fromhex("000108000604")
            + op.to_bytes(2, "big") + sender_mac + ipaddress.IPv4Address(sender_ip).packed
            + b"\0" * 6 + ipaddress.IPv4Address(target_ip).packed)


def test_probe_is_an_rfc5227_probe() -> None:
    frame = vrrp.arp_probe(MAC, ADDRESS)
    assert frame.hex() == (
        "ffffffffffff" "020000000001" "0806"  # broadcast, from us, ARP
        "0001" "0800" "06" "04" "0001"  # Ethernet/IPv4 request
        "020000000001" "00000000"  # sender: our MAC, no address (changes no cache)
        "000000000000" "a9fe0708"  # target: the candidate
    )


def test_conflicts() -> None:
    assert vrrp._claims(_arp(OTHER, "169.254.7.8", "169.254.7.9"), ADDRESS, MAC)  # a reply
    assert vrrp._claims(_arp(OTHER, "0.0.0.0", "169.254.7.8", op=1), ADDRESS, MAC)  # probing too
    assert not vrrp._claims(_arp(MAC, "0.0.0.0", "169.254.7.8", op=1), ADDRESS, MAC)  # our own
    assert not vrrp._claims(_arp(OTHER, "169.254.1.1", "169.254.2.2"), ADDRESS, MAC)
    assert not vrrp._claims(b"\0" * 20, ADDRESS, MAC)
