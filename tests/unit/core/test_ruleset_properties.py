"""Property tests of the nft ruleset: every valid rule becomes exactly one map element."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from egress_router.core import config, ruleset

RULES = st.lists(
    st.tuples(
        st.integers(1, 65535),
        st.sampled_from(list(config.Proto)),
        st.ip_addresses(v=4).filter(lambda a: a.is_global and not a.is_multicast),
        st.integers(1, 65535),
    ),
    min_size=1,
    max_size=40,
    unique_by=lambda r: (r[0], r[1]),
)


@settings(max_examples=100, deadline=None)
@given(RULES)
def test_every_valid_rule_becomes_exactly_one_map_element(
    rules: list[tuple[int, config.Proto, object, int]],
) -> None:
    text = "\n".join(f"{p} {proto.value} {a} {rp}" for p, proto, a, rp in rules)
    cfg = config.load_config(
        {"EGRESS_SOURCE": "192.168.12.99", "EGRESS_GATEWAY": "192.168.12.1",
         "EGRESS_DESTINATION": text, "EGRESS_ROUTER_HTTP_PORT": "0"}  # any port may be a rule
    )
    rendered = ruleset.render_nftables(cfg)
    for port, proto, address, remote in rules:
        assert f"\t\t\t{proto.value} . {port} : {address} . {remote}," in rendered
    elements = [line for line in rendered.splitlines() if line.startswith("\t\t\t")]
    assert len(elements) == len(rules)
