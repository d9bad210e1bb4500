"""Upstream's proxy pod shapes through the real entry point, without privilege.

The init container with ``EGRESS_ROUTER_MODE=http-proxy``/``dns-proxy`` (nothing but
EGRESS_SOURCE and EGRESS_GATEWAY) plans the network and no redirect; the main container
picks its proxy from the one variable it is given; ``unit-test`` modes print and touch
nothing; a bad line is one message and exit 1.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from egress_router.core import config, ruleset
from egress_router.proxy import command

UPSTREAM_INIT = {"EGRESS_SOURCE": "192.168.12.99/24", "EGRESS_GATEWAY": "192.168.12.1"}


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egress_router", *args],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env},
        capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize("mode", ["http-proxy", "dns-proxy"])
def test_proxy_modes_need_no_destination_and_redirect_nothing(mode: str) -> None:
    cfg = config.load_config({**UPSTREAM_INIT, "EGRESS_ROUTER_MODE": mode})
    assert cfg.mode.value == mode and not cfg.mode.redirects
    assert cfg.destinations.rules == ()
    nft = ruleset.render_nftables(cfg)
    assert "dnat" not in nft.replace("ct status dnat", "")
    assert 'iifname "eth0" accept comment "the proxy listens on the pod side"' in nft
    assert "reject" not in nft
    # The rest of the door stands: replies only from the physical side, reserved source only.
    assert 'iifname "macvlan0" meta l4proto { tcp, udp, sctp } drop' in nft
    assert 'counter drop comment "not from a reserved address: dropped"' in nft
    ipt = ruleset.render_iptables(cfg, 4)
    assert "-A EGRESS-ROUTER-INPUT -i eth0 -j ACCEPT" in ipt
    assert "-j DNAT" not in ipt and "REJECT" not in ipt


def test_redirect_mode_keeps_refusing_unknown_ports_on_the_pod_side() -> None:
    cfg = config.load_config({**UPSTREAM_INIT, "EGRESS_DESTINATION": "80 tcp 203.0.113.25"})
    assert 'iifname "eth0" ct state new meta l4proto tcp reject with tcp reset' in (
        ruleset.render_nftables(cfg)
    )


def test_proxy_mode_refuses_a_destination_it_would_ignore() -> None:
    done = run([], {**UPSTREAM_INIT, "EGRESS_ROUTER_MODE": "http-proxy",
                    "EGRESS_DESTINATION": "80 tcp 203.0.113.25"})
    assert done.returncode == 1
    assert done.stderr.startswith(
        "egress-router: error: cannot parse EGRESS_DESTINATION: is set, but "
        "EGRESS_ROUTER_MODE=http-proxy redirects nothing"
    )


@pytest.mark.parametrize(
    ("env", "chosen"),
    [
        ({"EGRESS_HTTP_PROXY_DESTINATION": "*"}, "http-proxy"),
        ({"EGRESS_HTTP_PROXY_DESTINATION_FILE": "/rules"}, "http-proxy"),
        ({"EGRESS_DNS_PROXY_DESTINATION": "80 203.0.113.25"}, "dns-proxy"),
        ({**UPSTREAM_INIT, "EGRESS_HTTP_PROXY_DESTINATION": "*"}, None),
        ({}, None),
    ],
)
def test_the_environment_selects_the_proxy(env: dict[str, str], chosen: str | None) -> None:
    assert command.selected(env) == chosen


def test_http_proxy_unit_test_prints_the_access_rules_from_the_variable_alone() -> None:
    done = run([], {"EGRESS_HTTP_PROXY_DESTINATION": "!203.0.113.26\n203.0.113.0/24\n*\n",
                    "EGRESS_HTTP_PROXY_MODE": "unit-test"})
    assert done.returncode == 0, done.stderr
    assert "acl dest1 dst 203.0.113.26/32\n" in done.stdout
    assert "http_access deny dest1 note1\n" in done.stdout
    assert "http_access allow dest2 note2\n" in done.stdout
    assert done.stdout.endswith("http_access allow note_default\n")


def test_http_proxy_bad_line_is_one_message_and_exit_1() -> None:
    done = run(["http-proxy"], {"EGRESS_HTTP_PROXY_DESTINATION": "203.0.113.25\nintranet\n"})
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        "egress-router: error: cannot parse EGRESS_HTTP_PROXY_DESTINATION line 2 'intranet': "
        "'intranet' is a single-label name (upstream's image silently ignored such a line); "
        "write the fully qualified name, such as intranet.example.com\n"
    )


def test_dns_proxy_unit_test_prints_the_forwards_and_haproxy_config() -> None:
    done = run([], {"EGRESS_DNS_PROXY_DESTINATION": "80 203.0.113.25\n8443 203.0.113.26 443\n",
                    "EGRESS_DNS_PROXY_MODE": "unit-test"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        "# port 80 -> 203.0.113.25:80\n# port 8443 -> 203.0.113.26:443\n"
    )
    assert "    server dest1 203.0.113.26:443\n" in done.stdout


def test_dns_proxy_unit_test_takes_upstreams_server_counts_and_resolves_nothing() -> None:
    done = run([], {"EGRESS_DNS_PROXY_DESTINATION": "80 api.example.com\n81 db.example.com\n",
                    "EGRESS_DNS_PROXY_MODE": "unit-test",
                    "EGRESS_DNS_SERVERS": "api.example.com:3"})
    assert done.returncode == 0, done.stderr
    assert "    server-template dest 3 api.example.com:80 " in done.stdout
    assert "    server-template dest 1 db.example.com:81 " in done.stdout
    done = run([], {"EGRESS_DNS_PROXY_DESTINATION": "80 api.example.com\n",
                    "EGRESS_DNS_PROXY_MODE": "unit-test", "EGRESS_DNS_SERVERS": "api:x"})
    assert done.returncode == 1
    assert "EGRESS_DNS_SERVERS: invalid entry 'api:x'" in done.stderr


def test_dns_proxy_duplicate_port_is_refused() -> None:
    done = run(["dns-proxy"], {"EGRESS_DNS_PROXY_DESTINATION": "80 203.0.113.25\n80 203.0.113.26"})
    assert done.returncode == 1
    assert "line 2 '80 203.0.113.26': port 80 is already forwarded by line 1" in done.stderr
