"""Rulesets the waiting container applies: in-place updates, DNS spreading, fingerprints."""

from __future__ import annotations

import dataclasses
import ipaddress

from egress_router.core import config, iptables_rules, ruleset

ENV = {
    "EGRESS_SOURCE": "192.168.12.99/24",
    "EGRESS_GATEWAY": "192.168.12.1",
}


def load(text: str, **env: str) -> config.Config:
    return config.load_config({**ENV, "EGRESS_DESTINATION": text, **env})


def with_answers(cfg: config.Config, **answers: list[str]) -> config.Config:
    """``cfg`` with its names resolved (as `resolve.resolve_config` does)."""
    rules = list(cfg.destinations.rules)
    for named in cfg.destinations.named:
        rules += [
            config.PortRule(named.port, named.proto, ipaddress.ip_address(a), named.remote_port,
                            line=named.line, host=named.host)
            for a in answers[named.host.replace(".", "_")]
        ]
    return dataclasses.replace(cfg, destinations=config.Destinations(tuple(rules),
                                                                     cfg.destinations.fallbacks))


def test_update_is_the_difference_and_leaves_unchanged_chains_alone() -> None:
    old = load("80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n53 udp 203.0.113.25\n")
    new = load("80 tcp 203.0.113.25\n8080 tcp 203.0.113.27 80\n5353 udp 203.0.113.25 53\n")
    assert ruleset.render_nftables_update(old, new) == (
        "# egress-router update: generated\n"
        # 8080 changed its destination: its counters start again; 53 is gone. No chain's
        # rules change (prerouting reads the maps): none is flushed.
        "delete element inet egress_router conns_v4 { tcp . 8080, udp . 53 }\n"
        "delete element inet egress_router traffic_v4 { tcp . 8080, udp . 53 }\n"
        "delete element inet egress_router redirect_v4 { tcp . 8080, udp . 53 }\n"
        "add element inet egress_router conns_v4 { tcp . 8080, udp . 5353 }\n"
        "add element inet egress_router traffic_v4 { tcp . 8080, udp . 5353 }\n"
        "add element inet egress_router redirect_v4 { tcp . 8080 : 203.0.113.27 . 80, "
        "udp . 5353 : 203.0.113.25 . 53 }\n"
    )


def test_update_is_refused_when_more_than_rules_change() -> None:
    old = load("80 tcp 203.0.113.25\n")
    assert ruleset.render_nftables_update(old, load("80 tcp 203.0.113.25\n", EGRESS_SOURCE=
                                                    "192.168.12.98/24")) is None
    assert ruleset.render_nftables_update(
        old, load("80 tcp 203.0.113.25\n", EGRESS_ROUTER_HTTP_PORT="9191")) is None
    # A fallback is a prerouting rule and an exception in the removed-rule check of the
    # redirected chain: an update can change it.
    update = ruleset.render_nftables_update(old, load("80 tcp 203.0.113.25\n203.0.113.27\n"))
    assert update is not None
    assert (
        "add rule inet egress_router prerouting meta nfproto ipv4 meta l4proto { tcp, udp, sctp }"
        " dnat ip to 203.0.113.27\n"
    ) in update
    assert update.startswith(
        "# egress-router update: generated\n"
        "flush chain inet egress_router prerouting\n"
        "flush chain inet egress_router redirected_v4\n"
    )
    assert update.endswith(
        "add rule inet egress_router redirected_v4 meta l4proto { tcp, udp, sctp } "
        "meta l4proto . ct original proto-dst @traffic_v4 accept\n"
        "add rule inet egress_router redirected_v4 ct reply ip saddr 203.0.113.27 accept\n"
        'add rule inet egress_router redirected_v4 counter drop comment "its rule was removed"\n'
    )


def test_a_name_with_several_addresses_spreads_over_all_of_them() -> None:
    cfg = with_answers(load("443 tcp api.example.com\n80 tcp 203.0.113.25\n"),
                       api_example_com=["203.0.113.26", "203.0.113.25"])
    text = ruleset.render_nftables(cfg)
    assert "\t\t\ttcp . 80 : 203.0.113.25 . 80,\n" in text
    assert (
        "\tmap spread_v4 {\n"
        "\t\ttype inet_proto . inet_service : verdict\n"
        "\t\telements = {\n"
        "\t\t\ttcp . 443 : jump spread_v4_tcp_443,\n"
        "\t\t}\n"
        "\t}\n\n"
        "\tchain spread_v4_tcp_443 {\n"
        "\t\tmeta l4proto tcp dnat ip to numgen inc mod 2 map "
        "{ 0 : 203.0.113.25 . 443, 1 : 203.0.113.26 . 443 }\n"
        "\t}\n"
    ) in text
    assert "\t\tmeta nfproto ipv4 meta l4proto . th dport vmap @spread_v4\n" in text
    # Counting sets know the rule once, whatever its number of addresses.
    assert "\t\telements = { tcp . 80, tcp . 443 }\n" in text


