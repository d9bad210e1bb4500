"""Destination servers and a client for the lab, run inside its namespaces.

Integration tests must judge the egress router from the far side: which
destination answered and which source address it saw. This module is that
far side. ``serve`` runs in the lab's external namespace and answers on a list
of endpoints, logging every event as a JSON line; ``dial`` and ``stream`` run
in the client namespace and report what came back, or a structured failure
(``refused``, ``timeout``, ``unreachable``, ...), as one JSON line on stdout.

It is a program (``python -m egress_router.lab.server serve|dial|stream``)
because each role has to run in another network namespace, which means
another process started by ``ip netns exec``. Only the standard library is
used, so it starts fast and needs nothing but the interpreter.

Endpoints are written ``tcp:203.0.113.25:80`` or ``udp:[2001:db8:113::25]:53``.
Every reply is the JSON object ``{"proto", "server", "peer", "data"}``, where
``server`` and ``peer`` are ``addr:port`` (``[addr]:port`` for IPv6). The
``--log`` file gets the same object plus ``event`` and ``ts`` for every
exchange, flushed and written before the reply is sent, so a client holding a
reply can read the entry at once.

TCP: the server reads one line (5 s at most) and answers with one JSON line,
then closes; when that line is an HTTP request line, it reads the headers and wraps the JSON
line in an HTTP/1.1 200 answer (for curl and the HTTP proxy). If that first line is
``STREAM``, it answers the JSON line and then echoes every further line until the client
closes (or stays idle for ``--stream-idle`` seconds), which gives tests a long-lived
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, cast

import click

STREAM_HELLO = "STREAM"
LINE_TIMEOUT = 5.0
STREAM_IDLE_TIMEOUT = 300.0
MAX_LINE = 65536
PROTOCOLS = ("tcp", "udp")

# Log entries are the reply plus "event" and "ts"; a stream also logs its end.
REPLY_EVENT = "reply"
STREAM_END_EVENT = "stream-end"

# Failure names that a dial reports instead of a reply.
REFUSED = "refused"
TIMEOUT = "timeout"
UNREACHABLE = "unreachable"
RESET = "reset"
CLOSED = "closed"
BAD_REPLY = "bad-reply"


_TcpHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class EndpointError(ValueError):
    """An endpoint string that cannot be parsed."""


@dataclass(frozen=True)
class Endpoint:
    """One listening address: protocol, IP address and port."""

    proto: str
    host: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    def __str__(self) -> str:
        return f"{self.proto}:{format_hostport(str(self.host), self.port)}"

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if self.host.version == 6 else socket.AF_INET


def parse_endpoint(text: str) -> Endpoint:
    """Parse ``tcp:203.0.113.25:80`` or ``udp:[2001:db8::1]:53``."""
    proto, sep, rest = text.partition(":")
    if not sep or proto not in PROTOCOLS:
        raise EndpointError(
            f"cannot parse endpoint {text!r}: expected tcp:ADDR:PORT or udp:ADDR:PORT"
        )
    if rest.startswith("["):
        host_text, sep, port_text = rest[1:].partition("]:")
    else:
        host_text, sep, port_text = rest.rpartition(":")
    if not sep:
        raise EndpointError(f"cannot parse endpoint {text!r}: missing :PORT")
    try:
        host = ipaddress.ip_address(host_text)
    except ValueError as exc:
        raise EndpointError(f"cannot parse endpoint {text!r}: {exc}") from exc
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise EndpointError(f"cannot parse endpoint {text!r}: port must be 1..65535")
    if host.version == 6 and not rest.startswith("["):
        raise EndpointError(f"cannot parse endpoint {text!r}: write IPv6 as [ADDR]:PORT")
    return Endpoint(proto, host, int(port_text))


def format_hostport(host: str, port: int) -> str:
    """``addr:port``, with brackets around IPv6 addresses."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _sockaddr_text(sockaddr: Any) -> str:
    return format_hostport(str(sockaddr[0]), int(sockaddr[1]))


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").rstrip("\r\n")


# --------------------------------------------------------------------------- server


