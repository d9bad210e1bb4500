"""Hostile input against the real product in the lab: the destination file, DNS, pre-flight.

Each test runs ``egress-router`` in a fresh lab's router pod (a network namespace)
and judges it from outside: its exit code and exact message, the router
namespace's state read back through ``ip -j`` and ``nft -j`` (never through the
code under test), and what the destination server saw. Every refusal has a
control: the same command with the hostile part removed does change the kernel,
so an assertion of "nothing changed" could fail.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from egress_router.core import config, plan
from egress_router.lab import world as labmod
from egress_router.router import engine
from support.httpget import get as http_get
from support.waiting import eventually

pytestmark = pytest.mark.privileged

ROUTER4 = "10.128.0.2"
BASE = {
    "EGRESS_SOURCE": "192.168.12.99/24",
    "EGRESS_GATEWAY": "192.168.12.1",
    "EGRESS_ANNOUNCE_INTERVAL": "0.1",
    "EGRESS_ANNOUNCE_COUNT": "1",
    "EGRESS_ROUTER_MODE": "init",
}
RULES = "80 tcp 203.0.113.25\n"
PREFIX = "egress-router: error: "


def init(lab: labmod.Lab, env: dict[str, str], timeout: float = 30) -> tuple[int, str]:
    done = labmod.router_command(lab, {**BASE, **env}, timeout=timeout)
    return done.returncode, done.stderr


def state(lab: labmod.Lab) -> dict[str, Any]:
    """What a setup would change in the router pod, read through ip(8), nft and /proc."""
    def json_of(argv: list[str]) -> Any:
        done = labmod.run_in(lab.router, argv, timeout=10)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout or "[]")

    sysctls = {}
    for key in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
        done = labmod.run_in(lab.router, ["cat", f"/proc/sys/{key}"], timeout=10)
        sysctls[key] = done.stdout.strip()
    return {
        "addresses": json_of(["ip", "-j", "addr", "show"]),
        "routes": json_of(["ip", "-j", "route", "show", "table", "all"]),
        "rules4": json_of(["ip", "-j", "-4", "rule", "show"]),
        "rules6": json_of(["ip", "-j", "-6", "rule", "show"]),
        "nft": json_of(["nft", "-j", "list", "ruleset"]),
        "sysctls": sysctls,
    }


def redirects(lab: labmod.Lab) -> str:
    """The redirect maps and spread chains of our table, as nft -j prints them."""
    done = labmod.run_in(lab.router, ["nft", "-j", "list", "table", "inet", "egress_router"],
                         timeout=10)
    assert done.returncode == 0, done.stderr
    items = json.loads(done.stdout)["nftables"]
    kept = [item for item in items
            if ("map" in item)
            or ("rule" in item and str(item["rule"].get("chain", "")).startswith("spread_"))
            or ("chain" in item and str(item["chain"].get("name", "")).startswith("spread_"))]
    return json.dumps(kept)


# ------------------------------------------------------------------ the destination file


def test_a_destination_file_that_is_not_a_small_regular_file_is_exit_1(
    lab: labmod.Lab, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big"
    with big.open("wb") as fh:
        fh.truncate(config.DESTINATION_FILE_LIMIT + 1)
    sock = tmp_path / "sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    not_regular = ("it is {}, not a regular file; point EGRESS_DESTINATION_FILE at a file (the "
                   "mounted ConfigMap's key)")
    cases = [
        (fifo, not_regular.format("a FIFO (named pipe)")),
        (Path("/dev/zero"), not_regular.format("a character device")),
        (sock, not_regular.format("a socket")),
        (tmp_path, not_regular.format("a directory")),
        (big, f"it is larger than {config.DESTINATION_FILE_LIMIT} bytes "
              f"({config.DESTINATION_FILE_LIMIT + 1} bytes); the limit holds 100,000 rules: "
              "split the rules over several routers or drop comments"),
    ]
    before = state(lab)
    try:
        for path, cause in cases:
            started = time.monotonic()
            code, stderr = init(lab, {"EGRESS_DESTINATION_FILE": str(path)}, timeout=30)
            assert (code, stderr) == (1, (
                f"{PREFIX}cannot parse EGRESS_DESTINATION_FILE: cannot read destination file "
                f"{str(path)!r}: {cause}\n"
            )), path
            assert time.monotonic() - started < 20, f"{path}: no hang"
    finally:
        listener.close()
    assert state(lab) == before
    # The control: a regular file with the same rules is applied.
    good = tmp_path / "rules"
    good.write_text(RULES)
    code, stderr = init(lab, {"EGRESS_DESTINATION_FILE": str(good)})
    assert code == 0, stderr
    assert state(lab) != before
    assert labmod.dial(lab, "tcp", ROUTER4, 80).server == "203.0.113.25:80"


# ------------------------------------------------------------------ DNS answers

HOSTILE = ["192.168.12.99", "192.168.12.1", "192.168.12.255", "10.128.0.3", "127.0.0.1",
           "169.254.169.254", "224.0.0.251", "0.0.0.0", "240.0.0.1"]


def http(lab: labmod.Lab, path: str) -> str:
    answer = http_get(lab.client, f"http://{ROUTER4}:9090{path}")
    assert answer.status == 200, answer
    return answer.body


def refused_total(lab: labmod.Lab) -> float | None:
    for line in http(lab, "/metrics").splitlines():
        if line.startswith("egress_router_dns_answers_refused_total "):
            return float(line.split()[1])
    return None


def test_hostile_dns_answers_never_reach_the_redirect_map(
    lab: labmod.Lab, tmp_path: Path
) -> None:
    labmod.start_dns(lab, {
        "own.lab.test": {"A": ["192.168.12.99"], "ttl": 1},
        "mixed.lab.test": {"A": ["203.0.113.26", *HOSTILE], "ttl": 1},
        "api.lab.test": {"A": ["203.0.113.25"], "ttl": 1},
    })
    # The init container: a name with only hostile answers is refused, nothing applied.
    before = state(lab)
    code, stderr = init(lab, {"EGRESS_DESTINATION": "80 tcp own.lab.test\n"})
    assert (code, stderr) == (1, (
        f"{PREFIX}cannot use own.lab.test: every address it resolves to is refused as a "
        "destination (192.168.12.99 is the router's own source address (a redirect to "
        "itself)); check the name and the pod's DNS (/etc/resolv.conf), or write the address\n"
    ))
    assert state(lab) == before
    # A mixed answer: only the good address reaches the kernel (the pod network, 10.128.0.0/24,
    # is read from the router's eth0).
    code, stderr = init(lab, {"EGRESS_DESTINATION": "80 tcp mixed.lab.test\n"})
    assert code == 0, stderr
    for address in HOSTILE:
        assert f"refusing DNS answer {address} for mixed.lab.test: " in stderr
    maps = redirects(lab)
    assert "203.0.113.26" in maps
    assert [a for a in HOSTILE if f'"{a}"' in maps] == []
    assert labmod.dial(lab, "tcp", ROUTER4, 80).server == "203.0.113.26:80"

    # The waiting container: a good answer, then a hostile one, then a good one again.
    rules = tmp_path / "rules"
    rules.write_text("80 tcp api.lab.test\n")
    env = {**BASE, "EGRESS_ROUTER_MODE": "legacy", "EGRESS_DESTINATION_FILE": str(rules),
           "EGRESS_ROUTER_DNS_MIN_TTL": "1", "EGRESS_ROUTER_WATCH_SECONDS": "0.2"}
    proc = labmod.spawn_router(lab, env, args=["wait"])
    try:
        eventually(lambda: _ready(lab, proc), 30, "the router never became ready")
        assert refused_total(lab) == 0  # exported from the start
        assert labmod.dial(lab, "tcp", ROUTER4, 80).server == "203.0.113.25:80"
        labmod.set_dns_records(lab, {"api.lab.test": {"A": ["192.168.12.1", "10.128.0.3"],
                                                      "ttl": 1}})
        eventually(lambda: (refused_total(lab) or 0) >= 2, 10, "the refusal counted")
        maps = redirects(lab)
        assert '"192.168.12.1"' not in maps and '"10.128.0.3"' not in maps
        assert "203.0.113.25" in maps  # the last good address stays
        assert labmod.dial(lab, "tcp", ROUTER4, 80).server == "203.0.113.25:80"
        # The control: a good new answer does reach the map through the same path.
        labmod.set_dns_records(lab, {"api.lab.test": {"A": ["203.0.113.26"], "ttl": 1}})
        eventually(lambda: "203.0.113.26" in redirects(lab), 10, "the good answer applied")
        assert labmod.dial(lab, "tcp", ROUTER4, 80).server == "203.0.113.26:80"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate(timeout=10)
    refusals = [line for line in err.splitlines() if "refusing DNS answer 192.168.12.1 " in line]
    assert len(refusals) == 1, err  # logged once, however often it was asked


def _ready(lab: labmod.Lab, proc: subprocess.Popen[str]) -> bool:
    assert proc.poll() is None, proc.communicate(timeout=10)[1]
    try:
        http(lab, "/readyz")  # urlopen raises (exit 1) on 503
    except AssertionError:
        return False
    return True


# ------------------------------------------------------------------ pre-flight


def container_env() -> dict[str, str]:
    """A container's minimal environment that still finds this package (and ip, nft)."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
            "PYTHONPATH": str(Path(labmod.__file__).resolve().parents[2])}


