"""router.ha: the role of a replica, driven through a fake keepalived, and its hooks in Router."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import pytest

from egress_router.core import config, ha
from egress_router.kernel import announce, conntrack, netlink, nft, vrrp
from egress_router.router import engine, metrics, reconciler
from egress_router.router import ha as ha_role
from egress_router.router.metrics import CollectorRegistry

ENV = {
    "EGRESS_SOURCE": "192.168.12.99",
    "EGRESS_GATEWAY": "192.168.12.1",
    "EGRESS_DESTINATION": "80 tcp 203.0.113.25",
    "EGRESS_ROUTER_HA": "vrrp",
    "EGRESS_HA_VRID": "51",
}
ADVERT_SOURCE = ipaddress.IPv4Interface("169.254.7.8/16")


class FakeKernelAddresses:
    """The egress interface's addresses as keepalived would leave them."""

    def __init__(self) -> None:
        self.held: set[str] = {"192.168.12.99"}  # a killed predecessor's leftover
        self.removed: list[list[str]] = []
        self.saved: list[dict[str, Any]] = []  # what `status` would read

    def remove(self, ifname: str, addresses: Any) -> list[str]:
        gone = [str(a) for a in addresses if str(a) in self.held]
        self.held -= set(gone)
        self.removed.append(gone)
        return gone


def _pair(registry: CollectorRegistry | None = None,
          **hooks: Any) -> tuple[ha_role.Pair, vrrp.FakeDriver, FakeKernelAddresses]:
    cfg = config.load_config(ENV)
    assert cfg.ha is not None
    driver = vrrp.FakeDriver()
    kernel = FakeKernelAddresses()
    clock = iter(range(1000, 100000))
    pair = ha_role.Pair(
        cfg, cfg.ha, ha_role.HaMetrics(registry or CollectorRegistry()), driver=driver,
        listen=False, ensure_address=lambda ifname: ADVERT_SOURCE,
        remove_addresses=kernel.remove, held=lambda ifname: set(kernel.held),
        save=kernel.saved.append,
        clock=lambda: float(next(clock)), wall=lambda: 1_700_000_000.0,
        **{"watch_adverts": lambda ifname, seconds, on_advert: None,
           "link_is_up": lambda ifname: True, **hooks},
    )
    return pair, driver, kernel


def test_start_removes_a_stale_reserved_address_then_joins_as_standby() -> None:
    pair, driver, kernel = _pair()
    pair.start()
    assert kernel.removed == [["192.168.12.99"]]
    assert driver.running and driver.conf is not None
    assert "mcast_src_ip 169.254.7.8" in driver.conf and "state BACKUP" in driver.conf
    assert pair.readiness() == (False, "starting")
    driver.notify('INSTANCE "egress_router" BACKUP 250')
    assert pair.role is ha.Role.STANDBY
    assert pair.readiness() == (False, "standby")


def test_active_is_ready_only_while_it_holds_the_address() -> None:
    registry = CollectorRegistry()
    pair, driver, kernel = _pair(registry)
    pair.start()
    driver.notify('INSTANCE "egress_router" BACKUP 250')
    driver.notify('INSTANCE "egress_router" MASTER 250')
    assert pair.readiness() == (False, "active but 192.168.12.99 is not on the interface")
    kernel.held.add("192.168.12.99")  # keepalived added it
    assert pair.readiness() is None  # the data path's own readiness decides
    assert pair.transitions == 2
    assert registry.get_sample_value("egress_router_ha_role", {"role": "active"}) == 1
    assert registry.get_sample_value("egress_router_ha_role", {"role": "standby"}) == 0
    assert registry.get_sample_value(
        "egress_router_ha_transitions_total", {"role": "active"}) == 1
    assert registry.get_sample_value(
        "egress_router_ha_last_transition_timestamp_seconds") == 1_700_000_000.0
    assert kernel.saved[-1]["role"] == "active" and kernel.saved[-1]["transitions"] == 2
    driver.notify('INSTANCE "egress_router" FAULT 0')
    ready, why = pair.readiness() or (True, "")
    assert not ready and why.startswith("fault: keepalived cannot take part on macvlan0")