class EventLog:
    """Appends one JSON line per event and flushes it, so readers see it at once."""

    def __init__(self, path: Path | None) -> None:
        self._file: TextIO | None = path.open("a", encoding="utf-8") if path else None

    def write(self, event: dict[str, Any]) -> None:
        if self._file is None:
            return
        entry = {"event": REPLY_EVENT, **event, "ts": round(time.time(), 6)}
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _reply(proto: str, server: str, peer: str, data: str) -> dict[str, Any]:
    return {"proto": proto, "server": server, "peer": peer, "data": data}


async def _read_line(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, bytes]:
    """Read up to the first newline within ``timeout``; return (line, rest).

    Unlike ``readline`` under ``wait_for``, a timeout or EOF keeps what was
    read so far, so a client that sends no newline still gets its data echoed.
    """
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf and len(buf) < MAX_LINE:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            chunk = await asyncio.wait_for(reader.read(4096), remaining)
        except (TimeoutError, ConnectionError):
            break
        if not chunk:
            break
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    return line, rest


_HTTP_REQUEST = re.compile(r"[A-Z]{3,10} \S+ HTTP/1\.[01]\r?")


async def _skip_headers(reader: asyncio.StreamReader, rest: bytes) -> None:
    """Read an HTTP request's headers up to the blank line (bounded in size and time)."""
    buf = b"\n" + rest.replace(b"\r\n", b"\n")
    deadline = time.monotonic() + LINE_TIMEOUT
    while b"\n\n" not in buf and len(buf) < MAX_LINE:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            chunk = await asyncio.wait_for(reader.read(4096), remaining)
        except (TimeoutError, ConnectionError):
            return
        if not chunk:
            return
        buf += chunk.replace(b"\r\n", b"\n")