def test_update_moves_a_rule_between_one_and_several_addresses() -> None:
    base = load("443 tcp api.example.com\n")
    one = with_answers(base, api_example_com=["203.0.113.25"])
    two = with_answers(base, api_example_com=["203.0.113.25", "203.0.113.26"])
    up = ruleset.render_nftables_update(one, two)
    assert up is not None
    lines = up.splitlines()
    # The same name: its counters stay; it leaves the one-address map for a spread chain.
    assert not any("conns_v4" in line and "element" in line for line in lines)
    assert "delete element inet egress_router redirect_v4 { tcp . 443 }" in lines
    assert lines.index("add map inet egress_router spread_v4 "
                       "{ type inet_proto . inet_service : verdict; }") < lines.index(
        "add chain inet egress_router spread_v4_tcp_443")
    assert "add element inet egress_router spread_v4 { tcp . 443 : jump spread_v4_tcp_443 }" in (
        lines
    )
    down = ruleset.render_nftables_update(two, one)
    assert down is not None
    lines = down.splitlines()
    assert lines.index("delete element inet egress_router spread_v4 { tcp . 443 }") < (
        lines.index("delete chain inet egress_router spread_v4_tcp_443")
    ) < lines.index("delete map inet egress_router spread_v4")
    assert "add element inet egress_router redirect_v4 { tcp . 443 : 203.0.113.25 . 443 }" in (
        lines
    )


def test_unresolved_names_are_listed_as_comments() -> None:
    text = ruleset.render_nftables(load("443 tcp api.example.com 8443\nfallback.example.com\n"))
    assert text.splitlines()[1:3] == [
        "# line 1: 443 tcp api.example.com 8443: a host name, resolved when the rules are applied",
        "# line 2: fallback fallback.example.com: a host name, resolved when the rules are applied",
    ]


def test_named_fallback_with_several_addresses() -> None:
    cfg = load("80 tcp 203.0.113.25\n")
    fallbacks = tuple(
        config.Fallback(ipaddress.ip_address(a), line=2, host="fb.example.com")
        for a in ("203.0.113.27", "203.0.113.26")
    )
    cfg = dataclasses.replace(
        cfg, destinations=dataclasses.replace(cfg.destinations, fallbacks=fallbacks)
    )
    assert (
        "\t\tmeta nfproto ipv4 meta l4proto { tcp, udp, sctp } dnat ip to numgen inc mod 2 map "
        "{ 0 : 203.0.113.26, 1 : 203.0.113.27 }\n"
    ) in ruleset.render_nftables(cfg)
    iptables = iptables_rules.render_iptables(cfg, 4)
    assert (
        "-A EGRESS-ROUTER-PREROUTING -p tcp -m statistic "
        "--mode nth --every 2 --packet 0 -j DNAT --to-destination 203.0.113.26\n"
        "-A EGRESS-ROUTER-PREROUTING -p tcp "
        "-j DNAT --to-destination 203.0.113.27\n"
    ) in iptables


def test_http_port_is_accepted_and_kept_out_of_the_fallback() -> None:
    text = ruleset.render_nftables(load("80 tcp 203.0.113.25\n203.0.113.27\n"))
    lines = text.splitlines()
    assert lines.index("\t\ttcp dport 9090 return") < lines.index(
        "\t\tmeta nfproto ipv4 meta l4proto { tcp, udp, sctp } dnat ip to 203.0.113.27"
    )
    assert '\t\tiifname "eth0" tcp dport 9090 accept' in lines
    off = ruleset.render_nftables(load("80 tcp 203.0.113.25\n", EGRESS_ROUTER_HTTP_PORT="0"))
    assert "9090" not in off


def test_an_edit_of_most_rules_becomes_the_whole_table() -> None:
    def rules(first: int, count: int, address: str) -> str:
        return "".join(f"{first + i} tcp {address} 80\n" for i in range(count))

    old = load("80 tcp 203.0.113.25\n" + rules(20000, 1200, "203.0.113.25"))
    # 600 re-targeted and 600 removed: 1,800 element changes for 601 rules.
    new = load("80 tcp 203.0.113.25\n" + rules(20000, 600, "203.0.113.26"))
    assert ruleset.render_nftables_update(old, new) == ruleset.render_nftables(new)
    # 600 added to 1,201 kept: changed in place (the kept rules keep their counters).
    grown = load("80 tcp 203.0.113.25\n" + rules(20000, 1800, "203.0.113.25"))
    update = ruleset.render_nftables_update(old, grown)
    assert update is not None and update.startswith("# egress-router update")
    assert "delete element" not in update
    assert "add element inet egress_router redirect_v4 { tcp . 21200 : 203.0.113.25 . 80," in update
    # Below REBUILD_AT changes, in place even when nothing is kept.
    small = ruleset.render_nftables_update(load("80 tcp 203.0.113.25\n"),
                                           load("81 tcp 203.0.113.25\n"))
    assert small is not None and small.startswith("# egress-router update")