def test_the_peer_is_whoever_else_advertises_our_vrid() -> None:
    registry = CollectorRegistry()
    pair, _driver, _kernel = _pair(registry)
    pair.start()
    ours = ha.Advert(ADVERT_SOURCE.ip, 3, 51, 250, 0.1, (ipaddress.IPv4Address("192.168.12.99"),))
    pair._advert(ours)  # our own advert, looped back: not a peer
    assert pair.peer is None
    peer = ha.Advert(ipaddress.IPv4Address("169.254.1.2"), 3, 51, 250, 0.1,
                     (ipaddress.IPv4Address("192.168.12.99"),))
    pair._advert(peer)
    status = pair.status()
    assert status["peer"]["address"] == "169.254.1.2"
    assert _kernel.saved[-1]["peer"]["address"] == "169.254.1.2"
    assert status["role"] == "starting" and status["vrid"] == 51
    assert registry.get_sample_value("egress_router_ha_peer_last_seen_timestamp_seconds") > 0
    other = ha.Advert(ipaddress.IPv4Address("169.254.3.3"), 3, 51, 100, 1.0,
                      (ipaddress.IPv4Address("192.168.12.50"),))
    pair._advert(other)
    assert pair.reconcile() == [str(ha.clash_error(
        "169.254.3.3 advertises VRID 51 for 192.168.12.50", 51))]
    assert registry.get_sample_value("egress_router_ha_vrid_clashes_total") == 1


def test_a_dead_keepalived_is_restarted_as_a_standby() -> None:
    registry = CollectorRegistry()
    pair, driver, kernel = _pair(registry)
    pair.start()
    driver.notify('INSTANCE "egress_router" MASTER 250')
    driver.running = False  # died (SIGKILL) and left the address behind
    kernel.held.add("192.168.12.99")
    assert pair.reconcile() == []
    assert driver.running and "192.168.12.99" not in kernel.held
    assert pair.role is ha.Role.STARTING
    assert registry.get_sample_value("egress_router_ha_keepalived_restarts_total") == 1


def test_keepalived_dying_alone_frees_the_address_at_once() -> None:
    pair, driver, kernel = _pair()
    pair.start()
    driver.notify('INSTANCE "egress_router" MASTER 250')
    kernel.held.add("192.168.12.99")
    driver.running = False  # SIGKILLed by the OOM killer: it released nothing
    deadline = time.monotonic() + 5
    while "192.168.12.99" in kernel.held and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "192.168.12.99" not in kernel.held
    assert pair.role is ha.Role.STARTING
    assert pair.readiness() == (False, "starting")
    pair.stop()


def _router(pairs: list[ha_role.Pair],
            kernels: list[FakeKernelAddresses] | None = None,
            **hooks: Any) -> reconciler.Router:
    def factory(cfg: config.Config, settings: ha.Settings,
                registry: CollectorRegistry) -> ha_role.Pair:
        pair, _driver, kernel = _pair(registry, **hooks)
        pairs.append(pair)
        if kernels is not None:
            kernels.append(kernel)
        return pair

    kernel = reconciler.Edges(
        firewall=engine.NftablesFirewall(nft.FakeNft()), links=netlink.FakeNetlink(),
        announcer=announce.FakeAnnouncer(), conntrack=conntrack.FakeConntrack(),
        resolver=None,  # type: ignore[arg-type]  # no names to resolve
        drift=lambda cfg: [], pair=factory,
    )
    return reconciler.Router(ENV, config.parse_wait_settings({}), kernel, metrics.Metrics(),
                             clock=hooks.pop("clock", time.monotonic))


