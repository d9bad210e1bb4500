"""What both proxy modes share: one child proxy program, probes, metrics, a watched file.

The proxy pods' main containers run a real proxy from Debian (squid, HAProxy), as upstream's
images do, with this process as its parent: it writes the proxy's configuration from the
validated rules, starts the proxy, forwards SIGTERM, serves ``/healthz`` (the child runs),
``/readyz`` (the child accepts connections on its port) and ``/metrics`` on the router's
HTTP port, and, for a rules file, re-reads it when it changes: a good edit becomes a new
configuration and a reload signal to the child, a bad one is logged with its line and the
running rules stay.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType

from egress_router.core import config
from egress_router.kernel import files
from egress_router.router import http, metrics

log = logging.getLogger("egress_router.proxy")

STOP_TIMEOUT = 10.0


class ProxyError(RuntimeError):
    """The proxy program could not be started or stopped working."""


class Child:
    """The proxy program, started once; its output goes to ours (the container's log)."""

    def __init__(self, argv: list[str], name: str) -> None:
        self.name = name
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        except OSError as err:
            raise ProxyError(
                f"cannot start {name} ({argv[0]}): {err.strerror or err}; is it installed?"
            ) from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.proc.send_signal(signum)

    def stop(self) -> int:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        return self.proc.returncode


def accepting(port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on the loopback ``port``."""
    for host in ("127.0.0.1", "::1"):
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        except OSError:
            continue
    return False


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` in one rename; readable by the proxy's own user."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o644)
    tmp.replace(path)


class Watcher:
    """Calls ``changed(text)`` when the file's content changes (polled: ConfigMaps are links)."""

    def __init__(
        self, path: str, variable: str, interval: float, changed: Callable[[str], None]
    ) -> None:
        self.path = path
        self.variable = variable
        self.interval = interval
        self.changed = changed
        self.last: str | None = None

    def read(self) -> str:
        return files.read_bounded_file(self.path, self.variable, "destination file")

    def loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                text = self.read()
            except config.ConfigError as err:
                log.warning("%s; the running rules stay", err)
                continue
            if text != self.last:
                self.last = text
                self.changed(text)


class Status:
    """What the probes and the scrape read: set by the supervisor, read by the HTTP thread."""

    def __init__(self, child: Callable[[], bool], port: int, registry: metrics.Registry) -> None:
        self.child_alive = child
        self.port = port
        self.registry = registry

    def ready(self) -> tuple[bool, str]:
        if not self.child_alive():
            return False, "the proxy is not running"
        if not accepting(self.port):
            return False, f"the proxy does not accept connections on port {self.port} yet"
        return True, f"ready: the proxy accepts connections on port {self.port}"


def serve_http(port: int, status: Status) -> http.Server | None:
    """Serve the probes and the metrics on ``port`` (0: not at all) with the waiting
    container's endpoint (`router.http`): one event loop, a deadline for the whole request,
    bounded connections, overlapping scrapes sharing one collection — the port is open on
    the pod side, so any pod may flood it, here as there."""
    if port == 0:
        return None

    def health() -> tuple[bool, str]:
        ok = status.child_alive()
        return ok, "ok" if ok else "the proxy is not running"

    try:
        server = http.Server(port, http.Handlers(health, status.ready, status.registry.write))
    except http.HttpError as err:
        raise ProxyError(
            f"{err}; set {config.ENV_HTTP_PORT} to a free port (0 turns the server off)"
        ) from None
    server.start()
    return server


class Stop:
    """SIGTERM/SIGINT set it; the main thread waits on it."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping the proxy", signal.Signals(signum).name)
        self.event.set()


def supervise(child: Child, stop: Stop, poll: float = 0.2) -> int:
    """Wait for SIGTERM (stop the child, 0) or the child's own exit (an error)."""
    while not stop.event.wait(poll):
        if not child.alive():
            code = child.proc.returncode
            raise ProxyError(f"{child.name} exited on its own (status {code}); see its log above")
    code = child.stop()
    log.info("%s stopped (status %s)", child.name, code)
    return 0


def serve_and_supervise(
    child: Child, stop: Stop, status: Status, *, http_port: int, env: Mapping[str, str],
    file_variable: str, reload: Callable[[str], None], directory: Path,
) -> int:
    """The proxy container's life once its proxy runs: the HTTP endpoint, the rules file
    watched (when ``file_variable`` names one) and reloaded, the child supervised until
    SIGTERM; the child stopped and ``directory`` removed however it ends."""
    serve_http(http_port, status)
    path = config.strip_space(env.get(file_variable, ""))
    if path:
        interval = float(env.get(config.ENV_WATCH, "") or 1.0)
        watcher = Watcher(path, file_variable, interval, reload)
        watcher.last = watcher.read()
        threading.Thread(
            target=watcher.loop, args=(stop.event,), name="watch", daemon=True
        ).start()
    try:
        return supervise(child, stop)
    finally:
        child.stop()
        shutil.rmtree(directory, ignore_errors=True)


def workdir(prefix: str) -> Path:
    """A private directory for the generated configuration (readable by the proxy's user)."""
    base = Path(os.environ.get("TMPDIR", "/tmp"))
    path = base / f"{prefix}-{os.getpid()}"
    path.mkdir(mode=0o755, exist_ok=True)
    path.chmod(0o755)
    return path



def file_reader(variable: str) -> Callable[[str], str]:
    """Read the file ``variable`` names: bounded, a regular file (``kernel.files``)."""
    return lambda path: files.read_bounded_file(path, variable, "destination file")
