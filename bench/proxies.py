"""The proxy modes side by side: requests per second and new connections per second.

Run on demand, as root (it builds a lab in its own namespaces):

    .venv/bin/python -m bench proxies --rounds 6      # -> bench/results/proxies.{json,md}

Five configurations of the lab's router pod, each with the same destination (nginx on
203.0.113.25:80 in the external namespace, answering ``$remote_addr``):

* ``redirect``: the redirect mode (``init``, ``80 tcp 203.0.113.25``): the kernel's DNAT.
* ``http-proxy``: ``egress-router http-proxy`` (squid from our configuration, the access log
  to the supervisor); clients use it as their proxy (``ab -X``).
* ``http-proxy-upstream``: squid with the configuration upstream's egress-http-proxy.sh
  generates for the same rule (no access log, no supervisor).
* ``dns-proxy``: ``egress-router dns-proxy`` (HAProxy from our configuration), ``5000
  203.0.113.25 80``.
* ``dns-proxy-upstream``: HAProxy with the configuration upstream's egress-dns-proxy.sh
  generates for the same line (``maxconn 8000``, ``option redispatch``, health checks).

Two figures each, with ``ab`` (2 processes, concurrency 8, 2 s): ``conn`` (no keep-alive:
every request a new connection, through the proxy to the destination) and ``req``
(keep-alive from the client; the proxy may reuse its side too). All proxies run for the
whole run; between configurations only the init container's mode changes (the redirect
mode refuses the pod side's other ports, the proxy modes redirect nothing). The order
rotates every round, and each figure is also reported as a ratio to the redirect mode of
the same round: on a shared machine only those ratios mean something.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import results, stats
from egress_router.core import proxy_dns, proxy_http
from egress_router.lab import world as labmod

ROUTER = str(labmod.ROUTER_POD4.ip)
DEST = "203.0.113.25"
SOURCE_ENV = {"EGRESS_SOURCE": "192.168.12.99/24", "EGRESS_GATEWAY": "192.168.12.1",
              "EGRESS_ANNOUNCE_COUNT": "1"}
PORTS = {"http-proxy": 8080, "http-proxy-upstream": 8081, "dns-proxy": 5000,
         "dns-proxy-upstream": 5001}
CONFIGS = ("redirect", "http-proxy", "http-proxy-upstream", "dns-proxy", "dns-proxy-upstream")
AB_PROCESSES = 2
AB_CONCURRENCY = 8


def upstream_squid_conf(port: int) -> str:
    """What upstream's script writes for the one line ``203.0.113.25`` (its form, our port)."""
    return (
        f"http_port {port}\ncache deny all\naccess_log none all\ndebug_options ALL,0\n"
        "shutdown_lifetime 0\npid_filename none\n\n"
        f"acl dest1 dst {DEST}\nhttp_access allow dest1\n\nhttp_access deny all\n"
    )


def upstream_haproxy_cfg(port: int, workdir: Path) -> str:
    """What upstream's script writes for ``<port> 203.0.113.25 80`` (its form, our paths)."""
    return (
        "global\n    log 127.0.0.1 local2\n"
        f"    pidfile {workdir}/haproxy-upstream.pid\n    maxconn 8000\n\n"
        "defaults\n    log global\n    mode tcp\n    option dontlognull\n    option tcplog\n"
        "    option redispatch\n    retries 3\n    timeout http-request 100s\n"
        "    timeout queue 1m\n    timeout connect 10s\n    timeout client 1m\n"
        "    timeout server 1m\n    timeout http-keep-alive 100s\n    timeout check 10s\n\n"
        f"frontend fe1\n    bind :{port}\n    default_backend be1\n\n"
        f"backend be1\n    server dest1 {DEST}:80 check\n"
    )


def _env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


def _spawn(ns: str, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], env=env, stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def init(lab: labmod.Lab, mode: str) -> None:
    env = {**SOURCE_ENV, "EGRESS_ROUTER_MODE": mode}
    if mode == "init":
        env["EGRESS_DESTINATION"] = f"80 tcp {DEST}\n"
    done = labmod.router_command(lab, env)
    if done.returncode != 0:
        raise SystemExit(f"bench: cannot run init ({mode}): {done.stderr.strip()}")


