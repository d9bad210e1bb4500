"""The destination grammar and environment contract, good and bad inputs."""

from __future__ import annotations

import ipaddress

import pytest

from egress_router.core import config
from egress_router.core.config import ConfigError, Proto
from egress_router.kernel import files

SEED = """\
80   tcp 203.0.113.25
8080 tcp 203.0.113.26 80
8443 tcp 203.0.113.26 443
203.0.113.27
"""

BASE_ENV = {
    "EGRESS_SOURCE": "192.168.12.99/24",
    "EGRESS_GATEWAY": "192.168.12.1",
    "EGRESS_DESTINATION": SEED,
}

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


def test_seed_example_parses_to_rules_and_fallback() -> None:
    dest = config.parse_destinations(SEED)
    assert [(r.port, r.proto, r.address, r.remote_port, r.line) for r in dest.rules] == [
        (80, Proto.TCP, V4("203.0.113.25"), 80, 1),
        (8080, Proto.TCP, V4("203.0.113.26"), 80, 2),
        (8443, Proto.TCP, V4("203.0.113.26"), 443, 3),
    ]
    assert [(f.address, f.line) for f in dest.fallbacks] == [(V4("203.0.113.27"), 4)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80 TCP 203.0.113.25", (80, Proto.TCP, "203.0.113.25", 80)),
        ("53 Udp 203.0.113.25 5353", (53, Proto.UDP, "203.0.113.25", 5353)),
        ("5000 sctp 203.0.113.25", (5000, Proto.SCTP, "203.0.113.25", 5000)),
        ("\t443\ttcp\t2001:db8:113::25\t8443  ", (443, Proto.TCP, "2001:db8:113::25", 8443)),
        ("80 tcp 203.0.113.25 # the web server", (80, Proto.TCP, "203.0.113.25", 80)),
        ("80 tcp 203.0.113.25\r", (80, Proto.TCP, "203.0.113.25", 80)),
        ("1 tcp 203.0.113.25 65535", (1, Proto.TCP, "203.0.113.25", 65535)),
    ],
)
def test_good_rule_lines(text: str, expected: tuple[int, Proto, str, int]) -> None:
    (rule,) = config.parse_destinations(text).rules
    port, proto, address, remote = expected
    assert (rule.port, rule.proto, rule.address, rule.remote_port) == (
        port,
        proto,
        ipaddress.ip_address(address),
        remote,
    )


def test_comments_blank_lines_and_crlf_keep_line_numbers() -> None:
    text = "# header\r\n\r\n   \r\n80 tcp 203.0.113.25\r\n# c\r\n2001:db8:113::27 # v6 fallback\r\n"
    dest = config.parse_destinations(text)
    assert dest.rules[0].line == 4
    assert dest.fallbacks[0].address == V6("2001:db8:113::27")
    assert dest.fallbacks[0].line == 6


def test_fallback_only_is_a_valid_rule_set() -> None:
    dest = config.parse_destinations("203.0.113.27\n")
    assert dest.rules == ()
    assert dest.fallbacks[0].address == V4("203.0.113.27")


def test_same_port_for_tcp_and_udp_and_for_each_family_is_fine() -> None:
    text = "53 tcp 203.0.113.25\n53 udp 203.0.113.25\n53 tcp 2001:db8:113::25\n"
    assert len(config.parse_destinations(text).rules) == 3


def test_one_fallback_per_family_is_fine() -> None:
    dest = config.parse_destinations("80 tcp 203.0.113.25\n203.0.113.27\n2001:db8:113::27\n")
    assert [f.family for f in dest.fallbacks] == [4, 6]


