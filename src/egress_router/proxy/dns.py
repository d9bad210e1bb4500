"""The DNS proxy pod's main container: HAProxy in TCP mode, configured from the forwards.

Drop-in for upstream's egress-dns-proxy image: ``EGRESS_DNS_PROXY_DESTINATION`` (or
``EGRESS_DNS_PROXY_DESTINATION_FILE``, re-read when it changes: HAProxy's master reloads
its worker without dropping the listeners) and ``EGRESS_DNS_PROXY_MODE=unit-test`` (print
the configuration, touch nothing). Host names are resolved through the pod's resolvers
(``/etc/resolv.conf``) by HAProxy itself, again every second, an answer held valid 10 s as
upstream's; at start (and each reload) each name is looked up once here to size its
server-template to the number of its addresses, as upstream's ``dig`` did. ``/metrics``
reads HAProxy's statistics socket at scrape time.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from egress_router.core import config, proxy_dns
from egress_router.proxy import supervise
from egress_router.router import metrics

log = logging.getLogger("egress_router.proxy.dns")

ENV_HAPROXY = "EGRESS_DNS_PROXY_HAPROXY"  # the haproxy executable (default: on PATH)
ENV_DNS_SERVERS = "EGRESS_DNS_SERVERS"  # upstream's unit-test input: name:count;name:count
RESOLV_CONF = "/etc/resolv.conf"
PREFIX = "egress_router_dns_proxy"


def count_addresses(names: Sequence[str]) -> dict[str, int]:
    """How many addresses each name has now (1 when it cannot be resolved: HAProxy retries)."""
    counts: dict[str, int] = {}
    for name in names:
        found: set[str] = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                infos = socket.getaddrinfo(name, None, family, socket.SOCK_STREAM)
            except OSError:
                continue
            found.update(str(info[4][0]) for info in infos)
            if found:
                break  # resolve-prefer ipv4: IPv6 only when there is no IPv4
        counts[name] = max(1, len(found))
    return counts


def stats(socket_path: str, command: str = "show stat") -> list[dict[str, str]]:
    """HAProxy's CSV statistics as dicts (empty when it does not answer)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(socket_path)
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError:
        return []
    lines = b"".join(chunks).decode("utf-8", "replace").splitlines()
    if not lines or not lines[0].startswith("# "):
        return []
    header = lines[0][2:].split(",")
    return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]


