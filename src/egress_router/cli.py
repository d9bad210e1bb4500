"""The ``egress-router`` command: the init container's entry point and tools for people.

Run with no arguments it behaves like OpenShift's egress-router image: it
reads ``EGRESS_*`` from the environment and sets up (``init``), sets up and
waits (``legacy``) or prints what it would do (``unit-test``). Subcommands
serve a person at a terminal. This module only parses arguments, calls the
core and maps failures to exit codes; it holds no logic of its own.

Exit codes: 0 success, 1 invalid configuration (nothing was changed),
2 wrong usage, 3 the kernel refused the setup, 4 (``status``) the kernel
does not match the configuration.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

import click

from egress_router.core import config, plan, ruleset
from egress_router.kernel import announce, errors, files, netlink, preflight
from egress_router.lab.command import lab as lab_group
from egress_router.operator.command import operator_command
from egress_router.proxy import command as proxy_command
from egress_router.render import render_command
from egress_router.router import engine

# rich and the lab (asyncio) are imported by the commands that use them: the
# waiting container runs through this module too, and every MiB it imports
# counts against its memory budget.

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


def _cni_environment(env: Mapping[str, str]) -> dict[str, str]:
    """CNI mode: ``env`` completed from the plugin's configuration (EGRESS_ROUTER_CNI_CONFIG)."""
    if not env.get(config.ENV_CNI_CONFIG, "").strip():
        return dict(env)
    from egress_router.cni import netconf  # noqa: PLC0415 (only in CNI mode)

    return netconf.router_environment(env)


def _load(env: Mapping[str, str]) -> config.Config:
    try:
        return files.load_config(_cni_environment(env))
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
    if cfg.mode is config.Mode.LEGACY:
        del cfg  # the waiting container parses it again; 10,000 rules should not live twice
        return _run_wait(env)  # set up, then keep the router right: `egress-router wait`
    cfg = _resolve_names(_route_resolvers(cfg))
    stop = _Stop()
    stop.install()
    firewall = engine.make_firewall(cfg.backend)
    log.debug("configuration: %s", cfg)
    log.debug("ruleset:\n%s", firewall.render(cfg))
    try:
        report = engine.setup(
            cfg,
            netlink.PyrouteNetlink(),
            firewall,
            announce.SocketAnnouncer(),
            sleep=stop.sleep,
            stale=engine.stale_firewall(cfg.backend),
            probe=preflight.SystemProbe(),
        )
    except engine.ApplyError as err:
        _fail(str(err), EXIT_APPLY)
    for stage, seconds in report.stages.items():
        log.debug("%s: %.3fs", stage, seconds)
    if not cfg.mode.redirects:
        log.info(
            "egress router ready for the %s container: %s via %s, nothing redirected",
            cfg.mode.value,
            ", ".join(str(s.interface) for s in cfg.sources),
            ", ".join(str(g) for g in cfg.gateways),
        )
        return EXIT_OK
    log.info(
        "egress router ready: %s via %s, %d rules",
        ", ".join(str(s.interface) for s in cfg.sources),
        ", ".join(str(g) for g in cfg.gateways),
        len(cfg.destinations.rules) + len(cfg.destinations.fallbacks),
    )
    return EXIT_OK


def _route_resolvers(cfg: config.Config) -> config.Config:
    """``cfg`` with routes to the resolvers via the pod gateway (plan steps, as ``wait`` has).

    With DNS-named destinations they are added at once: the lookups that come
    next need them when the default route already points at the egress gateway
    (init run again in a pod whose network namespace survived). Without names
    the engine adds them with the rest of the plan.
    """
    from egress_router.kernel import resolvers  # noqa: PLC0415 (init only)

    routes = resolvers.pod_routes(cfg)
    if not routes:
        return cfg
    cfg = dataclasses.replace(cfg, pod_routes=routes)
    if cfg.destinations.hosts():
        links = netlink.PyrouteNetlink()
        for step in plan.plan_interfaces(cfg):
            if isinstance(step, plan.SetRoute) and step.ifname == cfg.pod_interface:
                log.info("the router's own lookups: %s", step.describe())
                try:
                    links.apply(step)
                except errors.KernelError as err:
                    _fail(str(err), EXIT_APPLY)
    return cfg


def _resolve_names(cfg: config.Config) -> config.Config:
    """Resolve DNS-named destinations now, or exit 1 naming the one that failed."""
    if not cfg.destinations.hosts():
        return cfg
    from egress_router.kernel import observe  # noqa: PLC0415
    from egress_router.router import resolve  # noqa: PLC0415 (dnspython only when names are used)

    # Answers inside the pod network are refused too: read it from the pod interface.
    policy = resolve.policy_for(cfg, observe.interface_networks(cfg.pod_interface))
    try:
        return resolve.resolve_now(cfg, resolve.DnsResolver(), policy)
    except resolve.ResolveError as err:
        _fail(
            f"{err}; check the name and the pod's DNS (/etc/resolv.conf), or write the address",
            EXIT_CONFIG,
        )
        raise AssertionError("unreachable") from err


