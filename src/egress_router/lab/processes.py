"""Running things in the lab's namespaces: commands, the destination and DNS servers, the router.

Every process the lab starts is recorded (pid and start time) under the lab's state directory,
so that `egress_router.lab.world.down` can stop exactly those processes, also after a crash,
and never one that only reuses a pid. Clients (`dial`, `open_stream`) run the lab's own server
program in the client namespace and report what the far side saw.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from ipaddress import (
    IPv4Address,
    IPv6Address,
)
from pathlib import Path
from typing import Any

from egress_router.lab import server as labserver
from egress_router.lab.topology import (
    IP_TIMEOUT,
    POLL_INTERVAL,
    SERVER_OUTPUT_FILE,
    SERVER_PID_FILE,
    SERVER_READY_FILE,
    SERVER_READY_TIMEOUT,
    STATE_ROOT,
    STOP_TIMEOUT,
    DialResult,
    Lab,
    LabError,
)

# --------------------------------------------------------------------------- processes


def _base_env() -> dict[str, str]:
    """A minimal environment, like a container's, that still finds this package."""
    path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    for extra in ("/usr/local/sbin", "/usr/sbin", "/sbin"):
        if extra not in path.split(":"):
            path = f"{path}:{extra}"
    # The directory that holds the package (src/, or site-packages), not the package itself:
    # on sys.path that would make egress_router/operator shadow the standard library's.
    return {"PATH": path, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def _netns_exec(ns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def run_in(
    ns: str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in namespace ``ns`` and return its captured text output.

    ``env`` replaces the environment when given. A command still running
    after ``timeout`` seconds is killed and raises :class:`LabError`.
    """
    try:
        return subprocess.run(
            _netns_exec(ns, argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            input=input,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(
            f"cannot run {' '.join(argv)} in {ns}: still running after {timeout:g} s, killed"
        ) from exc
    except OSError as exc:
        raise LabError(f"cannot run {' '.join(argv)} in {ns}: {exc}") from exc


def run(argv: Sequence[str], what: str, timeout: float = IP_TIMEOUT) -> str:
    """Run a platform command in the caller's namespace; stdout, or LabError."""
    try:
        cp = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"cannot {what}: {exc}") from exc
    if cp.returncode != 0:
        cause = cp.stderr.strip() or f"exit status {cp.returncode}"
        raise LabError(f"cannot {what}: {' '.join(argv)}: {cause}")
    return cp.stdout


def ip(ns: str, *args: str, what: str) -> str:
    return run(["ip", "-n", ns, *args], what)


def ip_json(ns: str, *args: str, what: str) -> list[dict[str, Any]]:
    out = run(["ip", "-j", "-n", ns, *args], what)
    data = json.loads(out) if out.strip() else []
    return data if isinstance(data, list) else []


def sysctl(ns: str, settings: Mapping[str, str]) -> None:
    argv = ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())]
    cp = run_in(ns, argv, timeout=IP_TIMEOUT)
    if cp.returncode != 0:
        raise LabError(f"cannot set sysctls in {ns}: {cp.stderr.strip()}")


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks, or None if gone or a zombie.

    Together with the pid it identifies a process across pid reuse.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def process_record(pid: int) -> str:
    return f"{pid} {_start_time(pid)}\n"


def recorded_process_alive(path: Path) -> int | None:
    """The pid recorded in ``path`` if that very process still runs."""
    try:
        pid_text, _, start_text = path.read_text(encoding="utf-8").strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    start = _start_time(pid)
    return pid if start is not None and str(start) == start_text else None


def _wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Poll until the processes are gone (zombies count as gone); the survivors."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive:
        alive = [pid for pid in alive if _start_time(pid) is not None]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL)
    return alive


def terminate(pids: Sequence[int]) -> None:
    """SIGTERM, then SIGKILL what is left after a grace period."""
    pids = [pid for pid in pids if pid != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        pids = _wait_gone(pids, STOP_TIMEOUT)
        if not pids:
            return


# Servers started by this process, so that down() can reap them (no zombies).
_SERVERS: dict[str, subprocess.Popen[bytes]] = {}


def start_server(lab: Lab, endpoints: Sequence[str]) -> None:
    state = lab.state_dir
    ready = state / SERVER_READY_FILE
    output = state / SERVER_OUTPUT_FILE
    ready.unlink(missing_ok=True)
    argv = _netns_exec(
        lab.ext,
        [
            sys.executable,
            "-m",
            "egress_router.lab.server",
            "serve",
            "--log",
            str(lab.served_log),
            "--ready",
            str(ready),
            *endpoints,
        ],
    )
    with output.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_base_env(),
            start_new_session=True,
        )
    _SERVERS[lab.prefix] = proc
    # `ip netns exec` execs the command, so this pid is the server itself.
    (state / SERVER_PID_FILE).write_text(process_record(proc.pid), encoding="utf-8")
    deadline = time.monotonic() + SERVER_READY_TIMEOUT
    while not ready.exists():
        if proc.poll() is not None:
            text = output.read_text(encoding="utf-8", errors="replace").strip()
            raise LabError(
                f"cannot start destination server in {lab.ext}: exit status {proc.returncode}:"
                f" {text}"
            )
        if time.monotonic() >= deadline:
            raise LabError(
                f"cannot start destination server in {lab.ext}: not ready after"
                f" {SERVER_READY_TIMEOUT:g} s (see {output})"
            )
        time.sleep(POLL_INTERVAL)


