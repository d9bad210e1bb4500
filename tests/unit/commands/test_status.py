"""`egress-router status`: what it reports about a kernel listing, its JSON and exit verdict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from egress_router import status
from egress_router.core import config, state
from egress_router.kernel import conntrack
from support.environments import BASE_ENV, NAMED_ENV

LISTING = (Path(__file__).parents[1] / "golden" / "kernel-listing.nft").read_text()
ENV = NAMED_ENV


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


def test_status_shows_the_ha_role_the_wait_process_reported() -> None:
    cfg = config.load_config({**ENV, "EGRESS_ROUTER_HA": "vrrp", "EGRESS_HA_VRID": "51"})
    snapshot = state.Snapshot(links=(), addresses=(), routes=())
    reported = {"mode": "vrrp", "vrid": 51, "role": "standby", "transitions": 1,
                "last_transition": 1_700_000_000.0, "holds_address": False,
                "peer": {"address": "169.254.1.2", "last_seen": 1_700_000_001.0,
                         "priority": 250}}
    report = status.collect(cfg, runner=_Lister(LISTING), read_links=lambda: snapshot,
                            tracker=conntrack.FakeConntrack(), read_ha=lambda c: dict(reported))
    assert report.ha == reported
    assert '"role": "standby"' in status.to_json(report)
    assert not [p for p in report.problems if "HA" in p]
    active = {**reported, "role": "active"}
    report = status.collect(cfg, runner=_Lister(LISTING), read_links=lambda: snapshot,
                            tracker=conntrack.FakeConntrack(), read_ha=lambda c: dict(active))
    assert ("HA role is active but the reserved address is not on the interface"
            in report.problems)
    report = status.collect(cfg, runner=_Lister(LISTING), read_links=lambda: snapshot,
                            tracker=conntrack.FakeConntrack(), read_ha=lambda c: None)
    assert report.ha == {"role": "unknown"}
    assert report.problems[-1].startswith("no HA role reported")


def test_status_without_ha_has_no_role() -> None:
    cfg = config.load_config(ENV)
    snapshot = state.Snapshot(links=(), addresses=(), routes=())
    report = status.collect(cfg, runner=_Lister(LISTING), read_links=lambda: snapshot,
                            tracker=conntrack.FakeConntrack(),
                            read_ha=lambda c: {"role": "active"})
    assert report.ha is None and '"ha"' not in status.to_json(report)
