"""SCTP through the router, proven with raw packets at the far side.

This kernel has no SCTP socket support, but conntrack and NAT handle SCTP,
so a hand-made INIT (with a real CRC32c, which conntrack checks) is sent
from the client pod and captured by a raw socket at the destination.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from egress_router.lab import world as labmod

pytestmark = pytest.mark.privileged

PROBE = str(Path(__file__).with_name("sctp_probe.py"))


def sctp_through(lab: labmod.Lab, port: int, capture_at: str) -> dict[str, object]:
    recv = subprocess.Popen(
        ["ip", "netns", "exec", lab.ext, sys.executable, PROBE, "recv", capture_at, "2"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert recv.stdout is not None
        assert recv.stdout.readline().strip() == "ready"
        sent = labmod.run_in(lab.client, [sys.executable, PROBE, "send", "10.128.0.2", str(port)])
        assert sent.returncode == 0, sent.stderr
        out, _ = recv.communicate(timeout=10)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait(timeout=5)
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def test_sctp_rule_and_fallback(lab: labmod.Lab) -> None:
    env = {
        **labmod.DEMO_ENV,
        "EGRESS_DESTINATION": "5000 sctp 203.0.113.25 6000\n80 tcp 203.0.113.25\n203.0.113.27\n",
        "EGRESS_ANNOUNCE_COUNT": "1",
    }
    assert labmod.router_command(lab, env).returncode == 0
    redirected = sctp_through(lab, 5000, "203.0.113.25")
    assert redirected["src"] == "192.168.12.99"
    assert redirected["dport"] == 6000
    fallback = sctp_through(lab, 7777, "203.0.113.27")
    assert fallback["src"] == "192.168.12.99"
    assert fallback["dport"] == 7777


def test_sctp_without_rule_or_fallback_goes_nowhere(lab: labmod.Lab) -> None:
    env = {**labmod.DEMO_ENV, "EGRESS_DESTINATION": "5000 sctp 203.0.113.25\n",
           "EGRESS_ANNOUNCE_COUNT": "1"}
    assert labmod.router_command(lab, env).returncode == 0
    assert sctp_through(lab, 5001, "203.0.113.25") == {"error": "timeout"}
    assert sctp_through(lab, 5000, "203.0.113.25")["src"] == "192.168.12.99"
