"""Property tests: any input is either a valid configuration or a ConfigError."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from egress_router.core import config

TOKENS = st.one_of(
    st.integers(-5, 70000).map(str),
    st.sampled_from(["tcp", "udp", "sctp", "TCP", "icmp", "#", "", "\t", "\r"]),
    st.ip_addresses().map(str),
    st.text(max_size=12),
)
LINES = st.lists(TOKENS, max_size=6).map(" ".join)


@settings(max_examples=400, deadline=None)
@given(st.lists(LINES, max_size=12).map("\n".join))
def test_parser_never_raises_anything_but_config_error(text: str) -> None:
    try:
        dest = config.parse_destinations(text)
    except config.ConfigError as err:
        assert err.variable == "EGRESS_DESTINATION"
        assert str(err).startswith("cannot parse EGRESS_DESTINATION")
        return
    assert dest.rules or dest.fallbacks or dest.named or dest.named_fallbacks
    keys = [(r.family, r.proto, r.port) for r in dest.rules]
    assert len(keys) == len(set(keys))
    assert all(1 <= r.port <= 65535 and 1 <= r.remote_port <= 65535 for r in dest.rules)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(
    st.sampled_from([
        "EGRESS_SOURCE", "EGRESS_GATEWAY", "EGRESS_DESTINATION", "EGRESS_ROUTER_MODE",
        "EGRESS_ROUTER_BACKEND", "EGRESS_INTERFACE", "EGRESS_ROUTER_DEBUG",
    ]),
    st.one_of(st.text(max_size=30), st.ip_addresses().map(str), LINES),
))
def test_environment_never_raises_anything_but_config_error(env: dict[str, str]) -> None:
    try:
        cfg = config.load_config(env)
    except config.ConfigError as err:
        assert str(err).startswith(f"cannot parse {err.variable}")
        assert err.variable.startswith("EGRESS_")
        return
    assert cfg.sources
    assert {s.family for s in cfg.sources} == {g.version for g in cfg.gateways}
    assert cfg.destinations.families() <= {s.family for s in cfg.sources}
