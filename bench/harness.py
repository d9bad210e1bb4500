"""Drive the lab for the benchmark: servers, paths, router configurations and load generators.

The router is configured exactly as in production (``egress_router.lab.world``'s
router pod, the product started with ``EGRESS_ROUTER_MODE=init``); the two
reference paths only add routes inside the lab's own namespaces:

* direct: the node forwards the client's packets to the gateway, the gateway
  routes the pod network back via the node; no router, no NAT, no conntrack.
* forward: the client routes the destinations via the router pod, whose
  ruleset is flushed (the interfaces and routes the product configured stay),
  and the gateway routes the pod network back via the router's macvlan
  address: the same routed hop as the product's, without NAT or conntrack.

Every router configuration starts from ``nft flush ruleset`` in the router
namespace (a fresh pod) and every measurement from an empty conntrack table,
so no connection reuses a NAT binding from an earlier configuration.

Load generators are Debian's C tools, run inside the client namespace: ``ab``
(several processes in parallel, no keep-alive) against nginx for new
connections, iperf3 for throughput, sockperf ping-pong for request/response.
Where it helps (one flow, latency) the client is pinned to CPU 0 and the
servers to CPU 1.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from bench import parsers, upstream, workload
from bench.stats import Sample
from bench.workload import DataPath, Figure, Unit
from egress_router.core import config
from egress_router.lab import world as labmod

CLIENT_IP = str(labmod.CLIENT_POD4.ip)
ROUTER_IP = str(labmod.ROUTER_POD4.ip)
SOURCE_IP = str(labmod.EGRESS_SOURCE4)
NODE_PHYS_IP = str(labmod.NODE_PHYS4.ip)
LOOPBACK_HTTP_PORT = 8081
CLIENT_CPU, SERVER_CPU = "0", "1"
AB_PROCESSES = 2  # one per core: a single ab process is CPU-bound below the kernel's rate
AB_CONCURRENCY = 8
AB_MAX_REQUESTS = "1000000"
TOOL_GRACE = 20.0  # seconds a tool may take beyond its measuring time
INIT_TIMEOUT = 60.0
REQUIRED_TOOLS = {
    "ab": "apache2-utils",
    "nginx": "nginx-light",
    "sockperf": "sockperf",
    "iperf3": "iperf3",
    "taskset": "util-linux",
    "conntrack": "conntrack",
    "nft": "nftables",
    "iptables-restore": "iptables",
}

ROUTER_ENV = {
    config.ENV_SOURCE: f"{labmod.EGRESS_SOURCE4}/{labmod.PHYS_NET4.prefixlen}",
    config.ENV_GATEWAY: str(labmod.GATEWAY4.ip),
    config.ENV_MODE: "init",
    config.ENV_ANNOUNCE_COUNT: "1",  # one announcement, no sleeping: init exits when ready
}

_RULES_APPLIED = re.compile(r"ruleset applied")
_READY = re.compile(r"egress router ready")

# A single-process Python client, for the calibration: how far below the
# kernel's rate an interpreted connect loop stays.
_PY_CONNECT_LOOP = """
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
request = b"GET / HTTP/1.0\\r\\n\\r\\n"
done, end = 0, time.monotonic() + seconds
start = time.monotonic()
while time.monotonic() < end:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(request)
        while s.recv(4096):
            pass
    done += 1
