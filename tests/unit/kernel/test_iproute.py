"""kernel.iproute: the ``ip -batch`` lines that bring plan steps about, from a snapshot.

What the kernel makes of them is tested for real in tests/integration/test_wait.py (drift of
every kind repaired, traffic through the router again).
"""

from __future__ import annotations

import ipaddress
import subprocess
from typing import Any

import pytest

from egress_router.core import plan, state
from egress_router.kernel import iproute, netlink

MAIN = state.MAIN_TABLE
POD = plan.POD_TABLE
P = plan.RULE_PRIORITY
ETH0 = state.Link(2, "eth0", True, "0a:58:0a:80:00:02")
MACVLAN = state.Link(3, "macvlan0", True, "02:00:c0:a8:0c:63")


def _addr(link: state.Link, text: str) -> state.Address:
    return state.Address(link.index, ipaddress.ip_interface(text), state.RT_SCOPE_UNIVERSE)


def _default(gateway: str, link: state.Link) -> state.Route:
    gw = ipaddress.ip_address(gateway)
    dst = ipaddress.ip_network("0.0.0.0/0" if gw.version == 4 else "::/0")
    return state.Route(gw.version, dst, gw, link.index, MAIN, state.RTN_UNICAST)


def _lines(steps: list[plan.Step], snapshot: state.Snapshot) -> list[tuple[int, str, bool]]:
    return [(c.family, c.line, c.delete) for c in iproute.commands(steps, snapshot)]


def test_a_fresh_pod_gets_its_return_path_before_its_default_route_moves() -> None:
    snapshot = state.Snapshot(
        (ETH0, MACVLAN),
        (_addr(ETH0, "10.128.0.2/24"), _addr(MACVLAN, "192.168.12.50/24")),
        (_default("10.128.0.1", ETH0),),
    )
    steps: list[plan.Step] = [
        plan.LinkUp("macvlan0"),
        plan.SetAddress("macvlan0", ipaddress.ip_interface("192.168.12.99/24")),
        plan.SetRoute("macvlan0", ipaddress.ip_network("192.168.12.1/32")),
        plan.KeepPodReturnPath(4, "eth0", "macvlan0"),
        plan.SetRoute("eth0", ipaddress.ip_network("172.30.0.10/32"),
                      ipaddress.ip_address("10.128.0.1")),
        plan.SetRoute("macvlan0", ipaddress.ip_network("0.0.0.0/0"),
                      ipaddress.ip_address("192.168.12.1")),
    ]
    assert _lines(steps, snapshot) == [
        (4, "link set dev macvlan0 up", False),
        (4, "address del 192.168.12.50/24 dev macvlan0", True),
        (4, "address replace 192.168.12.99/24 dev macvlan0", False),
        (4, "route replace 192.168.12.1/32 scope link dev macvlan0 proto static table main", False),
        (4, f"route replace default via 10.128.0.1 dev eth0 proto static table {POD}", False),
        (4, f"rule add priority {P} iif macvlan0 lookup main suppress_prefixlength 0", False),
        (4, f"rule add priority {P + 1} iif macvlan0 lookup {POD}", False),
        (4, f"rule add priority {P + 2} from 10.128.0.2 lookup main suppress_prefixlength 0",
         False),
        (4, f"rule add priority {P + 3} from 10.128.0.2 lookup {POD}", False),
        (4, "route replace 172.30.0.10/32 via 10.128.0.1 dev eth0 proto static table main", False),
        (4, "route del default via 10.128.0.1 dev eth0 table main", True),
        (4, "route replace default via 192.168.12.1 dev macvlan0 proto static table main", False),
    ]


