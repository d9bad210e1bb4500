"""The HTTP proxy's access rules: upstream's grammar, validated, and squid's configuration.

OpenShift's HTTP proxy pod reads ``EGRESS_HTTP_PROXY_DESTINATION``: one entry a line, ``#``
comments; an IP address, an IP network (``IP/len``), a host name or ``*.domain``; a ``!`` in
front denies; a last line ``*`` allows everything else, without it everything else is denied;
the first entry that matches decides. Upstream's shell script pastes the lines into squid's
configuration and silently skips some it cannot read (its blank-line test, ``^\\w*$``, also
matches a one-word line such as ``intranet``). Here every line is parsed into a `Rule` first
and every bad line refused with the variable, the line number and its text, IPv6 included;
only validated values reach the generated configuration (`render_squid`), so no text of the
variable ever becomes squid syntax.

Pure: no processes, no sockets. Running squid is ``egress_router.proxy.http``'s job.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from egress_router.core import config

ENV_DESTINATION = "EGRESS_HTTP_PROXY_DESTINATION"
ENV_DESTINATION_FILE = "EGRESS_HTTP_PROXY_DESTINATION_FILE"
ENV_MODE = "EGRESS_HTTP_PROXY_MODE"  # upstream: "unit-test" prints the access rules
ENV_PORT = "EGRESS_HTTP_PROXY_PORT"
DEFAULT_PORT = 8080  # upstream's fixed port; its Service and clients use it
SYNTAX = "[!]<ip>, [!]<ip>/<len>, [!]<host name>, [!]*.<domain>, or a last line *"

# Squid's annotation key: its access log names the rule that decided (see `render_squid`).
NOTE_KEY = "rule"
DEFAULT_RULE = "default"  # the last decision: deny all (or allow all after a `*`)
GUARD_RULE = "guard"  # the first decision: never loopback, "this host" or link-local
GUARD_ACL = "to_pod_or_link_local"
GUARDED = ("127.0.0.0/8", "0.0.0.0/8", "169.254.0.0/16", "::1/128", "::/128", "fe80::/10")


class Action(enum.Enum):
    """What a matching rule does."""

    ALLOW = "allow"
    DENY = "deny"


class Kind(enum.Enum):
    """What a rule matches."""

    NETWORK = "network"  # an address (a /32 or /128) or a network
    HOST = "host"  # exactly this name
    DOMAIN = "domain"  # the name and every name under it (upstream's *.domain)


@dataclass(frozen=True)
class Rule:
    """One line of the variable: ``line`` (1-based) and ``text`` as written, for messages."""

    line: int
    text: str
    action: Action
    kind: Kind
    value: str  # a network with its length, or a lower-case name

    @property
    def label(self) -> str:
        """The rule's name in metrics and logs: its line number."""
        return str(self.line)


@dataclass(frozen=True)
class AccessRules:
    """The whole variable: its rules in order, and what happens to everything else."""

    rules: tuple[Rule, ...]
    allow_rest: bool  # a last line `*`
    rest_line: int | None = None  # the `*` line

    def describe(self) -> list[tuple[str, str, str, str]]:
        """(rule, action, matches, as written) rows, the last one for everything else."""
        rows = [
            (r.label, r.action.value, f"{r.kind.value} {r.value}", r.text) for r in self.rules
        ]
        rest = Action.ALLOW if self.allow_rest else Action.DENY
        rows.append((DEFAULT_RULE, rest.value, "everything else", "*" if self.allow_rest else ""))
        return rows


def _refuse(variable: str, line: int, text: str, cause: str) -> config.ConfigError:
    return config.ConfigError(variable, cause, line=line, text=text)


def _parse_network(token: str, variable: str, line: int, text: str) -> str:
    address_text, _, length = token.partition("/")
    try:
        address = config.parse_address(address_text, variable, line=line, what="address")
    except config.ConfigError as err:
        raise _refuse(variable, line, text, err.cause) from None
    if not length:
        return f"{address}/{address.max_prefixlen}"
    bits = config.ascii_number(length)
    if bits is None or bits > address.max_prefixlen:
        raise _refuse(
            variable, line, text,
            f"invalid prefix length {config.clip(length)!r}; expected 0 to "
            f"{address.max_prefixlen} for an IPv{address.version} network",
        )
    try:
        network = ipaddress.ip_network(f"{address}/{bits}")
    except ValueError:
        wanted = ipaddress.ip_network(f"{address}/{bits}", strict=False)
        raise _refuse(
            variable, line, text,
            f"{token} has host bits set; write the network {wanted} (or the address alone)",
        ) from None
    return str(network)