print(done / (time.monotonic() - start))
"""

_PY_FETCH = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
    s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    data = b""
    while chunk := s.recv(4096):
        data += chunk
print(data.split(b"\\r\\n\\r\\n", 1)[-1].decode().strip())
"""


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and why."""


@dataclass(frozen=True)
class Durations:
    """Seconds each tool measures for (ab and iperf3 take whole seconds)."""

    conn: int = 2
    latency: int = 1
    flow: int = 2
    calibration: int = 2


@dataclass
class Records:
    """Everything a run collects besides the samples."""

    init: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    upstream_apply: list[dict[str, Any]] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def netns_argv(ns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def pinned(cpu: str | None, argv: Sequence[str]) -> list[str]:
    return list(argv) if cpu is None else ["taskset", "-c", cpu, *argv]


def loadavg() -> tuple[float, float, float]:
    return parsers.parse_loadavg(Path("/proc/loadavg").read_text(encoding="ascii"))


def _check(cp: subprocess.CompletedProcess[str], what: str) -> str:
    if cp.returncode != 0:
        cause = (cp.stderr.strip() or cp.stdout.strip())[-400:] or f"exit status {cp.returncode}"
        raise BenchError(f"cannot {what}: {cause}")
    return cp.stdout


def _stop(procs: Sequence[subprocess.Popen[Any]]) -> None:
    """SIGTERM the processes we started, by pid; SIGKILL what is left after 5 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _on_cpu_ns(pids: Sequence[int]) -> int:
    """Nanoseconds ``pids`` have run on a CPU so far (``/proc/PID/schedstat``; gone: 0)."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def _softirq_threads() -> list[int]:
    """The kernel's ksoftirqd threads: packets the sender's own context did not finish."""
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().startswith("ksoftirqd/"):
                pids.append(int(comm.parent.name))
    return pids


@dataclass
class CpuMeter:
    """CPU time used while a block ran by the client processes it started and reaped,
    the given server processes and the softirq threads.

    On veth links the receiving side's stack (the router's netfilter included) runs in
    the sender's softirq context, so the client's and the server's CPU time hold the
    router's per-packet work; what the kernel defers lands in ksoftirqd, which on a
    shared machine also serves other tenants' packets (a small overcount).
    """

    pids: Sequence[int]
    seconds: float = 0.0

    @contextlib.contextmanager
    def measuring(self) -> Iterator[CpuMeter]:
        def children() -> float:
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            return usage.ru_utime + usage.ru_stime

        before_children, before_ns = children(), _on_cpu_ns(self.pids)
        yield self
        self.seconds = children() - before_children + (_on_cpu_ns(self.pids) - before_ns) / 1e9


class Harness:
    """The lab with its servers, switched between paths and router configurations."""

    def __init__(
        self, prefix: str, workdir: Path, durations: Durations, log: Callable[[str], None]
    ) -> None:
        self.prefix = prefix
        self.workdir = workdir
        self.durations = durations
        self.log = log
        self.records = Records()
        self.lab: labmod.Lab | None = None
        self._servers: list[subprocess.Popen[bytes]] = []
        self._route: DataPath | None = None
        self._pin = (os.cpu_count() or 1) >= 2

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Harness:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def lab_handle(self) -> labmod.Lab:
        """The lab; BenchError when it is not up."""
        if self.lab is None:
            raise BenchError("cannot use the lab: it is not up")
        return self.lab

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log(f"building lab {self.prefix} (namespaces {self.prefix}-*)")
        self.lab = labmod.up(self.prefix)
        lab = self.lab
        self._sysctl(lab.client, {"net.ipv4.ip_local_port_range": "1024 65535",
                                  "net.ipv4.tcp_tw_reuse": "1"})
        self._sysctl(lab.ext, {"net.ipv4.ip_local_port_range": "1024 65535",
                               "net.ipv4.tcp_tw_reuse": "1", "net.core.somaxconn": "8192",
                               "net.ipv4.tcp_max_syn_backlog": "8192"})
        # The direct path: the node routes the client's packets (the lab's node does not).
        self._sysctl(lab.node, {"net.ipv4.ip_forward": "1"})
        # Addresses, routes and forwarding of the router pod, as the product sets them;
        # every later configuration only replaces the ruleset.
        self.run_product(DataPath.NFTABLES, 1, Figure.CONN, record=False)
        self._start_servers()

    def close(self) -> None:
        _stop(self._servers)
        self._servers = []
        if self.lab is not None:
            self.log(f"removing lab {self.prefix}")
            labmod.down(self.prefix)
            self.lab = None

    def _sysctl(self, ns: str, settings: Mapping[str, str]) -> None:
        argv = ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())]
        _check(labmod.run_in(ns, argv, timeout=10), f"set sysctls in {ns}")

    def _start_servers(self) -> None:
        lab = self.lab_handle
        dest = workload.DESTINATION
        conf = self.workdir / "nginx.conf"
        conf.write_text(
            "worker_processes 2;\n"
            "daemon off;\n"
            f"pid {self.workdir / 'nginx.pid'};\n"
            f"error_log {self.workdir / 'nginx-error.log'} warn;\n"
            "events { worker_connections 16384; multi_accept on; }\n"
            "http {\n"
            "  access_log off;\n"
            "  keepalive_timeout 0;\n"
            "  server {\n"
            f"    listen {dest}:{workload.SERVICES[Figure.CONN].port} reuseport backlog=8192;\n"
            f"    listen 127.0.0.1:{LOOPBACK_HTTP_PORT} reuseport backlog=8192;\n"
            '    location / { return 200 "$remote_addr\\n"; }\n'
            "  }\n"
            "}\n",
            encoding="utf-8",
        )
        server_cpu = SERVER_CPU if self._pin else None
        commands = [
            ("nginx", ["nginx", "-e", str(self.workdir / "nginx-error.log"), "-c", str(conf)]),
            ("iperf3", pinned(server_cpu, [
                "iperf3", "-s", "-B", dest, "-p", str(workload.SERVICES[Figure.THROUGHPUT].port)
            ])),
            ("sockperf-udp", pinned(server_cpu, [
                "sockperf", "server", "-i", dest, "-p", str(workload.SERVICES[Figure.UDP_RR].port)
            ])),
            ("sockperf-tcp", pinned(server_cpu, [
                "sockperf", "server", "--tcp", "-i", dest,
                "-p", str(workload.SERVICES[Figure.TCP_RR].port),
            ])),
        ]
        for name, argv in commands:
            out = (self.workdir / f"{name}.log").open("wb")
            with out:
                proc = subprocess.Popen(
                    netns_argv(lab.ext, argv), stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
            self._servers.append(proc)
        time.sleep(1.0)
        for proc, (name, _argv) in zip(self._servers, commands, strict=True):
            if proc.poll() is not None:
                text = (self.workdir / f"{name}.log").read_text(errors="replace")[-400:]
                raise BenchError(f"cannot start {name} in {lab.ext}: {text.strip()}")
        listening = _check(labmod.run_in(lab.ext, ["ss", "-Hltun"], timeout=10), "list sockets")
        for service in workload.SERVICES.values():
            if f"{dest}:{service.port}" not in listening:
                raise BenchError(
                    f"cannot start the servers: nothing listens on {service.proto} "
                    f"{dest}:{service.port} in {lab.ext}"
                )

    # ------------------------------------------------------------------ paths

    def set_route(self, path: DataPath) -> None:
        """Client and gateway routes for ``path`` (only inside the lab's namespaces)."""
        kind = path if path in (DataPath.DIRECT, DataPath.FORWARD) else DataPath.NFTABLES
        if self._route is kind:
            return
        lab = self.lab_handle
        ext_net = str(labmod.EXT_NET4)
        pod_net = str(labmod.POD_NET4)
        labmod.run_in(lab.client, ["ip", "route", "del", ext_net], timeout=10)
        if kind is DataPath.FORWARD:
            _check(labmod.run_in(lab.client, ["ip", "route", "replace", ext_net, "via",
                                              ROUTER_IP], timeout=10), "route via the router")
        via = SOURCE_IP if kind is DataPath.FORWARD else NODE_PHYS_IP
        _check(labmod.run_in(lab.gw, ["ip", "route", "replace", pod_net, "via", via],
                             timeout=10), "route the pod network back")
        self._route = kind

    def flush_router(self) -> None:
        _check(labmod.run_in(self.lab_handle.router, ["nft", "flush", "ruleset"], timeout=30),
               "flush the router's ruleset")

    def flush_conntrack(self) -> None:
        # Fails harmlessly while no rule has loaded conntrack in the namespace.
        labmod.run_in(self.lab_handle.router, ["conntrack", "-F"], timeout=30)

    def cpu_meter(self) -> contextlib.AbstractContextManager[CpuMeter]:
        """Measure the CPU time of a block: clients reaped in it, nginx workers, softirqs."""
        nginx = self._servers[0].pid if self._servers else None
        workers: list[int] = []
        if nginx is not None:
            with contextlib.suppress(OSError, ValueError):
                children = Path(f"/proc/{nginx}/task/{nginx}/children").read_text()
                workers = [int(pid) for pid in children.split()]
        return CpuMeter([*workers, *_softirq_threads()]).measuring()

    def rules_file(self, count: int, figure: Figure, *, fallback: bool = False) -> Path:
        path = self.workdir / f"rules-{count}{'-fallback' if fallback else ''}-{figure.value}.txt"
        if not path.exists():
            path.write_text(workload.destination_text(count, figure, fallback=fallback),
                            encoding="utf-8")
        return path

    def run_product(
        self, path: DataPath, count: int, figure: Figure, *, debug: bool = False,
        record: bool = True, round_index: int | None = None,
    ) -> dict[str, Any]:
        """Run ``egress-router`` (init mode) in the router pod, timing its log lines.

        Times are seconds from just before the process is started to the
        moment its stderr line arrived: rules in place (``... ruleset
        applied``), ready (``egress router ready``) and exit.
        """
        env = {
            **ROUTER_ENV,
            config.ENV_DESTINATION_FILE: str(self.rules_file(count, figure)),
            config.ENV_BACKEND: path.value,
        }
        if debug:
            env[config.ENV_DEBUG] = "true"
        started = time.monotonic()
        proc = labmod.spawn_router(self.lab_handle, env)
        try:
            lines = _timed_lines(proc, started + INIT_TIMEOUT)
            code = proc.wait(INIT_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        exited = time.monotonic()
        text = "\n".join(line for _, line in lines)
        if code != 0:
            raise BenchError(
                f"cannot configure the router ({path.value}, {count} rules): exit status "
                f"{code}: {text.strip()[-600:]}"
            )

        def first(pattern: re.Pattern[str]) -> float | None:
            return next((t - started for t, line in lines if pattern.search(line)), None)

        entry: dict[str, Any] = {
            "round": round_index, "path": path.value, "rules": count, "figure": figure.value,
            "to_rules_s": first(_RULES_APPLIED), "to_ready_s": first(_READY),
            "to_exit_s": exited - started,
        }
        if debug:
            stages = parsers.parse_stages(text)
            entry["stages"] = stages
            check, apply = (stages.get(f"{v} {path.value} ruleset") for v in ("check", "apply"))
            # nftables has no check stage any more (its apply is one transaction).
            entry["apply_s"] = None if apply is None else (check or 0.0) + apply
        if record:
            (self.records.stages if debug else self.records.init).append(entry)
        return entry

    def apply_upstream(self, count: int, figure: Figure, round_index: int | None,
                       *, fallback: bool = False) -> float:
        """Apply the upstream-style ruleset with ``nft -f``; the wall time it took."""
        text = self.rules_file(count, figure, fallback=fallback).read_text(encoding="utf-8")
        script = upstream.render_upstream(
            config.parse_destinations(text, config.ENV_DESTINATION_FILE), IPv4Address(SOURCE_IP)
        )
        started = time.monotonic()
        cp = labmod.run_in(self.lab_handle.router, ["nft", "-f", "-"], input=script, timeout=60)
        seconds = time.monotonic() - started
        _check(cp, f"apply the upstream-style ruleset ({count} rules)")
        if not fallback:  # the setup table shows the rule counts of the main rows
            self.records.upstream_apply.append(
                {"round": round_index, "rules": count, "figure": figure.value, "seconds": seconds}
            )
        return seconds

    def apply_ruleset(self, text: str, what: str) -> None:
        """Replace the router's whole ruleset with ``text`` (``nft -f``) and empty conntrack."""
        self.flush_router()
        cp = labmod.run_in(self.lab_handle.router, ["nft", "-f", "-"], input=text, timeout=60)
        _check(cp, f"apply the {what} ruleset")
        self.flush_conntrack()

    def configure(self, unit: Unit, round_index: int | None = None) -> None:
        """Routes and router ruleset for ``unit``; conntrack emptied."""
        self.set_route(unit.path)
        self.flush_router()
        if unit.path in (DataPath.NFTABLES, DataPath.IPTABLES):
            assert unit.rules is not None
            self.run_product(unit.path, unit.rules, unit.figure, round_index=round_index)
        elif unit.path in (DataPath.UPSTREAM, DataPath.UPSTREAM_SEED):
            assert unit.rules is not None
            self.apply_upstream(unit.rules, unit.figure, round_index,
                                fallback=unit.path is DataPath.UPSTREAM_SEED)
        self.flush_conntrack()

    @staticmethod
    def target(path: DataPath) -> str:
        return ROUTER_IP if path.has_rules else workload.DESTINATION

    @staticmethod
    def expected_peer(path: DataPath) -> str:
        return SOURCE_IP if path.has_rules else CLIENT_IP

    # ------------------------------------------------------------------ measuring

    def measure(self, unit: Unit, round_index: int) -> Sample:
        """Configure and measure one unit; a failure is a sample with ``error`` set."""
        load1 = loadavg()[0]
        try:
            self.configure(unit, round_index)
            value, p50, p99, detail = self._run_figure(unit)
        except (BenchError, labmod.LabError, parsers.ToolOutputError, ValueError) as exc:
            self.log(f"  {unit.key}: FAILED: {exc}")
            return Sample(round_index, unit.path.value, unit.rules, unit.figure.value, None,
                          load1=load1, error=str(exc))
        return Sample(round_index, unit.path.value, unit.rules, unit.figure.value, value,
                      p50_us=p50, p99_us=p99, load1=load1, detail=detail)

    def _run_figure(
        self, unit: Unit
    ) -> tuple[float, float | None, float | None, dict[str, Any]]:
        host = self.target(unit.path)
        if unit.figure is Figure.CONN:
            self.check_path(unit.path)
            rate, detail = self.conn_rate(self.lab_handle.client, host,
                                          workload.SERVICES[Figure.CONN].port)
            p50, p99 = self.conn_latency(host)
            return rate, p50, p99, detail
        if unit.figure is Figure.THROUGHPUT:
            result = self.iperf(host)
            self._check_nat(unit)
            return result.bits_per_second, None, None, {"retransmits": result.retransmits}
        rr = self.sockperf(host, tcp=unit.figure is Figure.TCP_RR)
        self._check_nat(unit)
        return rr.rate, rr.p50_us, rr.p99_us, {"round_trips": rr.received}

    def check_path(self, path: DataPath) -> None:
        """Fetch once and check which source address the destination saw."""
        cp = labmod.run_in(
            self.lab_handle.client,
            [sys.executable, "-I", "-c", _PY_FETCH, self.target(path),
             str(workload.SERVICES[Figure.CONN].port)],
            timeout=15,
        )
        seen = _check(cp, f"fetch through the {path.value} path").strip()
        if seen != self.expected_peer(path):
            raise BenchError(
                f"cannot trust the {path.value} path: the destination saw {seen!r}, "
                f"expected {self.expected_peer(path)}"
            )

    def _check_nat(self, unit: Unit) -> None:
        """For router paths: the measured flow was tracked and SNATed to the reserved source."""
        if not unit.path.has_rules:
            return
        service = workload.SERVICES[unit.figure]
        cp = labmod.run_in(
            self.lab_handle.router,
            ["conntrack", "-L", "-p", service.proto, "--orig-port-dst", str(service.port)],
            timeout=30,
        )
        if f"dst={SOURCE_IP}" not in cp.stdout:
            raise BenchError(
                f"cannot trust the {unit.key} measurement: no conntrack entry of port "
                f"{service.port}/{service.proto} translated to {SOURCE_IP} in the router"
            )

    def _ab_argv(self, host: str, port: int, seconds: int, concurrency: int) -> list[str]:
        return ["ab", "-q", "-r", "-s", "5", "-t", str(seconds), "-n", AB_MAX_REQUESTS,
                "-c", str(concurrency), f"http://{host}:{port}/"]

    def conn_rate(
        self, ns: str, host: str, port: int, processes: int = AB_PROCESSES,
        seconds: int | None = None,
    ) -> tuple[float, dict[str, Any]]:
        """New connections per second: ``processes`` ab clients in parallel, summed."""
        seconds = seconds or self.durations.conn
        argv = netns_argv(ns, self._ab_argv(host, port, seconds, AB_CONCURRENCY))
        procs = [
            subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
            for _ in range(processes)
        ]
        results = []
        try:
            for proc in procs:
                out, err = proc.communicate(timeout=seconds + TOOL_GRACE)
                if proc.returncode != 0:
                    raise BenchError(f"cannot run ab against {host}:{port}: {err.strip()[-300:]}")
                results.append(parsers.parse_ab(out))
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"cannot run ab against {host}:{port}: no result in time") from exc
        finally:
            _stop(procs)
        bad = sum(r.failed + r.non_2xx for r in results)
        if bad:
            raise BenchError(f"ab against {host}:{port}: {bad} failed or non-2xx requests")
        return sum(r.rate for r in results), {
            "requests": sum(r.complete for r in results), "processes": processes,
            "concurrency": AB_CONCURRENCY,
        }

    def conn_latency(self, host: str) -> tuple[float, float]:
        """p50/p99 of one whole connection (connect, request, reply, close), one at a time."""
        csv = self.workdir / "ab-percentiles.csv"
        csv.unlink(missing_ok=True)
        argv = pinned(CLIENT_CPU if self._pin else None, [
            *self._ab_argv(host, workload.SERVICES[Figure.CONN].port, self.durations.latency, 1),
        ])
        argv[-1:-1] = ["-e", str(csv)]
        cp = labmod.run_in(self.lab_handle.client, argv,
                           timeout=self.durations.latency + TOOL_GRACE)
        result = parsers.parse_ab(_check(cp, f"measure connection latency to {host}"))
        if result.failed or result.non_2xx:
            raise BenchError(f"ab -c 1 against {host}: {result.failed} failed requests")
        pct = parsers.parse_ab_percentiles(csv.read_text(encoding="ascii"))
        return pct[50] * 1000.0, pct[99] * 1000.0

    def iperf(self, host: str) -> parsers.IperfResult:
        argv = pinned(CLIENT_CPU if self._pin else None, [
            "iperf3", "-c", host, "-p", str(workload.SERVICES[Figure.THROUGHPUT].port),
            "-t", str(self.durations.flow), "-J", "--connect-timeout", "3000",
        ])
        cp = labmod.run_in(self.lab_handle.client, argv, timeout=self.durations.flow + TOOL_GRACE)
        return parsers.parse_iperf3(cp.stdout)

    def sockperf(self, host: str, *, tcp: bool) -> parsers.SockperfResult:
        service = workload.SERVICES[Figure.TCP_RR if tcp else Figure.UDP_RR]
        argv = pinned(CLIENT_CPU if self._pin else None, [
            "sockperf", "ping-pong", *(["--tcp"] if tcp else []), "-i", host,
            "-p", str(service.port), "-t", str(self.durations.flow), "--full-rtt",
        ])
        # sockperf sleeps about 2 s before measuring; the grace covers it.
        cp = labmod.run_in(self.lab_handle.client, argv, timeout=self.durations.flow + TOOL_GRACE)
        return parsers.parse_sockperf(_check(cp, f"run sockperf against {host}"))

    # ------------------------------------------------------------------ extras

    def calibrate(self) -> list[dict[str, Any]]:
        """How fast can the clients go? Loopback in one namespace vs through a routed hop."""
        lab = self.lab_handle
        seconds = self.durations.calibration
        port = workload.SERVICES[Figure.CONN].port
        runs: list[dict[str, Any]] = []

        def add(name: str, rate: float, note: str) -> None:
            runs.append({"name": name, "rate": rate, "note": note})
            self.log(f"  calibration: {name}: {rate:,.0f} conn/s")

        for processes in (AB_PROCESSES, 1):
            rate, _ = self.conn_rate(lab.ext, "127.0.0.1", LOOPBACK_HTTP_PORT, processes,
                                     seconds)
            add(f"ab x{processes}, loopback (client and nginx in one namespace)", rate,
                "ceiling of client + server without a routed path")
        add("python connect loop x1, loopback", self._py_loop(lab.ext, "127.0.0.1",
                                                             LOOPBACK_HTTP_PORT, seconds),
            "an interpreted client: far below ab")
        self.configure(Unit(DataPath.FORWARD, None, Figure.CONN))
        self.check_path(DataPath.FORWARD)
        for processes in (AB_PROCESSES, 1):
            rate, _ = self.conn_rate(lab.client, workload.DESTINATION, port, processes, seconds)
            add(f"ab x{processes}, plain forwarding through the router pod", rate,
                "the baseline path" + (" (the configuration used)" if processes > 1 else ""))
        add("python connect loop x1, plain forwarding",
            self._py_loop(lab.client, workload.DESTINATION, port, seconds),
            "would understate every path and hide rule costs")
        return runs

    def _py_loop(self, ns: str, host: str, port: int, seconds: int) -> float:
        cp = labmod.run_in(ns, [sys.executable, "-I", "-c", _PY_CONNECT_LOOP, host, str(port),
                                str(seconds)], timeout=seconds + TOOL_GRACE)
        return float(_check(cp, "run the python connect loop").strip())

    def measure_memory(self, count: int, args: Sequence[str] = ()) -> dict[str, Any]:
        """Resident memory of the waiting router process with ``count`` rules.

        Without ``args`` that is ``legacy`` mode (set up, then wait); with
        ``args`` (e.g. ``["wait"]``) the given command after an ``init`` run.
        The process is measured one second after it logged that it is ready,
        then sent SIGTERM.
        """
        self.flush_router()
        env = {**ROUTER_ENV, config.ENV_DESTINATION_FILE: str(self.rules_file(count, Figure.CONN))}
        if args:
            self.run_product(DataPath.NFTABLES, count, Figure.CONN, record=False)
        else:
            env[config.ENV_MODE] = "legacy"
        proc = labmod.spawn_router(self.lab_handle, env, args)
        name = " ".join(["egress-router", *args]) if args else "egress-router (legacy mode)"
        try:
            _wait_for_line(proc, _READY, time.monotonic() + INIT_TIMEOUT)
            time.sleep(1.0)
            status = parsers.parse_status_kib(Path(f"/proc/{proc.pid}/status").read_text())
            rollup: dict[str, int] = {}
            with contextlib.suppress(OSError):
                rollup = parsers.parse_status_kib(
                    Path(f"/proc/{proc.pid}/smaps_rollup").read_text())
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=5)
        entry = {"command": name, "rules": count, "rss_kib": status.get("VmRSS", 0),
                 "hwm_kib": status.get("VmHWM", 0), "pss_kib": rollup.get("Pss"),
                 "exit_status": proc.returncode}
        self.records.memory.append(entry)
        return entry


