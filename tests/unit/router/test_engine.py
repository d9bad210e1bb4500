"""The engine's order of operations and failure handling, driven through fakes."""

from __future__ import annotations

import ipaddress

import pytest

from egress_router.core import config, plan
from egress_router.kernel import announce, iptables, netlink, nft, preflight
from egress_router.router import engine
from support.golden import SEED_ENV, check_golden

ENV = {
    "EGRESS_SOURCE": "192.168.12.99/24,2001:db8:12::99/64",
    "EGRESS_GATEWAY": "192.168.12.1,2001:db8:12::1",
    "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n80 tcp 2001:db8:113::25\n203.0.113.27\n",
    "EGRESS_ANNOUNCE_COUNT": "3",
    "EGRESS_ANNOUNCE_INTERVAL": "0.5",
}


def make() -> tuple[config.Config, netlink.FakeNetlink, nft.FakeNft, announce.FakeAnnouncer]:
    return (
        config.load_config(ENV),
        netlink.FakeNetlink(),
        nft.FakeNft(),
        announce.FakeAnnouncer(),
    )


def test_setup_applies_then_configures_interfaces_then_announces() -> None:
    cfg, links, runner, announcer = make()
    slept: list[float] = []
    report = engine.setup(
        cfg, links, engine.NftablesFirewall(runner), announcer, sleep=slept.append
    )
    # No `nft -c` first: the apply is one transaction the kernel checks whole.
    assert runner.checked == []
    assert runner.applied == [engine.NftablesFirewall(runner).render(cfg)]
    assert [type(s) for s in links.applied] == [
        plan.SetSysctls,
        plan.LinkUp,
        plan.SetAddress, plan.SetRoute, plan.KeepPodReturnPath, plan.SetRoute,
        plan.EnableForwarding,
        plan.SetAddress, plan.SetRoute, plan.KeepPodReturnPath, plan.SetRoute,
        plan.EnableForwarding,
    ]
    assert announcer.sent == [
        ("macvlan0", "192.168.12.99"), ("macvlan0", "2001:db8:12::99")
    ] * 3
    assert slept == [0.5, 0.5]
    assert list(report.stages) == [
        "check interfaces", "apply nftables ruleset", "interface plan", "announce",
    ]


def test_missing_interface_fails_before_any_side_effect() -> None:
    cfg, links, runner, announcer = make()
    del links.links["macvlan0"]
    with pytest.raises(engine.ApplyError, match="interface 'macvlan0' does not exist"):
        engine.setup(cfg, links, engine.NftablesFirewall(runner), announcer)
    assert runner.checked == runner.applied == links.applied == announcer.sent == []


def test_refused_ruleset_changes_nothing_else() -> None:
    cfg, links, runner, announcer = make()
    runner.fail = "Error: syntax error"
    with pytest.raises(engine.ApplyError, match="Error: syntax error"):
        engine.setup(cfg, links, engine.NftablesFirewall(runner), announcer)
    assert links.applied == []
    assert announcer.sent == []


def test_netlink_failure_is_reported_with_the_step() -> None:
    cfg, links, runner, announcer = make()
    links.fail_on = plan.SetRoute
    with pytest.raises(engine.ApplyError, match=r"cannot ip route replace 192\.168\.12\.1/32"):
        engine.setup(cfg, links, engine.NftablesFirewall(runner), announcer)


def test_stale_backend_is_removed_after_ours_is_in_place() -> None:
    cfg, links, runner, announcer = make()
    old = iptables.FakeIptables(
        saved={4: "*nat\n-A PREROUTING -j EGRESS-ROUTER-PREROUTING\nCOMMIT\n", 6: ""}
    )
    engine.setup(
        cfg, links, engine.NftablesFirewall(runner), announcer,
        sleep=lambda _s: None, stale=engine.IptablesFirewall(old),
    )
    assert any("-D PREROUTING -j EGRESS-ROUTER-PREROUTING" in p for _f, p in old.restored)