class Server:
    """All endpoints of one ``serve`` process."""

    def __init__(self, log: EventLog, stream_idle: float) -> None:
        self._log = log
        self._stream_idle = stream_idle
        self._tcp: list[asyncio.Server] = []
        self._udp: list[asyncio.DatagramTransport] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, endpoints: Sequence[Endpoint]) -> None:
        loop = asyncio.get_running_loop()
        for ep in endpoints:
            if ep.proto == "tcp":
                server = await asyncio.start_server(
                    self._handle_tcp_wrapper(str(ep.host), ep.port),
                    host=str(ep.host),
                    port=ep.port,
                    family=ep.family,
                    reuse_address=True,
                )
                self._tcp.append(server)
            else:
                server_text = format_hostport(str(ep.host), ep.port)
                transport, _ = await loop.create_datagram_endpoint(
                    functools.partial(_UdpProtocol, self._log, server_text),
                    local_addr=(str(ep.host), ep.port),
                    family=ep.family,
                )
                self._udp.append(transport)

    def _handle_tcp_wrapper(self, host: str, port: int) -> _TcpHandler:
        server_text = format_hostport(host, port)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._tasks.add(task)
            try:
                await self._handle_tcp(server_text, reader, writer)
            except (ConnectionError, TimeoutError):
                pass
            finally:
                if task is not None:
                    self._tasks.discard(task)
                writer.close()
                with contextlib.suppress(ConnectionError, TimeoutError):
                    await asyncio.wait_for(writer.wait_closed(), 1.0)

        return handle

    async def _handle_tcp(
        self, server_text: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = _sockaddr_text(writer.get_extra_info("peername"))
        line, rest = await _read_line(reader, LINE_TIMEOUT)
        data = _decode(line)
        event = _reply("tcp", server_text, peer, data)
        http = _HTTP_REQUEST.fullmatch(data) is not None
        if http:
            await _skip_headers(reader, rest)
        # Log before replying: once a client holds the reply, the log has it.
        self._log.write(event)
        body = (json.dumps(event) + "\n").encode()
        if http:
            # An HTTP request (a proxy's, or curl's) gets an HTTP answer with the same body.
            body = (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode() + body
        writer.write(body)
        await writer.drain()
        if data != STREAM_HELLO:
            return
        echoed = await self._echo(reader, writer, rest)
        self._log.write({**event, "event": STREAM_END_EVENT, "lines": echoed})

    async def _echo(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pending: bytes
    ) -> int:
        echoed = 0
        buf = pending
        while True:
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                writer.write(line + b"\n")
                echoed += 1
            await writer.drain()
            try:
                chunk = await asyncio.wait_for(reader.read(4096), self._stream_idle)
            except TimeoutError:
                return echoed
            if not chunk:
                return echoed
            buf += chunk

    async def close(self) -> None:
        for server in self._tcp:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for server in self._tcp:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        for transport in self._udp:
            transport.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, log: EventLog, server_text: str) -> None:
        self._log = log
        self._server_text = server_text
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's UDP transport does not inherit DatagramTransport
        # on Python 3.11, so an isinstance check would fail.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        event = _reply("udp", self._server_text, _sockaddr_text(addr), _decode(data))
        self._log.write(event)
        if self._transport is not None:
            self._transport.sendto(json.dumps(event).encode() + b"\n", addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier replies (the client went away): nothing to do.
        pass


async def serve(
    endpoints: Sequence[Endpoint],
    log_path: Path | None,
    ready_path: Path | None,
    stream_idle: float = STREAM_IDLE_TIMEOUT,
) -> int:
    """Serve until SIGTERM or SIGINT; return the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    on_stop_signals(stop.set, loop)
    log = EventLog(log_path)
    server = Server(log, stream_idle)
    try:
        try:
            await server.start(endpoints)
        except OSError as exc:
            print(f"cannot listen: {exc}", file=sys.stderr)
            return 1
        if ready_path is not None:
            # Rename so that a poller never sees a half-written marker.
            tmp = ready_path.with_name(ready_path.name + ".tmp")
            tmp.write_text(f"{os.getpid()}\n", encoding="utf-8")
            tmp.replace(ready_path)
        await stop.wait()
        return 0
    finally:
        await server.close()
        log.close()
        if ready_path is not None:
            ready_path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- client


def _failure(error: str, detail: str, proto: str, target: str) -> dict[str, Any]:
    return {"error": error, "detail": detail, "proto": proto, "target": target}


def _classify(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return REFUSED
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    if isinstance(exc, ConnectionResetError):
        return RESET
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return UNREACHABLE
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, "oserror").lower()
    return type(exc).__name__


def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    addr = ipaddress.ip_address(host.strip("[]"))
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    return family, (str(addr), port)


def _parse_reply(raw: bytes, proto: str, target: str) -> dict[str, Any]:
    if not raw:
        return _failure(CLOSED, "connection closed without a reply", proto, target)
    try:
        reply = json.loads(raw.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        return _failure(BAD_REPLY, raw[:200].decode("utf-8", errors="replace"), proto, target)
    if not isinstance(reply, dict):
        return _failure(BAD_REPLY, repr(reply)[:200], proto, target)
    return reply


def _recv_line(sock: socket.socket, deadline: float) -> bytes:
    buf = b""
    while b"\n" not in buf and len(buf) < MAX_LINE:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete reply line before the deadline")
        sock.settimeout(remaining)
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf.partition(b"\n")[0]


def dial(
    proto: str, host: str, port: int, payload: str = "hello", timeout: float = 3.0
) -> dict[str, Any]:
    """Send ``payload`` once and return the server's reply or a failure dict.

    A failure carries ``error`` (``refused``, ``timeout``, ``unreachable``,
    ``reset``, ``closed``, ``bad-reply`` or an errno name) and ``detail``.
    The whole exchange is bounded by ``timeout`` seconds.
    """
    family, sockaddr = _resolve(host, port)
    target = format_hostport(sockaddr[0], port)
    deadline = time.monotonic() + timeout
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    try:
        with socket.socket(family, kind) as sock:
            sock.settimeout(timeout)
            # A connected UDP socket turns ICMP errors into ECONNREFUSED etc.
            sock.connect(sockaddr)
            if proto == "tcp":
                sock.sendall(payload.encode() + b"\n")
                raw = _recv_line(sock, deadline)
            else:
                sock.send(payload.encode())
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                raw = sock.recv(MAX_LINE).partition(b"\n")[0]
    except OSError as exc:
        return _failure(_classify(exc), str(exc) or type(exc).__name__, proto, target)
    return _parse_reply(raw, proto, target)


def stream(
    host: str,
    port: int,
    *,
    count: int,
    interval: float,
    timeout: float = 3.0,
    out: TextIO = sys.stdout,
) -> dict[str, Any]:
    """Hold one TCP stream connection, send ``count`` lines ``interval`` apart.

    Prints the server's greeting as the first JSON line on ``out`` as soon as
    the connection stands (a caller can wait for it), and returns a summary:
    lines sent and echoed, the longest wait for an echo, and the first error.
    """
    family, sockaddr = _resolve(host, port)
    target = format_hostport(sockaddr[0], port)
    summary: dict[str, Any] = {"target": target, "sent": 0, "echoed": 0, "max_gap": 0.0}
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            sock.sendall(STREAM_HELLO.encode() + b"\n")
            reader = sock.makefile("rb")
            greeting = _parse_reply(reader.readline(MAX_LINE).rstrip(b"\n"), "tcp", target)
            summary["greeting"] = greeting
            print(json.dumps(greeting), file=out, flush=True)
            if "error" in greeting:
                return {**summary, "error": greeting["error"], "detail": greeting["detail"]}
            for i in range(count):
                if i:
                    time.sleep(interval)
                line = f"line {i}"
                started = time.monotonic()
                sock.sendall(line.encode() + b"\n")
                summary["sent"] += 1
                echo = reader.readline(MAX_LINE).rstrip(b"\n").decode(errors="replace")
                summary["max_gap"] = max(summary["max_gap"], round(time.monotonic() - started, 6))
                if echo != line:
                    detail = "connection closed" if not echo else f"got {echo!r}"
                    return {**summary, "error": CLOSED if not echo else BAD_REPLY, "detail": detail}
                summary["echoed"] += 1
    except OSError as exc:
        return {**summary, "error": _classify(exc), "detail": str(exc) or type(exc).__name__}
    return {**summary, "error": None}


# --------------------------------------------------------------------------- program


@click.group(help=(__doc__ or "").split("\n")[0])
def main() -> None:
    """``python -m egress_router.lab.server serve|dial|stream``."""


@main.command("serve")
@click.argument("endpoints", nargs=-1, required=True)
@click.option("--log", "log_path", type=click.Path(path_type=Path),
              help="Append one JSON line per event here.")
@click.option("--ready", type=click.Path(path_type=Path),
              help="Create this file once all sockets are bound.")
@click.option("--stream-idle", type=float, default=STREAM_IDLE_TIMEOUT, show_default=True)
def serve_command(
    endpoints: tuple[str, ...], log_path: Path | None, ready: Path | None, stream_idle: float
) -> None:
    """Answer on ENDPOINTS (tcp:ADDR:PORT, udp:[ADDR6]:PORT) until SIGTERM."""
    try:
        parsed = [parse_endpoint(text) for text in endpoints]
    except EndpointError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    sys.exit(asyncio.run(serve(parsed, log_path, ready, stream_idle)))


@main.command("dial")
@click.argument("proto", type=click.Choice(PROTOCOLS))
@click.argument("host")
@click.argument("port", type=int)
@click.option("--payload", default="hello", show_default=True)
@click.option("--timeout", type=float, default=3.0, show_default=True)
def dial_command(proto: str, host: str, port: int, payload: str, timeout: float) -> None:
    """Send one payload, print the reply or failure as JSON."""
    click.echo(json.dumps(dial(proto, host, port, payload, timeout)))


@main.command("stream")
@click.argument("host")
@click.argument("port", type=int)
@click.option("--count", type=int, default=10, show_default=True)
@click.option("--interval", type=float, default=0.1, show_default=True)
@click.option("--timeout", type=float, default=3.0, show_default=True)
def stream_command(host: str, port: int, count: int, interval: float, timeout: float) -> None:
    """Hold a TCP stream connection, print a summary as JSON."""
    click.echo(json.dumps(stream(host, port, count=count, interval=interval, timeout=timeout)))


def on_stop_signals(
    stop: Callable[[], object], loop: asyncio.AbstractEventLoop | None = None
) -> None:
    """Call ``stop`` on SIGTERM or SIGINT: the one signal handler of the lab's programs.

    With ``loop`` the handler runs in the event loop (asyncio servers), otherwise in the
    main thread between bytecodes (blocking servers must poll with a timeout).
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        if loop is not None:
            loop.add_signal_handler(signum, stop)
        else:
            signal.signal(signum, lambda _signum, _frame: stop())


if __name__ == "__main__":
    main()
