"""Hostile input to the configuration: names, numbers, addresses and the destination file.

Every refusal is asserted with its exact message (variable, line, value and what
to do), and every refusal has a neighbour that is accepted, so a table row cannot
pass because everything is refused.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

from egress_router.core import config, ruleset
from egress_router.core.config import ConfigError
from egress_router.kernel import files

DUAL = {
    "EGRESS_SOURCE": "192.168.12.99/24,2001:db8:12::99/64",
    "EGRESS_GATEWAY": "192.168.12.1,2001:db8:12::1",
    "EGRESS_DESTINATION": "80 tcp 203.0.113.25",
}
KERNEL_CHARS = "expected ASCII letters, digits, '_', '-' and '.' (not first), at most 15"
VERBATIM = (
    "which the ruleset and ip(8) cannot carry verbatim; rename the interface to ASCII "
    "letters, digits, '_', '-' and '.' (not first), at most 15"
)


def load(**overrides: str) -> config.Config:
    return config.load_config({**DUAL, **overrides})


def refused(**overrides: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(**overrides)
    return str(caught.value)


# ----------------------------------------------------------------- interface names

IFNAME_REFUSED = [
    # The injection of the issue: a quote ends the nft string, ';' starts a new statement.
    ('m";accept', f"it contains '\"' (U+0022), {VERBATIM}"),
    ('m"; accept #', f"it contains ' ' (U+0020), which the kernel refuses in an interface "
                     f"name; {KERNEL_CHARS}"),
    # A trailing newline used to pass the name check ('$' matches before it).
    ("macvlan0\n", "it contains U+000A (a control or invisible character), which the kernel "
                   f"refuses in an interface name; {KERNEL_CHARS}"),
    ("mac\tvlan", "it contains U+0009 (a control or invisible character), which the kernel "
                  f"refuses in an interface name; {KERNEL_CHARS}"),
    ("mac\\vlan", f"it contains '\\\\' (U+005C), {VERBATIM}"),
    ("mac'vlan", f"it contains \"'\" (U+0027), {VERBATIM}"),
    ("mac\x00", f"it contains U+0000 (a control or invisible character), {VERBATIM}"),
    ("mac\x7f", f"it contains U+007F (a control or invisible character), {VERBATIM}"),
    ("macvl\u00e4n", f"it contains '\u00e4' (U+00E4, not ASCII), {VERBATIM}"),
    ("mac\u200bvlan", f"it contains U+200B (a control or invisible character), {VERBATIM}"),
    ("eth+", f"it contains '+' (U+002B), {VERBATIM}"),  # an iptables wildcard
    ("eth*", f"it contains '*' (U+002A), {VERBATIM}"),  # an nft wildcard
    ("eth!", f"it contains '!' (U+0021), {VERBATIM}"),
    ("-eth", f"it contains '-' (U+002D) at the start, {VERBATIM}"),
    (".eth", f"it contains '.' (U+002E) at the start, {VERBATIM}"),
    ("a/b", f"it contains '/' (U+002F), which the kernel refuses in an interface name; "
            f"{KERNEL_CHARS}"),
    ("a:b", f"it contains ':' (U+003A), which the kernel refuses in an interface name; "
            f"{KERNEL_CHARS}"),
    (".", f"the kernel refuses '.' and '..' as interface names; {KERNEL_CHARS}"),
    ("..", f"the kernel refuses '.' and '..' as interface names; {KERNEL_CHARS}"),
    ("", f"it is empty; expected a name such as eth0 ({KERNEL_CHARS[9:]})"),
    ("a" * 16, "it is 16 bytes long and the kernel allows at most 15 (IFNAMSIZ); use the "
               "interface's real name"),
    # IFNAMSIZ counts bytes: eight characters of two bytes each do not fit.
    ("\u00e9" * 8, "it is 16 bytes long and the kernel allows at most 15 (IFNAMSIZ); use the "
                   "interface's real name"),
]


@pytest.mark.parametrize(("name", "cause"), IFNAME_REFUSED)
@pytest.mark.parametrize("variable", ["EGRESS_INTERFACE", "EGRESS_POD_INTERFACE"])
def test_interface_names_are_held_to_the_kernel_and_the_ruleset(
    variable: str, name: str, cause: str
) -> None:
    assert refused(**{variable: name}) == (
        f"cannot parse {variable}: invalid interface name {name!r}: {cause}"
    )


@pytest.mark.parametrize(
    "name", ["ens3", "macvlan0", "enp0s31f6", "eth0.100", "br-1a2b3c4d5e6f", "veth_x", "a" * 15,
             "net1", "_x"]
)
def test_real_interface_names_are_accepted_and_pasted_verbatim(name: str) -> None:
    cfg = load(EGRESS_INTERFACE=name)
    assert cfg.egress_interface == name
    assert f'oifname "{name}" meta nfproto ipv4 snat ip to 192.168.12.99' in (
        ruleset.render_nftables(cfg)
    )
    assert f"-o {name} -j SNAT" in ruleset.render_iptables(cfg, 4)


def test_the_ruleset_refuses_a_config_that_skipped_the_parser() -> None:
    cfg = load()
    for bad in ('eth0";accept', "eth0\n", "eth0 ", "eth+"):
        forged = config.Config(cfg.sources, cfg.gateways, cfg.destinations, pod_interface=bad)
        for render in (ruleset.render_nftables, lambda c: ruleset.render_iptables(c, 4)):
            with pytest.raises(ValueError, match="unvalidated interface name"):
                render(forged)
    named = config.Destinations((), named_fallbacks=(config.NamedFallback("a.example\n;x"),))
    with pytest.raises(ValueError, match="unvalidated host name"):
        ruleset.render_nftables(config.Config(cfg.sources, cfg.gateways, named))
    zoned = config.Destinations((config.PortRule(
        80, config.Proto.TCP, ipaddress.IPv6Address('2001:db8:113::1%x";accept'), 80),))
    with pytest.raises(ValueError, match="has a zone"):
        ruleset.render_nftables(config.Config(cfg.sources, cfg.gateways, zoned))


# ----------------------------------------------------------------- numbers

NUMBERS_REFUSED = [
    ("EGRESS_ANNOUNCE_COUNT", "\u00b2", "expected a whole number 0 to 100"),  # isdigit() is True
    ("EGRESS_ANNOUNCE_COUNT", "\u0663", "expected a whole number 0 to 100"),  # int() takes it
    ("EGRESS_ANNOUNCE_COUNT", "1_0", "expected a whole number 0 to 100"),
    ("EGRESS_ANNOUNCE_COUNT", "+3", "expected a whole number 0 to 100"),
    ("EGRESS_ANNOUNCE_COUNT", "3\u2028", "expected a whole number 0 to 100"),
    ("EGRESS_ANNOUNCE_INTERVAL", "nan", "expected seconds from 0 to 60"),
    ("EGRESS_ANNOUNCE_INTERVAL", "inf", "expected seconds from 0 to 60"),
    ("EGRESS_ANNOUNCE_INTERVAL", "1_0", "expected seconds from 0 to 60"),
    ("EGRESS_ANNOUNCE_INTERVAL", "1e1", "expected seconds from 0 to 60"),
    ("EGRESS_ANNOUNCE_INTERVAL", "\u0661.5", "expected seconds from 0 to 60"),
    ("EGRESS_ANNOUNCE_INTERVAL", "-0", "expected seconds from 0 to 60"),
    ("EGRESS_ROUTER_HTTP_PORT", "\u0669\u0660\u0669\u0660",
     "expected a port from 1 to 65535, or 0 to turn the HTTP server (/healthz, /readyz, "
     "/metrics) off"),
    ("EGRESS_ROUTER_HTTP_PORT", "\uff19\uff10\uff19\uff10",  # fullwidth digits
     "expected a port from 1 to 65535, or 0 to turn the HTTP server (/healthz, /readyz, "
     "/metrics) off"),
]


@pytest.mark.parametrize(("variable", "value", "expected"), NUMBERS_REFUSED)
def test_numbers_are_ascii_digits_only(variable: str, value: str, expected: str) -> None:
    assert refused(**{variable: value}) == (
        f"cannot parse {variable}: invalid value {value!r}; {expected}"
    )


def test_ascii_numbers_next_to_them_are_accepted() -> None:
    cfg = load(EGRESS_ANNOUNCE_COUNT=" 7 ", EGRESS_ANNOUNCE_INTERVAL=".5",
               EGRESS_ROUTER_HTTP_PORT="9091")
    assert (cfg.announce_count, cfg.announce_interval, cfg.http_port) == (7, 0.5, 9091)
    settings = config.parse_wait_settings({"EGRESS_ROUTER_RECONCILE_SECONDS": "2.5"})
    assert settings.reconcile == 2.5


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EGRESS_ROUTER_RECONCILE_SECONDS", "nan"),
        ("EGRESS_ROUTER_WATCH_SECONDS", "1_0"),
        ("EGRESS_ROUTER_DNS_MIN_TTL", "\u0661\u0660"),
        ("EGRESS_ROUTER_DNS_MAX_TTL", "inf"),
        ("EGRESS_ROUTER_DNS_MAX_TTL", "1e3"),
    ],
)
def test_wait_seconds_are_ascii_decimals(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.parse_wait_settings({variable: value})
    assert str(caught.value).startswith(f"cannot parse {variable}: invalid value {value!r}; "
                                        "expected seconds from ")


def test_huge_digit_strings_are_an_error_not_a_traceback() -> None:
    # int() refuses more than 4300 digits with a ValueError of its own.
    digits = "9" * 5000
    with pytest.raises(ConfigError) as caught:
        load(EGRESS_DESTINATION=f"{digits} tcp 203.0.113.25")
    assert str(caught.value) == (
        f"cannot parse EGRESS_DESTINATION line 1 '{digits[:300]}...(5017 characters)': "
        f"invalid port '{digits[:300]}...(5000 characters)'; expected a number from 1 to 65535"
    )
    assert "invalid value" in refused(EGRESS_ROUTER_HTTP_PORT="0" * 5000)
    assert "invalid prefix length" in refused(EGRESS_SOURCE="192.168.12.99/" + "0" * 5000)


@pytest.mark.parametrize(
    ("source", "prefix"), [("192.168.12.99/\u00b2\u2074", "\u00b2\u2074"),
                           ("192.168.12.99/\u0662\u0664", "\u0662\u0664")]
)
def test_prefix_lengths_are_ascii(source: str, prefix: str) -> None:
    assert refused(EGRESS_SOURCE=source) == (
        f"cannot parse EGRESS_SOURCE {source!r}: invalid prefix length {prefix!r}; expected a "
        "number from 1 to 32"
    )


# ----------------------------------------------------------------- addresses

SERVICE = "expected the address of a service"
BEHIND = "expected the address of a service behind the gateway"
DESTINATIONS_REFUSED = [
    ("80 tcp fe80::1%eth0", "destination address 'fe80::1%eth0' has a zone (%...); the router "
                            "always uses its egress interface, write 'fe80::1' without the zone"),
    # The zone is kept verbatim by ipaddress and str() pastes it back into the ruleset.
    ('80 tcp 2001:db8:113::1%x";accept', "destination address '2001:db8:113::1%x\";accept' has "
     "a zone (%...); the router always uses its egress interface, write '2001:db8:113::1' "
     "without the zone"),
    ("80 tcp ::ffff:203.0.113.25", "destination address '::ffff:203.0.113.25' is an "
     "IPv4-mapped IPv6 address; write the IPv4 address 203.0.113.25 instead"),
    ("80 tcp 192.168.12.99", "destination address 192.168.12.99 is the router's own source "
                             f"address (a redirect to itself); {BEHIND}"),
    ("80 tcp 2001:db8:12::99", "destination address 2001:db8:12::99 is the router's own "
                               f"source address (a redirect to itself); {BEHIND}"),
    ("80 tcp 192.168.12.1", f"destination address 192.168.12.1 is the gateway, not a service "
                            f"behind it; {BEHIND}"),
    ("2001:db8:12::1", f"fallback address 2001:db8:12::1 is the gateway, not a service behind "
                       f"it; {BEHIND}"),
    ("80 tcp 192.168.12.255", "destination address 192.168.12.255 is the broadcast address of "
                              f"the egress subnet 192.168.12.0/24; {BEHIND}"),
    ("192.168.12.0", "fallback address 192.168.12.0 is the network address of the egress "
                     f"subnet 192.168.12.0/24; {BEHIND}"),
    ("80 tcp 169.254.1.1", "destination address 169.254.1.1 is a link-local address, which no "
                           f"gateway forwards; {SERVICE}"),
    ("80 tcp fe80::1", "destination address fe80::1 is a link-local address, which no gateway "
                       f"forwards; {SERVICE}"),
    ("80 tcp 0.1.2.3", "destination address 0.1.2.3 is in 0.0.0.0/8 (\"this network\"), which "
                       f"no host answers; {SERVICE}"),
    ("80 tcp 240.0.0.1", "destination address 240.0.0.1 is in a reserved range, which no host "
                         f"answers; {SERVICE}"),
    ("80 tcp 127.0.0.1", "destination address '127.0.0.1' is a loopback address; expected a "
                         "unicast address"),
    ("80 tcp ::1", "destination address '::1' is a loopback address; expected a unicast address"),
    ("80 tcp 224.0.0.1", "destination address '224.0.0.1' is a multicast address; expected a "
                         "unicast address"),
    ("80 tcp ff02::1", "destination address 'ff02::1' is a multicast address; expected a "
                       "unicast address"),
    ("0.0.0.0", "fallback address '0.0.0.0' is the unspecified address; expected a unicast "
                "address"),
    ("80 tcp 255.255.255.255", "destination address '255.255.255.255' is the broadcast "
                               "address; expected a unicast address"),
]


@pytest.mark.parametrize(("line", "cause"), DESTINATIONS_REFUSED)
def test_destinations_the_router_refuses(line: str, cause: str) -> None:
    text = f"# rules\n\n{line}\n"
    assert refused(EGRESS_DESTINATION=text) == (
        f"cannot parse EGRESS_DESTINATION line 3 {line!r}: {cause}"
    )


def test_destinations_next_to_the_refused_ones_are_accepted() -> None:
    cfg = load(EGRESS_DESTINATION="80 tcp 192.168.12.98\n81 tcp 192.168.12.254\n"
                                  "82 tcp 203.0.113.255\n83 tcp 2001:db8:113::1\n"
                                  "84 tcp 10.128.0.3\n")
    assert [str(r.address) for r in cfg.destinations.rules] == [
        "192.168.12.98", "192.168.12.254", "203.0.113.255", "2001:db8:113::1", "10.128.0.3"]
    # Without /len the source has no subnet: .255 of it is just an address.
    cfg = load(EGRESS_SOURCE="192.168.12.99,2001:db8:12::99",
               EGRESS_DESTINATION="80 tcp 192.168.12.255")
    assert str(cfg.destinations.rules[0].address) == "192.168.12.255"


@pytest.mark.parametrize(
    ("variable", "value", "cause"),
    [
        ("EGRESS_GATEWAY", "192.168.12.1,fe80::1%macvlan0",
         "gateway address 'fe80::1%macvlan0' has a zone (%...); the router always uses its "
         "egress interface, write 'fe80::1' without the zone"),
        ("EGRESS_SOURCE", "::ffff:192.168.12.99",
         "source address '::ffff:192.168.12.99' is an IPv4-mapped IPv6 address; write the IPv4 "
         "address 192.168.12.99 instead"),
        ("EGRESS_SOURCE", "\u2028192.168.12.99",
         "invalid source address '\\u2028192.168.12.99'; expected an IPv4 address such as "
         "203.0.113.25 or an IPv6 address such as 2001:db8::25"),
    ],
)
def test_sources_and_gateways_refuse_zones_mapped_and_unicode_spaces(
    variable: str, value: str, cause: str
) -> None:
    part = value.rsplit(",", maxsplit=1)[-1]
    assert refused(**{variable: value}) == f"cannot parse {variable} {part!r}: {cause}"


def test_a_link_local_gateway_without_zone_is_fine() -> None:
    cfg = load(EGRESS_GATEWAY="192.168.12.1,fe80::1")
    assert str(cfg.gateway(6)) == "fe80::1"


def test_dns_answers_and_literals_share_one_rule() -> None:
    cfg = load()
    problem = config.destination_problem
    a = ipaddress.ip_address
    pod = (ipaddress.ip_network("10.128.0.0/24"),)
    assert problem(a("203.0.113.25"), cfg.sources, cfg.gateways, pod) is None
    assert problem(a("10.128.0.3"), cfg.sources, cfg.gateways, pod) == (
        "10.128.0.3 is in the pod network 10.128.0.0/24, where connections come from"
    )
    assert problem(a("192.168.12.1"), cfg.sources, cfg.gateways) == (
        "192.168.12.1 is the gateway, not a service behind it"
    )


# ----------------------------------------------------------------- rule lines

RULE = "a rule holds only printable ASCII (a comment after '#' may hold anything)"


@pytest.mark.parametrize(
    ("text", "line", "raw", "cause"),
    [
        ("80 tcp 203.0.113.25\x0b", 1, "80 tcp 203.0.113.25\x0b",
         f"contains U+000B (a control or invisible character); {RULE}"),
        # FS splits a line for str.splitlines(), not for an editor: still line 1.
        ("80 tcp 203.0.113.25\x1c81 tcp 203.0.113.26\n82 tcp 203.0.113.27", 1,
         "80 tcp 203.0.113.25\x1c81 tcp 203.0.113.26",
         f"contains U+001C (a control or invisible character); {RULE}"),
        ("# \u00fcber\n80 tcp 203.0.113.25\u2028", 2, "80 tcp 203.0.113.25\u2028",
         f"contains U+2028 (a control or invisible character); {RULE}"),
        ("80\u00a0tcp 203.0.113.25", 1, "80\u00a0tcp 203.0.113.25",
         f"contains U+00A0 (a control or invisible character); {RULE}"),
        ("\u0668\u0660 tcp 203.0.113.25", 1, "\u0668\u0660 tcp 203.0.113.25",
         f"contains '\u0668' (U+0668, not ASCII); {RULE}"),
        # U+212A KELVIN SIGN lower-cases to an ASCII 'k'.
        ("80 tcp \u212a.example.com", 1, "80 tcp \u212a.example.com",
         f"contains '\u212a' (U+212A, not ASCII); {RULE}"),
        ("80 tcp 203.0.113.25\x00", 1, "80 tcp 203.0.113.25\x00",
         f"contains U+0000 (a control or invisible character); {RULE}"),
    ],
)
def test_rule_lines_are_printable_ascii(text: str, line: int, raw: str, cause: str) -> None:
    assert refused(EGRESS_DESTINATION=text) == (
        f"cannot parse EGRESS_DESTINATION line {line} {raw!r}: {cause}"
    )


def test_comments_may_hold_anything_and_crlf_is_fine() -> None:
    cfg = load(EGRESS_DESTINATION="# \u00fcber \u2028 \x0b\r\n80 tcp 203.0.113.25 # caf\u00e9\r\n")
    assert [(r.port, r.line) for r in cfg.destinations.rules] == [(80, 2)]


def test_host_names_are_ascii_and_fully_matched() -> None:
    with pytest.raises(ConfigError) as caught:
        config.parse_host("\u212api.example.com", "X", what="destination address")
    assert "invalid destination address '\u212api.example.com'" in str(caught.value)
    with pytest.raises(ConfigError):
        config.parse_host("api.example.com\n", "X", what="destination address")
    assert config.parse_host("API.Example.com", "X", what="x") == "api.example.com"


# ----------------------------------------------------------------- the destination file

FILE_ERROR = "cannot parse EGRESS_DESTINATION_FILE: cannot read destination file {path!r}: {cause}"
NOT_REGULAR = ("it is {kind}, not a regular file; point EGRESS_DESTINATION_FILE at a file (the "
               "mounted ConfigMap's key)")


def load_file(path: Path | str) -> config.Config:
    env = {**DUAL, "EGRESS_DESTINATION_FILE": str(path), "EGRESS_ROUTER_HTTP_PORT": "0"}
    del env["EGRESS_DESTINATION"]
    return files.load_config(env)


def file_refused(path: Path | str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    return str(caught.value)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "rules"
    os.mkfifo(fifo)  # no writer: a plain open() would block forever
    assert file_refused(fifo) == FILE_ERROR.format(
        path=str(fifo), cause=NOT_REGULAR.format(kind="a FIFO (named pipe)"))


def test_a_device_is_refused_without_reading_it() -> None:
    assert file_refused("/dev/zero") == FILE_ERROR.format(
        path="/dev/zero", cause=NOT_REGULAR.format(kind="a character device"))


def test_a_socket_and_a_directory_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        assert file_refused(path) == FILE_ERROR.format(
            path=str(path), cause=NOT_REGULAR.format(kind="a socket"))
    assert file_refused(tmp_path) == FILE_ERROR.format(
        path=str(tmp_path), cause=NOT_REGULAR.format(kind="a directory"))


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "rules"
    with path.open("wb") as fh:
        fh.truncate(config.DESTINATION_FILE_LIMIT + 1)  # sparse: costs no disk
    assert file_refused(path) == FILE_ERROR.format(
        path=str(path),
        cause=f"it is larger than {config.DESTINATION_FILE_LIMIT} bytes "
              f"({config.DESTINATION_FILE_LIMIT + 1} bytes); the limit holds 100,000 rules: "
              "split the rules over several routers or drop comments",
    )


def test_100000_rules_fit_in_the_limit(tmp_path: Path) -> None:
    # The longest ordinary rule: a five-digit port, sctp, a full IPv6 address, a remote port,
    # and a comment.
    line = "65535 sctp 2001:db8:113:ffff:ffff:ffff:ffff:ffff 65535  # the billing service\n"
    assert len(line) * 100_000 < config.DESTINATION_FILE_LIMIT
    path = tmp_path / "rules"
    path.write_text("".join(
        f"{1 + n % 50_000} {'tcp' if n < 50_000 else 'udp'} 203.0.113.{1 + n % 250}  # n{n}\n"
        for n in range(100_000)
    ))
    assert len(load_file(path).destinations.rules) == 100_000


def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "rules"
    path.write_bytes(b"80 tcp 203.0.113.25\n81 tcp 203.0.113.\xff\n")
    assert file_refused(path) == FILE_ERROR.format(
        path=str(path), cause="line 2 is not UTF-8 (byte 0xff); save the file as UTF-8")


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    assert file_refused(path) == FILE_ERROR.format(
        path=str(path), cause="No such file or directory; mount the ConfigMap or fix the path")


@pytest.mark.parametrize("path", ["/tmp/rules\x00", "/tmp/\ud800rules"])
def test_a_path_no_file_system_can_name_is_an_error(path: str) -> None:
    # Found by the property test: os.stat raised ValueError for these.
    assert file_refused(path) == FILE_ERROR.format(
        path=path, cause="it is not a valid path; fix EGRESS_DESTINATION_FILE")


def test_a_symlink_to_a_regular_file_is_followed(tmp_path: Path) -> None:
    # The kubelet mounts a ConfigMap key as a symlink into ..data/.
    (tmp_path / "real").write_text("80 tcp 203.0.113.25\n")
    (tmp_path / "rules").symlink_to("real")
    assert len(load_file(tmp_path / "rules").destinations.rules) == 1
    (tmp_path / "dev").symlink_to("/dev/zero")
    assert "a character device" in file_refused(tmp_path / "dev")


@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0660", "1_000", "0" * 5000])
def test_the_metrics_rules_count_is_ascii_digits(value: str) -> None:
    # '\u00b2'.isdigit() is True and int('\u00b2') raises: this was a traceback.
    with pytest.raises(ConfigError) as caught:
        config.parse_wait_settings({config.ENV_METRICS_RULES: value})
    assert str(caught.value) == (
        f"cannot parse {config.ENV_METRICS_RULES}: invalid value {config.clip(value)!r}; "
        "expected a count from 0 to 1000000"
    )
