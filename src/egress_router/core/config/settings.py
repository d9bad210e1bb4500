"""Settings beside the rules: active/standby HA, and how often the waiting container looks.

Both are parsed from the environment like the rules, but change no packet: they tune the
`wait` process (`WaitSettings`) and choose whether keepalived owns the reserved address
(`Settings`, ``EGRESS_ROUTER_HA``). The rest of HA (advert sources, keepalived's
configuration) is in `egress_router.core.ha`, which builds on this module.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from egress_router.core.config.text import (
    ConfigError,
    ascii_decimal,
    ascii_number,
    clip,
    strip_space,
)
from egress_router.core.config.variables import (
    DEFAULT_DNS_MAX_TTL,
    DEFAULT_DNS_MIN_TTL,
    DEFAULT_METRICS_RULES,
    DEFAULT_RECONCILE,
    DEFAULT_SAMPLE,
    DEFAULT_WATCH,
    ENV_DNS_MAX_TTL,
    ENV_DNS_MIN_TTL,
    ENV_HA,
    ENV_METRICS_RULES,
    ENV_RECONCILE,
    ENV_SAMPLE,
    ENV_VRID,
    ENV_WATCH,
)

ADVERT_INTERVAL = 0.1  # seconds: the standby takes over ~3.5 intervals after the last advert
PRIORITY = 250  # equal on both (nopreempt: the holder keeps it); high: skew time 0.002 s
LINK_LOCAL = ipaddress.IPv4Network("169.254.0.0/16")  # where the VRRP adverts come from


class HAMode(enum.Enum):
    """``EGRESS_ROUTER_HA``: off (one replica, the upstream contract) or VRRP."""

    OFF = "off"
    VRRP = "vrrp"


@dataclass(frozen=True)
class Settings:
    """The HA settings of a router; None of them per replica."""

    vrid: int
    advert_interval: float = ADVERT_INTERVAL
    priority: int = PRIORITY


def parse_mode(text: str, variable: str = ENV_HA) -> HAMode:
    value = text.strip().lower()
    if value in ("", "off", "none", "false", "0"):
        return HAMode.OFF
    if value == HAMode.VRRP.value:
        return HAMode.VRRP
    raise ConfigError(
        variable, f"unknown value {text!r}; expected 'vrrp' (active/standby) or 'off'"
    )


def parse_vrid(text: str, variable: str = ENV_VRID) -> int:
    value = text.strip()
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= 255:
        raise ConfigError(
            variable,
            f"invalid value {text!r}; expected a VRRP router id from 1 to 255, the same on "
            "both replicas and unused by any other VRRP pair on the egress network",
        )
    return int(value)


def parse_settings(env: Mapping[str, str]) -> Settings | None:
    """The HA settings from the environment; None when HA is off (the default)."""
    mode = parse_mode(env.get(ENV_HA, ""))
    vrid_text = env.get(ENV_VRID, "")
    if mode is HAMode.OFF:
        if vrid_text.strip():
            raise ConfigError(
                ENV_VRID,
                f"is set but {ENV_HA} is off; set {ENV_HA}=vrrp for an active/standby pair "
                f"or remove {ENV_VRID}",
            )
        return None
    if not vrid_text.strip():
        raise ConfigError(
            ENV_VRID,
            f"is not set; with {ENV_HA}=vrrp set it to a VRRP router id from 1 to 255 that "
            "no other VRRP pair on the egress network uses",
        )
    return Settings(vrid=parse_vrid(vrid_text))



# ---------------------------------------------------------------------- the wait process


@dataclass(frozen=True)
class WaitSettings:
    """How often the waiting container looks, from ``EGRESS_ROUTER_*`` variables."""

    reconcile: float = DEFAULT_RECONCILE
    watch: float = DEFAULT_WATCH
    dns_min_ttl: float = DEFAULT_DNS_MIN_TTL
    dns_max_ttl: float = DEFAULT_DNS_MAX_TTL
    sample: float = DEFAULT_SAMPLE
    metrics_rules: int = DEFAULT_METRICS_RULES  # per-rule series up to this many rules


def _seconds(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    text = strip_space(env.get(name, ""))
    if not text:
        return default
    value = ascii_decimal(text)
    if value is None or not low <= value <= high:
        raise ConfigError(
            name,
            f"invalid value {clip(text)!r}; expected seconds from {low:g} to {high:g}",
        )
    return value


def _count(env: Mapping[str, str], name: str, default: int, high: int) -> int:
    text = strip_space(env.get(name, ""))
    if not text:
        return default
    value = ascii_number(text)
    if value is None or value > high:
        raise ConfigError(
            name, f"invalid value {clip(text)!r}; expected a count from 0 to {high}"
        )
    return value


def parse_wait_settings(env: Mapping[str, str]) -> WaitSettings:
    """Parse the waiting container's own variables (all optional)."""
    settings = WaitSettings(
        metrics_rules=_count(env, ENV_METRICS_RULES, DEFAULT_METRICS_RULES, 1_000_000),
        reconcile=_seconds(env, ENV_RECONCILE, DEFAULT_RECONCILE, 0.2, 3600),
        watch=_seconds(env, ENV_WATCH, DEFAULT_WATCH, 0.1, 60),
        dns_min_ttl=_seconds(env, ENV_DNS_MIN_TTL, DEFAULT_DNS_MIN_TTL, 0.5, 86400),
        dns_max_ttl=_seconds(env, ENV_DNS_MAX_TTL, DEFAULT_DNS_MAX_TTL, 0.5, 86400),
        sample=_seconds(env, ENV_SAMPLE, DEFAULT_SAMPLE, 1, 3600),
    )
    if settings.dns_max_ttl < settings.dns_min_ttl:
        raise ConfigError(
            ENV_DNS_MAX_TTL,
            f"is below {ENV_DNS_MIN_TTL} ({settings.dns_max_ttl:g} < "
            f"{settings.dns_min_ttl:g}); raise it or lower the minimum",
        )
    return settings