def _run_wait(env: Mapping[str, str]) -> int:
    """Run the waiting container (``wait``, ``legacy`` mode); map failures to exit codes."""
    from egress_router import wait as wait_module  # noqa: PLC0415 (init needs none of it)

    reread = None
    if env.get(config.ENV_CNI_CONFIG, "").strip():
        from egress_router.cni import netconf  # noqa: PLC0415 (only in CNI mode)

        def reread() -> dict[str, str]:
            return netconf.router_environment(env)

    try:
        return wait_module.run(_cni_environment(env), reread=reread)
    except config.ConfigError as err:
        _fail(str(err), EXIT_CONFIG)
    except (engine.ApplyError, wait_module.WaitError) as err:
        _fail(str(err), EXIT_APPLY)
    return EXIT_APPLY


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
        proxy = proxy_command.selected(os.environ)  # upstream's proxy pods: the variable decides
        if proxy is not None:
            sys.exit(proxy_command.run(proxy, os.environ))
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
    from rich.console import Console  # noqa: PLC0415 (see the imports)
    from rich.table import Table  # noqa: PLC0415

    env = _env_with_file(os.environ, path)
    console = Console()
    try:
        if config.ENV_SOURCE in env or config.ENV_GATEWAY in env:
            cfg = files.load_config(env)
            rows = ruleset.describe_rules(cfg)
            title = f"{len(rows)} rules, source {', '.join(str(s.interface) for s in cfg.sources)}"
        else:
            variable, text = files.read_destination_text(env)
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


@cli.command("install-cni")
@click.option(
    "--source",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The plugin executable to install  [default: where the image carries it, "
    "/usr/local/libexec/egress-router/egress-router-cni]",
)
@click.option(
    "--dest-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The host's CNI bin directory (a hostPath mount in the DaemonSet)  "
    "[default: /opt/cni/bin]",
)
@click.option(
    "--name",
    help='The file name: the NetworkAttachmentDefinition\'s "type"  [default: egress-router]',
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Re-check (and repair) every this many seconds until SIGTERM; 0: install once, exit.",
)
def install_cni_command(
    source: Path | None, dest_dir: Path | None, name: str | None, interval: float
) -> None:
    """Install the CNI plugin executable into the node's CNI bin directory, atomically.

    Copies SOURCE to a temporary file in DEST-DIR, fsyncs it, makes it
    executable and renames it to NAME, so a runtime never executes a
    half-written plugin; does nothing when the content hash already matches.
    With --interval it keeps the file current (the installer DaemonSet).
    Exit 1 when the first install fails.
    """
    from egress_router.cni import install  # noqa: PLC0415
    from egress_router.k8s import manifest  # noqa: PLC0415 (yaml, jsonschema: not for wait)

    source = source or Path(manifest.CNI_EXECUTABLE)
    dest_dir = dest_dir or Path(manifest.CNI_BIN_DIR)
    name = name or manifest.CNI_TYPE
    _setup_logging(False)
    stop = _Stop()
    stop.install()

    def wait(seconds: float) -> bool:
        stop.sleep(seconds)
        return stop.event.is_set()

    try:
        if interval:
            install.keep_installed(source, dest_dir, name, interval, wait)
        else:
            done = install.install(source, dest_dir, name)
            install.report(done)
    except install.InstallError as err:
        _fail(str(err), EXIT_CONFIG)
    sys.exit(EXIT_OK)


@cli.command("wait")
@_FILE
def wait_command(path: Path | None) -> None:
    """Run the router pod's main container: apply, then keep the router right.

    Reads the same EGRESS_* environment as the entry point (usually with
    EGRESS_DESTINATION_FILE pointing at a mounted ConfigMap), or in CNI mode
    the plugin's network configuration (EGRESS_ROUTER_CNI_CONFIG: the
    NetworkAttachmentDefinition's config, mounted) and EGRESS_INTERFACE. Re-applies the
    file when it changes (a bad edit is reported, the running rules stay),
    repairs drift every EGRESS_ROUTER_RECONCILE_SECONDS (default 10),
    re-resolves DNS names on their TTL, announces the address again on SIGHUP
    and serves /healthz, /readyz and /metrics on EGRESS_ROUTER_HTTP_PORT
    (default 9090, 0: off). Exits 0 on SIGTERM, leaving the rules in place.
    """
    env = _env_with_file(os.environ, path)
    # Parsed (and refused with exit 1) by the waiting container itself, once.
    _setup_logging(env.get(config.ENV_DEBUG, "").strip().lower() in ("1", "true", "yes", "on"))
    sys.exit(_run_wait(env))


@cli.command("status")
@_FILE
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
def status_command(path: Path | None, as_json: bool) -> None:
    """Show the configuration, the interface state and every rule with its counters.

    Reads the kernel of this network namespace (run it in the router pod).
    Exit 0 when the kernel matches the configuration, 4 when it does not,
    1 when the configuration is invalid.
    """
    from rich.console import Console  # noqa: PLC0415

    from egress_router import status as status_module  # noqa: PLC0415

    env = _env_with_file(os.environ, path)
    cfg = _load(env)
    report = status_module.collect(cfg)
    if as_json:
        click.echo(status_module.to_json(report))
    else:
        status_module.show(report, Console())
    sys.exit(EXIT_OK if report.matches else status_module.EXIT_DRIFT)


cli.add_command(lab_group, "lab")
cli.add_command(render_command, "render")
cli.add_command(operator_command, "operator")
cli.add_command(proxy_command.http_proxy_command)
cli.add_command(proxy_command.dns_proxy_command)


def main() -> None:
    """Console-script entry point."""
    cli()
