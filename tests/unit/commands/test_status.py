"""`egress-router status`: what it reports about a kernel listing, its JSON and exit verdict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from egress_router import status
from egress_router.core import config, drift, state
from egress_router.kernel import conntrack

LISTING = (Path(__file__).parents[1] / "golden" / "kernel-listing.nft").read_text()
ENV = {
    "EGRESS_SOURCE": "192.168.12.99/24",
    "EGRESS_GATEWAY": "192.168.12.1",
    "EGRESS_DESTINATION": (
        "80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n53 udp 203.0.113.25\n"
        "443 tcp multi.lab.test\n203.0.113.27\n"
    ),
}


# ----------------------------------------------------------------------------- status


def test_status_of_a_matching_kernel() -> None:
    cfg = config.load_config(ENV)
    state, rules, problems = drift.nftables_rules(cfg, LISTING, {(4, "tcp", 80): 1})
    assert problems == []
    assert state["present"] is True
    rows = {(r.protocol, r.port): r for r in rules}
    assert rows[("tcp", "80")].kernel == ["203.0.113.25:80"]
    assert (rows[("tcp", "80")].connections, rows[("tcp", "80")].packets) == (2, 20)
    assert rows[("tcp", "80")].bytes == 1272
    assert rows[("tcp", "80")].active == 1
    assert rows[("tcp", "443")].destination == "multi.lab.test:443"
    assert rows[("tcp", "443")].kernel == ["203.0.113.25:443", "203.0.113.26:443"]
    assert rows[("tcp, udp, sctp", "*")].kernel == ["203.0.113.27"]


def test_status_names_every_difference() -> None:
    cfg = config.load_config({
        **ENV,
        "EGRESS_DESTINATION": "80 tcp 203.0.113.26\n53 udp 203.0.113.25\n9999 udp 203.0.113.9\n"
                              "443 tcp multi.lab.test\n",
    })
    _state, _rules, problems = drift.nftables_rules(cfg, LISTING, {})
    assert problems == [
        "tcp port 80 (IPv4): the kernel sends it to 203.0.113.25:80",
        "udp port 9999 (IPv4): missing in the kernel",
        "tcp port 8080 (IPv4) is not configured",
        "IPv4 fallback: in the kernel but not in the configuration",
    ]
    _state, _rules, problems = drift.nftables_rules(cfg, None, {})
    assert problems == ["table inet egress_router is missing"]


def test_status_counts_chain_rules() -> None:
    cfg = config.load_config(ENV)
    tampered = LISTING.replace('\t\tiifname "eth0" tcp dport 9090 accept\n', "")
    _state, _rules, problems = drift.nftables_rules(cfg, tampered, {})
    assert problems == ["chain input has 3 rules, expected 4"]


def test_status_json_and_exit_verdict() -> None:
    cfg = config.load_config(ENV)
    snapshot = state.Snapshot(links=(), addresses=(), routes=())
    report = status.collect(
        cfg,
        runner=_Lister(LISTING),
        read_links=lambda: snapshot,
        tracker=conntrack.FakeConntrack(),
    )
    assert not report.matches  # no macvlan0 in this (empty) snapshot
    assert report.problems[0] == "interface macvlan0 does not exist"
    text = status.to_json(report)
    assert '"matches": false' in text
    assert '"destination": "multi.lab.test:443"' in text


class _Lister:
    def __init__(self, text: str) -> None:
        self.text = text

    def run(self, script: str, *, check_only: bool = False) -> None:
        raise AssertionError("status must not change anything")

    def list_table(self) -> None:
        return None

    def list_table_text(self, *, stateless: bool = False) -> str:
        return self.text

BASE_ENV = {
    "EGRESS_SOURCE": "192.168.12.99/24",
    "EGRESS_GATEWAY": "192.168.12.1",
    "EGRESS_ANNOUNCE_COUNT": "1",
}


def _run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egress_router", *args],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env},
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_status_refuses_a_bad_configuration_with_exit_1() -> None:
    done = _run_cli(["status", "--json"], {**BASE_ENV, "EGRESS_DESTINATION": "80 tcp"})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("egress-router: error: cannot parse EGRESS_DESTINATION line 1")