BAD_LINES = [
    (
        "80 tcp 999.999.999.999",
        "cannot parse EGRESS_DESTINATION line 1 '80 tcp 999.999.999.999': invalid destination "
        "address '999.999.999.999'; expected an IPv4 address such as 203.0.113.25 or an IPv6 "
        "address such as 2001:db8::25",
    ),
    (
        "0 tcp 203.0.113.25",
        "cannot parse EGRESS_DESTINATION line 1 '0 tcp 203.0.113.25': port 0 is out of range; "
        "expected 1 to 65535",
    ),
    (
        "65536 tcp 203.0.113.25",
        "cannot parse EGRESS_DESTINATION line 1 '65536 tcp 203.0.113.25': port 65536 is out of "
        "range; expected 1 to 65535",
    ),
    (
        "80 tcp 203.0.113.25 70000",
        "cannot parse EGRESS_DESTINATION line 1 '80 tcp 203.0.113.25 70000': remote port 70000 "
        "is out of range; expected 1 to 65535",
    ),
    (
        "80 tcp 203.0.113.25 0",
        "cannot parse EGRESS_DESTINATION line 1 '80 tcp 203.0.113.25 0': remote port 0 is out of "
        "range; expected 1 to 65535",
    ),
    (
        "http tcp 203.0.113.25",
        "cannot parse EGRESS_DESTINATION line 1 'http tcp 203.0.113.25': invalid port 'http'; "
        "expected a number from 1 to 65535",
    ),
    (
        "-1 tcp 203.0.113.25",
        "cannot parse EGRESS_DESTINATION line 1 '-1 tcp 203.0.113.25': invalid port '-1'; "
        "expected a number from 1 to 65535",
    ),
    (
        "80 icmp 203.0.113.25",
        "cannot parse EGRESS_DESTINATION line 1 '80 icmp 203.0.113.25': unknown protocol 'icmp'; "
        "expected tcp, udp or sctp",
    ),
    (
        "80 tcp",
        "cannot parse EGRESS_DESTINATION line 1 '80 tcp': expected <port> <proto> <ip> "
        "[<remote_port>], or a last line <ip> (the fallback), got 2 fields",
    ),
    (
        "80 tcp 203.0.113.25 81 extra",
        "cannot parse EGRESS_DESTINATION line 1 '80 tcp 203.0.113.25 81 extra': expected <port> "
        "<proto> <ip> [<remote_port>], or a last line <ip> (the fallback), got 5 fields",
    ),
    (
        "80 tcp 127.0.0.1",
        "cannot parse EGRESS_DESTINATION line 1 '80 tcp 127.0.0.1': destination address "
        "'127.0.0.1' is a loopback address; expected a unicast address",
    ),
    (
        "80 tcp 224.0.0.1",
        "cannot parse EGRESS_DESTINATION line 1 '80 tcp 224.0.0.1': destination address "
        "'224.0.0.1' is a multicast address; expected a unicast address",
    ),
    (
        "0.0.0.0",
        "cannot parse EGRESS_DESTINATION line 1 '0.0.0.0': fallback address '0.0.0.0' is the "
        "unspecified address; expected a unicast address",
    ),
    (
        "203.0.113.0/24",
        "cannot parse EGRESS_DESTINATION line 1 '203.0.113.0/24': invalid fallback address "
        "'203.0.113.0/24'; expected an IPv4 address such as 203.0.113.25 or an IPv6 address "
        "such as 2001:db8::25",
    ),
    (
        "80 tcp 203.0.113.25\n203.0.113.27\n443 tcp 203.0.113.26",
        "cannot parse EGRESS_DESTINATION line 3 '443 tcp 203.0.113.26': a port rule after the "
        "fallback on line 2; the fallback must come after all port rules",
    ),
    (
        "203.0.113.27\n203.0.113.28",
        "cannot parse EGRESS_DESTINATION line 2 '203.0.113.28': a second IPv4 fallback; line 1 "
        "already is the IPv4 fallback and only one is allowed per family",
    ),
    (
        "80 tcp 203.0.113.25\n# dup\n80 TCP 203.0.113.26",
        "cannot parse EGRESS_DESTINATION line 3 '80 TCP 203.0.113.26': port 80/tcp is already "
        "redirected on line 1; each local port may have one rule per protocol",
    ),
    (
        "# nothing\n\n",
        "cannot parse EGRESS_DESTINATION: no destinations; expected at least one line: <port> "
        "<proto> <ip> [<remote_port>], or a last line <ip> (the fallback)",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_LINES)
def test_bad_destination_lines(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.parse_destinations(text)
    assert str(caught.value) == message
    assert caught.value.variable == "EGRESS_DESTINATION"


def test_error_names_the_file_when_read_from_a_file() -> None:
    with pytest.raises(ConfigError, match=r"^cannot parse /etc/rules line 2 'x': "):
        config.parse_destinations("80 tcp 203.0.113.25\nx\n", "/etc/rules")


def load(**overrides: str | None) -> config.Config:
    env = dict(BASE_ENV)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return files.load_config(env)


def test_environment_defaults() -> None:
    cfg = load()
    assert cfg.mode is config.Mode.LEGACY
    assert cfg.backend is config.Backend.NFTABLES
    assert (cfg.pod_interface, cfg.egress_interface) == ("eth0", "macvlan0")
    assert cfg.sources == (config.Source(ipaddress.ip_interface("192.168.12.99/24"), True),)
    assert cfg.gateways == (V4("192.168.12.1"),)
    assert not cfg.debug


def test_source_without_prefix_is_a_host_address_without_subnet_route() -> None:
    cfg = load(EGRESS_SOURCE="192.168.12.99")
    assert cfg.sources[0].interface == ipaddress.ip_interface("192.168.12.99/32")
    assert not cfg.sources[0].on_link


def test_dual_stack() -> None:
    cfg = load(
        EGRESS_SOURCE="2001:db8:12::99/64, 192.168.12.99/24",
        EGRESS_GATEWAY="192.168.12.1,2001:db8:12::1",
        EGRESS_DESTINATION="80 tcp 2001:db8:113::25\n80 tcp 203.0.113.25\n",
        EGRESS_ROUTER_MODE="INIT",
        EGRESS_ROUTER_BACKEND="iptables",
        EGRESS_INTERFACE="net1",
        EGRESS_ROUTER_DEBUG="true",
    )
    assert cfg.families() == (4, 6)
    assert cfg.gateway(6) == V6("2001:db8:12::1")
    assert cfg.mode is config.Mode.INIT
    assert cfg.backend is config.Backend.IPTABLES
    assert cfg.egress_interface == "net1"
    assert cfg.debug


BAD_ENV: list[tuple[dict[str, str | None], str]] = [
    (
        {"EGRESS_SOURCE": "192.168.12.99/33"},
        "cannot parse EGRESS_SOURCE '192.168.12.99/33': prefix length 33 is out of range for "
        "IPv4; expected 1 to 32",
    ),
    (
        {"EGRESS_SOURCE": "2001:db8:12::99/129"},
        "cannot parse EGRESS_SOURCE '2001:db8:12::99/129': prefix length 129 is out of range "
        "for IPv6; expected 1 to 128",
    ),
    (
        {"EGRESS_SOURCE": "192.168.12.99/x"},
        "cannot parse EGRESS_SOURCE '192.168.12.99/x': invalid prefix length 'x'; expected a "
        "number from 1 to 32",
    ),
    (
        {"EGRESS_SOURCE": "999.999.999.999"},
        "cannot parse EGRESS_SOURCE '999.999.999.999': invalid source address "
        "'999.999.999.999'; expected an IPv4 address such as 203.0.113.25 or an IPv6 address "
        "such as 2001:db8::25",
    ),
    (
        {"EGRESS_SOURCE": "192.168.12.0/24"},
        "cannot parse EGRESS_SOURCE '192.168.12.0/24': 192.168.12.0 is the network address of "
        "192.168.12.0/24",
    ),
    (
        {"EGRESS_SOURCE": "192.168.12.255/24"},
        "cannot parse EGRESS_SOURCE '192.168.12.255/24': 192.168.12.255 is the broadcast "
        "address of 192.168.12.0/24",
    ),
    (
        {"EGRESS_SOURCE": "192.168.12.99/24,192.168.13.98/24"},
        "cannot parse EGRESS_SOURCE '192.168.13.98/24': is not in the subnet of "
        "192.168.12.99/24; the IPv4 addresses form one pool and must share one subnet (write "
        "the same /len on each, or none)",
    ),
    (
        {"EGRESS_SOURCE": "192.168.12.99/24,192.168.12.98"},
        "cannot parse EGRESS_SOURCE '192.168.12.98': is not in the subnet of 192.168.12.99/24; "
        "the IPv4 addresses form one pool and must share one subnet (write the same /len on "
        "each, or none)",
    ),
    (
        {"EGRESS_SOURCE": "192.168.12.99/24,192.168.12.99/24"},
        "cannot parse EGRESS_SOURCE '192.168.12.99/24': is listed twice; list each address of "
        "the pool once",
    ),
    (
        {"EGRESS_SOURCE": ",".join(f"192.168.12.{n}/24" for n in range(100, 117))},
        "cannot parse EGRESS_SOURCE '192.168.12.116/24': more than 16 IPv4 addresses; "
        "expected a pool of at most 16",
    ),
    (
        {"EGRESS_SOURCE": ""},
        "cannot parse EGRESS_SOURCE: is empty; expected the reserved address, e.g. "
        "192.168.12.99/24",
    ),
    (
        {"EGRESS_SOURCE": None},
        "cannot parse EGRESS_SOURCE: is not set; set it to the reserved address",
    ),
    (
        {"EGRESS_GATEWAY": "192.168.12.1.1"},
        "cannot parse EGRESS_GATEWAY '192.168.12.1.1': invalid gateway address "
        "'192.168.12.1.1'; expected an IPv4 address such as 203.0.113.25 or an IPv6 address "
        "such as 2001:db8::25",
    ),
    (
        {"EGRESS_GATEWAY": "192.168.12.99"},
        "cannot parse EGRESS_GATEWAY: gateway 192.168.12.99 is the source address itself; "
        "expected the node's gateway",
    ),
    (
        {"EGRESS_GATEWAY": "2001:db8:12::1"},
        "cannot parse EGRESS_GATEWAY: has no IPv4 gateway but EGRESS_SOURCE has an IPv4 "
        "address; add the IPv4 gateway",
    ),
    (
        {"EGRESS_GATEWAY": "192.168.12.1,2001:db8:12::1"},
        "cannot parse EGRESS_SOURCE: has no IPv6 address but EGRESS_GATEWAY has an IPv6 "
        "gateway; add the IPv6 source or remove that gateway",
    ),
    (
        {"EGRESS_DESTINATION": "80 tcp 203.0.113.25\n443 tcp 2001:db8:113::25\n"},
        "cannot parse EGRESS_DESTINATION line 2: destination 2001:db8:113::25 is IPv6 but "
        "EGRESS_SOURCE has no IPv6 address; add one (e.g. EGRESS_SOURCE=<v4>,<v6>) or remove "
        "the line",
    ),
    (
        {"EGRESS_DESTINATION": None},
        "cannot parse EGRESS_DESTINATION: is not set; set it (or EGRESS_DESTINATION_FILE) to "
        "lines of <port> <proto> <ip> [<remote_port>], or a last line <ip> (the fallback)",
    ),
    (
        {"EGRESS_ROUTER_MODE": "daemon"},
        "cannot parse EGRESS_ROUTER_MODE: unknown value 'daemon'; expected one of 'init', "
        "'legacy', 'unit-test', 'http-proxy', 'dns-proxy'",
    ),
    (
        {"EGRESS_ROUTER_MODE": "http-proxy"},
        "cannot parse EGRESS_DESTINATION: is set, but EGRESS_ROUTER_MODE=http-proxy redirects "
        "nothing (its pod's proxy container decides where traffic goes); remove it, or use the "
        "mode init or legacy to redirect",
    ),
    (
        {"EGRESS_ROUTER_BACKEND": "ipfw"},
        "cannot parse EGRESS_ROUTER_BACKEND: unknown value 'ipfw'; expected one of 'nftables', "
        "'iptables'",
    ),
    (
        {"EGRESS_INTERFACE": "eth0"},
        "cannot parse EGRESS_INTERFACE: is the same interface as EGRESS_POD_INTERFACE ('eth0'); "
        "the router needs a pod-side and a physical-side interface",
    ),
    (
        {"EGRESS_POD_INTERFACE": "a-very-long-interface-name"},
        "cannot parse EGRESS_POD_INTERFACE: invalid interface name "
        "'a-very-long-interface-name': it is 26 bytes long and the kernel allows at most 15 "
        "(IFNAMSIZ); use the interface's real name",
    ),
    (
        {"EGRESS_ROUTER_DEBUG": "maybe"},
        "cannot parse EGRESS_ROUTER_DEBUG: invalid value 'maybe'; expected true or false",
    ),
    (
        {"EGRESS_DESTINATION_FILE": "/etc/egress/rules"},
        "cannot parse EGRESS_DESTINATION_FILE: is set together with EGRESS_DESTINATION; set "
        "only one of them",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_ENV)
def test_bad_environment(overrides: dict[str, str | None], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(**overrides)
    assert str(caught.value) == message


def test_destination_file_is_read_instead(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "rules"  # type: ignore[operator]
    path.write_text("9000 udp 203.0.113.27\n")
    cfg = load(EGRESS_DESTINATION=None, EGRESS_DESTINATION_FILE=str(path))
    assert cfg.destinations.rules[0].proto is Proto.UDP


def test_missing_destination_file_is_a_clear_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load(EGRESS_DESTINATION=None, EGRESS_DESTINATION_FILE="/nonexistent/rules")
    assert str(caught.value) == (
        "cannot parse EGRESS_DESTINATION_FILE: cannot read destination file "
        "'/nonexistent/rules': No such file or directory; mount the ConfigMap or fix the path"
    )


def test_bad_line_in_destination_file_names_the_file(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "rules"  # type: ignore[operator]
    path.write_text("80 tcp 203.0.113.25\n80 tcp 203.0.113.26\n")
    with pytest.raises(ConfigError) as caught:
        load(EGRESS_DESTINATION=None, EGRESS_DESTINATION_FILE=str(path))
    assert caught.value.variable == str(path)
    assert caught.value.line == 2


POOL = "192.168.12.99/24,192.168.12.100/24,192.168.12.101/24"


def test_several_addresses_of_one_family_form_a_pool_in_the_order_written() -> None:
    cfg = load(EGRESS_SOURCE=POOL)
    assert [str(s.interface) for s in cfg.pool(4)] == POOL.split(",")
    assert cfg.source(4) == cfg.pool(4)[0]
    assert cfg.families() == (4,)


def test_a_pool_without_prefix_and_a_pool_beside_the_other_family() -> None:
    cfg = load(
        EGRESS_SOURCE="2001:db8:12::99/64,192.168.12.99,192.168.12.100",
        EGRESS_GATEWAY="192.168.12.1,2001:db8:12::1",
    )
    assert [str(s.address) for s in cfg.sources] == [
        "192.168.12.99", "192.168.12.100", "2001:db8:12::99"
    ]
    assert not any(s.on_link for s in cfg.pool(4))
    assert cfg.families() == (4, 6)


def test_the_gateway_may_not_be_a_member_of_the_pool() -> None:
    with pytest.raises(ConfigError) as caught:
        load(EGRESS_SOURCE="192.168.12.99/24,192.168.12.1/24")
    assert str(caught.value) == (
        "cannot parse EGRESS_GATEWAY: gateway 192.168.12.1 is the source address itself; "
        "expected the node's gateway"
    )


def test_the_model_writes_the_grammar_it_was_read_from() -> None:
    # One writer (Destinations.lines, Source.text) for the ConfigMap, the Kubernetes objects and
    # the CNI configuration's environment: what it writes parses back to the same rules, by
    # address and by name, with the remote port written only where it differs.
    text = ("# comment\n80 tcp 203.0.113.25 80\n443 tcp api.example.com 8443\n"
            "8080 sctp 2001:db8:113::1\n53 udp 203.0.113.26 5353\nbackup.example.com\n")
    parsed = config.parse_destinations(text)
    assert parsed.lines() == [
        "80 tcp 203.0.113.25",
        "443 tcp api.example.com 8443",
        "8080 sctp 2001:db8:113::1",
        "53 udp 203.0.113.26 5353",
        "backup.example.com",
    ]
    assert config.parse_destinations("\n".join(parsed.lines())) == parsed
    sources = config.parse_sources("192.168.12.99/24,192.168.12.100/24,2001:db8:12::99")
    assert [s.text for s in sources] == [
        "192.168.12.99/24", "192.168.12.100/24", "2001:db8:12::99"
    ]
    assert config.parse_sources(",".join(s.text for s in sources)) == sources