def test_iptables_backend_checks_and_applies_each_family() -> None:
    cfg, links, _runner, announcer = make()
    fake = iptables.FakeIptables()
    engine.setup(cfg, links, engine.IptablesFirewall(fake), announcer, sleep=lambda _s: None)
    assert [f for f, _p in fake.tested] == [4, 6]
    assert [f for f, _p in fake.restored] == [4, 6]
    assert "--to-destination [2001:db8:113::25]:80" in fake.restored[1][1]


def test_iptables_backend_closes_a_family_without_a_source() -> None:
    cfg = config.load_config({
        "EGRESS_SOURCE": "192.168.12.99", "EGRESS_GATEWAY": "192.168.12.1",
        "EGRESS_DESTINATION": "80 tcp 203.0.113.25", "EGRESS_ROUTER_HTTP_PORT": "9090",
    })
    fake = iptables.FakeIptables(
        saved={4: "", 6: "*filter\n-A INPUT -j EGRESS-ROUTER-INPUT\nCOMMIT\n"}
    )
    engine.IptablesFirewall(fake).apply(cfg)
    assert [family for family, _ in fake.restored] == [4, 6]
    closed = fake.restored[1][1].splitlines()
    assert not [line for line in closed if "DNAT" in line or "SNAT" in line or ("ACCEPT" in line
                and "FORWARD" in line)]
    assert "-A EGRESS-ROUTER-ANTISPOOF -i macvlan0 -j DROP" in closed
    assert "-A EGRESS-ROUTER-INPUT -i macvlan0 -j DROP" in closed
    assert "-A EGRESS-ROUTER-INPUT -p tcp --dport 9090 -j DROP" in closed
    assert "-A EGRESS-ROUTER-OUTPUT -o macvlan0 -j DROP" in closed
    # The jump already there is not added a second time; the missing ones are.
    assert "-I INPUT 1 -j EGRESS-ROUTER-INPUT" not in closed
    assert "-I FORWARD 1 -j EGRESS-ROUTER-FORWARD" in closed


def test_announcement_failure_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    cfg, links, runner, _announcer = make()

    class Broken:
        def send(self, ifname: str, ifindex: int, mac: str, address: object) -> None:
            raise announce.AnnounceError(f"cannot announce {address} on {ifname}: refused")

    engine.setup(cfg, links, engine.NftablesFirewall(runner), Broken(), sleep=lambda _s: None)
    assert "cannot announce 192.168.12.99 on macvlan0: refused" in caplog.text
    assert runner.applied  # the router is set up all the same


def test_plan_without_prefix_has_no_subnet_note() -> None:
    cfg = config.load_config({**ENV, "EGRESS_SOURCE": "192.168.12.99,2001:db8:12::99"})
    text = plan.describe_plan(cfg)
    assert "kernel adds the subnet route" not in text
    assert "ip route replace 192.168.12.1/32 dev macvlan0 scope link" in text
    address = next(s for s in plan.plan_interfaces(cfg) if isinstance(s, plan.SetAddress))
    assert address.interface == ipaddress.ip_interface("192.168.12.99/32")


def test_removing_absent_iptables_rules_touches_nothing() -> None:
    fake = iptables.FakeIptables(saved={4: "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n", 6: ""})
    engine.IptablesFirewall(fake).remove()
    assert fake.restored == []  # a payload would create empty nat/filter tables




def test_unit_test_mode_report_golden() -> None:
    check_golden("seed.unit-test", engine.unit_test_report(config.load_config(SEED_ENV)))


def test_plan_places_every_pool_address_and_routes_once() -> None:
    pool = "192.168.12.99/24,192.168.12.100/24,192.168.12.101/24"
    cfg = config.load_config({**ENV, "EGRESS_SOURCE": pool, "EGRESS_GATEWAY": "192.168.12.1",
                              "EGRESS_DESTINATION": "80 tcp 203.0.113.25"})
    steps = plan.plan_interfaces(cfg)
    addresses = [s for s in steps if isinstance(s, plan.SetAddress)]
    assert [str(s.interface) for s in addresses] == pool.split(",")
    assert {frozenset(map(str, s.wanted())) for s in addresses} == {frozenset(pool.split(","))}
    assert sum(isinstance(s, plan.SetRoute) for s in steps) == 2  # gateway host + default
    assert [str(a.address) for a in plan.plan_announcements(cfg)] == [
        "192.168.12.99", "192.168.12.100", "192.168.12.101"
    ]
    text = plan.describe_plan(cfg)
    assert text.count("kernel adds the subnet route") == 1
    assert "(nodad; global IPv4 addresses outside the pool removed)" in text