def ab(lab: labmod.Lab, url: str, proxy: str | None, keepalive: bool, seconds: int) -> float:
    argv = ["ab", "-q", "-r", "-s", "5", "-t", str(seconds), "-n", "1000000",
            "-c", str(AB_CONCURRENCY)]
    if keepalive:
        argv.append("-k")
    if proxy:
        argv += ["-X", proxy]
    argv.append(url)
    procs = [subprocess.Popen(["ip", "netns", "exec", lab.client, *argv], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(AB_PROCESSES)]
    total = 0.0
    for proc in procs:
        out, err = proc.communicate(timeout=seconds + 30)
        rate = [line for line in out.splitlines() if line.startswith("Requests per second")]
        failed = [line for line in out.splitlines()
                  if line.startswith(("Failed requests", "Non-2xx"))]
        if proc.returncode != 0 or not rate:
            raise SystemExit(f"bench: ab {url} failed: {err.strip()[-300:]}")
        if any(int(line.split()[-1]) for line in failed if line.split()[-1].isdigit()):
            raise SystemExit(f"bench: ab {url}: failed requests: {failed}")
        total += float(rate[0].split()[3])
    return total


@contextlib.contextmanager
def world(workdir: Path) -> Iterator[labmod.Lab]:
    prefix = f"erb{os.getpid() % 100000}"
    lab = labmod.up(prefix, endpoints=("tcp:203.0.113.27:9000",))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        conf = workdir / "nginx.conf"
        conf.write_text(
            f"worker_processes 1;\ndaemon off;\npid {workdir}/nginx.pid;\n"
            f"error_log {workdir}/nginx-error.log warn;\n"
            "events { worker_connections 8192; }\n"
            "http { access_log off; keepalive_timeout 65; keepalive_requests 100000;\n"
            f"  server {{ listen {DEST}:80 reuseport backlog=4096;\n"
            '    location / { return 200 "$remote_addr\\n"; } } }\n'
        )
        procs.append(_spawn(lab.ext, ["nginx", "-c", str(conf)], _env(), workdir / "nginx.out"))
        init(lab, "http-proxy")
        env = _env()
        procs.append(_spawn(lab.router, [sys.executable, "-m", "egress_router", "http-proxy"],
                            {**env, proxy_http.ENV_DESTINATION: f"{DEST}\n",
                             "TMPDIR": str(workdir)}, workdir / "ours-http.out"))
        procs.append(_spawn(lab.router, [sys.executable, "-m", "egress_router", "dns-proxy"],
                            {**env, proxy_dns.ENV_DESTINATION: f"5000 {DEST} 80\n",
                             "EGRESS_ROUTER_HTTP_PORT": "9091", "TMPDIR": str(workdir)},
                            workdir / "ours-dns.out"))
        squid = workdir / "squid-upstream.conf"
        squid.write_text(upstream_squid_conf(PORTS["http-proxy-upstream"]))
        procs.append(_spawn(lab.router, ["squid", "-N", "-f", str(squid)], env,
                            workdir / "squid-upstream.out"))
        cfg = workdir / "haproxy-upstream.cfg"
        cfg.write_text(upstream_haproxy_cfg(PORTS["dns-proxy-upstream"], workdir))
        procs.append(_spawn(lab.router, ["haproxy", "-db", "-f", str(cfg)], env,
                            workdir / "haproxy-upstream.out"))
        time.sleep(4)
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"bench: {proc.args} exited; see {workdir}")
        yield lab
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
        labmod.down(prefix)


def measure(lab: labmod.Lab, name: str, keepalive: bool, seconds: int) -> float:
    if name == "redirect":
        return ab(lab, f"http://{ROUTER}:80/", None, keepalive, seconds)
    if name.startswith("http-proxy"):
        return ab(lab, f"http://{DEST}/", f"{ROUTER}:{PORTS[name]}", keepalive, seconds)
    return ab(lab, f"http://{ROUTER}:{PORTS[name]}/", None, keepalive, seconds)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=2)
    parser.add_argument("--only", default=",".join(CONFIGS),
                        help="comma-separated configurations to measure (redirect always)")


def summarize(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per configuration and figure: the median rate and the medians of the paired ratios."""
    summary: dict[str, dict[str, Any]] = {}

    def paired(name: str, other: str, figure: str) -> float:
        theirs = {s["round"]: s["rate"] for s in samples
                  if s["config"] == other and s["figure"] == figure}
        return round(stats.median(
            s["rate"] / theirs[s["round"]] for s in samples
            if s["config"] == name and s["figure"] == figure and theirs.get(s["round"])
        ), 3)

    measured = [c for c in CONFIGS if any(s["config"] == c for s in samples)]
    for figure in ("conn", "req"):
        for name in measured:
            rates = [s["rate"] for s in samples if s["config"] == name and s["figure"] == figure]
            entry: dict[str, Any] = {
                "median": stats.median(rates), "min": min(rates), "max": max(rates),
                "vs_redirect": paired(name, "redirect", figure),
            }
            if name in ("http-proxy", "dns-proxy") and f"{name}-upstream" in measured:
                entry["vs_upstream"] = paired(name, f"{name}-upstream", figure)
            summary[f"{name}/{figure}"] = entry
    return summary


def markdown(summary: dict[str, dict[str, Any]], command: str) -> str:
    lines = [
        "# The proxy modes against the redirect mode and upstream's configurations", "",
        f"`{command}`; medians over rounds, ratios paired within a round.", "",
        "| configuration / figure | median per second | vs redirect | vs upstream's config |",
        "|---|---|---|---|",
    ]
    for key, value in summary.items():
        upstream = value.get("vs_upstream")
        lines.append(f"| {key} | {value['median']:,.0f} | {value['vs_redirect']:.2f} | "
                     f"{'' if upstream is None else f'{upstream:.2f}'} |")
    return "\n".join(lines) + "\n"


def run_suite(args: argparse.Namespace) -> results.Outcome:
    workdir = Path(f"/tmp/egress-bench-proxies-{os.getpid()}")
    workdir.mkdir(mode=0o755, exist_ok=True)
    samples: list[dict[str, Any]] = []
    chosen = tuple(c for c in CONFIGS if c == "redirect" or c in args.only.split(","))
    with world(workdir) as lab:
        for round_index in range(args.rounds):
            order = chosen[round_index % len(chosen):] + chosen[:round_index % len(chosen)]
            for name in order:
                init(lab, "init" if name == "redirect" else "http-proxy")
                for figure, keepalive in (("conn", False), ("req", True)):
                    rate = measure(lab, name, keepalive, args.seconds)
                    samples.append({"round": round_index, "config": name, "figure": figure,
                                    "rate": round(rate, 1), "load": os.getloadavg()[0]})
                    print(f"round {round_index} {name:20} {figure}: {rate:9.0f}/s",
                          file=sys.stderr, flush=True)
    summary = summarize(samples)
    command = getattr(args, "command", "python -m bench proxies")
    doc = {"command": command, "rounds": args.rounds, "seconds": args.seconds,
           "cpus": os.cpu_count(), "samples": samples, "summary": summary}
    return results.Outcome("proxies", doc, markdown(summary, command))