def test_a_repair_touches_only_what_is_in_the_way() -> None:
    rules = state.pod_return_rules(plan.KeepPodReturnPath(6, "eth0", "macvlan0"), ["fd00:128::2"])
    stale = (P + 3, None, "fd00:128::9", POD, False)
    snapshot = state.Snapshot(
        (ETH0, MACVLAN),
        (_addr(ETH0, "fd00:128::2/64"), _addr(MACVLAN, "2001:db8:12::99/64"),
         _addr(MACVLAN, "2001:db8:12::100/64"), _addr(MACVLAN, "2001:db8:12::7/64")),
        (_default("2001:db8:12::1", MACVLAN),),
        rules=(*((6, r) for r in rules[1:]), (6, stale)),
    )
    steps: list[plan.Step] = [
        plan.SetAddress("macvlan0", ipaddress.ip_interface("2001:db8:12::99/64"),
                        (ipaddress.ip_interface("2001:db8:12::100/64"),)),
        plan.KeepPodReturnPath(6, "eth0", "macvlan0"),
        plan.SetRoute("macvlan0", ipaddress.ip_network("::/0"),
                      ipaddress.ip_address("2001:db8:12::1")),
    ]
    assert _lines(steps, snapshot) == [
        # The pool's other address stays; the stranger goes; DAD would delay the source.
        (6, "address del 2001:db8:12::7/64 dev macvlan0", True),
        (6, "address replace 2001:db8:12::99/64 dev macvlan0 nodad", False),
        # Main's default is ours already (no pod gateway to copy); one rule missing, one stale.
        (6, f"rule del priority {P + 3} from fd00:128::9 lookup {POD}", True),
        (6, f"rule add priority {P} iif macvlan0 lookup main suppress_prefixlength 0", False),
        (6, "route replace default via 2001:db8:12::1 dev macvlan0 proto static table main", False),
    ]


def test_addresses_of_an_unconfigured_family_are_removed_and_sysctls_refused() -> None:
    snapshot = state.Snapshot((MACVLAN,), (_addr(MACVLAN, "192.168.12.50/24"),), ())
    assert _lines([plan.RemoveAddresses("macvlan0", 4)], snapshot) == [
        (4, "address del 192.168.12.50/24 dev macvlan0", True),
    ]
    with pytest.raises(ValueError, match="it is a sysctl"):
        iproute.commands([plan.EnableForwarding(4)], snapshot)


class _Ip:
    """Stands in for ``subprocess.run(["ip", ...])``: records batches, answers as ip does."""

    def __init__(self, stderr: str = "", returncode: int = 0) -> None:
        self.calls: list[tuple[list[str], str]] = []
        self.stderr, self.returncode = stderr, returncode

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((argv, kwargs["input"]))
        return subprocess.CompletedProcess(argv, self.returncode, "", self.stderr)


DUAL = state.Snapshot(
    (ETH0, MACVLAN),
    (_addr(ETH0, "10.128.0.2/24"),),
    (_default("10.128.0.9", MACVLAN),),
)
DUAL_STEPS: list[plan.Step] = [
    plan.LinkUp("macvlan0"),
    plan.SetRoute("macvlan0", ipaddress.ip_network("0.0.0.0/0"),
                  ipaddress.ip_address("192.168.12.1")),
    plan.SetRoute("macvlan0", ipaddress.ip_network("::/0"), ipaddress.ip_address("2001:db8:12::1")),
]


def test_one_batch_per_run_of_a_family(monkeypatch: pytest.MonkeyPatch) -> None:
    ip = _Ip()
    monkeypatch.setattr(iproute.subprocess, "run", ip)
    iproute.run(DUAL_STEPS, DUAL)
    assert ip.calls == [
        (["ip", "-4", "-force", "-batch", "-"],
         "link set dev macvlan0 up\n"
         "route del default via 10.128.0.9 dev macvlan0 table main\n"
         "route replace default via 192.168.12.1 dev macvlan0 proto static table main\n"),
        (["ip", "-6", "-force", "-batch", "-"],
         "route replace default via 2001:db8:12::1 dev macvlan0 proto static table main\n"),
    ]


def test_a_delete_that_finds_nothing_is_fine_a_refused_replace_names_its_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gone = "RTNETLINK answers: No such process\nCommand failed -:2\n"
    monkeypatch.setattr(iproute.subprocess, "run", _Ip(gone, 1))
    iproute.run(DUAL_STEPS[:2], DUAL)  # someone deleted that default route first: no error
    refused = gone + "Error: Nexthop has invalid gateway.\nCommand failed -:3\n"
    monkeypatch.setattr(iproute.subprocess, "run", _Ip(refused, 1))
    with pytest.raises(netlink.KernelRefusedError) as caught:
        iproute.run(DUAL_STEPS[:2], DUAL)
    assert str(caught.value) == (
        "cannot ip route replace default via 192.168.12.1 dev macvlan0 (other default routes "
        "removed): ip route replace default via 192.168.12.1 dev macvlan0 proto static table main: "
        "Error: Nexthop has invalid gateway."
    )
