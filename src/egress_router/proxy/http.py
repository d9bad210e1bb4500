"""The HTTP proxy pod's main container: squid, configured from the validated access rules.

Drop-in for upstream's egress-http-proxy image: the environment holds
``EGRESS_HTTP_PROXY_DESTINATION`` (or ``EGRESS_HTTP_PROXY_DESTINATION_FILE``, re-read when
it changes), squid serves plain HTTP proxy requests and CONNECT on port 8080, and
``EGRESS_HTTP_PROXY_MODE=unit-test`` prints the access rules and touches nothing. Squid
sends its access log here over loopback UDP (``core.proxy_http.LOG_FORMAT``): each
decision is counted by rule for ``/metrics``, and a denial is logged with the line that
denied it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Mapping

from egress_router.core import config, proxy_http
from egress_router.proxy import supervise
from egress_router.router import metrics

log = logging.getLogger("egress_router.proxy.http")

ENV_SQUID = "EGRESS_HTTP_PROXY_SQUID"  # the squid executable (default: squid on PATH)
LOG_DATAGRAM = 65535


class HttpProxy:
    """Squid as a child, its configuration from the rules, the decisions counted."""

    def __init__(self, env: Mapping[str, str], variable: str, rules: proxy_http.AccessRules):
        self.env = env
        self.variable = variable
        self.rules = rules
        self.port = proxy_http.parse_port(env)
        self.http_port = config.parse_http_port(env.get(config.ENV_HTTP_PORT, "9090"))
        self.dir = supervise.workdir("egress-http-proxy")
        self.conf = self.dir / "squid.conf"
        self.logs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Room for bursts while the reader thread waits for the GIL (capped by rmem_max).
        self.logs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.logs.bind(("127.0.0.1", 0))
        self.log_port = self.logs.getsockname()[1]
        self.registry = metrics.Registry()
        prefix = "egress_router_http_proxy"
        self.requests = metrics.Counter(
            f"{prefix}_requests",
            "Requests decided by the access rules, by rule (the line of the rules, 'default' "
            "for everything else, 'guard' for the pod's own and link-local addresses) and "
            "decision (allow or deny).",
            ["rule", "decision"], registry=self.registry,
        )
        self.reloads = metrics.Counter(
            f"{prefix}_reloads", "Reloads of the rules file by result: ok or invalid "
            "(refused, the running rules stay).", ["result"], registry=self.registry,
        )
        self.rule_count = metrics.Gauge(
            f"{prefix}_rules", "Access rules in force (without the last decision).",
            registry=self.registry,
        )
        for result in ("ok", "invalid"):
            self.reloads.labels(result=result)
        self._count_rules(rules)
        self.lock = threading.Lock()

    def _count_rules(self, rules: proxy_http.AccessRules) -> None:
        self.rule_count.set(len(rules.rules))
        for rule in rules.rules:
            self.requests.labels(rule=rule.label, decision="allow")
            self.requests.labels(rule=rule.label, decision="deny")

    def _rule_text(self, label: str) -> str:
        if label == proxy_http.DEFAULT_RULE:
            return "everything else (no rule matched)"
        if label == proxy_http.GUARD_RULE:
            return "the pod's own or a link-local address (always denied)"
        with self.lock:
            found = [r for r in self.rules.rules if r.label == label]
        return f"line {label}: {found[0].text}" if found else f"rule {label}"

    def render(self) -> str:
        ipv6 = os.path.exists("/proc/net/if_inet6")
        return proxy_http.render_squid(
            self.rules, port=self.port, log_port=self.log_port, ipv6=ipv6
        )

    def read_logs(self) -> None:
        while True:
            try:
                data = self.logs.recv(LOG_DATAGRAM)
            except OSError:
                return
            for line in data.decode("utf-8", "replace").splitlines():
                entry = proxy_http.parse_log_line(line)
                if entry is None or not entry.decided:
                    continue
                rule = entry.rule if entry.rule != "-" else proxy_http.DEFAULT_RULE
                decision = "deny" if entry.denied else "allow"
                self.requests.labels(rule=rule, decision=decision).inc()
                if entry.denied:
                    log.info(
                        "denied %s %s from %s: %s", entry.method, entry.url, entry.client,
                        self._rule_text(rule),
                    )
                else:
                    log.debug(
                        "allowed %s %s from %s (%s): %s", entry.method, entry.url,
                        entry.client, entry.status, self._rule_text(rule),
                    )

    def reload(self, child: supervise.Child, text: str) -> None:
        try:
            rules = proxy_http.parse_rules(text, self.variable)
        except config.ConfigError as err:
            self.reloads.labels(result="invalid").inc()
            log.error("%s; the running rules stay", err)
            return
        if rules == self.rules:
            return
        with self.lock:
            self.rules = rules
        self._count_rules(rules)
        supervise.write_atomic(self.conf, self.render())
        child.signal(signal.SIGHUP)  # squid: reconfigure
        self.reloads.labels(result="ok").inc()
        log.info("rules reloaded: %d rules from %s", len(rules.rules), self.variable)

    def run(self) -> int:
        supervise.write_atomic(self.conf, self.render())
        squid = self.env.get(ENV_SQUID) or shutil.which("squid") or "/usr/sbin/squid"
        stop = supervise.Stop()
        stop.install()
        log.info(
            "HTTP proxy on port %d: %d rules from %s, everything else %s",
            self.port, len(self.rules.rules), self.variable,
            "allowed" if self.rules.allow_rest else "denied",
        )
        child = supervise.Child([squid, "-N", "-f", str(self.conf)], "squid")
        threading.Thread(target=self.read_logs, name="access-log", daemon=True).start()
        status = supervise.Status(child.alive, self.port, self.registry)
        return supervise.serve_and_supervise(
            child, stop, status, http_port=self.http_port, env=self.env,
            file_variable=proxy_http.ENV_DESTINATION_FILE,
            reload=lambda text: self.reload(child, text), directory=self.dir,
        )


def run(env: Mapping[str, str]) -> int:
    """The HTTP proxy container; raises `config.ConfigError` or `supervise.ProxyError`."""
    variable, text = proxy_http.read_rules_text(
        env, supervise.file_reader(proxy_http.ENV_DESTINATION_FILE)
    )
    rules = proxy_http.parse_rules(text, variable)
    mode = config.strip_space(env.get(proxy_http.ENV_MODE, ""))
    if mode == "unit-test":
        sys.stdout.write(proxy_http.render_access(rules))
        return 0
    if mode:
        raise config.ConfigError(
            proxy_http.ENV_MODE, f"unknown mode {config.clip(mode)!r}; expected unit-test or unset"
        )
    return HttpProxy(env, variable, rules).run()
