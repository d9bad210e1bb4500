"""DNS-named destinations and the HTTP port in the one destination parser."""

from __future__ import annotations

import pytest

from egress_router.core import config
from egress_router.core.config import ConfigError, Proto

ENV = {"EGRESS_SOURCE": "192.168.12.99/24,2001:db8:12::99/64",
       "EGRESS_GATEWAY": "192.168.12.1,2001:db8:12::1"}


def test_a_host_name_is_accepted_where_an_address_is() -> None:
    dest = config.parse_destinations(
        "443 tcp API.Example.com 8443\n80 tcp 203.0.113.25\nfallback.example.org.\n"
    )
    assert dest.named == (config.NamedRule(443, Proto.TCP, "api.example.com", 8443, line=1),)
    assert [r.port for r in dest.rules] == [80]
    assert dest.named_fallbacks == (config.NamedFallback("fallback.example.org.", line=3),)
    assert dest.hosts() == ("api.example.com", "fallback.example.org.")
    assert dest.families() == frozenset({4})  # names have no family until resolved


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "443 tcp api_x.example.com",
            "cannot parse EGRESS_DESTINATION line 1 '443 tcp api_x.example.com': invalid "
            "destination address 'api_x.example.com'; expected an IPv4 address such as "
            "203.0.113.25, an IPv6 address such as 2001:db8::25 or a host name such as "
            "api.example.com",
        ),
        (
            "443 tcp localhost",
            "cannot parse EGRESS_DESTINATION line 1 '443 tcp localhost': invalid destination "
            "address 'localhost'; expected an IPv4 address such as 203.0.113.25, an IPv6 address "
            "such as 2001:db8::25 or a host name such as api.example.com",
        ),
        (
            "443 tcp api.example.com\n443 tcp 2001:db8:113::25",
            "cannot parse EGRESS_DESTINATION line 2 '443 tcp 2001:db8:113::25': port 443/tcp is "
            "already redirected on line 1; each local port may have one rule per protocol",
        ),
        (
            "443 tcp 203.0.113.25\n443 TCP api.example.com",
            "cannot parse EGRESS_DESTINATION line 2 '443 TCP api.example.com': port 443/tcp is "
            "already redirected on line 1; each local port may have one rule per protocol",
        ),
        (
            "203.0.113.27\nfallback.example.com",
            "cannot parse EGRESS_DESTINATION line 2 'fallback.example.com': a second fallback; "
            "line 1 already is a fallback, and a fallback given as a host name must be the only "
            "one",
        ),
        (
            "fallback.example.com\n2001:db8:113::27",
            "cannot parse EGRESS_DESTINATION line 2 '2001:db8:113::27': a second fallback; line 1 "
            "already is a fallback, and a fallback given as a host name must be the only one",
        ),
        (
            "fallback.example.com\n80 tcp api.example.com",
            "cannot parse EGRESS_DESTINATION line 2 '80 tcp api.example.com': a port rule after "
            "the fallback on line 1; the fallback must come after all port rules",
        ),
        (
            "http tcp api.example.com",
            "cannot parse EGRESS_DESTINATION line 1 'http tcp api.example.com': invalid port "
            "'http'; expected a number from 1 to 65535",
        ),
        (
            "80 tcp " + "a" * 64 + ".example.com",
            f"cannot parse EGRESS_DESTINATION line 1 '80 tcp {'a' * 64}.example.com': invalid "
            f"destination address '{'a' * 64}.example.com'; expected an IPv4 address such as "
            "203.0.113.25, an IPv6 address such as 2001:db8::25 or a host name such as "
            "api.example.com",
        ),
    ],
)
def test_bad_host_name_lines(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.parse_destinations(text)
    assert str(caught.value) == message


def test_the_http_port_is_configurable_and_reserved() -> None:
    cfg = config.load_config({**ENV, "EGRESS_DESTINATION": "80 tcp 203.0.113.25"})
    assert cfg.http_port == 9090
    off = config.load_config({**ENV, "EGRESS_DESTINATION": "9090 tcp 203.0.113.25",
                              "EGRESS_ROUTER_HTTP_PORT": "0"})
    assert off.http_port == 0
    udp = config.load_config({**ENV, "EGRESS_DESTINATION": "9090 udp 203.0.113.25"})
    assert udp.destinations.rules[0].port == 9090  # only TCP is reserved
    with pytest.raises(ConfigError) as caught:
        config.load_config({**ENV, "EGRESS_ROUTER_HTTP_PORT": "9191",
                            "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n9191 tcp x.example.com"})
    assert str(caught.value) == (
        "cannot parse EGRESS_DESTINATION line 2 '9191 tcp x.example.com': port 9191/tcp is the "
        "router's own HTTP port (EGRESS_ROUTER_HTTP_PORT, /healthz, /readyz, /metrics); use "
        "another local port, or set EGRESS_ROUTER_HTTP_PORT to a free port (0 turns the HTTP "
        "server off)"
    )
    with pytest.raises(ConfigError) as caught:
        config.load_config({**ENV, "EGRESS_DESTINATION": "80 tcp 203.0.113.25",
                            "EGRESS_ROUTER_HTTP_PORT": "70000"})
    assert str(caught.value) == (
        "cannot parse EGRESS_ROUTER_HTTP_PORT: invalid value '70000'; expected a port from 1 to "
        "65535, or 0 to turn the HTTP server (/healthz, /readyz, /metrics) off"
    )


def test_a_config_of_only_names_is_valid() -> None:
    cfg = config.load_config({**ENV, "EGRESS_DESTINATION": "443 tcp api.example.com\n"})
    assert cfg.destinations.rules == ()
    assert cfg.destinations.hosts() == ("api.example.com",)