def _timed_lines(proc: subprocess.Popen[str], deadline: float) -> list[tuple[float, str]]:
    """Read ``proc``'s stderr to its end; every line with the time it arrived."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    lines: list[tuple[float, str]] = []
    buffer = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError("cannot configure the router: no exit within "
                                 f"{INIT_TIMEOUT:g} s")
            if not sel.select(remaining):
                continue
            chunk = os.read(fd, 65536)
            now = time.monotonic()
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                lines.append((now, line.decode(errors="replace")))
    if buffer:
        lines.append((time.monotonic(), buffer.decode(errors="replace")))
    return lines


def _wait_for_line(proc: subprocess.Popen[str], pattern: re.Pattern[str],
                   deadline: float) -> None:
    """Read stderr until a line matches ``pattern``; BenchError on exit or timeout."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    seen = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not pattern.search(seen.decode(errors="replace")):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(
                    "cannot measure the waiting process: not ready within "
                    f"{INIT_TIMEOUT:g} s: {seen.decode(errors='replace').strip()[-400:]}"
                )
            if not sel.select(min(remaining, 0.5)):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise BenchError(
                    "cannot measure the waiting process: it exited: "
                    f"{seen.decode(errors='replace').strip()[-400:]}"
                )
            seen += chunk


@contextlib.contextmanager
def terminating_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt, so cleanup (finally) runs."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