def test_router_standby_has_the_data_path_but_answers_not_ready() -> None:
    pairs: list[ha_role.Pair] = []
    kernels: list[FakeKernelAddresses] = []
    router = _router(pairs, kernels)
    router.start()
    assert len(pairs) == 1
    assert router.kernel.announcer.sent == []  # type: ignore[attr-defined]  # keepalived's job
    assert router.applied is not None  # the rules are in place on the standby
    assert router.readiness() == (False, "starting")
    assert isinstance(pairs[0].driver, vrrp.FakeDriver)
    pairs[0].driver.notify('INSTANCE "egress_router" BACKUP 250')
    assert router.readiness() == (False, "standby")
    pairs[0].driver.notify('INSTANCE "egress_router" MASTER 250')
    kernels[0].held.add("192.168.12.99")  # as keepalived does on becoming master
    assert router.readiness() == (True, "ok")
    router.stop()
    assert pairs[0].driver.stops == 1


OURS = (ipaddress.IPv4Address("192.168.12.99"),)
PEER = ha.Advert(ipaddress.IPv4Address("169.254.1.2"), 3, 51, 250, 0.1, OURS)
OTHER = ha.Advert(ipaddress.IPv4Address("169.254.3.3"), 3, 51, 100, 1.0,
                  (ipaddress.IPv4Address("192.168.12.50"),))


class FakeAir:
    """The adverts the egress interface hears during the VRID check, and its link state."""

    def __init__(self, adverts: list[ha.Advert], up: bool = False) -> None:
        self.adverts = adverts
        self.up = up
        self.listened: list[tuple[str, float]] = []
        self.downs: list[str] = []

    def watch(self, ifname: str, seconds: float, on_advert: Any) -> None:
        self.listened.append((ifname, seconds))
        for advert in self.adverts:
            if on_advert(advert):
                return

    def hooks(self) -> dict[str, Any]:
        return {"watch_adverts": self.watch, "link_is_up": lambda _: self.up,
                "set_link_down": self.downs.append}


def test_a_clashing_vrid_is_refused_before_the_first_change() -> None:
    pairs: list[ha_role.Pair] = []
    air = FakeAir([PEER, OTHER])
    router = _router(pairs, **air.hooks())
    with pytest.raises(config.ConfigError) as refused:
        router.start()
    assert str(refused.value) == (
        "cannot parse EGRESS_HA_VRID '51': another VRRP group on the egress network uses "
        "this VRID (169.254.3.3 advertises VRID 51 for 192.168.12.50); pick a VRID no other "
        "pair uses (both replicas of a pair share one)"
    )
    assert air.listened == [("macvlan0", ha_role.CLASH_WINDOW)]
    links = router.kernel.links
    assert isinstance(links, netlink.FakeNetlink)
    # The down link was raised (hardened first) to listen, and set down again; nothing else.
    assert [type(step).__name__ for step in links.applied] == ["SetSysctls", "LinkUp"]
    assert air.downs == ["macvlan0"]
    firewall = router.kernel.firewall
    assert isinstance(firewall, engine.NftablesFirewall)
    assert isinstance(firewall.runner, nft.FakeNft) and firewall.runner.applied == []
    assert router.ha is None and router.applied is None
    assert isinstance(pairs[0].driver, vrrp.FakeDriver) and pairs[0].driver.conf is None


def test_the_peer_is_no_clash_and_an_up_link_is_left_alone() -> None:
    pairs: list[ha_role.Pair] = []
    air = FakeAir([PEER], up=True)
    router = _router(pairs, **air.hooks())
    router.start()
    assert router.ha is pairs[0] and router.applied is not None
    links = router.kernel.links
    assert isinstance(links, netlink.FakeNetlink)
    assert type(links.applied[0]).__name__ != "LinkUp" and air.downs == []
    assert isinstance(pairs[0].driver, vrrp.FakeDriver) and pairs[0].driver.running
    router.stop()


