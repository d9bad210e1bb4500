"""The HTTP endpoint over a Unix socket (no network): answers, deadlines, floods, shared scrapes."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from egress_router.router import http
from support.router import Harness


class Endpoint:
    """A `http.Server` listening on a Unix socket in ``tmp``."""

    def __init__(self, tmp: Path, handlers: http.Handlers, **options: float) -> None:
        self.path = str(tmp / "http.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(http.BACKLOG)
        self.server = http.Server(0, handlers, listener=listener, **options)  # type: ignore[arg-type]
        self.server.start()

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self.path)
        return sock

    def get(self, path: str, method: str = "GET") -> tuple[int, str]:
        with self.connect() as sock:
            sock.sendall(f"{method} {path} HTTP/1.0\r\nHost: router\r\n\r\n".encode())
            data = _read_all(sock)
        head, _, body = data.decode().partition("\r\n\r\n")
        return int(head.split()[1]), body


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _handlers(scrape: Callable[[Callable[[str], object]], None] | None = None,
              ready: tuple[bool, str] = (True, "ok")) -> http.Handlers:
    return http.Handlers(lambda: (True, "ok"), lambda: ready,
                         scrape or (lambda write: write("x_up 1\n")))


@pytest.fixture
def endpoints() -> Iterator[list[Endpoint]]:
    made: list[Endpoint] = []
    yield made
    for endpoint in made:
        endpoint.server.close()


def test_http_endpoints_answer_from_the_router(harness: Harness, tmp_path: Path,
                                               endpoints: list[Endpoint]) -> None:
    beat = [1e18]
    router = harness.router

    def health() -> tuple[bool, str]:
        return (True, "ok") if beat[0] > 0 else (False, "main loop has not run for 99s")

    endpoint = Endpoint(tmp_path, http.Handlers(health, router.readiness,
                                                router.write_rule_metrics))
    endpoints.append(endpoint)
    assert endpoint.get("/healthz") == (200, "ok\n")
    assert endpoint.get("/readyz") == (200, "ok\n")
    harness.runner.applied.append("tampered")
    harness.router.reconcile()
    harness.runner.fail = "Error: injected"
    harness.runner.applied.append("tampered again")
    harness.router.reconcile()
    status, body = endpoint.get("/readyz")
    assert status == 503 and body.startswith("ruleset: "), body
    status, body = endpoint.get("/metrics")
    assert status == 200
    assert 'egress_router_applies_total{result="ok"} 1.0' in body
    assert "# TYPE egress_router_rule_connections_total counter" in body
    assert endpoint.get("/metrics", "HEAD") == (200, "")
    assert endpoint.get("/nope")[0] == 404
    assert endpoint.get("/readyz", "POST")[0] == 405
    beat[0] = -1
    assert endpoint.get("/healthz") == (500, "main loop has not run for 99s\n")


def test_a_slow_client_is_dropped_at_the_deadline_for_the_whole_request(
    tmp_path: Path, endpoints: list[Endpoint]
) -> None:
    # One byte every 0.1 s never runs into a per-read timeout; the whole request has one
    # deadline (0.5 s here). The control: the same request sent at once is answered.
    endpoint = Endpoint(tmp_path, _handlers(), deadline=0.5)
    endpoints.append(endpoint)
    request = b"GET /readyz HTTP/1.0\r\nHost: router\r\n\r\n"
    with endpoint.connect() as slow:
        closed = False
        for byte in request[:-1]:
            try:
                slow.send(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.1)
        slow.settimeout(3)
        closed = closed or _read_all(slow) == b""
    assert closed
    assert endpoint.get("/readyz") == (200, "ok\n")


def test_a_flood_of_idle_connections_neither_adds_threads_nor_keeps_a_probe_out(
    tmp_path: Path, endpoints: list[Endpoint]
) -> None:
    endpoint = Endpoint(tmp_path, _handlers(), max_connections=50)
    endpoints.append(endpoint)
    threads = threading.active_count()
    flood = []
    try:
        for _ in range(300):  # six times what the endpoint keeps, none sends a byte
            flood.append(endpoint.connect())
        time.sleep(0.2)
        assert threading.active_count() == threads
        for _ in range(5):
            assert endpoint.get("/readyz") == (200, "ok\n")
        # The oldest idle connections were let go: the flood holds at most its share.
        dropped = 0
        for sock in flood:
            sock.settimeout(0.01)
            with contextlib.suppress(TimeoutError, BlockingIOError):
                dropped += sock.recv(1) == b""
        assert dropped >= 300 - 50
    finally:
        for sock in flood:
            sock.close()


def test_overlapping_scrapes_share_one_collection(
    tmp_path: Path, endpoints: list[Endpoint]
) -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def scrape(write: Callable[[str], object]) -> None:
        calls.append(1)
        started.set()
        release.wait(10)
        write(f"x_collections {len(calls)}\n")

    endpoint = Endpoint(tmp_path, _handlers(scrape))
    endpoints.append(endpoint)
    answers: list[tuple[int, str]] = []
    first = threading.Thread(target=lambda: answers.append(endpoint.get("/metrics")))
    first.start()
    assert started.wait(10)
    # Eight more while the first collection runs: they all share the next one.
    others = [threading.Thread(target=lambda: answers.append(endpoint.get("/metrics")))
              for _ in range(8)]
    for thread in others:
        thread.start()
    time.sleep(0.3)
    release.set()
    for thread in [first, *others]:
        thread.join(10)
    assert len(answers) == 9 and {code for code, _ in answers} == {200}
    assert len(calls) == 2 == endpoint.server.collections
    assert sorted(body for _code, body in answers) == ["x_collections 1\n"] + [
        "x_collections 2\n"] * 8


def test_a_client_that_hangs_up_early_is_no_error(
    tmp_path: Path, endpoints: list[Endpoint], caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = Endpoint(tmp_path, _handlers())
    endpoints.append(endpoint)
    for _ in range(20):
        with endpoint.connect() as sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    assert endpoint.get("/readyz") == (200, "ok\n")
    assert "Traceback" not in caplog.text and "unexpected error" not in caplog.text
