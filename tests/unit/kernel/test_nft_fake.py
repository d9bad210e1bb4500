"""The fake nft keeps a model of the table: after any sequence of applies, the whole table.

The property that makes it worth having: an in-place update (`render_nftables_update`) turns
the table of the old configuration into exactly the table a fresh apply of the new one makes,
for any pair of rule sets (pools of several destinations a key, fallbacks, both families).
"""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress_router.core import config, listing, ruleset
from egress_router.kernel import nft

ENV = {
    "EGRESS_SOURCE": "192.168.12.99/24,2001:db8:12::99/64",
    "EGRESS_GATEWAY": "192.168.12.1,2001:db8:12::1",
}
ADDRESSES = ["203.0.113.25", "203.0.113.26", "203.0.113.27", "2001:db8:113::25"]
RULE = st.tuples(st.sampled_from([53, 80, 443, 8080, 9000]), st.sampled_from(["tcp", "udp"]),
                 st.sampled_from(ADDRESSES), st.sampled_from([0, 80, 5353]))


def cfg_of(rules: list[tuple[int, str, str, int]], fallback: str | None) -> config.Config:
    lines, seen = [], set()
    for port, proto, address, remote in rules:
        family = 6 if ":" in address else 4
        if (port, proto, family) in seen:
            continue
        seen.add((port, proto, family))
        lines.append(f"{port} {proto} {address}" + (f" {remote}" if remote else ""))
    lines += [fallback] if fallback else []
    if not lines:
        lines = ["80 tcp 203.0.113.25"]
    return config.load_config({**ENV, "EGRESS_DESTINATION": "\n".join(lines)})


def spread(cfg: config.Config, port: int, extra: str) -> config.Config:
    """A second address for one rule, as a DNS name with two answers gives."""
    rules = list(cfg.destinations.rules)
    first = next((r for r in rules if r.port == port and r.family == 4), None)
    if first is not None:
        rules.append(dataclasses.replace(first, address=ipaddress.ip_address(extra)))
    return dataclasses.replace(
        cfg, destinations=config.Destinations(tuple(rules), cfg.destinations.fallbacks)
    )


def table(fake: nft.FakeNft) -> dict[str, tuple[list[str], list[str]]]:
    text = fake.list_table_text()
    assert text is not None
    return {k: (b.lines, sorted(b.elements)) for k, b in listing.parse_table(text).blocks.items()}


def fresh(cfg: config.Config) -> nft.FakeNft:
    fake = nft.FakeNft()
    fake.run(ruleset.render_nftables(cfg))
    return fake


def test_the_listing_is_the_whole_table_after_an_update_not_the_delta() -> None:
    old = cfg_of([(80, "tcp", "203.0.113.25", 0), (53, "udp", "203.0.113.25", 0)], None)
    new = cfg_of([(80, "tcp", "203.0.113.26", 0), (9000, "udp", "203.0.113.25", 0)], None)
    fake = fresh(old)
    update = ruleset.render_nftables_update(old, new)
    assert update is not None and "table inet egress_router {" not in update
    fake.run(update)
    text = fake.list_table_text()
    assert text is not None and "chain forward {" in text  # untouched by the update
    assert table(fake) == table(fresh(new))
    assert "tcp . 80 : 203.0.113.26 . 80" in listing.parse_table(text).elements(
        "map", ruleset.redirect_map(4))


def test_a_transaction_for_another_table_is_refused_and_changes_nothing() -> None:
    fake = fresh(cfg_of([(80, "tcp", "203.0.113.25", 0)], None))
    before = fake.list_table_text()
    with pytest.raises(nft.NftError):
        fake.run("flush chain ip nat PREROUTING\n")
    with pytest.raises(nft.NftError):
        fake.run("add element inet egress_router no_such_set { tcp . 1 }\n")
    assert fake.list_table_text() == before
    fake.run(ruleset.render_nftables_removal())
    assert fake.list_table_text() is None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(RULE, max_size=6), st.sampled_from([None, "203.0.113.27", "2001:db8:113::27"]),
    st.lists(RULE, max_size=6), st.sampled_from([None, "203.0.113.27", "2001:db8:113::27"]),
    st.sampled_from([None, 80, 443]),
)
def test_any_update_makes_the_table_a_fresh_apply_makes(
    old_rules: list[tuple[int, str, str, int]], old_fallback: str | None,
    new_rules: list[tuple[int, str, str, int]], new_fallback: str | None,
    spread_port: int | None,
) -> None:
    old, new = cfg_of(old_rules, old_fallback), cfg_of(new_rules, new_fallback)
    if spread_port is not None:
        new = spread(new, spread_port, "203.0.113.28")
    fake = fresh(old)
    update = ruleset.render_nftables_update(old, new)
    fake.run(update if update is not None else ruleset.render_nftables(new))
    assert table(fake) == table(fresh(new))