def product(lab: labmod.Lab, env: dict[str, str], wrapper: list[str]) -> tuple[int, str]:
    """Run the product in the router pod behind ``wrapper`` (env(1), unshare(1) ...)."""
    done = labmod.run_in(
        lab.router, [*wrapper, sys.executable, "-m", "egress_router"],
        env={**container_env(), **BASE, **env}, timeout=60,
    )
    return done.returncode, done.stderr


READ_ONLY_PROC_SYS = [
    # A private mount namespace (ip netns exec already gives one; unshare makes sure), in
    # which /proc/sys is bound read-only, as a container runtime mounts it.
    "unshare", "-m", "sh", "-c",
    'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@"',
    "sh",
]


def test_a_preflight_failure_changes_nothing(lab: labmod.Lab) -> None:
    env = {"EGRESS_DESTINATION": RULES}
    before = state(lab)
    # No nft on PATH (sbin dropped).
    code, stderr = product(lab, env, ["/usr/bin/env", "PATH=/usr/bin:/bin"])
    assert (code, stderr) == (3, (
        f"{PREFIX}cannot set up the egress router: nft not found on PATH; install it in the "
        "image (nftables, iptables, iproute2); nothing was changed\n"
    ))
    assert state(lab) == before
    # iptables backend without iptables-restore.
    code, stderr = product(lab, {**env, "EGRESS_ROUTER_BACKEND": "iptables"},
                           ["/usr/bin/env", "PATH=/usr/bin:/bin"])
    assert (code, stderr) == (3, (
        f"{PREFIX}cannot set up the egress router: iptables-restore, iptables-save not found "
        "on PATH; install it in the image (nftables, iptables, iproute2); nothing was changed\n"
    ))
    assert state(lab) == before
    # The egress interface is missing.
    code, stderr = product(lab, {**env, "EGRESS_INTERFACE": "macvlan9"}, [])
    assert (code, stderr) == (3, (
        f"{PREFIX}cannot set up the egress router: interface 'macvlan9' does not exist in "
        "this network namespace; check EGRESS_INTERFACE / EGRESS_POD_INTERFACE and that the "
        "platform attached the macvlan (annotation or CNI); nothing was changed\n"
    ))
    assert state(lab) == before
    # /proc/sys is read-only: every sysctl the plan must change is named (one that already
    # holds its value needs no write, as in the wait container after init).
    cfg = config.load_config({**BASE, **env})
    wanted = engine.sysctl_values(plan.plan_interfaces(cfg))
    current = {
        key: labmod.run_in(lab.router, ["cat", f"/proc/sys/{key}"]).stdout.strip()
        for key in wanted
    }
    keys = [key for key, value in wanted.items() if current[key] != value]
    assert "net/ipv4/ip_forward" in keys
    assert len(keys) < len(wanted)  # some already hold their value: they are not named
    code, stderr = product(lab, env, READ_ONLY_PROC_SYS)
    named = "; ".join(
        f"sysctl {key.replace('/', '.')} is not writable (read-only /proc/sys?); run the "
        "container privileged or with a writable /proc/sys"
        for key in keys
    )
    assert (code, stderr) == (3, (
        f"{PREFIX}cannot set up the egress router: {named}; nothing was changed\n"
    ))
    assert state(lab) == before
    # The control: the same command, nothing missing, does change the namespace.
    code, stderr = product(lab, env, [])
    assert code == 0, stderr
    after = state(lab)
    assert after["nft"] != before["nft"]
    assert after["sysctls"]["net/ipv4/ip_forward"] == "1"
    assert labmod.dial(lab, "tcp", ROUTER4, 80).server == "203.0.113.25:80"
