"""DNS answers: bounded, filtered, and the first bad name fails."""

from __future__ import annotations

import ipaddress

import pytest

from egress_router.core import config
from egress_router.router import resolve

ENV = {
    "EGRESS_SOURCE": "192.168.12.99/24",
    "EGRESS_GATEWAY": "192.168.12.1",
    "EGRESS_DESTINATION": (
        "80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n53 udp 203.0.113.25\n"
        "443 tcp multi.lab.test\n203.0.113.27\n"
    ),
}


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
