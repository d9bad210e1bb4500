"""The DNS proxy's forwards: upstream's grammar, validated, and HAProxy's configuration.

OpenShift's DNS proxy pod reads ``EGRESS_DNS_PROXY_DESTINATION``: one forward a line,
``<port> <host or IPv4> [<target port>]``, ``#`` comments, each local port once. Its main
container runs HAProxy in TCP mode, unprivileged: a user-space TCP proxy whose host names
are resolved through the pod's resolver and re-resolved while it runs (``hold valid 10s``),
several A records becoming several servers. Here each line is parsed into a `Forward` (IPv6
addresses too, written bare or in brackets), every bad line refused with the variable, the
line number and its text, and the configuration rendered from validated values only.

Pure: no processes, no sockets, no DNS. Running HAProxy is ``egress_router.proxy.dns``'s job.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from egress_router.core import config

ENV_DESTINATION = "EGRESS_DNS_PROXY_DESTINATION"
ENV_DESTINATION_FILE = "EGRESS_DNS_PROXY_DESTINATION_FILE"
ENV_MODE = "EGRESS_DNS_PROXY_MODE"  # upstream: "unit-test" prints the configuration
SYNTAX = "<port> <host or IP> [<target port>]"
RESOLVERS = "pod"
HOLD_VALID = 10  # seconds an answer stays valid (upstream's `hold valid 10s`)
DEFAULT_MAXCONN = 4000


def maxconn_for(nofile: int) -> int:
    """Connections HAProxy can hold with ``nofile`` descriptors (two each, some to spare)."""
    return max(16, min(DEFAULT_MAXCONN, (nofile - 64) // 2))


@dataclass(frozen=True)
class Forward:
    """One line: connections to local ``port`` go to ``target``:``target_port``."""

    line: int
    text: str
    port: int
    target: str  # an address (as ipaddress writes it) or a lower-case host name
    target_port: int
    is_name: bool

    @property
    def endpoint(self) -> str:
        host = f"[{self.target}]" if ":" in self.target else self.target
        return f"{host}:{self.target_port}"


def _target(token: str, variable: str, line: int) -> tuple[str, bool]:
    bare = token[1:-1] if token.startswith("[") and token.endswith("]") else token
    if ":" in bare or all(c.isdigit() or c == "." for c in bare):
        address = config.parse_address(bare, variable, line=line, what="target")
        problem = config.destination_problem(address)
        if problem is not None:
            raise config.ConfigError(
                variable, f"target {problem}; expected the address of a service", line=line
            )
        return str(address), False
    return config.parse_host(bare, variable, line=line, what="target").rstrip("."), True


def _port(token: str, variable: str, line: int, what: str) -> int:
    port = config.ascii_number(token)
    if port is None or not 1 <= port <= 65535:
        raise config.ConfigError(
            variable, f"invalid {what} {config.clip(token)!r}; expected a number from 1 to 65535",
            line=line,
        )
    return port


def parse_forwards(
    text: str, variable: str = ENV_DESTINATION, *, reserved: Mapping[int, str] | None = None
) -> tuple[Forward, ...]:
    """Parse the variable's text, or raise `config.ConfigError` naming the first bad line.

    ``reserved``: local ports something else of the pod listens on (port -> what).
    """
    forwards: list[Forward] = []
    claimed: dict[int, int] = {}
    for number, raw in enumerate(config.split_lines(text), start=1):
        entry = config.strip_space(raw.split("#", 1)[0])
        if not entry:
            continue
        shown = config.strip_space(raw)
        try:
            if not entry.isascii() or not entry.isprintable():
                raise config.ConfigError(
                    variable, f"printable ASCII only; expected {SYNTAX}", line=number
                )
            tokens = entry.split()
            if len(tokens) not in (2, 3):
                raise config.ConfigError(
                    variable, f"{len(tokens)} fields; expected {SYNTAX}", line=number
                )
            port = _port(tokens[0], variable, number, "port")
            target, is_name = _target(tokens[1], variable, number)
            target_port = _port(tokens[2], variable, number, "target port") if len(
                tokens
            ) == 3 else port
            if port in claimed:
                raise config.ConfigError(
                    variable, f"port {port} is already forwarded by line {claimed[port]}; "
                    "each local port forwards to one destination", line=number,
                )
            if reserved and port in reserved:
                raise config.ConfigError(
                    variable, f"port {port} is {reserved[port]}; use another local port",
                    line=number,
                )
        except config.ConfigError as err:
            raise config.ConfigError(variable, err.cause, line=number, text=shown) from None
        claimed[port] = number
        forwards.append(Forward(number, shown, port, target, target_port, is_name))
    if not forwards:
        raise config.ConfigError(variable, f"has no forwards; write one a line: {SYNTAX}")
    return tuple(forwards)


def read_forwards_text(
    env: Mapping[str, str], read_text: Callable[[str], str]
) -> tuple[str, str]:
    """(the variable or file for messages, the forwards' text) from the environment.

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


def frontend_name(forward: Forward) -> str:
    return f"port_{forward.port}"


def backend_name(forward: Forward) -> str:
    return f"line_{forward.line}"


def _nameserver(address: config.IPAddress, index: int) -> str:
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"    nameserver ns{index} {host}:53"


def render_haproxy(
    forwards: Sequence[Forward],
    *,
    nameservers: Sequence[config.IPAddress],
    servers: Mapping[str, int],
    stats_socket: str,
    ipv6: bool = True,
    maxconn: int = DEFAULT_MAXCONN,
) -> str:
    """A whole haproxy.cfg: one TCP frontend a line, one backend each.

    ``servers``: how many addresses each host name has now (upstream: that many servers
    for it, each following one record of the answer). Without ``nameservers`` no name can
    be resolved; the caller refuses that before. ``maxconn``: HAProxy needs two descriptors a
    connection and refuses to start when the process's limit cannot hold them (the caller
    derives it from its own limit).
    """
    out = [
        "# egress-router DNS proxy: generated from the forwards, do not edit",
        "global",
        f"    maxconn {maxconn}",
        f"    stats socket {stats_socket} mode 600 level admin",
        "    hard-stop-after 10s",
        "",
        "defaults",
        "    mode tcp",
        "    option redispatch",
        "    retries 3",
        "    timeout connect 10s",
        "    timeout client 1m",
        "    timeout server 1m",
        "",
    ]
    if any(f.is_name for f in forwards):
        out.append(f"resolvers {RESOLVERS}")
        out += [_nameserver(a, i) for i, a in enumerate(nameservers, start=1)]
        out += [
            "    resolve_retries 3",
            "    timeout resolve 1s",
            "    timeout retry 1s",
            f"    hold valid {HOLD_VALID}s",
            "    hold obsolete 0s",
            "    accepted_payload_size 8192",
            "",
        ]
    for forward in forwards:
        binds = [f"    bind 0.0.0.0:{forward.port}"]
        if ipv6:
            binds.append(f"    bind [::]:{forward.port} v6only")
        out += [
            f"# line {forward.line}: {forward.text}",
            f"frontend {frontend_name(forward)}",
            *binds,
            f"    default_backend {backend_name(forward)}",
            "",
            f"backend {backend_name(forward)}",
        ]
        if forward.is_name:
            count = max(1, servers.get(forward.target, 1))
            out.append(
                f"    server-template dest {count} {forward.endpoint} "
                f"resolvers {RESOLVERS} init-addr none resolve-prefer ipv4"
            )
        else:
            out.append(f"    server dest1 {forward.endpoint}")
        out.append("")
    return "\n".join(out)


def describe(forwards: Sequence[Forward]) -> str:
    """One line a forward: what ``EGRESS_DNS_PROXY_MODE=unit-test`` prints before the config."""
    return "".join(
        f"# port {f.port} -> {f.endpoint}{' (re-resolved)' if f.is_name else ''}\n"
        for f in forwards
    )


def parse_server_counts(text: str, variable: str = "EGRESS_DNS_SERVERS") -> dict[str, int]:
    """Upstream's unit-test input ``name:count;name:count``: how many addresses a name has."""
    counts: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, sep, count = item.partition(":")
        number = config.ascii_number(count.strip())
        if not sep or number is None or not 1 <= number <= 64:
            raise config.ConfigError(
                variable, f"invalid entry {config.clip(item)!r}; expected <name>:<count> "
                "(1 to 64), entries separated by ';'",
            )
        counts[name.strip().lower().rstrip(".")] = number
    return counts


def parse_nameservers(text: str) -> tuple[config.IPAddress, ...]:
    """Every ``nameserver`` address of a resolv.conf, in order (loopback included)."""
    found: list[config.IPAddress] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver" and "%" not in words[1]:
            try:
                found.append(ipaddress.ip_address(words[1]))
            except ValueError:
                continue
    return tuple(dict.fromkeys(found))
