"""A flood of slow connections at an HTTP endpoint on port 9090, and a watch of its /readyz.

The waiting container's and the proxy pods' endpoints are open on the pod side, so any pod
may flood them; both run the same bounded server (router/http.py), and their tests drive it
with these programs, run in a lab namespace by ``python -c``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# argv: URL, seconds. Prints one JSON line per probe: [monotonic time, status, body].
READYZ_WATCH = (
    "import json, sys, time, urllib.request, urllib.error\n"
    "end = time.monotonic() + float(sys.argv[2])\n"
    "while time.monotonic() < end:\n"
    "    try:\n"
    "        r = urllib.request.urlopen(sys.argv[1], timeout=2); c, b = r.status, r.read()\n"
    "    except urllib.error.HTTPError as e:\n"
    "        c, b = e.code, e.read()\n"
    "    except OSError as e:\n"
    "        c, b = 0, str(e).encode()\n"
    "    print(json.dumps([time.monotonic(), c, b.decode()]), flush=True)\n"
    "    time.sleep(0.1)\n"
)

# argv: host, connections, seconds. Each connection sends its request one byte a second;
# prints {"peak": open at once, "closed_by_server": how many the server let go}.
SLOW_FLOOD = """
import json, resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
host, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
request = b"GET /metrics HTTP/1.0\\r\\nHost: router\\r\\n\\r\\n"
conns, closed, peak, end = [], 0, 0, time.monotonic() + seconds
while time.monotonic() < end:
    while len(conns) < count and time.monotonic() < end:
        s = socket.socket(); s.setblocking(False)
        try:
            s.connect_ex((host, 9090))
        except OSError:
            s.close(); break
        conns.append([s, 0])
    peak = max(peak, len(conns))
    alive = []
    for s, sent in conns:
        try:
            s.send(request[sent:sent + 1]); alive.append([s, sent + 1])
        except (BlockingIOError, InterruptedError):
            alive.append([s, sent])
        except OSError:
            s.close(); closed += 1
    conns = alive
    time.sleep(1.0)
print(json.dumps({"peak": peak, "closed_by_server": closed}), flush=True)
"""


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


@dataclass
class Flooded:
    """What a flood did: the endpoint process's threads before and at most during it, the
    /readyz status codes seen meanwhile, and the flood's own figures."""

    calm: int
    most: int
    codes: list[int]
    figures: dict[str, int]


def flood(ns: str, host: str, pid: int, *, connections: int, seconds: float,
          watch_seconds: float, samples: int, during: Callable[[], None]) -> Flooded:
    """Flood ``host``:9090 from namespace ``ns`` with slow connections while /readyz is
    watched and the threads of ``pid`` sampled (``samples`` times, 0.5 s apart); ``during``
    runs in the flood (the data path's check). Every program started is ended."""
    time.sleep(0.5)
    calm = threads(pid)
    slow = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SLOW_FLOOD,
                             host, str(connections), f"{seconds:g}"],
                            stdout=subprocess.PIPE, text=True)
    watch = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", READYZ_WATCH,
                              f"http://{host}:9090/readyz", f"{watch_seconds:g}"],
                             stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        most = calm
        for _ in range(samples):
            most = max(most, threads(pid))
            time.sleep(0.5)
        during()
        probes, _ = watch.communicate(timeout=30)
        flooded, _ = slow.communicate(timeout=60)
    finally:
        for proc in (slow, watch):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    codes = [code for _at, code, _body in (json.loads(line) for line in probes.splitlines())]
    return Flooded(calm, most, codes, json.loads(flooded))
