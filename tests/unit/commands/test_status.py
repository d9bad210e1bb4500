"""`egress-router status`: what it reports about a kernel listing, its JSON and exit verdict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from egress_router import status
from egress_router.core import config, state
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
