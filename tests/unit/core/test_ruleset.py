"""Golden rulesets: the exact text each backend gets, reviewed as readable files.

Regenerate after an intended change with ``UPDATE_GOLDEN=1 pytest tests/unit``
and review the diff like code.
"""

from __future__ import annotations

import pytest

from egress_router.core import config, iptables_rules, ruleset
from support.golden import DUAL_ENV, SEED_ENV, check_golden

NO_FALLBACK_ENV = {**SEED_ENV, "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n"}


@pytest.mark.parametrize(
    ("name", "env"),
    [("seed", SEED_ENV), ("dual", DUAL_ENV), ("no-fallback", NO_FALLBACK_ENV)],
)
def test_nftables_golden(name: str, env: dict[str, str]) -> None:
    check_golden(f"{name}.nft", ruleset.render_nftables(config.load_config(env)))


@pytest.mark.parametrize(("name", "env"), [("seed", SEED_ENV), ("dual", DUAL_ENV)])
def test_iptables_golden(name: str, env: dict[str, str]) -> None:
    cfg = config.load_config(env)
    text = "".join(iptables_rules.render_iptables(cfg, family) for family in cfg.families())
    check_golden(f"{name}.iptables", text)


def test_map_elements_are_sorted_and_one_per_rule() -> None:
    rules = "\n".join(f"{port} tcp 203.0.113.25" for port in range(10000, 0, -1))
    # Ports 1-10000 include 9090, the HTTP port by default: turn the server off.
    cfg = config.load_config(
        {**SEED_ENV, "EGRESS_DESTINATION": rules, "EGRESS_ROUTER_HTTP_PORT": "0"}
    )
    text = ruleset.render_nftables(cfg)
    elements = [line for line in text.splitlines() if line.startswith("\t\t\ttcp . ")]
    assert len(elements) == 10000
    assert elements[0] == "\t\t\ttcp . 1 : 203.0.113.25 . 1,"
    assert elements[-1] == "\t\t\ttcp . 10000 : 203.0.113.25 . 10000,"
    # One map lookup, however many rules: the chain does not grow.
    assert text.count("dnat ip to") == 1


def test_iptables_jumps_are_added_only_when_missing() -> None:
    cfg = config.load_config(SEED_ENV)
    fresh = iptables_rules.render_iptables(cfg, 4)
    assert "-I PREROUTING 1 -j EGRESS-ROUTER-PREROUTING" in fresh
    rerun = iptables_rules.render_iptables(cfg, 4, set(ruleset.IPT_JUMPS))
    assert "-I " not in rerun
    assert rerun.count("-A EGRESS-ROUTER-PREROUTING") == fresh.count("-A EGRESS-ROUTER-PREROUTING")


def test_removal_touches_only_our_table() -> None:
    assert ruleset.render_nftables_removal() == (
        "add table inet egress_router\ndelete table inet egress_router\n"
    )


POOL_ENV = {**NO_FALLBACK_ENV, "EGRESS_SOURCE": "192.168.12.99/24,192.168.12.100/24"}


def test_nftables_spreads_new_connections_over_the_pool() -> None:
    text = ruleset.render_nftables(config.load_config(POOL_ENV))
    assert (
        '\t\toifname "macvlan0" meta nfproto ipv4 snat ip to jhash ip saddr . th sport mod 2 map '
        "{ 0 : 192.168.12.99, 1 : 192.168.12.100 }\n"
    ) in text
    single = ruleset.render_nftables(config.load_config(NO_FALLBACK_ENV))
    assert '\t\toifname "macvlan0" meta nfproto ipv4 snat ip to 192.168.12.99\n' in single


def test_iptables_spreads_new_connections_over_the_pool() -> None:
    text = iptables_rules.render_iptables(config.load_config(POOL_ENV), 4)
    snat = [line for line in text.splitlines() if "SNAT" in line]
    assert snat == [
        "-A EGRESS-ROUTER-POSTROUTING -o macvlan0 -m statistic --mode nth --every 2 --packet 0 "
        "-j SNAT --to-source 192.168.12.99",
        "-A EGRESS-ROUTER-POSTROUTING -o macvlan0 -j SNAT --to-source 192.168.12.100",
    ]
