"""The waiting container's HTTP endpoint (probes and scrapes) that no pod can exhaust.

The port is open on the pod side, so every pod of the cluster may connect to
it, slowly, by the thousand. A thread per connection (socketserver's
``ThreadingTCPServer``, as this once was) let four slow clients run the
process to 358 threads, which in a container with a pids limit starves the
router's own forks (``nft``, ``ip``, keepalived). So the endpoint is one event
loop in one thread (`selectors`, non-blocking sockets) plus one thread that
collects scrapes:

* every connection has one deadline for the whole exchange (`DEADLINE`, from
  accept to the last byte of the answer), not a timeout per read: a client
  that sends a byte a second is dropped when it runs out;
* at most `MAX_CONNECTIONS` are kept; one more evicts the oldest still reading
  its request, so a flood cannot keep a probe's fresh connection out;
* the listen backlog (`BACKLOG`) absorbs a burst between two turns of the loop;
* probes are answered in the loop from the last known state (the router's
  verdict, the loop's heartbeat), never from the kernel, in one write;
* scrapes that overlap share one collection: the collector thread writes the
  registry once and every ``/metrics`` request waiting meanwhile gets that text.

Just enough HTTP/1.0 for probes and scrapes: GET (or HEAD), one request a
connection. Not ``http.server``: it imports ``http.client`` and with it ``ssl``,
about 5 MiB of the 40 MiB budget for code never run here.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import resource
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from egress_router.router import metrics

log = logging.getLogger(__name__)

HTTP_LINE = 8192  # longest request or header line read
HTTP_HEADERS = 64  # most header lines read (their content is not needed)
REQUEST_LIMIT = HTTP_LINE * 4  # most bytes of a request (line and headers) read
DEADLINE = 5.0  # seconds from accept to the last byte of the answer, whatever the client does
BACKLOG = 1024  # connections the kernel queues between two turns of the loop
MAX_CONNECTIONS = 512  # kept open at once (bounded further by the open-files limit)
ACCEPT_BATCH = 256  # accepted per turn of the loop
TICK = 0.25  # the loop's longest sleep: deadlines are looked at this often
METRICS_TYPE = metrics.CONTENT_TYPE
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


class HttpError(RuntimeError):
    """The endpoint cannot listen (the message says why and what to do)."""


@dataclass
class Handlers:
    """What the endpoint answers from: all cheap, none touches the kernel but ``scrape``."""

    health: Callable[[], tuple[bool, str]]  # the main loop's heartbeat
    readiness: Callable[[], tuple[bool, str]]  # the router's last verdict
    scrape: Callable[[Callable[[str], object]], None]  # writes the whole scrape


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    deadline: float
    data: bytearray = field(default_factory=bytearray)
    out: memoryview | None = None  # the answer, as far as it is not sent yet
    head_only: bool = False
    waiting: bool = False  # for the scrape collection


def _head(code: int, content_type: str, length: int) -> bytes:
    lines = [f"HTTP/1.0 {code} {_REASONS[code]}", "Server: egress-router",
             f"Content-Type: {content_type}", "Connection: close", f"Content-Length: {length}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer(code: int, body: bytes, head_only: bool, content_type: str) -> bytes:
    head = _head(code, content_type, len(body))
    return head if head_only else head + body


def _text(code: int, body: str, head_only: bool) -> bytes:
    return _answer(code, body.encode(), head_only, "text/plain; charset=utf-8")


def _complete(data: bytes | bytearray) -> bool:
    """Whether ``data`` holds a whole request head (or more than is ever read)."""
    return (b"\r\n\r\n" in data or b"\n\n" in data or len(data) > REQUEST_LIMIT
            or data.count(b"\n") > HTTP_HEADERS)


class Server:
    """The endpoint: a listening socket, the loop's thread and the collector's thread."""

    def __init__(self, port: int, handlers: Handlers, *,
                 max_connections: int = MAX_CONNECTIONS, deadline: float = DEADLINE,
                 listener: socket.socket | None = None) -> None:
        self.handlers = handlers
        self.deadline = deadline
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # Keep room for the router's own files, pipes and netlink sockets.
        self.max_connections = max(8, min(max_connections, (soft - 64) // 2 if soft > 0 else 64))
        # ``listener``: a socket already listening (the unit tests' Unix socket).
        self.listener = _listen(port) if listener is None else listener
        self.listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._conns: collections.OrderedDict[_Conn, None] = collections.OrderedDict()
        self._stop = False
        # scrapes: waiting connections, the collection's result, the collector's wake-up
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._done: list[tuple[list[_Conn], bytes]] = []
        self._waiting: list[_Conn] = []
        self.collections = 0  # scrape collections made (tests: overlapping ones share)
        self._loop = threading.Thread(target=self._run, name="http", daemon=True)
        self._collector = threading.Thread(target=self._collect, name="scrape", daemon=True)

    def start(self) -> None:
        self._loop.start()
        self._collector.start()

    def close(self) -> None:
        """Stop both threads and close every socket."""
        self._stop = True
        self._wanted.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._loop.join(timeout=2)
        self._collector.join(timeout=2)
        for conn in list(self._conns):
            self._drop(conn)
        self._selector.close()
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        # Signals are the main thread's business (see wait.Signals): blocked here, a
        # SIGTERM always interrupts the main loop's wait at once.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        self._selector.register(self.listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        while not self._stop:
            try:
                self._turn()
            except Exception:  # the endpoint must outlive any one client
                log.exception("http: unexpected error; serving on")

    def _turn(self) -> None:
        events = self._selector.select(TICK)
        for key, mask in events:
            if key.fileobj is self.listener:
                self._accept()
            elif key.fileobj is self._wake_r:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
            else:
                conn = key.data
                if conn in self._conns:
                    if mask & selectors.EVENT_READ:
                        self._read(conn)
                    elif mask & selectors.EVENT_WRITE:
                        self._send(conn)
        self._deliver()
        now = time.monotonic()
        while self._conns:
            oldest = next(iter(self._conns))
            if oldest.deadline > now:
                break
            self._drop(oldest)  # the oldest has the earliest deadline: one deadline for all

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _addr = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if not self._evict():
                        return
                    continue
                return  # ECONNABORTED and the like: the client gave up
            if len(self._conns) >= self.max_connections:
                self._evict()
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic() + self.deadline)
            self._conns[conn] = None
            self._selector.register(sock, selectors.EVENT_READ, conn)
            self._read(conn)  # a probe's request is usually there already

    def _evict(self) -> bool:
        """Drop the oldest connection still reading its request (else the oldest at all)."""
        victim = next((c for c in self._conns if c.out is None and not c.waiting), None)
        if victim is None and self._conns:
            victim = next(iter(self._conns))
        if victim is None:
            return False
        self._drop(victim)
        return True

    def _drop(self, conn: _Conn) -> None:
        self._conns.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(conn.sock)
        conn.sock.close()
        if conn.waiting:
            conn.waiting = False
            with self._lock, contextlib.suppress(ValueError):
                self._waiting.remove(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            chunk = conn.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        if not chunk:
            if conn.data:
                self._respond(conn)  # half-closed after the request: answer it anyway
            else:
                self._drop(conn)
            return
        conn.data += chunk
        if _complete(conn.data):
            self._respond(conn)

    def _respond(self, conn: _Conn) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(conn.sock)
        answer = self._answer(conn)
        if answer is not None:
            self._reply(conn, answer)

    def _answer(self, conn: _Conn) -> bytes | None:
        """The answer to ``conn``'s request; None when it waits for a scrape collection."""
        line = bytes(conn.data).split(b"\n", 1)[0]
        words = line.split()
        if len(words) != 3 or len(line) > HTTP_LINE or not words[2].startswith(b"HTTP/"):
            return _text(400, "bad request: expected GET <path> HTTP/1.x\n", False)
        method, target = words[0], words[1].decode("latin-1")
        if method not in (b"GET", b"HEAD"):
            return _text(405, "only GET and HEAD are served\n", False)
        conn.head_only = method == b"HEAD"
        path = target.split("?", 1)[0]
        if path == "/healthz":
            ok, why = self.handlers.health()
            return _text(200 if ok else 500, f"{why}\n", conn.head_only)
        if path == "/readyz":
            ready, why = self.handlers.readiness()
            return _text(200 if ready else 503, f"{why}\n", conn.head_only)
        if path == "/metrics":
            conn.waiting = True
            with self._lock:
                self._waiting.append(conn)
            self._wanted.set()
            return None
        return _text(404, "not found: try /healthz, /readyz or /metrics\n", conn.head_only)

    def _reply(self, conn: _Conn, answer: bytes) -> None:
        conn.out = memoryview(answer)
        self._send(conn)
        if conn in self._conns and conn.out is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.register(conn.sock, selectors.EVENT_WRITE, conn)

    def _send(self, conn: _Conn) -> None:
        assert conn.out is not None
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            conn.out = None
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            self._drop(conn)

    def _deliver(self) -> None:
        """Hand each finished collection to the requests it was made for."""
        with self._lock:
            done, self._done = self._done, []
        for batch, body in done:
            answer = _answer(200, body, False, METRICS_TYPE)
            head = _answer(200, body, True, METRICS_TYPE)
            for conn in batch:
                conn.waiting = False
                if conn in self._conns:
                    self._reply(conn, head if conn.head_only else answer)

    # ------------------------------------------------------------------ the collector

    def _collect(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        while True:
            self._wanted.wait()
            if self._stop:
                return
            self._wanted.clear()
            # One collection for every request waiting now; those that come while it
            # runs share the next one (one collection at a time, however many scrapers).
            with self._lock:
                batch, self._waiting = self._waiting, []
            if not batch:
                continue
            parts: list[str] = []
            try:
                self.handlers.scrape(parts.append)
                body = "".join(parts).encode()
            except Exception:  # a scrape that fails must not end the thread
                log.exception("http: cannot collect the metrics")
                body = b""
            del parts
            self.collections += 1
            with self._lock:
                self._done.append((batch, body))
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")


def _listen(port: int) -> socket.socket:
    """A listening socket on every address, both families when possible."""
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # One socket for both families: kubelet probes and scrapes come over either.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host, port))
            sock.listen(BACKLOG)
            sock.setblocking(False)
            return sock
        except OSError as err:
            sock.close()
            if err.errno == errno.EADDRINUSE:
                raise HttpError(f"cannot serve HTTP on port {port}: it is in use") from None
            if family == socket.AF_INET:
                raise HttpError(f"cannot serve HTTP on port {port}: {err}") from None
    raise AssertionError("unreachable")
