"""One HTTP GET from inside a namespace, as kubelet's probes and Prometheus send it.

Before, five test files each carried their own urllib script. `get` runs the one script in the
namespace and returns what came back: the status and body, or, when no HTTP answer came, the
name of the error (``ConnectionRefusedError``, ``TimeoutError``, ...).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from egress_router.lab import processes

_SCRIPT = (
    "import sys, urllib.request, urllib.error\n"
    "try:\n"
    "    r = urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2]))\n"
    "    print(r.status); sys.stdout.write(r.read().decode())\n"
    "except urllib.error.HTTPError as e:\n"
    "    print(e.code); sys.stdout.write(e.read().decode())\n"
    "except OSError as e:\n"
    "    print(type(getattr(e, 'reason', e)).__name__)\n"
)


@dataclass(frozen=True)
class Answer:
    """``status`` None: no HTTP answer, ``error`` names why."""

    status: int | None
    body: str = ""
    error: str = ""


def url(host: str, port: int, path: str) -> str:
    return f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"


def get(ns: str, target: str, *, timeout: float = 5.0) -> Answer:
    """GET ``target`` from namespace ``ns`` (bounded: the request's timeout plus 15 s)."""
    done = processes.run_in(
        ns, [sys.executable, "-c", _SCRIPT, target, str(timeout)], timeout=timeout + 15
    )
    assert done.returncode == 0, done.stderr
    first, _, body = done.stdout.partition("\n")
    if first.isdigit():
        return Answer(int(first), body)
    return Answer(None, error=first.strip())
