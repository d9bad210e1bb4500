"""The router's configuration: every ``EGRESS_*`` variable, parsed and validated, as one `Config`.

Everything the router does starts from a `Config`; building one is the only place where user
input is judged. Parsing happens before any side effect, so a bad variable or destination
line is reported (variable, line number, the offending text and what was expected) while the
rules already in the kernel keep working. The package is pure: it reads no file (the
destination file's text comes through a reader, `egress_router.kernel.files`).

The grammar is OpenShift's egress router (redirect mode), extended with IPv6, SCTP, dual
stack, DNS names, comments anywhere and a destination file. The modules, bottom up:

- `variables`: the variable names and defaults;
- `text`: `ConfigError` and the lexical rules every parser shares (numbers, names, choices);
- `settings`: HA (``EGRESS_ROUTER_HA``) and the waiting container's timing;
- `model`: the frozen values (`Config`, rules, sources, `Mode`) and their text form;
- `addresses`: sources, gateways, host names, what a destination may be;
- `grammar`: the destination lines;
- `environment`: `load_config`, the variables combined and cross-checked.

Everything is re-exported here: ``from egress_router.core.config import X`` is the way in.
"""

from __future__ import annotations

from egress_router.core.config.addresses import (
    check_destinations,
    check_families,
    destination_problem,
    parse_address,
    parse_gateways,
    parse_host,
    parse_sources,
)
from egress_router.core.config.environment import (
    check_http_port,
    load_config,
    parse_http_port,
    read_destination_text,
)
from egress_router.core.config.grammar import (
    RULE_SYNTAX,
    parse_destinations,
)
from egress_router.core.config.model import (
    Backend,
    Config,
    Destinations,
    Fallback,
    IPAddress,
    IPInterface,
    IPNetwork,
    Mode,
    NamedFallback,
    NamedRule,
    PortRule,
    Proto,
    Source,
)
from egress_router.core.config.settings import (
    HAMode,
    WaitSettings,
    parse_wait_settings,
)
from egress_router.core.config.text import (
    HOST_LABEL,
    IFNAME,
    IFNAME_CHARS,
    IFNAME_MAX_BYTES,
    ConfigError,
    ascii_decimal,
    ascii_number,
    clip,
    describe_char,
    interface_name_problem,
    parse_bool,
    parse_choice,
    parse_ifname,
    split_lines,
    split_list,
    strip_space,
)
from egress_router.core.config.variables import (
    DEFAULT_ANNOUNCE_COUNT,
    DEFAULT_ANNOUNCE_INTERVAL,
    DEFAULT_DNS_MAX_TTL,
    DEFAULT_DNS_MIN_TTL,
    DEFAULT_EGRESS_INTERFACE,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_RULES,
    DEFAULT_POD_INTERFACE,
    DEFAULT_RECONCILE,
    DEFAULT_SAMPLE,
    DEFAULT_WATCH,
    DESTINATION_FILE_LIMIT,
    ENV_ANNOUNCE_COUNT,
    ENV_ANNOUNCE_INTERVAL,
    ENV_BACKEND,
    ENV_CNI_CONFIG,
    ENV_DEBUG,
    ENV_DESTINATION,
    ENV_DESTINATION_FILE,
    ENV_DNS_MAX_TTL,
    ENV_DNS_MIN_TTL,
    ENV_GATEWAY,
    ENV_HA,
    ENV_HTTP_PORT,
    ENV_INTERFACE,
    ENV_METRICS_RULES,
    ENV_MODE,
    ENV_POD_INTERFACE,
    ENV_RECONCILE,
    ENV_SAMPLE,
    ENV_SOURCE,
    ENV_VRID,
    ENV_WATCH,
    MAX_POOL,
)

__all__ = [
    "DEFAULT_ANNOUNCE_COUNT",
    "DEFAULT_ANNOUNCE_INTERVAL",
    "DEFAULT_DNS_MAX_TTL",
    "DEFAULT_DNS_MIN_TTL",
    "DEFAULT_EGRESS_INTERFACE",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_METRICS_RULES",
    "DEFAULT_POD_INTERFACE",
    "DEFAULT_RECONCILE",
    "DEFAULT_SAMPLE",
    "DEFAULT_WATCH",
    "DESTINATION_FILE_LIMIT",
    "ENV_ANNOUNCE_COUNT",
    "ENV_ANNOUNCE_INTERVAL",
    "ENV_BACKEND",
    "ENV_CNI_CONFIG",
    "ENV_DEBUG",
    "ENV_DESTINATION",
    "ENV_DESTINATION_FILE",
    "ENV_DNS_MAX_TTL",
    "ENV_DNS_MIN_TTL",
    "ENV_GATEWAY",
    "ENV_HA",
    "ENV_HTTP_PORT",
    "ENV_INTERFACE",
    "ENV_METRICS_RULES",
    "ENV_MODE",
    "ENV_POD_INTERFACE",
    "ENV_RECONCILE",
    "ENV_SAMPLE",
    "ENV_SOURCE",
    "ENV_VRID",
    "ENV_WATCH",
    "HOST_LABEL",
    "IFNAME",
    "IFNAME_CHARS",
    "IFNAME_MAX_BYTES",
    "MAX_POOL",
    "RULE_SYNTAX",
    "Backend",
    "Config",
    "ConfigError",
    "Destinations",
    "Fallback",
    "HAMode",
    "IPAddress",
    "IPInterface",
    "IPNetwork",
    "Mode",
    "NamedFallback",
    "NamedRule",
    "PortRule",
    "Proto",
    "Source",
    "WaitSettings",
    "ascii_decimal",
    "ascii_number",
    "check_destinations",
    "check_families",
    "check_http_port",
    "clip",
    "describe_char",
    "destination_problem",
    "interface_name_problem",
    "load_config",
    "parse_address",
    "parse_bool",
    "parse_choice",
    "parse_destinations",
    "parse_gateways",
    "parse_host",
    "parse_http_port",
    "parse_ifname",
    "parse_sources",
    "parse_wait_settings",
    "read_destination_text",
    "split_lines",
    "split_list",
    "strip_space",
]
