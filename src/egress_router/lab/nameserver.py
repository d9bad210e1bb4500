"""A tiny authoritative DNS server for the lab, whose answers a test can change.

DNS-named destinations are only tested honestly against a real resolver
that the product queries with its own code, and whose answer changes while
the router runs. This server answers A and AAAA queries over UDP from a
JSON file of records, re-read whenever it changes::

    {"api.lab.test": {"A": ["203.0.113.25"], "AAAA": [], "ttl": 2}}

A name that is not in the file gets NXDOMAIN, a name without records of the
asked type an empty NOERROR answer. Every query is appended to a JSON-lines
log, so a test can see when the router asked. It runs as its own process
(``python -m egress_router.lab.nameserver``) inside a lab namespace, like
`labserver`; dnspython builds and parses the messages.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time
from pathlib import Path
from typing import Any

import click
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from egress_router.lab import server as labserver

_TYPES = {dns.rdatatype.A: "A", dns.rdatatype.AAAA: "AAAA"}


class Records:
    """The records file, re-read when its mtime or size changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._data: dict[str, dict[str, Any]] = {}

    def get(self) -> dict[str, dict[str, Any]]:
        try:
            st = self._path.stat()
        except OSError:
            return self._data
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                data = json.loads(self._path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return self._data  # being replaced; the next query reads it again
            self._stamp = stamp
            self._data = {k.lower().rstrip("."): v for k, v in data.items()}
        return self._data


def answer(query: bytes, records: dict[str, dict[str, Any]]) -> tuple[bytes, dict[str, Any]]:
    """The wire-format response to ``query`` and a log entry describing it."""
    request = dns.message.from_wire(query)
    response = dns.message.make_response(request)
    response.flags |= dns.flags.AA
    question = request.question[0]
    name = question.name.to_text().lower().rstrip(".")
    kind = _TYPES.get(question.rdtype)
    entry: dict[str, Any] = {"name": name, "type": dns.rdatatype.to_text(question.rdtype)}
    record = records.get(name)
    if record is None:
        response.set_rcode(dns.rcode.NXDOMAIN)
        entry["rcode"] = "NXDOMAIN"
    elif kind is not None and record.get(kind):
        ttl = int(record.get("ttl", 5))
        rrset = dns.rrset.from_text_list(question.name, ttl, "IN", kind, record[kind])
        response.answer.append(rrset)
        entry["answer"] = list(record[kind])
        entry["ttl"] = ttl
    return response.to_wire(), entry


def serve(listen: str, port: int, records_path: Path, log_path: Path, ready: Path | None) -> int:
    """Answer until SIGTERM."""
    stopping = False

    def stop() -> None:
        nonlocal stopping
        stopping = True

    labserver.on_stop_signals(stop)
    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    records = Records(records_path)
    with socket.socket(family, socket.SOCK_DGRAM) as sock, log_path.open("a") as log:
        sock.bind((listen, port))
        if ready is not None:
            tmp = ready.with_name(ready.name + ".tmp")
            tmp.write_text(f"{os.getpid()}\n")
            tmp.replace(ready)
        while not stopping:
            try:
                readable, _, _ = select.select([sock], [], [], 0.2)
            except InterruptedError:
                continue
            if not readable:
                continue
            data, peer = sock.recvfrom(4096)
            try:
                reply, entry = answer(data, records.get())
            except Exception as err:  # a malformed query must not stop the lab's DNS
                entry = {"error": str(err)}
                reply = b""
            if reply:
                sock.sendto(reply, peer)
            log.write(json.dumps({**entry, "ts": round(time.time(), 6)}) + "\n")
            log.flush()
    return 0


@click.command(help="Answer the lab's DNS queries from a records file until SIGTERM.")
@click.option("--listen", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=53, show_default=True)
@click.option("--records", type=click.Path(path_type=Path), required=True)
@click.option("--log", "log_path", type=click.Path(path_type=Path), required=True)
@click.option("--ready", type=click.Path(path_type=Path))
def main(listen: str, port: int, records: Path, log_path: Path, ready: Path | None) -> None:
    """``python -m egress_router.lab.nameserver --records F --log F``."""
    sys.exit(serve(listen, port, records, log_path, ready))


if __name__ == "__main__":
    main()
