"""``egress-router http-proxy`` / ``dns-proxy``, and which one the environment asks for.

Upstream's proxy pods give their main container nothing but the proxy's variable; with our
image in place of upstream's, the entry point without a subcommand must therefore pick the
proxy from the variables present (`selected`). Rendered manifests name the subcommand.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping

import click

from egress_router.core import config, proxy_http

EXIT_CONFIG = 1
EXIT_PROXY = 3

HTTP_VARIABLES = (proxy_http.ENV_DESTINATION, proxy_http.ENV_DESTINATION_FILE)
DNS_VARIABLES = ("EGRESS_DNS_PROXY_DESTINATION", "EGRESS_DNS_PROXY_DESTINATION_FILE")


def selected(env: Mapping[str, str]) -> str | None:
    """``"http-proxy"``/``"dns-proxy"`` when the environment is a proxy container's, else None.

    A proxy container's: a proxy variable and none of the router's own (upstream's proxy
    pods set EGRESS_SOURCE only on the init container). With EGRESS_SOURCE present the
    router's entry point runs, and its mode decides.
    """
    if config.ENV_SOURCE in env or config.ENV_GATEWAY in env:
        return None
    if any(v in env for v in HTTP_VARIABLES):
        return "http-proxy"
    if any(v in env for v in DNS_VARIABLES):
        return "dns-proxy"
    return None


def _setup_logging(env: Mapping[str, str]) -> None:
    debug = config.strip_space(env.get(config.ENV_DEBUG, "")).lower() in ("1", "true", "yes")
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if debug else logging.INFO,
        format="egress-router: %(levelname)s: %(message)s",
        force=True,
    )


def run(name: str, env: Mapping[str, str]) -> int:
    """Run proxy ``name``; errors become one line and an exit code."""
    from egress_router.proxy import supervise  # noqa: PLC0415 (only in the proxy containers)

    _setup_logging(env)
    runner: Callable[[Mapping[str, str]], int]
    if name == "http-proxy":
        from egress_router.proxy import http  # noqa: PLC0415

        runner = http.run
    else:
        from egress_router.proxy import dns  # noqa: PLC0415

        runner = dns.run
    try:
        return runner(env)
    except config.ConfigError as err:
        click.echo(f"egress-router: error: {err}", err=True)
        return EXIT_CONFIG
    except supervise.ProxyError as err:
        click.echo(f"egress-router: error: {err}", err=True)
        return EXIT_PROXY


@click.command("http-proxy")
def http_proxy_command() -> None:
    """Run the HTTP proxy pod's main container: squid on port 8080 (EGRESS_HTTP_PROXY_PORT).

    Access rules from EGRESS_HTTP_PROXY_DESTINATION or EGRESS_HTTP_PROXY_DESTINATION_FILE
    (re-read when it changes), upstream's grammar: [!]IP[/len], [!]host, [!]*.domain, a last
    line * allows everything else; first match wins. EGRESS_HTTP_PROXY_MODE=unit-test prints
    squid's access rules and exits. Probes and metrics on EGRESS_ROUTER_HTTP_PORT (9090).
    """
    sys.exit(run("http-proxy", os.environ))


@click.command("dns-proxy")
def dns_proxy_command() -> None:
    """Run the DNS proxy pod's main container: HAProxy forwarding TCP ports.

    EGRESS_DNS_PROXY_DESTINATION (or _FILE): one '<port> <host or IP> [<target port>]' a
    line, ports unique; names re-resolved through the pod's resolver.
    """
    sys.exit(run("dns-proxy", os.environ))