def test_router_without_ha_has_no_pair() -> None:
    pairs: list[ha_role.Pair] = []
    now = [100.0]
    router = _router(pairs, clock=lambda: now[0])
    router.env = {k: v for k, v in ENV.items() if "HA" not in k}
    router.start()
    assert pairs == [] and router.ha is None
    assert router.readiness() == (True, "ok")
    sent = router.kernel.announcer.sent  # type: ignore[attr-defined]
    assert sent == [("macvlan0", "192.168.12.99")]  # the first round; the loop sends the rest
    while (due := router.next_announcement()) is not None:
        now[0] = due
        router.announce_due()
    assert sent == [("macvlan0", "192.168.12.99")] * config.DEFAULT_ANNOUNCE_COUNT


@pytest.mark.parametrize("line", ['INSTANCE "egress_router" BACKUP 250'])
def test_repeated_notices_are_not_transitions(line: str) -> None:
    pair, driver, _kernel = _pair()
    pair.start()
    driver.notify(line)
    driver.notify(line)
    assert pair.transitions == 1


FOREIGN = ha.Advert(ipaddress.IPv4Address("192.168.12.66"), 3, 51, 255, 0.05, OURS)


def test_a_foreign_vrrp_speaker_is_counted_logged_once_and_named_by_the_standby(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Issue 18, item 7: a host on the L2 advertising the pair's VRID and addresses at
    # priority 255 from its own address silenced the pair, and only keepalived said so.
    registry = CollectorRegistry()
    pair, driver, kernel = _pair(registry)
    pair.start()
    driver.notify('INSTANCE "egress_router" BACKUP 250')
    for _ in range(3):
        pair._advert(PEER)  # the control: the other replica is no foreign speaker
    assert pair.foreign is None and pair.readiness() == (False, "standby")
    assert registry.get_sample_value("egress_router_ha_foreign_adverts_total") == 0
    for _ in range(20):
        pair._advert(FOREIGN)
    assert registry.get_sample_value("egress_router_ha_foreign_adverts_total") == 20
    assert registry.get_sample_value(
        "egress_router_ha_foreign_last_seen_timestamp_seconds") == 1_700_000_000.0
    reason = ("192.168.12.66 advertises VRID 51 at priority 255 from outside the pair's "
              "169.254.0.0/16")
    assert pair.readiness() == (False, f"standby; a foreign VRRP speaker: {reason}")
    logged = [r.getMessage() for r in caplog.records if "foreign VRRP speaker" in r.getMessage()]
    assert len(logged) == 1 and reason in logged[0], logged
    assert pair.status()["foreign_speaker"] == {
        "address": "192.168.12.66", "priority": 255, "last_seen": 1_700_000_000.0,
        "reason": reason}
    assert kernel.saved[-1]["foreign_speaker"]["address"] == "192.168.12.66"
    assert pair.peer is not None and pair.peer.address == "169.254.1.2"  # not taken for it
    # Long after the last foreign advert, the standby is just a standby again.
    for _ in range(int(ha_role.FOREIGN_RECENT) + 2):
        pair.clock()
    assert pair.readiness() == (False, "standby")
    pair.stop()


def test_a_speaker_at_another_priority_or_next_to_the_peer_is_foreign() -> None:
    pair, _driver, _kernel = _pair()
    pair.start()
    low = ha.Advert(ipaddress.IPv4Address("169.254.9.9"), 3, 51, 100, 0.1, OURS)
    pair._advert(low)
    assert pair.foreign is not None and "priority 100, not the pair's 250" in pair.foreign.reason
    pair.foreign = None
    pair._advert(PEER)
    third = ha.Advert(ipaddress.IPv4Address("169.254.7.7"), 3, 51, 250, 0.1, OURS)
    # The test clock advances a second a call: the peer was just heard.
    pair.clock = lambda: pair.peer.seen if pair.peer else 0.0  # type: ignore[assignment]
    pair._advert(third)
    assert pair.foreign is not None and "next to the peer 169.254.1.2" in pair.foreign.reason
    pair.stop()
