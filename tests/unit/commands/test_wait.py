"""The wait process shell: the namespace lock, refusing a bad configuration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from egress_router import wait
from support.router import BASE_ENV


def test_one_lock_per_network_namespace() -> None:
    name = f"\0egress-router-test-{os.getpid()}".encode()
    first, second = wait.NamespaceLock(name), wait.NamespaceLock(name)
    try:
        assert first.try_acquire()
        assert not second.try_acquire()
        assert second.holder() == os.getpid()
        first.release()
        assert second.try_acquire()
    finally:
        first.release()
        second.release()


def _run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egress_router", *args],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env},
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_wait_refuses_a_bad_configuration_before_touching_anything(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.write_text("80 tcp 203.0.113.25\n9090 tcp 203.0.113.26\n")
    done = _run_cli(["wait", "--file", str(rules)], BASE_ENV)
    assert done.returncode == 1
    assert done.stderr == (
        f"egress-router: error: cannot parse {rules} line 2 '9090 tcp 203.0.113.26': port "
        "9090/tcp is the router's own HTTP port (EGRESS_ROUTER_HTTP_PORT, /healthz, /readyz, "
        "/metrics); use another local port, or set EGRESS_ROUTER_HTTP_PORT to a free port (0 "
        "turns the HTTP server off)\n"
    )
    bad = _run_cli(["wait"], {**BASE_ENV, "EGRESS_DESTINATION": "80 tcp 203.0.113.25",
                              "EGRESS_ROUTER_WATCH_SECONDS": "-1"})
    assert bad.returncode == 1
    assert bad.stderr == (
        "egress-router: error: cannot parse EGRESS_ROUTER_WATCH_SECONDS: invalid value '-1'; "
        "expected seconds from 0.1 to 60\n"
    )


# A main thread the stop signal cannot unwind (unarmed, as inside a finalizer, busy for 4 s).
_STUCK = """
import signal, sys, time
from egress_router import wait
signals = wait.Signals()
signals.install()
if sys.argv[1] == "deadline":
    wait.StopDeadline().install()
print("ready", flush=True)
end = time.monotonic() + 4
while time.monotonic() < end:
    time.sleep(0.02)
sys.exit(7)
"""


@pytest.mark.parametrize("mode", ["deadline", "control"])
def test_a_stop_signal_ends_the_process_even_when_the_main_thread_cannot_unwind(
    mode: str,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _STUCK, mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        took = time.monotonic() - sent
        _, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if mode == "deadline":
        assert code == 0
        assert "the orderly stop took too long; exiting now" in err
        assert took < 3.0  # STOP_DEADLINE (0.8 s) plus start-up noise; the control needs 4 s
    else:  # without the deadline the stuck main thread decides: 4 s later, its own code
        assert code == 7
        assert took > 3.0