class DnsProxy:
    """HAProxy (master-worker) as a child; its configuration from the forwards."""

    def __init__(self, env: Mapping[str, str], variable: str) -> None:
        self.env = env
        self.variable = variable
        self.http_port = config.parse_http_port(env.get(config.ENV_HTTP_PORT, "9090"))
        self.dir = supervise.workdir("egress-dns-proxy")
        self.conf = self.dir / "haproxy.cfg"
        self.sock = str(self.dir / "stats.sock")
        self.forwards: tuple[proxy_dns.Forward, ...] = ()
        self.registry = metrics.Registry()
        self.reloads = metrics.Counter(
            f"{PREFIX}_reloads", "Reloads of the forwards file by result: ok or invalid "
            "(refused, the running forwards stay).", ["result"], registry=self.registry,
        )
        for result in ("ok", "invalid"):
            self.reloads.labels(result=result)
        self.registry.collector(
            "the DNS proxy's HAProxy", [f"{PREFIX}_connections_total", f"{PREFIX}_servers"],
            self.write_stats,
        )

    def reserved(self) -> dict[int, str]:
        if not self.http_port:
            return {}
        return {self.http_port: f"the proxy's own HTTP port ({config.ENV_HTTP_PORT})"}

    def parse(self, text: str) -> tuple[proxy_dns.Forward, ...]:
        return proxy_dns.parse_forwards(text, self.variable, reserved=self.reserved())

    def render(
        self, forwards: Sequence[proxy_dns.Forward], resolv: str | None = None,
        counts: Mapping[str, int] | None = None,
    ) -> str:
        if resolv is None:
            try:
                resolv = Path(RESOLV_CONF).read_text(encoding="utf-8", errors="replace")
            except OSError:
                resolv = ""
        nameservers = proxy_dns.parse_nameservers(resolv)
        names = sorted({f.target for f in forwards if f.is_name})
        if names and not nameservers:
            raise config.ConfigError(
                self.variable,
                f"names ({', '.join(names)}) need a resolver, and {RESOLV_CONF} lists no "
                "nameserver; fix the pod's DNS or write addresses",
            )
        return proxy_dns.render_haproxy(
            forwards,
            nameservers=nameservers,
            servers=count_addresses(names) if counts is None else counts,
            stats_socket=self.sock,
            ipv6=os.path.exists("/proc/net/if_inet6"),
            maxconn=proxy_dns.maxconn_for(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
        )

    def write_stats(self, out: metrics.Writer) -> None:
        """HAProxy's counters per forward (a collector of the registry)."""
        rows = stats(self.sock)
        by_backend: dict[str, proxy_dns.Forward] = {
            proxy_dns.backend_name(f): f for f in self.forwards
        }
        conns: list[str] = []
        states: dict[tuple[str, str, str], int] = {}
        for row in rows:
            name = row.get("pxname", "")
            svname = row.get("svname", "")
            if svname == "FRONTEND" and name.startswith("port_"):
                conns.append(
                    f'{PREFIX}_connections_total{{port="{name[5:]}"}} '
                    f"{metrics.format_value(float(row.get('stot') or 0))}\n"
                )
            elif name in by_backend and svname not in ("BACKEND", "FRONTEND"):
                forward = by_backend[name]
                # "no check": no health checks, HAProxy counts it as up.
                state = (row.get("status") or "unknown").split()[0].lower()
                state = "up" if state == "no" else state
                key = (str(forward.port), forward.target, state)
                states[key] = states.get(key, 0) + 1
        out.family(f"{PREFIX}_connections_total", "counter",
                   "Connections accepted per forwarded port.")
        out("".join(conns))
        out.family(f"{PREFIX}_servers", "gauge", "Addresses a forward has now, by state (up, "
                   "down, maint: a template slot without an address).")
        out("".join(
            f'{PREFIX}_servers{{port="{port}",target="{target}",state="{state}"}} '
            f"{metrics.format_value(float(count))}\n"
            for (port, target, state), count in sorted(states.items())
        ))

    def reload(self, child: supervise.Child, text: str) -> None:
        try:
            forwards = self.parse(text)
            rendered = self.render(forwards)
        except config.ConfigError as err:
            self.reloads.labels(result="invalid").inc()
            log.error("%s; the running forwards stay", err)
            return
        candidate = self.dir / "haproxy.cfg.next"
        supervise.write_atomic(candidate, rendered)
        check = subprocess.run(
            [self.haproxy, "-c", "-q", "-f", str(candidate)],
            capture_output=True, text=True, check=False,
        )
        if check.returncode != 0:
            self.reloads.labels(result="invalid").inc()
            log.error("HAProxy refused the new configuration: %s; the running forwards stay",
                      check.stderr.strip() or check.stdout.strip())
            return
        candidate.replace(self.conf)
        self.forwards = forwards
        child.signal(signal.SIGUSR2)  # the master re-reads the file and starts a new worker
        self.reloads.labels(result="ok").inc()
        log.info("forwards reloaded: %d ports from %s", len(forwards), self.variable)

    @property
    def haproxy(self) -> str:
        return self.env.get(ENV_HAPROXY) or shutil.which("haproxy") or "/usr/sbin/haproxy"

    def run(self, forwards: tuple[proxy_dns.Forward, ...], rendered: str) -> int:
        self.forwards = forwards
        supervise.write_atomic(self.conf, rendered)
        stop = supervise.Stop()
        stop.install()
        for forward in forwards:
            log.info("port %d -> %s (line %d)", forward.port, forward.endpoint, forward.line)
        child = supervise.Child([self.haproxy, "-W", "-db", "-f", str(self.conf)], "haproxy")
        status = supervise.Status(child.alive, forwards[0].port, self.registry)
        return supervise.serve_and_supervise(
            child, stop, status, http_port=self.http_port, env=self.env,
            file_variable=proxy_dns.ENV_DESTINATION_FILE,
            reload=lambda text: self.reload(child, text), directory=self.dir,
        )


def run(env: Mapping[str, str]) -> int:
    """The DNS proxy container; raises `config.ConfigError` or `supervise.ProxyError`."""
    variable, text = proxy_dns.read_forwards_text(
        env, supervise.file_reader(proxy_dns.ENV_DESTINATION_FILE)
    )
    mode = config.strip_space(env.get(proxy_dns.ENV_MODE, ""))
    if mode not in ("", "unit-test"):
        raise config.ConfigError(
            proxy_dns.ENV_MODE, f"unknown mode {config.clip(mode)!r}; expected unit-test or unset"
        )
    proxy = DnsProxy(env, variable)
    forwards = proxy.parse(text)
    # unit-test touches nothing, DNS included: the names' address counts come from upstream's
    # EGRESS_DNS_SERVERS ("name:count;name:count"), 1 for the others.
    counts = proxy_dns.parse_server_counts(env.get(ENV_DNS_SERVERS, "")) \
        if mode == "unit-test" else None
    rendered = proxy.render(forwards, counts=counts)
    if mode == "unit-test":
        shutil.rmtree(proxy.dir, ignore_errors=True)
        sys.stdout.write(proxy_dns.describe(forwards) + rendered)
        return 0
    return proxy.run(forwards, rendered)
