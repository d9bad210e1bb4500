"""CNI mode: the rules in the mounted plugin configuration reload in place, nothing else does."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from egress_router.cni import netconf
from egress_router.core import ruleset
from support.router import Harness

CONF: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "r",
    "type": "egress-router",
    "ip": {
        "addresses": ["192.168.12.99/24"],
        "gateway": "192.168.12.1",
        "destinations": ["80 tcp 203.0.113.25", "8080 tcp 203.0.113.26 80"],
    },
    "interfaceType": "macvlan",
    "interfaceArgs": {"mode": "bridge"},
}


class Cni:
    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "cni.json"
        self.write(CONF)
        self.env = {"EGRESS_ROUTER_CNI_CONFIG": str(self.path), "EGRESS_INTERFACE": "macvlan0"}

    def write(self, conf: dict[str, Any]) -> None:
        new = self.path.with_name("cni.json.new")  # a new inode, as the kubelet's swap
        new.write_text(json.dumps(conf))
        os.replace(new, self.path)

    def reread(self) -> dict[str, str]:
        return netconf.router_environment(self.env)


@pytest.fixture
def cni(tmp_path: Path) -> tuple[Cni, Harness]:
    files = Cni(tmp_path)
    h = Harness(tmp_path, reread=files.reread)
    h.router.start()
    return files, h


def test_rules_change_in_the_cni_config_is_applied_in_place(cni: tuple[Cni, Harness]) -> None:
    files, h = cni
    old = h.router.applied
    assert h.router.poll_file() is False  # nothing changed yet
    conf = json.loads(json.dumps(CONF))
    conf["ip"]["destinations"] = ["80 tcp 203.0.113.25", "9000 udp 203.0.113.27"]
    files.write(conf)
    assert h.router.poll_file() is True
    new = h.router.applied
    assert old is not None and new is not None
    assert h.runner.applied[-1] == ruleset.render_nftables_update(old, new)
    assert [(r.port, r.proto.value) for r in new.destinations.rules] == [(80, "tcp"),
                                                                          (9000, "udp")]
    assert h.value("egress_router_config_generation") == 2


def test_other_changes_are_refused_and_the_rules_stay(
    cni: tuple[Cni, Harness], caplog: pytest.LogCaptureFixture
) -> None:
    files, h = cni
    runs = list(h.runner.applied)
    conf = json.loads(json.dumps(CONF))
    conf["ip"]["addresses"] = ["192.168.12.98/24"]
    conf["ip"]["destinations"] = ["80 tcp 203.0.113.25"]
    files.write(conf)
    with caplog.at_level(logging.ERROR):
        assert h.router.poll_file() is False
    assert h.runner.applied == runs
    assert "changed more than the rules (EGRESS_SOURCE)" in caplog.text
    assert "restart the pod" in caplog.text
    assert h.value("egress_router_applies_total", result="invalid") == 1
