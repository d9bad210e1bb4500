"""The ``egress-router`` command: the init container's entry point and tools for people.

Run with no arguments it behaves like OpenShift's egress-router image: it
reads ``EGRESS_*`` from the environment and sets up (``init``), sets up and
waits (``legacy``) or prints what it would do (``unit-test``). Subcommands
serve a person at a terminal. This module only parses arguments, calls the
core and maps failures to exit codes; it holds no logic of its own.

Exit codes: 0 success, 1 invalid configuration (nothing was changed),
2 wrong usage, 3 the kernel refused the setup.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

import click
from rich.console import Console
from rich.table import Table

from egress_router import announce, config, engine, netlink, ruleset
from egress_router import lab as lab_module

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_APPLY = 3

log = logging.getLogger("egress_router")


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if debug else logging.INFO,
        format="egress-router: %(levelname)s: %(message)s",
        force=True,
    )
    # pyroute2 logs every netlink message at DEBUG: far too much for EGRESS_ROUTER_DEBUG.
    logging.getLogger("pyroute2").setLevel(logging.WARNING)


def _fail(message: str, code: int) -> None:
    click.echo(f"egress-router: error: {message}", err=True)
    sys.exit(code)


def _env_with_file(env: Mapping[str, str], path: Path | None) -> dict[str, str]:
    merged = dict(env)
    if path is not None:
        merged.pop(config.ENV_DESTINATION, None)
        merged[config.ENV_DESTINATION_FILE] = str(path)
    return merged


def _load(env: Mapping[str, str]) -> config.Config:
    try:
        return config.load_config(env)
    except config.ConfigError as err:
        _fail(str(err), EXIT_CONFIG)
        raise AssertionError("unreachable") from err


class _Stop:
    """Set by SIGTERM/SIGINT; its ``wait`` doubles as an interruptible sleep."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s, exiting", signal.Signals(signum).name)
        self.event.set()

    def sleep(self, seconds: float) -> None:
        self.event.wait(seconds)


def run_from_environment(env: Mapping[str, str]) -> int:
    """The upstream-compatible entry point: configure from ``EGRESS_*`` variables."""
    cfg = _load(env)
    _setup_logging(cfg.debug)
    if cfg.mode is config.Mode.UNIT_TEST:
        click.echo(engine.unit_test_report(cfg), nl=False)
        return EXIT_OK
    stop = _Stop()
    stop.install()
    firewall = engine.make_firewall(cfg.backend)
    other = (
        config.Backend.IPTABLES if cfg.backend is config.Backend.NFTABLES
        else config.Backend.NFTABLES
    )
    log.debug("configuration: %s", cfg)
    log.debug("ruleset:\n%s", firewall.render(cfg))
    try:
        report = engine.setup(
            cfg,
            netlink.PyrouteNetlink(),
            firewall,
            announce.SocketAnnouncer(),
            sleep=stop.sleep,
            stale=engine.make_firewall(other),
        )
    except engine.ApplyError as err:
        _fail(str(err), EXIT_APPLY)
    for stage, seconds in report.stages.items():
        log.debug("%s: %.3fs", stage, seconds)
    log.info(
        "egress router ready: %s via %s, %d rules",
        ", ".join(str(s.interface) for s in cfg.sources),
        ", ".join(str(g) for g in cfg.gateways),
        len(cfg.destinations.rules) + len(cfg.destinations.fallbacks),
    )
    if cfg.mode is config.Mode.LEGACY:
        stop.event.wait()
    return EXIT_OK


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="egress-router")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Egress router for Kubernetes (OpenShift redirect mode compatible).

    With no command, configure this pod from EGRESS_SOURCE, EGRESS_GATEWAY,
    EGRESS_DESTINATION (or EGRESS_DESTINATION_FILE) and EGRESS_ROUTER_MODE,
    exactly like the upstream image.
    """
    if ctx.invoked_subcommand is None:
        sys.exit(run_from_environment(os.environ))


_FILE = click.option(
    "--file",
    "-f",
    "path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Read destination rules from this file instead of EGRESS_DESTINATION.",
)


@cli.command()
@_FILE
def validate(path: Path | None) -> None:
    """Check the configuration and print the normalised rule table (exit 0 valid, 1 not).

    Reads the same environment as the entry point; without EGRESS_SOURCE and
    EGRESS_GATEWAY only the destination grammar is checked.
    """
    env = _env_with_file(os.environ, path)
    console = Console()
    try:
        if config.ENV_SOURCE in env or config.ENV_GATEWAY in env:
            cfg = config.load_config(env)
            rows = ruleset.describe_rules(cfg)
            title = f"{len(rows)} rules, source {', '.join(str(s.interface) for s in cfg.sources)}"
        else:
            variable, text = config.read_destination_text(env)
            destinations = config.parse_destinations(text, variable)
            rows = ruleset.describe_rules(
                config.Config(sources=(), gateways=(), destinations=destinations)
            )
            title = f"{len(rows)} rules (grammar only: EGRESS_SOURCE/EGRESS_GATEWAY not set)"
    except config.ConfigError as err:
        _fail(str(err), EXIT_CONFIG)
    table = Table(title=title)
    for column in ("local port", "protocol", "destination", "line"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)


@cli.command()
@_FILE
@click.option(
    "--backend",
    type=click.Choice([b.value for b in config.Backend]),
    default=None,
    help="Backend to render for (default: EGRESS_ROUTER_BACKEND or nftables).",
)
def rules(path: Path | None, backend: str | None) -> None:
    """Print the ruleset that would be applied, for the chosen backend."""
    env = _env_with_file(os.environ, path)
    if backend is not None:
        env[config.ENV_BACKEND] = backend
    cfg = _load(env)
    click.echo(engine.make_firewall(cfg.backend).render(cfg), nl=False)


@cli.group()
def lab() -> None:
    """A local lab in network namespaces: client, router, node, gateway, destinations."""


_PREFIX = click.option(
    "--prefix", default="erlab", show_default=True, help="Namespace name prefix of the lab."
)
_MACVLAN = click.option(
    "--macvlan",
    default="true",
    show_default=True,
    help="The pod's assign-macvlan annotation: 'true' (the node's default-route interface) "
    "or the name of the node interface to use as the macvlan parent.",
)


@lab.command("up")
@_PREFIX
@_MACVLAN
def lab_up(prefix: str, macvlan: str) -> None:
    """Build the lab (no router configuration yet)."""
    built = lab_module.up(prefix, macvlan=macvlan)
    click.echo(f"lab {prefix!r} is up: namespaces {', '.join(built.namespaces)}")


@lab.command("demo")
@_PREFIX
@_MACVLAN
@click.option("--keep", is_flag=True, help="Leave the lab running afterwards.")
def lab_demo(prefix: str, macvlan: str, keep: bool) -> None:
    """Build the lab, configure the router with the seed example, send real traffic."""
    sys.exit(lab_module.demo(prefix, keep=keep, macvlan=macvlan))


@lab.command("down")
@_PREFIX
def lab_down(prefix: str) -> None:
    """Remove the lab (also after a crash)."""
    lab_module.down(prefix)
    click.echo(f"lab {prefix!r} is down")


def main() -> None:
    """Console-script entry point."""
    cli()
