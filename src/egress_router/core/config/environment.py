"""The environment as the upstream image reads it: every ``EGRESS_*`` variable -> one `Config`.

`load_config` is the only place the variables are combined and cross-checked (families,
the HTTP port against the rules, HA against the sources). It reads no file itself: the
destination file's text comes through a reader the caller passes
(`egress_router.kernel.files.load_config` passes the real one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from egress_router.core.config.addresses import (
    check_destinations,
    check_families,
    parse_gateways,
    parse_sources,
)
from egress_router.core.config.grammar import RULE_SYNTAX, parse_destinations
from egress_router.core.config.model import (
    Backend,
    Config,
    Destinations,
    Mode,
    NamedRule,
    PortRule,
    Proto,
)
from egress_router.core.config.settings import LINK_LOCAL, parse_settings
from egress_router.core.config.text import (
    ConfigError,
    ascii_decimal,
    ascii_number,
    clip,
    parse_bool,
    parse_choice,
    parse_ifname,
    split_lines,
    strip_space,
)
from egress_router.core.config.variables import (
    DEFAULT_ANNOUNCE_COUNT,
    DEFAULT_ANNOUNCE_INTERVAL,
    DEFAULT_EGRESS_INTERFACE,
    DEFAULT_HTTP_PORT,
    DEFAULT_POD_INTERFACE,
    ENV_ANNOUNCE_COUNT,
    ENV_ANNOUNCE_INTERVAL,
    ENV_BACKEND,
    ENV_DEBUG,
    ENV_DESTINATION,
    ENV_DESTINATION_FILE,
    ENV_GATEWAY,
    ENV_HA,
    ENV_HTTP_PORT,
    ENV_INTERFACE,
    ENV_MODE,
    ENV_POD_INTERFACE,
    ENV_SOURCE,
)


def _parse_count(text: str, variable: str) -> int:
    value = ascii_number(strip_space(text))
    if value is None or not 0 <= value <= 100:
        raise ConfigError(
            variable, f"invalid value {clip(text)!r}; expected a whole number 0 to 100"
        )
    return value


def _parse_interval(text: str, variable: str) -> float:
    value = ascii_decimal(strip_space(text))
    if value is None or not 0.0 <= value <= 60.0:
        raise ConfigError(
            variable,
            f"invalid value {clip(text)!r}; expected seconds from 0 to 60",
        )
    return value


def read_destination_text(
    env: Mapping[str, str], read_text: Callable[[str], str] | None = None
) -> tuple[str, str]:
    """Return (variable-or-path name for errors, destination text) from the environment.

    The core reads no files: ``read_text`` reads the one ``EGRESS_DESTINATION_FILE`` names
    (`egress_router.kernel.files.read_destination_file`, or a test's text); without it a
    named file is refused.
    """
    path = strip_space(env.get(ENV_DESTINATION_FILE, ""))
    inline = env.get(ENV_DESTINATION)
    if path:
        if inline is not None and strip_space(inline):
            raise ConfigError(
                ENV_DESTINATION_FILE,
                f"is set together with {ENV_DESTINATION}; set only one of them",
            )
        if read_text is None:
            raise ConfigError(
                ENV_DESTINATION_FILE,
                f"names {path!r}, but this caller reads no files; read the environment "
                "through egress_router.kernel.files",
            )
        try:
            return path, read_text(path)
        except OSError as err:
            cause = err.strerror or str(err)
            raise ConfigError(
                ENV_DESTINATION_FILE,
                f"cannot read destination file {path!r}: {cause}; "
                "mount the ConfigMap or fix the path",
            ) from None
    if inline is None or not strip_space(inline):
        raise ConfigError(
            ENV_DESTINATION,
            f"is not set; set it (or {ENV_DESTINATION_FILE}) to lines of {RULE_SYNTAX}",
        )
    return ENV_DESTINATION, inline


def load_config(
    env: Mapping[str, str], read_text: Callable[[str], str] | None = None
) -> Config:
    """Build a `Config` from environment variables, exactly as the upstream image reads them.

    ``read_text`` reads the destination file, if the environment names one (see
    `read_destination_text`).
    """
    mode = parse_choice(Mode, env.get(ENV_MODE, Mode.LEGACY.value) or "legacy", ENV_MODE)
    backend = parse_choice(
        Backend, env.get(ENV_BACKEND, Backend.NFTABLES.value) or "nftables", ENV_BACKEND
    )
    debug = parse_bool(env.get(ENV_DEBUG, ""), ENV_DEBUG)
    pod_if = parse_ifname(env.get(ENV_POD_INTERFACE, DEFAULT_POD_INTERFACE), ENV_POD_INTERFACE)
    egress_if = parse_ifname(env.get(ENV_INTERFACE, DEFAULT_EGRESS_INTERFACE), ENV_INTERFACE)
    if pod_if == egress_if:
        raise ConfigError(
            ENV_INTERFACE,
            f"is the same interface as {ENV_POD_INTERFACE} ({pod_if!r}); the router needs "
            "a pod-side and a physical-side interface",
        )
    http_port = parse_http_port(env.get(ENV_HTTP_PORT, str(DEFAULT_HTTP_PORT)))
    if ENV_SOURCE not in env:
        raise ConfigError(ENV_SOURCE, "is not set; set it to the reserved address")
    sources = parse_sources(env[ENV_SOURCE])
    if ENV_GATEWAY not in env:
        raise ConfigError(ENV_GATEWAY, "is not set; set it to the gateway's address")
    gateways = parse_gateways(env[ENV_GATEWAY])
    if mode.redirects:
        variable, text = read_destination_text(env, read_text)
        destinations = parse_destinations(text, variable)
    else:
        variable, text, destinations = _no_destinations(env, mode)
    check_families(sources, gateways, destinations, destination_variable=variable)
    check_destinations(sources, gateways, destinations, variable, text)
    check_http_port(destinations, http_port, variable, text)
    ha_settings = parse_settings(env)
    cfg = Config(
        sources,
        gateways,
        destinations,
        mode=mode,
        backend=backend,
        pod_interface=pod_if,
        egress_interface=egress_if,
        debug=debug,
        announce_count=_parse_count(
            env.get(ENV_ANNOUNCE_COUNT, str(DEFAULT_ANNOUNCE_COUNT)), ENV_ANNOUNCE_COUNT
        ),
        announce_interval=_parse_interval(
            env.get(ENV_ANNOUNCE_INTERVAL, str(DEFAULT_ANNOUNCE_INTERVAL)), ENV_ANNOUNCE_INTERVAL
        ),
        http_port=http_port,
        ha=ha_settings,
    )
    if ha_settings is not None:
        check_ha_sources(cfg)
    return cfg


def _no_destinations(env: Mapping[str, str], mode: Mode) -> tuple[str, str, Destinations]:
    """The proxy modes redirect nothing: an EGRESS_DESTINATION there is a mistake, said so."""
    for name in (ENV_DESTINATION, ENV_DESTINATION_FILE):
        if strip_space(env.get(name, "")):
            raise ConfigError(
                name,
                f"is set, but EGRESS_ROUTER_MODE={mode.value} redirects nothing (its pod's "
                "proxy container decides where traffic goes); remove it, or use the mode "
                "init or legacy to redirect",
            )
    return ENV_DESTINATION, "", Destinations(rules=())


def parse_http_port(text: str, variable: str = ENV_HTTP_PORT) -> int:
    """``EGRESS_ROUTER_HTTP_PORT``: the wait container's HTTP port, 0 for none."""
    value = ascii_number(strip_space(text))
    if value is None or value > 65535:
        raise ConfigError(
            variable,
            f"invalid value {clip(text)!r}; expected a port from 1 to 65535, or 0 to turn the "
            "HTTP server (/healthz, /readyz, /metrics) off",
        )
    return value


def check_http_port(
    destinations: Destinations, http_port: int, variable: str, text: str = ""
) -> None:
    """A TCP rule on the HTTP port would be shadowed by the port's accept rule: refuse it."""
    if not http_port:
        return
    lines = split_lines(text)
    rules: list[PortRule | NamedRule] = [*destinations.rules, *destinations.named]
    for rule in rules:
        if rule.proto is Proto.TCP and rule.port == http_port:
            raw = strip_space(lines[rule.line - 1]) if 0 < rule.line <= len(lines) else None
            raise ConfigError(
                variable,
                f"port {http_port}/tcp is the router's own HTTP port ({ENV_HTTP_PORT}, "
                f"/healthz, /readyz, /metrics); use another local port, or set {ENV_HTTP_PORT} "
                "to a free port (0 turns the HTTP server off)",
                line=rule.line or None,
                text=raw,
            )




def check_ha_sources(cfg: Config, variable: str = ENV_SOURCE) -> None:
    """VRRP needs an IPv4 reserved address to elect on; IPv6 ones move along with it."""
    if cfg.source(4) is None:
        raise ConfigError(
            variable,
            f"has no IPv4 address; {ENV_HA}=vrrp elects over IPv4 (VRRPv3 adverts from a "
            "169.254.0.0/16 address), add the IPv4 reserved address",
        )
    for source in cfg.sources:
        if source.address in LINK_LOCAL:
            raise ConfigError(
                variable,
                f"{source.address} is link-local; {ENV_HA}=vrrp uses 169.254.0.0/16 for "
                "its advertisements",
            )