# ------------------------------------------------------------------ pre-flight


def test_preflight_lists_every_problem_before_any_change() -> None:
    cfg, links, runner, announcer = make()
    probe = preflight.FakeProbe(missing={"nft"})
    with pytest.raises(engine.ApplyError) as caught:
        engine.setup(cfg, links, engine.NftablesFirewall(runner), announcer, probe=probe)
    assert str(caught.value) == (
        "cannot set up the egress router: nft not found on PATH; install it in the image "
        "(nftables, iptables, iproute2); nothing was changed"
    )
    assert runner.checked == runner.applied == [] and links.applied == [] == announcer.sent


def test_preflight_checks_every_sysctl_the_plan_writes() -> None:
    cfg, links, runner, announcer = make()
    probe = preflight.FakeProbe(readonly={"net/ipv6/conf/all/forwarding"})
    with pytest.raises(engine.ApplyError) as caught:
        engine.setup(cfg, links, engine.NftablesFirewall(runner), announcer, probe=probe)
    assert str(caught.value) == (
        "cannot set up the egress router: sysctl net.ipv6.conf.all.forwarding is not writable "
        "(read-only /proc/sys?); run the container privileged or with a writable /proc/sys; "
        "nothing was changed"
    )
    assert runner.applied == [] and links.applied == []
    assert {"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} <= set(probe.asked)


def test_preflight_names_the_programs_of_each_backend() -> None:
    cfg, links, _runner, _announcer = make()
    ipt = engine.IptablesFirewall(iptables.FakeIptables())
    assert engine.required_programs(cfg, links, ipt) == (
        "iptables-restore", "iptables-save", "ip6tables-restore", "ip6tables-save")
    v4 = config.load_config({**ENV, "EGRESS_SOURCE": "192.168.12.99/24",
                             "EGRESS_GATEWAY": "192.168.12.1",
                             "EGRESS_DESTINATION": "80 tcp 203.0.113.25"})
    assert engine.required_programs(v4, links, ipt) == ("iptables-restore", "iptables-save")
    assert engine.required_programs(cfg, links, engine.NftablesFirewall(nft.FakeNft())) == (
        "nft",)


def test_both_missing_interfaces_are_named_at_once() -> None:
    cfg, links, runner, announcer = make()
    links.links.clear()
    with pytest.raises(engine.ApplyError) as caught:
        engine.setup(cfg, links, engine.NftablesFirewall(runner), announcer,
                     probe=preflight.FakeProbe(missing={"nft"}))
    message = str(caught.value)
    assert "interface 'eth0' does not exist" in message
    assert "interface 'macvlan0' does not exist" in message
    assert "nft not found on PATH" in message
    assert message.endswith("; nothing was changed")


def test_a_later_failure_says_what_was_left_applied() -> None:
    cfg, links, runner, announcer = make()
    links.fail_on = plan.KeepPodReturnPath
    with pytest.raises(engine.ApplyError) as caught:
        engine.setup(cfg, links, engine.NftablesFirewall(runner), announcer,
                     probe=preflight.FakeProbe())
    done = [step.describe() for step in links.applied]
    assert str(caught.value) == (
        f"cannot {plan.KeepPodReturnPath(4, 'eth0', 'macvlan0').describe()}: injected failure; "
        f"left applied: the nftables ruleset; {'; '.join(done)} (re-running the setup converges; "
        "deleting the pod removes them with its network namespace)"
    )
    assert len(done) == 4  # egress sysctls, link up, address, gateway route
