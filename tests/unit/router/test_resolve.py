"""DNS answers: bounded, filtered, and the first bad name fails."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from egress_router.core import config
from egress_router.router import resolve
from support.environments import NAMED_ENV
from support.router import FakeResolver, Harness

ENV = NAMED_ENV


# ----------------------------------------------------------------------------- DNS


def test_answers_are_bounded_and_filtered() -> None:
    resolver = resolve.DnsResolver(min_ttl=5, max_ttl=300)
    a = ipaddress.ip_address
    answer = resolver.answer("api.example.com", [a("203.0.113.26"), a("203.0.113.25"),
                                                 a("203.0.113.25"), a("2001:db8::1")], 0, [4])
    assert answer == resolve.Answer((a("203.0.113.25"), a("203.0.113.26")), 5)
    assert resolver.answer("x.example.com", [a("203.0.113.25")], 86400, [4]).ttl == 300
    # Which addresses may be destinations is the policy's (resolve.screen), counted and logged.
    good, refused = resolve.screen(
        "evil.example.com", resolver.answer("evil.example.com", [a("127.0.0.1")], 60, [4])
        .addresses, config.destination_problem,
    )
    assert good == ()
    assert [(r.address, r.why) for r in refused] == [
        (a("127.0.0.1"), "127.0.0.1 is a loopback address")
    ]
    with pytest.raises(resolve.ResolveError, match=r"^cannot resolve v6\.example\.com: no A "):
        resolver.answer("v6.example.com", [], 60, [4])


def test_resolve_now_fails_on_the_first_bad_name() -> None:
    cfg = config.load_config({**ENV, "EGRESS_DESTINATION": "443 tcp nowhere.example.com\n"})

    class Failing:
        def resolve(self, host: str, families: object) -> resolve.Answer:
            raise resolve.ResolveError(f"cannot resolve {host}: no such name (NXDOMAIN)")

    with pytest.raises(resolve.ResolveError, match=r"nowhere\.example\.com"):
        resolve.resolve_now(cfg, Failing())


# ------------------------------------------------------------------ hostile answers

HOSTILE = {
    "192.168.12.99": "192.168.12.99 is the router's own source address (a redirect to itself)",
    "192.168.12.1": "192.168.12.1 is the gateway, not a service behind it",
    "192.168.12.255": "192.168.12.255 is the broadcast address of the egress subnet "
                      "192.168.12.0/24",
    "10.128.0.3": "10.128.0.3 is in the pod network 10.128.0.0/24, where connections come from",
    "127.0.0.1": "127.0.0.1 is a loopback address",
    "169.254.169.254": "169.254.169.254 is a link-local address, which no gateway forwards",
    "224.0.0.251": "224.0.0.251 is a multicast address",
    "255.255.255.255": "255.255.255.255 is the broadcast address",
    "0.0.0.0": "0.0.0.0 is the unspecified address",
    "240.0.0.1": "240.0.0.1 is in a reserved range, which no host answers",
}
POD = (ipaddress.ip_network("10.128.0.0/24"),)


def hostile_harness(tmp_path: Path, answers: list[str]) -> tuple[Harness, FakeResolver]:
    resolver = FakeResolver({"api.example.com": answers}, ttl=30)
    h = Harness(tmp_path, "443 tcp api.example.com\n", resolver=resolver)
    h.router.kernel.networks = lambda ifname: POD if ifname == "eth0" else ()
    return h, resolver


def redirected(h: Harness) -> list[str]:
    cfg = h.router.applied
    assert cfg is not None
    return [str(r.address) for r in cfg.destinations.rules]


@pytest.mark.parametrize(("address", "why"), list(HOSTILE.items()))
def test_a_hostile_answer_never_reaches_the_rules_and_the_last_good_stays(
    tmp_path: Path, address: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    h, resolver = hostile_harness(tmp_path, ["203.0.113.25"])
    assert h.value("egress_router_dns_answers_refused_total") == 0  # exported from the start
    h.router.start()
    assert redirected(h) == ["203.0.113.25"]
    resolver.answers["api.example.com"] = [address]
    for _ in range(3):
        h.clock.now += 31
        assert h.router.refresh_dns() is False
    assert redirected(h) == ["203.0.113.25"]
    assert f"{address} . 443" not in h.runner.applied[-1]  # the redirect map the kernel got
    assert "203.0.113.25 . 443" in h.runner.applied[-1]
    assert h.value("egress_router_dns_answers_refused_total") == 3
    refusals = [r.getMessage() for r in caplog.records if "refusing DNS answer" in r.getMessage()]
    assert refusals == [  # once, not on every lookup
        f"refusing DNS answer {address} for api.example.com: {why}; it does not reach the rules"
    ]
    # The control: the same path takes a good new answer.
    resolver.answers["api.example.com"] = ["203.0.113.26"]
    h.clock.now += 31
    assert h.router.refresh_dns() is True
    assert redirected(h) == ["203.0.113.26"]


def test_a_mixed_answer_keeps_only_the_good_addresses(tmp_path: Path) -> None:
    h, _resolver = hostile_harness(tmp_path, ["203.0.113.25", "192.168.12.1", "10.128.0.9"])
    h.router.start()
    assert redirected(h) == ["203.0.113.25"]
    assert h.value("egress_router_dns_answers_refused_total") == 2


def test_a_name_that_only_ever_answered_hostile_has_no_rule(tmp_path: Path) -> None:
    h, _resolver = hostile_harness(tmp_path, ["127.0.0.1"])
    h.router.start()
    assert redirected(h) == []
    assert h.value("egress_router_dns_resolution_failures_total", name="api.example.com") == 1


def test_the_init_container_refuses_a_name_with_only_hostile_answers() -> None:
    cfg = config.load_config({**ENV, "EGRESS_DESTINATION": "443 tcp api.example.com\n"})
    resolver = FakeResolver({"api.example.com": ["192.168.12.99", "10.128.0.3"]})
    with pytest.raises(resolve.ResolveError) as caught:
        resolve.resolve_now(cfg, resolver, resolve.policy_for(cfg, POD))
    assert str(caught.value) == (
        "cannot use api.example.com: every address it resolves to is refused as a destination "
        "(192.168.12.99 is the router's own source address (a redirect to itself); 10.128.0.3 "
        "is in the pod network 10.128.0.0/24, where connections come from)"
    )
    resolver.answers["api.example.com"] = ["10.128.0.3", "203.0.113.25"]
    resolved = resolve.resolve_now(cfg, resolver, resolve.policy_for(cfg, POD))
    assert [str(r.address) for r in resolved.destinations.rules] == ["203.0.113.25"]