def stop_server(prefix: str) -> None:
    proc = _SERVERS.pop(prefix, None)
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
    pid = recorded_process_alive(STATE_ROOT / prefix / SERVER_PID_FILE)
    if pid is not None:
        terminate([pid])


# --------------------------------------------------------------------------- using the lab


def router_command(
    lab: Lab, env: Mapping[str, str], timeout: float = 60, args: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Run the product in the router pod as its init container would.

    ``env`` (EGRESS_SOURCE, EGRESS_ROUTER_MODE, ...) is merged over a minimal
    environment; nothing else of the caller's environment leaks in. ``args``
    are command-line arguments (e.g. ``["status", "--json"]``).
    """
    return run_in(
        lab.router,
        [sys.executable, "-m", "egress_router", *args],
        env={**_base_env(), **env},
        timeout=timeout,
    )


def spawn_router(
    lab: Lab, env: Mapping[str, str], args: Sequence[str] = ()
) -> subprocess.Popen[str]:
    """Start the product in the router pod without waiting (``legacy`` mode).

    ``args`` are command-line arguments (e.g. ``["wait"]``). The caller ends
    it; :func:`down` ends it anyway.
    """
    return subprocess.Popen(
        _netns_exec(lab.router, [sys.executable, "-m", "egress_router", *args]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_base_env(), **env},
        start_new_session=True,
    )


def _labserver_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "egress_router.lab.server", *args]


def _last_json(text: str, what: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        obj = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise LabError(f"cannot {what}: no JSON result in {text!r}") from exc
    if not isinstance(obj, dict):
        raise LabError(f"cannot {what}: unexpected result {obj!r}")
    return obj


def dial(
    lab: Lab,
    proto: str,
    host: str | IPv4Address | IPv6Address,
    port: int,
    *,
    payload: str = "hello",
    timeout: float = 3.0,
    ns: str | None = None,
) -> DialResult:
    """Send one payload from the client pod (or namespace ``ns``) and report.

    Failures to connect are results (``error`` set), not exceptions;
    :class:`LabError` means the dial program itself could not run.
    """
    ns = ns or lab.client
    target = labserver.format_hostport(str(host), port)
    what = f"dial {proto} {target} from {ns}"
    argv = _labserver_argv(
        "dial", proto, str(host), str(port), f"--payload={payload}", f"--timeout={timeout}"
    )
    cp = run_in(ns, argv, env=_base_env(), timeout=timeout + 15)
    if cp.returncode != 0:
        raise LabError(f"cannot {what}: {cp.stderr.strip()}")
    return DialResult.from_json(_last_json(cp.stdout, what), proto, target)


def served(lab: Lab) -> list[dict[str, Any]]:
    """The destination server's log: one dict per event, oldest first.

    Each has ``proto``, ``server``, ``peer``, ``data``, ``event`` (``reply``,
    or ``stream-end`` with ``lines``) and ``ts``.
    """
    try:
        text = lab.served_log.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    entries: list[dict[str, Any]] = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # being written right now
        entries.append(json.loads(line))
    return entries


class Stream:
    """A long-lived TCP connection from the client pod, held by a subprocess.

    It sends ``count`` lines ``interval`` seconds apart and expects each one
    echoed. Use :meth:`connected` to wait until the connection stands, then
    change things, then :meth:`result` for the summary (``error`` is None if
    every line came back).
    """

    def __init__(self, proc: subprocess.Popen[bytes], what: str) -> None:
        self._proc = proc
        self._what = what
        self._buffer = b""

    def connected(self, timeout: float = 5.0) -> DialResult:
        """Wait for the server's greeting (bounded) and return it."""
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    raise LabError(f"cannot {self._what}: no greeting within {timeout:g} s")
                chunk = os.read(self._proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                self._buffer += chunk
        line = self._buffer.partition(b"\n")[0].decode(errors="replace")
        return DialResult.from_json(_last_json(line, self._what), "tcp", self._what)

    def result(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait (bounded) for the stream to finish; its summary."""
        try:
            out, err = self._proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.close()
            raise LabError(f"cannot {self._what}: not finished after {timeout:g} s") from exc
        text = (self._buffer + out).decode(errors="replace")
        if self._proc.returncode != 0:
            raise LabError(f"cannot {self._what}: {err.decode(errors='replace').strip()}")
        return _last_json(text, self._what)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.communicate()


def open_stream(
    lab: Lab,
    host: str | IPv4Address | IPv6Address,
    port: int,
    *,
    count: int = 20,
    interval: float = 0.1,
    timeout: float = 3.0,
    ns: str | None = None,
) -> Stream:
    """Start a :class:`Stream` from the client pod (or namespace ``ns``)."""
    ns = ns or lab.client
    what = f"stream to {labserver.format_hostport(str(host), port)} from {ns}"
    argv = _labserver_argv(
        "stream",
        str(host),
        str(port),
        f"--count={count}",
        f"--interval={interval}",
        f"--timeout={timeout}",
    )
    proc = subprocess.Popen(
        _netns_exec(ns, argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_base_env(),
        bufsize=0,
        start_new_session=True,
    )
    return Stream(proc, what)


# --------------------------------------------------------------------------- DNS for the router

# `ip netns exec NS` bind-mounts every file of /etc/netns/NS over /etc in the
# process it starts: a resolv.conf there is the namespace's resolver, as a
# pod's /etc/resolv.conf is the pod's.
NETNS_ETC = Path("/etc/netns")
DNS_RECORDS_FILE = "dns.json"
DNS_LOG_FILE = "dns.jsonl"
DNS_READY_FILE = "dns.ready"
LAB_RESOLVER = "127.0.0.1"
# A cluster DNS Service stand-in: on the service network (OpenShift's default 172.30.0.0/16),
# on the node's loopback, so the router pod reaches it only via its pod gateway (the node).
SERVICE_RESOLVER = "172.30.0.10"

_DNS_SERVERS: dict[str, subprocess.Popen[bytes]] = {}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def set_dns_records(lab: Lab, records: Mapping[str, Mapping[str, Any]]) -> None:
    """Replace the lab resolver's records: ``{name: {"A": [...], "AAAA": [...], "ttl": s}}``."""
    _write_atomic(lab.state_dir / DNS_RECORDS_FILE, json.dumps(records))


def start_dns(
    lab: Lab, records: Mapping[str, Mapping[str, Any]], *, service_network: bool = False
) -> None:
    """Give the router pod a DNS resolver whose answers the test controls.

    Starts `labdns` on 127.0.0.1:53 inside the router namespace and writes
    ``/etc/netns/<router>/resolv.conf`` pointing at it, so every process
    started in the router pod from now on (`router_command`, `spawn_router`)
    resolves through it. With ``service_network`` it listens on
    `SERVICE_RESOLVER` in the node namespace instead, as a cluster's DNS
    Service: not on-link for the router pod. :func:`down` stops it and removes
    the file.
    """
    set_dns_records(lab, records)
    listen, where = LAB_RESOLVER, lab.router
    if service_network:
        listen, where = SERVICE_RESOLVER, lab.node
        added = run_in(lab.node, ["ip", "address", "add", f"{SERVICE_RESOLVER}/32", "dev", "lo"])
        if added.returncode != 0:
            raise LabError(f"cannot add {SERVICE_RESOLVER} in {lab.node}: {added.stderr.strip()}")
    etc = NETNS_ETC / lab.router
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(
        f"# egress-router lab {lab.prefix}: removed by `lab down`\n"
        f"nameserver {listen}\noptions timeout:1 attempts:2\n",
        encoding="utf-8",
    )
    ready = lab.state_dir / DNS_READY_FILE
    ready.unlink(missing_ok=True)
    argv = _netns_exec(
        where,
        [
            sys.executable, "-m", "egress_router.lab.nameserver",
            "--listen", listen,
            "--records", str(lab.state_dir / DNS_RECORDS_FILE),
            "--log", str(lab.state_dir / DNS_LOG_FILE),
            "--ready", str(ready),
        ],
    )
    output = (lab.state_dir / "dns.out").open("wb")
    with output:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            env=_base_env(), start_new_session=True,
        )
    _DNS_SERVERS[lab.prefix] = proc
    deadline = time.monotonic() + SERVER_READY_TIMEOUT
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() >= deadline:
            text = (lab.state_dir / "dns.out").read_text(errors="replace").strip()
            stop_dns(lab.prefix)
            raise LabError(f"cannot start the lab DNS server in {where}: {text}")
        time.sleep(POLL_INTERVAL)


def dns_queries(lab: Lab) -> list[dict[str, Any]]:
    """The lab resolver's log: one dict per query (``name``, ``type``, ``answer``, ``ts``)."""
    try:
        text = (lab.state_dir / DNS_LOG_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def stop_dns(prefix: str) -> None:
    proc = _DNS_SERVERS.pop(prefix, None)
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT)
