"""The DNS proxy's forwards: upstream's grammar, every bad line refused, HAProxy's config."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_router.core import config, proxy_dns

VAR = "EGRESS_DNS_PROXY_DESTINATION"


def refused(text: str, **kwargs: object) -> str:
    with pytest.raises(config.ConfigError) as caught:
        proxy_dns.parse_forwards(text, **kwargs)  # type: ignore[arg-type]
    return str(caught.value)


def test_upstream_lines_parse() -> None:
    forwards = proxy_dns.parse_forwards(
        "# the API\n80 203.0.113.25\n8443 api.Example.com 443\n\n"
        "9000 2001:db8:113::27\n9001 [2001:db8:113::27] 9000\n"
    )
    assert [(f.line, f.port, f.target, f.target_port, f.is_name, f.endpoint) for f in forwards] == [
        (2, 80, "203.0.113.25", 80, False, "203.0.113.25:80"),
        (3, 8443, "api.example.com", 443, True, "api.example.com:443"),
        (5, 9000, "2001:db8:113::27", 9000, False, "[2001:db8:113::27]:9000"),
        (6, 9001, "2001:db8:113::27", 9000, False, "[2001:db8:113::27]:9000"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("80 203.0.113.25\n80 203.0.113.26", f"cannot parse {VAR} line 2 '80 203.0.113.26': "
         "port 80 is already forwarded by line 1; each local port forwards to one destination"),
        ("0 203.0.113.25", f"cannot parse {VAR} line 1 '0 203.0.113.25': invalid port '0'; "
         "expected a number from 1 to 65535"),
        ("80 203.0.113.25 70000", f"cannot parse {VAR} line 1 '80 203.0.113.25 70000': invalid "
         "target port '70000'; expected a number from 1 to 65535"),
        ("80", f"cannot parse {VAR} line 1 '80': 1 fields; expected {proxy_dns.SYNTAX}"),
        ("80 intranet", f"cannot parse {VAR} line 1 '80 intranet': invalid target 'intranet'; "
         "expected an IPv4 address such as 203.0.113.25, an IPv6 address such as 2001:db8::25 "
         "or a host name such as api.example.com"),
        ("80 127.0.0.1", f"cannot parse {VAR} line 1 '80 127.0.0.1': target '127.0.0.1' is a "
         "loopback address; expected a unicast address"),
        ("80 169.254.169.254", f"cannot parse {VAR} line 1 '80 169.254.169.254': target "
         "169.254.169.254 is a link-local address, which no gateway forwards; expected the "
         "address of a service"),
        ("9090 203.0.113.25", f"cannot parse {VAR} line 1 '9090 203.0.113.25': port 9090 is "
         "the HTTP port; use another local port"),
        ("", f"cannot parse {VAR}: has no forwards; write one a line: {proxy_dns.SYNTAX}"),
    ],
)
def test_bad_lines_are_refused_with_variable_line_and_text(text: str, message: str) -> None:
    assert refused(text, reserved={9090: "the HTTP port"}) == message


@pytest.mark.parametrize(
    "text", ["80 203.0.113.25 8080", "53 dns.example.com", "9091 [::ffff:203.0.113.25]"]
)
def test_neighbours(text: str) -> None:
    if "::ffff" in text:  # an IPv4-mapped address is refused: it would bypass IPv4 checks
        assert "IPv4-mapped" in refused(text)
    else:
        proxy_dns.parse_forwards(text, reserved={9090: "the HTTP port"})


def test_haproxy_config_sizes_templates_and_resolves_through_the_pod() -> None:
    forwards = proxy_dns.parse_forwards("80 203.0.113.25\n443 api.example.com\n")
    conf = proxy_dns.render_haproxy(
        forwards,
        nameservers=(ipaddress.ip_address("172.30.0.10"), ipaddress.ip_address("fd00::10")),
        servers={"api.example.com": 3},
        stats_socket="/tmp/x.sock",
    )
    lines = [line.strip() for line in conf.splitlines()]
    assert "nameserver ns1 172.30.0.10:53" in lines
    assert "nameserver ns2 [fd00::10]:53" in lines
    assert "hold valid 10s" in lines
    assert "server dest1 203.0.113.25:80" in lines
    assert ("server-template dest 3 api.example.com:443 resolvers pod init-addr none "
            "resolve-prefer ipv4") in lines
    assert lines.count("bind 0.0.0.0:443") == 1 and lines.count("bind [::]:443 v6only") == 1
    literal_only = proxy_dns.render_haproxy(
        forwards[:1], nameservers=(), servers={}, stats_socket="/s", ipv6=False
    )
    assert "resolvers" not in literal_only and "[::]" not in literal_only


def test_nameservers_from_resolv_conf() -> None:
    text = "search svc.cluster.local\nnameserver 172.30.0.10\nnameserver fe80::1%eth0\n" \
        "nameserver 127.0.0.1 # lab\noptions ndots:5\n"
    assert proxy_dns.parse_nameservers(text) == (
        ipaddress.ip_address("172.30.0.10"), ipaddress.ip_address("127.0.0.1")
    )


def test_maxconn_fits_the_descriptor_limit() -> None:
    assert proxy_dns.maxconn_for(1048576) == 4000
    assert proxy_dns.maxconn_for(4096) == 2016
    assert proxy_dns.maxconn_for(10) == 16


_LINE = st.text(
    alphabet=st.characters(min_codepoint=1, max_codepoint=0x7F), min_size=0, max_size=40
)


@given(st.lists(_LINE, min_size=1, max_size=6))
def test_any_text_parses_or_is_refused_and_nothing_unvalidated_reaches_haproxy(
    lines: list[str],
) -> None:
    try:
        forwards = proxy_dns.parse_forwards("\n".join(lines))
    except config.ConfigError as err:
        assert str(err).startswith(f"cannot parse {VAR}")
        return
    conf = proxy_dns.render_haproxy(forwards, nameservers=(), servers={}, stats_socket="/s")
    for line in conf.splitlines():
        if line.startswith("    server"):
            endpoint = line.split()[-1] if line.startswith("    server ") else line.split()[3]
            assert all(c.isalnum() or c in ".:[]-" for c in endpoint), line
        if line.startswith("    bind"):
            assert line.split()[1].rsplit(":", 1)[1].isdigit(), line