def _parse_name(token: str, variable: str, line: int, text: str, *, domain: bool = False) -> str:
    name = token.lower().rstrip(".") if token.isascii() else ""
    labels = name.split(".")
    if (
        len(labels) >= (1 if domain else 2)
        and len(name) <= 253
        and all(config.HOST_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    ):
        return name
    if not domain and name and "." not in name and config.HOST_LABEL.fullmatch(name):
        cause = (
            f"{config.clip(token)!r} is a single-label name (upstream's image silently ignored "
            "such a line); write the fully qualified name, such as intranet.example.com"
        )
    else:
        cause = (
            f"invalid destination {config.clip(token)!r}; expected {SYNTAX} "
            "(a name is letters, digits and '-' in dot-separated labels)"
        )
    raise _refuse(variable, line, text, cause)


def _looks_like_address(token: str) -> bool:
    head = token.partition("/")[0]
    return ":" in head or "/" in token or all(c.isdigit() or c == "." for c in head)


def parse_rules(text: str, variable: str = ENV_DESTINATION) -> AccessRules:
    """Parse the variable's text, or raise `config.ConfigError` naming the first bad line."""
    rules: list[Rule] = []
    rest_line: int | None = None
    for number, raw in enumerate(config.split_lines(text), start=1):
        stripped = config.strip_space(raw)
        if not stripped or stripped.startswith("#"):
            continue
        entry = config.strip_space(stripped.split("#", 1)[0])
        if not entry.isascii() or not entry.isprintable() or " " in entry or "\t" in entry:
            raise _refuse(
                variable, number, stripped,
                f"one destination a line, printable ASCII without spaces; expected {SYNTAX}",
            )
        if rest_line is not None:
            raise _refuse(
                variable, number, stripped,
                f"an entry after the wildcard on line {rest_line}; '*' allows everything "
                "else and must be the last line",
            )
        if entry == "*":
            rest_line = number
            continue
        action = Action.ALLOW
        if entry.startswith("!"):
            action, entry = Action.DENY, entry[1:]
        if not entry or entry == "*":
            raise _refuse(
                variable, number, stripped,
                "'!' needs a destination after it ('!*' would deny everything else, which "
                "is already what happens without a last line '*')",
            )
        if entry.startswith("*."):
            kind = Kind.DOMAIN
            value = _parse_name(entry[2:], variable, number, stripped, domain=True)
        elif "*" in entry:
            raise _refuse(
                variable, number, stripped,
                f"'*' only as '*.<domain>' or alone on the last line; expected {SYNTAX}",
            )
        elif _looks_like_address(entry):
            kind, value = Kind.NETWORK, _parse_network(entry, variable, number, stripped)
        else:
            kind, value = Kind.HOST, _parse_name(entry, variable, number, stripped)
        rules.append(Rule(number, stripped, action, kind, value))
    if not rules and rest_line is None:
        raise config.ConfigError(
            variable, f"has no destinations; write one a line: {SYNTAX}"
        )
    return AccessRules(tuple(rules), rest_line is not None, rest_line)


def read_rules_text(
    env: Mapping[str, str], read_text: Callable[[str], str]
) -> tuple[str, str]:
    """(the variable or file for messages, the rules' text) from the environment.

    ``read_text`` reads the file (``kernel.files``: bounded, regular files only).
    """
    path = config.strip_space(env.get(ENV_DESTINATION_FILE, ""))
    inline = env.get(ENV_DESTINATION)
    if path:
        if inline is not None and config.strip_space(inline):
            raise config.ConfigError(
                ENV_DESTINATION_FILE, f"is set together with {ENV_DESTINATION}; set only one"
            )
        return path, read_text(path)
    if inline is None or not config.strip_space(inline):
        raise config.ConfigError(
            ENV_DESTINATION, f"is not set; set it (or {ENV_DESTINATION_FILE}) to lines of {SYNTAX}"
        )
    return ENV_DESTINATION, inline


def parse_port(env: Mapping[str, str]) -> int:
    """The proxy's port (`ENV_PORT`, default 8080)."""
    text = config.strip_space(env.get(ENV_PORT, str(DEFAULT_PORT)))
    port = config.ascii_number(text)
    if port is None or not 1 <= port <= 65535:
        raise config.ConfigError(
            ENV_PORT, f"invalid port {config.clip(text)!r}; expected a number from 1 to 65535"
        )
    return port


def _acl(rule: Rule) -> str:
    name = f"dest{rule.line}"
    if rule.kind is Kind.NETWORK:
        return f"acl {name} dst {rule.value}"
    # -n: decide on the name the client asked for, never on a reverse lookup of an address.
    prefix = "." if rule.kind is Kind.DOMAIN else ""
    return f"acl {name} dstdomain -n {prefix}{rule.value}"


def render_access(rules: AccessRules) -> str:
    """The ``acl``/``http_access`` lines: what ``EGRESS_HTTP_PROXY_MODE=unit-test`` prints.

    Each decision is tagged with an ``annotate_transaction`` ACL (it always matches, after
    the rule's own ACL did) so that the access log names the line that decided.
    """
    out: list[str] = [
        "# never the pod itself or link-local services (cloud metadata), whatever the rules say",
        f"acl {GUARD_ACL} dst {' '.join(GUARDED)}",
        f"acl note_{GUARD_ACL} annotate_transaction {NOTE_KEY}={GUARD_RULE}",
        f"http_access deny {GUARD_ACL} note_{GUARD_ACL}",
    ]
    for rule in rules.rules:
        note = f"note{rule.line}"
        out += [
            "",
            f"# line {rule.line}: {rule.text}",
            _acl(rule),
            f"acl {note} annotate_transaction {NOTE_KEY}={rule.label}",
            f"http_access {rule.action.value} dest{rule.line} {note}",
        ]
    rest = Action.ALLOW if rules.allow_rest else Action.DENY
    why = f"line {rules.rest_line}: *" if rules.allow_rest else "no last line '*'"
    out += [
        "",
        f"# everything else ({why})",
        f"acl note_{DEFAULT_RULE} annotate_transaction {NOTE_KEY}={DEFAULT_RULE}",
        f"http_access {rest.value} note_{DEFAULT_RULE}",
    ]
    return "\n".join(out) + "\n"


# The access log squid sends us (udp): one line a request, fields separated by spaces;
# `%note{rule}` last ("-" when no rule decided, e.g. a request squid could not parse).
LOG_FORMAT = "%ts.%03tu %>a %rm %>Hs %Ss %ru %note{" + NOTE_KEY + "}"


def render_squid(rules: AccessRules, *, port: int, log_port: int, ipv6: bool = True) -> str:
    """A whole squid.conf: a forwarding proxy on ``port`` with nothing but these rules.

    Like upstream's: no cache, no pid file, fast shutdown. Beyond it: the access log goes
    to the supervisor over loopback UDP (it counts and logs decisions by rule), the proxy
    does not announce itself (no Via, no X-Forwarded-For: the far side learns nothing about
    the pod network), and squid's own log goes to standard error.
    """
    listen = [f"http_port {port}"] if ipv6 else [f"http_port 0.0.0.0:{port}"]
    head = [
        "# egress-router HTTP proxy: generated from the access rules, do not edit",
        *listen,
        "cache deny all",
        "cache_mem 8 MB",
        "pid_filename none",
        "shutdown_lifetime 0 seconds",
        "cache_log stdio:/dev/stderr",
        "cache_store_log none",
        "logfile_rotate 0",
        "debug_options ALL,1",
        "coredump_dir none",
        "pinger_enable off",
        "via off",
        "forwarded_for delete",
        "httpd_suppress_version_string on",
        # Error pages name this, not the pod; and squid needs no reverse lookup of itself.
        "visible_hostname egress-router",
        f"logformat egress {LOG_FORMAT}",
        f"access_log udp://127.0.0.1:{log_port} logformat=egress buffer-size=1bytes",
    ]
    return "\n".join(head) + "\n" + render_access(rules)


@dataclass(frozen=True)
class LogEntry:
    """One decision from squid's access log (`LOG_FORMAT`)."""

    client: str
    method: str
    status: int
    result: str
    url: str
    rule: str

    @property
    def decided(self) -> bool:
        """Whether the rules judged a request: not a connection that sent none (a probe's)."""
        return self.status != 0 and not self.result.startswith("NONE")

    @property
    def denied(self) -> bool:
        """Squid's TCP_DENIED (403 from http_access)."""
        return self.result.startswith("TCP_DENIED")


def parse_log_line(line: str) -> LogEntry | None:
    """A line of `LOG_FORMAT` (as squid's udp module sends it), or None for anything else."""
    parts = line.strip().split(" ")
    if len(parts) != 7:
        return None
    _, client, method, status, result, url, rule = parts
    code = config.ascii_number(status)
    if code is None:
        return None
    return LogEntry(client, method, code, result.split("/", 1)[0], url, rule)
