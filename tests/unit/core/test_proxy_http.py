"""The HTTP proxy's access rules: upstream's grammar, every bad line refused, squid's config.

Each refusal is asserted with its whole message (variable, line, text, what to do) and
sits next to an accepted neighbour; the rendered squid configuration is checked for the
order of the decisions (first match wins) and for carrying only validated values.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_router.core import config, proxy_http
from egress_router.core.proxy_http import Action, Kind

VAR = "EGRESS_HTTP_PROXY_DESTINATION"


def refused(text: str) -> str:
    with pytest.raises(config.ConfigError) as caught:
        proxy_http.parse_rules(text)
    return str(caught.value)


def test_upstream_example_parses_in_order() -> None:
    rules = proxy_http.parse_rules(
        "# allow the API\n"
        "!*.bad.example.com\n"
        "*.example.com\n"
        "203.0.113.0/24\n"
        "\n"
        "203.0.113.25\n"
        "2001:db8:113::/64\n"
        "Www.Example.ORG.\n"
        "*\n"
    )
    assert [(r.line, r.action, r.kind, r.value) for r in rules.rules] == [
        (2, Action.DENY, Kind.DOMAIN, "bad.example.com"),
        (3, Action.ALLOW, Kind.DOMAIN, "example.com"),
        (4, Action.ALLOW, Kind.NETWORK, "203.0.113.0/24"),
        (6, Action.ALLOW, Kind.NETWORK, "203.0.113.25/32"),
        (7, Action.ALLOW, Kind.NETWORK, "2001:db8:113::/64"),
        (8, Action.ALLOW, Kind.HOST, "www.example.org"),
    ]
    assert rules.allow_rest and rules.rest_line == 9


def test_without_a_last_star_everything_else_is_denied() -> None:
    rules = proxy_http.parse_rules("203.0.113.25\n")
    assert not rules.allow_rest
    assert rules.describe()[-1] == ("default", "deny", "everything else", "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # upstream's `^\w*$` blank-line test silently skipped a one-word line
        ("intranet", f"cannot parse {VAR} line 1 'intranet': 'intranet' is a single-label name "
         "(upstream's image silently ignored such a line); write the fully qualified name, "
         "such as intranet.example.com"),
        ("203.0.113.25\n*\n203.0.113.26", f"cannot parse {VAR} line 3 '203.0.113.26': an entry "
         "after the wildcard on line 2; '*' allows everything else and must be the last line"),
        ("10.0.0.5/24", f"cannot parse {VAR} line 1 '10.0.0.5/24': 10.0.0.5/24 has host bits "
         "set; write the network 10.0.0.0/24 (or the address alone)"),
        ("10.0.0.0/33", f"cannot parse {VAR} line 1 '10.0.0.0/33': invalid prefix length '33'; "
         "expected 0 to 32 for an IPv4 network"),
        ("2001:db8::/129", f"cannot parse {VAR} line 1 '2001:db8::/129': invalid prefix length "
         "'129'; expected 0 to 128 for an IPv6 network"),
        ("!", f"cannot parse {VAR} line 1 '!': '!' needs a destination after it ('!*' would "
         "deny everything else, which is already what happens without a last line '*')"),
        ("a.example.com b.example.com", f"cannot parse {VAR} line 1 'a.example.com "
         "b.example.com': one destination a line, printable ASCII without spaces; expected "
         f"{proxy_http.SYNTAX}"),
        ("api*.example.com", f"cannot parse {VAR} line 1 'api*.example.com': '*' only as "
         f"'*.<domain>' or alone on the last line; expected {proxy_http.SYNTAX}"),
        ("exa_mple.com", f"cannot parse {VAR} line 1 'exa_mple.com': invalid destination "
         f"'exa_mple.com'; expected {proxy_http.SYNTAX} (a name is letters, digits and '-' in "
         "dot-separated labels)"),
        ("127.0.0.1", f"cannot parse {VAR} line 1 '127.0.0.1': address '127.0.0.1' is a "
         "loopback address; expected a unicast address"),
        ("# nothing\n\n", f"cannot parse {VAR}: has no destinations; write one a line: "
         f"{proxy_http.SYNTAX}"),
        ("bücher.example", f"cannot parse {VAR} line 1 'bücher.example': one destination a "
         f"line, printable ASCII without spaces; expected {proxy_http.SYNTAX}"),
    ],
)
def test_bad_lines_are_refused_with_variable_line_and_text(text: str, message: str) -> None:
    assert refused(text) == message


@pytest.mark.parametrize(
    "text",
    ["intranet.example.com", "*.com", "203.0.113.0/24", "2001:db8::/32", "!api.example.com",
     "*", "203.0.113.25 # the API"],
)
def test_neighbours_of_the_refusals_are_accepted(text: str) -> None:
    proxy_http.parse_rules(text)


def test_squid_config_keeps_the_order_and_tags_each_decision() -> None:
    rules = proxy_http.parse_rules("!*.bad.example.com\n*.example.com\n2001:db8::/32\n")
    conf = proxy_http.render_squid(rules, port=8080, log_port=5140)
    access = [line for line in conf.splitlines() if line.startswith("http_access")]
    assert access == [
        "http_access deny to_pod_or_link_local note_to_pod_or_link_local",
        "http_access deny dest1 note1",
        "http_access allow dest2 note2",
        "http_access allow dest3 note3",
        "http_access deny note_default",
    ]
    assert "acl dest1 dstdomain -n .bad.example.com" in conf
    assert "acl dest3 dst 2001:db8::/32" in conf
    assert "http_port 8080" in conf.splitlines()
    assert "access_log udp://127.0.0.1:5140 logformat=egress buffer-size=1bytes" in conf
    assert proxy_http.render_squid(rules, port=3128, log_port=1, ipv6=False).count(
        "http_port 0.0.0.0:3128"
    ) == 1


def test_a_last_star_allows_the_rest() -> None:
    conf = proxy_http.render_access(proxy_http.parse_rules("!203.0.113.26\n*\n"))
    assert conf.rstrip().splitlines()[-1] == "http_access allow note_default"


def test_access_log_lines_parse() -> None:
    entry = proxy_http.parse_log_line(
        "1796669899.854 10.128.0.10 CONNECT 403 TCP_DENIED/403 203.0.113.26:443 3\n"
    )
    assert entry is not None
    assert (entry.client, entry.method, entry.status, entry.rule, entry.denied) == (
        "10.128.0.10", "CONNECT", 403, "3", True
    )
    assert proxy_http.parse_log_line("garbage") is None
    # A connection that sent no request (the readiness probe's) is no decision.
    probe = proxy_http.parse_log_line(
        "1796669899.854 127.0.0.1 - 0 NONE_NONE/000 error:transaction-end-before-headers -\n"
    )
    assert probe is not None and not probe.decided
    assert entry.decided


def test_file_and_inline_together_are_refused() -> None:
    with pytest.raises(config.ConfigError) as caught:
        proxy_http.read_rules_text(
            {VAR: "203.0.113.25", "EGRESS_HTTP_PROXY_DESTINATION_FILE": "/x"}, str
        )
    assert "set only one" in str(caught.value)


_LINE = st.text(
    alphabet=st.characters(min_codepoint=1, max_codepoint=0x7F), min_size=0, max_size=40
)


@given(st.lists(_LINE, min_size=1, max_size=6))
def test_any_text_parses_or_is_refused_and_nothing_unvalidated_reaches_squid(
    lines: list[str],
) -> None:
    text = "\n".join(lines)
    try:
        rules = proxy_http.parse_rules(text)
    except config.ConfigError as err:
        assert str(err).startswith(f"cannot parse {VAR}")
        return
    conf = proxy_http.render_access(rules)
    for line in conf.splitlines():
        if line.startswith("acl dest"):
            value = line.split()[-1]
            assert all(c.isalnum() or c in ".:/-" for c in value), line
