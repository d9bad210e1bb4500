"""Rule metrics read from the nft counters of a real listing (golden/kernel-listing.nft)."""

from __future__ import annotations

from pathlib import Path

from egress_router.core import config, listing

LISTING = (Path(__file__).parents[1] / "golden" / "kernel-listing.nft").read_text()


# ----------------------------------------------------------------------------- nft counters


def test_read_counters_from_a_real_listing() -> None:
    counters = listing.read_counters(LISTING.splitlines())
    assert set(counters) == {"conns_v4", "traffic_v4"}
    conns = {
        key: listing.lookup(counters, "conns_v4", key)
        for key in [(config.Proto.UDP, 53), (config.Proto.TCP, 80), (config.Proto.TCP, 8080),
                    (config.Proto.TCP, 443), (config.Proto.TCP, 9)]
    }
    assert conns == {
        (config.Proto.UDP, 53): (0, 0),
        (config.Proto.TCP, 80): (2, 120),
        (config.Proto.TCP, 8080): (0, 0),
        (config.Proto.TCP, 443): (0, 0),
        (config.Proto.TCP, 9): None,
    }
    assert listing.lookup(counters, "traffic_v4", (config.Proto.TCP, 80)) == (20, 1272)
    assert len(counters["traffic_v4"]) == 4
