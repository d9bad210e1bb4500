"""Byte-exact announcement packets (what switches and neighbours will parse)."""

from __future__ import annotations

import ipaddress

import pytest

from egress_router.kernel import announce, errors


def test_gratuitous_arp_frame() -> None:
    frame = announce.gratuitous_arp("02:00:c0:a8:0c:63", ipaddress.IPv4Address("192.168.12.99"))
    assert frame.hex() == (
        "ffffffffffff" "0200c0a80c63" "0806"          # broadcast, our MAC, ARP
        "0001" "0800" "06" "04" "0001"                # Ethernet/IPv4, request
        "0200c0a80c63" "c0a80c63"                     # sender = us
        "000000000000" "c0a80c63"                     # target IP = us (gratuitous)
    )


def test_unsolicited_neighbour_advert() -> None:
    packet = announce.neighbour_advert(
        "02:00:c0:a8:0c:63", ipaddress.IPv6Address("2001:db8:12::99")
    )
    assert packet.hex() == (
        "88" "00" "0000" "20000000"                    # NA, override, not solicited
        "20010db8001200000000000000000099"            # target
        "02" "01" "0200c0a80c63"                      # target link-layer address option
    )


def test_bad_mac_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a MAC address"):
        announce.mac_bytes("02:00")


def test_a_socket_failure_is_a_kernel_error_naming_address_and_interface() -> None:
    with pytest.raises(errors.KernelError, match=r"cannot announce 192\.168\.12\.99 on ert-none0"):
        announce.SocketAnnouncer().send(
            "ert-none0", 999999, "02:00:c0:a8:0c:63", ipaddress.ip_address("192.168.12.99")
        )
