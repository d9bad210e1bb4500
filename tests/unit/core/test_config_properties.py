"""Property tests: any input is either a valid configuration or a ConfigError."""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from egress_router.core import config, ruleset
from egress_router.kernel import files

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


# ------------------------------------------------------------------ every variable, any Unicode

# Every EGRESS_* variable the router reads, found from the module (a new one is fuzzed too).
ALL_VARIABLES = sorted(
    value for name, value in vars(config).items()
    if name.startswith("ENV_") and isinstance(value, str)
)
WAIT_VARIABLES = (config.ENV_RECONCILE, config.ENV_WATCH, config.ENV_DNS_MIN_TTL,
                  config.ENV_DNS_MAX_TTL)
VALID = {
    config.ENV_SOURCE: "192.168.12.99/24,2001:db8:12::99/64",
    config.ENV_GATEWAY: "192.168.12.1,2001:db8:12::1",
    config.ENV_DESTINATION: "80 tcp 203.0.113.25\n443 udp 2001:db8:113::1 8443\n203.0.113.27\n",
    config.ENV_MODE: "unit-test",
    config.ENV_BACKEND: "iptables",
    config.ENV_POD_INTERFACE: "eth0",
    config.ENV_INTERFACE: "macvlan0",
    config.ENV_DEBUG: "true",
    config.ENV_ANNOUNCE_COUNT: "3",
    config.ENV_ANNOUNCE_INTERVAL: "0.5",
    config.ENV_HTTP_PORT: "9090",
    config.ENV_RECONCILE: "10",
    config.ENV_WATCH: "1",
    config.ENV_DNS_MIN_TTL: "5",
    config.ENV_DNS_MAX_TTL: "300",
    config.ENV_SAMPLE: "30",
    config.ENV_HA: "vrrp",
    config.ENV_VRID: "51",
    config.ENV_METRICS_RULES: "1000",
}
# Every code point, surrogates included: os.environ holds undecodable bytes as U+DCxx.
ANY_CHAR = st.characters(exclude_categories=())
# Characters that sit next to the grammar's own: other digits, spaces, separators, quotes.
NEAR = st.sampled_from(list(
    "\u0661\u00b2\uff11\u2028\u2029\u0085\u00a0\u200b\x00\x0b\x0c\x1c\r\n\t \"'\\;#%/:,.+*_-"
    "\u212a\u0130e" "09"
))


def _mutated(valid: str) -> st.SearchStrategy[str]:
    """``valid`` with characters inserted, replaced or cut: inputs deep in the grammar."""
    @st.composite
    def build(draw: st.DrawFn) -> str:
        text = valid
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(text)))
            char = draw(st.one_of(NEAR, ANY_CHAR))
            how = draw(st.sampled_from(["insert", "replace", "cut"]))
            if how == "insert":
                text = text[:at] + char + text[at:]
            elif how == "replace":
                text = text[:at] + char + text[at + 1:]
            else:
                text = text[:at]
        return text

    return build()


def _values(variable: str) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(ANY_CHAR, max_size=40),
        st.text(NEAR, max_size=12),
        _mutated(VALID.get(variable, "x")),
    )


FUZZED = ALL_VARIABLES
# Paths that are not small regular files (test_config_input has the exact messages).
PATHS = st.sampled_from(["/dev/zero", "/dev/null", "/dev/stdin", "/", ".", "/etc/hostname",
                         "pyproject.toml", "/nonexistent/rules"])


@st.composite
def _environments(draw: st.DrawFn) -> dict[str, str]:
    """A valid environment with one or two variables replaced (or removed)."""
    env = dict(VALID)
    for variable in draw(st.lists(st.sampled_from(FUZZED), min_size=1, max_size=2, unique=True)):
        if draw(st.integers(0, 9)) == 0:
            env.pop(variable, None)
        elif variable == config.ENV_DESTINATION_FILE:
            env[variable] = draw(st.one_of(PATHS, st.text(ANY_CHAR, max_size=20)))
            if draw(st.booleans()):
                env.pop(config.ENV_DESTINATION, None)
        else:
            env[variable] = draw(_values(variable))
    return env


ENVIRONMENTS = _environments()


def test_every_variable_is_fuzzed() -> None:
    # Two name files: the destination file is fuzzed with paths below, the CNI configuration
    # (read by cni/netconf.py, not by load_config) by the CNI property tests.
    assert set(ALL_VARIABLES) - {config.ENV_DESTINATION_FILE, config.ENV_CNI_CONFIG} <= set(VALID)
    assert len(ALL_VARIABLES) >= 16


@settings(max_examples=600, deadline=None)
@given(ENVIRONMENTS)
def test_any_unicode_in_any_variable_is_a_config_or_a_config_error(env: dict[str, str]) -> None:
    try:
        cfg = files.load_config(env)
        settings_ = config.parse_wait_settings(env)
    except config.ConfigError as err:
        # A bad line of the destination file is named by the file's path.
        path = config.strip_space(env.get(config.ENV_DESTINATION_FILE, ""))
        event(f"refused: {'the file' if err.variable == path else err.variable}")
        assert str(err).startswith(f"cannot parse {err.variable}")
        assert err.variable in ALL_VARIABLES or err.variable == path
        return
    event("valid")
    # A valid configuration is one the ruleset can carry verbatim, in both backends.
    for name in (cfg.pod_interface, cfg.egress_interface):
        assert config.IFNAME.fullmatch(name)
    text = ruleset.render_nftables(cfg)
    assert f'iifname != "{cfg.pod_interface}" return' in text
    for family in cfg.families():
        assert f"-o {cfg.egress_interface} -j SNAT" in ruleset.render_iptables(cfg, family)
    for rule in cfg.destinations.rules:
        assert config.destination_problem(rule.address, cfg.sources, cfg.gateways) is None
    assert 0 <= cfg.http_port <= 65535 and 0 <= cfg.announce_count <= 100
    assert settings_.dns_min_ttl <= settings_.dns_max_ttl
