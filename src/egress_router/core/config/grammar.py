"""The destination grammar: ``EGRESS_DESTINATION`` lines (upstream's, plus IPv6, SCTP, DNS names).

``<port> <proto> <address or host> [<remote port>]`` a line, then at most one fallback line
(a bare address or host) per family; ``#`` comments and blank lines anywhere. The writer of
the same grammar is `Destinations.lines` (model), so the two are kept side by side in mind:
a new rule kind changes both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from egress_router.core.config.addresses import destination_problem, parse_address, parse_host
from egress_router.core.config.model import (
    Destinations,
    Fallback,
    IPAddress,
    NamedFallback,
    NamedRule,
    PortRule,
    Proto,
)
from egress_router.core.config.text import (
    ConfigError,
    ascii_number,
    clip,
    describe_char,
    split_lines,
    strip_space,
)
from egress_router.core.config.variables import ENV_DESTINATION

RULE_SYNTAX = "<port> <proto> <ip> [<remote_port>], or a last line <ip> (the fallback)"
# A rule line (before its '#' comment) is printable ASCII and tabs: nothing else can be a
# port, protocol, address or host name, and nothing else is ever pasted into a ruleset.
_RULE_CHARS = re.compile(r"[\x20-\x7e\t]*")
_ASCII_LETTER = re.compile(r"[A-Za-z]")
def _strip_line(raw: str) -> str:
    return strip_space(raw.split("#", 1)[0])


def _check_destination(address: IPAddress, variable: str, line: int, what: str) -> None:
    problem = destination_problem(address)
    if problem is not None:
        raise ConfigError(
            variable, f"{what} {problem}; expected the address of a service", line=line
        )


def _parse_destination(text: str, variable: str, line: int, what: str) -> IPAddress:
    address = parse_address(text, variable, line=line, what=what)
    _check_destination(address, variable, line, what)
    return address


def _parse_port(token: str, variable: str, line: int, what: str) -> int:
    port = ascii_number(token)
    if port is None:
        raise ConfigError(
            variable, f"invalid {what} {clip(token)!r}; expected a number from 1 to 65535",
            line=line,
        )
    if not 1 <= port <= 65535:
        raise ConfigError(
            variable, f"{what} {port} is out of range; expected 1 to 65535", line=line
        )
    return port


def _parse_proto(token: str, variable: str, line: int) -> Proto:
    try:
        return Proto(token.lower())
    except ValueError:
        raise ConfigError(
            variable, f"unknown protocol {clip(token)!r}; expected tcp, udp or sctp", line=line
        ) from None


def _line_error(variable: str, number: int, raw: str, err: ConfigError) -> ConfigError:
    return ConfigError(variable, err.cause, line=number, text=strip_space(raw))


def _strip_host_prefix(token: str, variable: str, line: int) -> str:
    """``203.0.113.25/32`` -> ``203.0.113.25``; any other prefix length is refused."""
    address, slash, length = token.partition("/")
    if not slash:
        return token
    full = 128 if ":" in address else 32
    if length != str(full):
        raise ConfigError(
            variable,
            f"destination {clip(token)!r} is a network, not one address; write {address} "
            f"(or {address}/{full})",
            line=line,
        )
    return address


def _rule_head(
    tokens: list[str],
    variable: str,
    number: int,
    fallbacks: Mapping[int, Fallback],
    named_fallbacks: list[NamedFallback],
) -> tuple[int, Proto]:
    """Local port and protocol of a port rule, which must come before every fallback."""
    earlier = _fallback_lines(fallbacks, named_fallbacks)
    if earlier:
        raise ConfigError(
            variable,
            f"a port rule after the fallback on line {min(earlier)}; "
            "the fallback must come after all port rules",
            line=number,
        )
    return _parse_port(tokens[0], variable, number, "port"), _parse_proto(
        tokens[1], variable, number
    )


def _claim_ports(
    seen: dict[tuple[int, Proto, int], int],
    families: tuple[int, ...],
    proto: Proto,
    port: int,
    *,
    variable: str,
    number: int,
) -> None:
    """Record that line ``number`` redirects ``port``/``proto`` in ``families``; once each."""
    for family in families:
        first = seen.get((family, proto, port))
        if first is not None:
            raise ConfigError(
                variable,
                f"port {port}/{proto.value} is already redirected on line {first}; "
                "each local port may have one rule per protocol",
                line=number,
            )
    for family in families:
        seen[(family, proto, port)] = number


def _remote_port(tokens: list[str], port: int, variable: str, number: int) -> int:
    """The optional fourth field; the local port when it is absent."""
    return _parse_port(tokens[3], variable, number, "remote port") if len(tokens) == 4 else port


def parse_destinations(
    text: str, variable: str = ENV_DESTINATION, *, host_prefix: bool = False
) -> Destinations:
    """Parse destination lines (the upstream grammar, plus IPv6, SCTP and comments).

    Port rules come first; a fallback line (a bare address) may follow, at most
    one per address family. The same local port may appear once per protocol
    and family. An empty rule set is an error: the router would do nothing.
    ``host_prefix`` accepts a ``/32`` (``/128``) suffix on addresses, as
    upstream's CNI configuration writes them.
    """
    rules: list[PortRule] = []
    fallbacks: dict[int, Fallback] = {}
    seen: dict[tuple[int, Proto, int], int] = {}
    named: list[NamedRule] = []
    named_fallbacks: list[NamedFallback] = []
    interned: dict[IPAddress, IPAddress] = {}
    by_text: dict[str, IPAddress] = {}
    for number, raw in enumerate(split_lines(text), start=1):
        body = _strip_line(raw)
        if not body:
            continue
        tokens = body.split()
        try:
            if not _RULE_CHARS.fullmatch(body):
                bad = next(ch for ch in body if not _RULE_CHARS.fullmatch(ch))
                raise ConfigError(
                    variable,
                    f"contains {describe_char(bad)}; a rule holds only printable ASCII "
                    "(a comment after '#' may hold anything)",
                    line=number,
                )
            if host_prefix and len(tokens) in (1, 3, 4):
                index = 0 if len(tokens) == 1 else 2
                tokens[index] = _strip_host_prefix(tokens[index], variable, number)
            if _names_a_host(tokens):
                _add_named(
                    tokens, variable, number, seen=seen, fallbacks=fallbacks, named=named,
                    named_fallbacks=named_fallbacks,
                )
                continue
            if len(tokens) == 1:
                address = _parse_destination(tokens[0], variable, number, "fallback address")
                if named_fallbacks:
                    raise _second_fallback(variable, named_fallbacks[0].line, number)
                if address.version in fallbacks:
                    first = fallbacks[address.version].line
                    raise ConfigError(
                        variable,
                        f"a second IPv{address.version} fallback; line {first} already is the "
                        f"IPv{address.version} fallback and only one is allowed per family",
                        line=number,
                    )
                fallbacks[address.version] = Fallback(address, line=number)
                continue
            if len(tokens) not in (3, 4):
                raise ConfigError(
                    variable,
                    f"expected {RULE_SYNTAX}, got {len(tokens)} fields",
                    line=number,
                )
            port, proto = _rule_head(tokens, variable, number, fallbacks, named_fallbacks)
            # Many rules, few destinations: each address text is parsed and judged once
            # (at 10,000 rules, ipaddress's parser was a third of an edit's parse).
            found = by_text.get(tokens[2])
            if found is None:
                found = parse_address(
                    tokens[2], variable, line=number, what="destination address"
                )
                if found not in interned:
                    _check_destination(found, variable, number, "destination address")
                    interned[found] = found
                found = by_text[tokens[2]] = interned[found]
            address = found
            remote = _remote_port(tokens, port, variable, number)
            _claim_ports(
                seen, (address.version,), proto, port, variable=variable, number=number
            )
            rules.append(PortRule(port, proto, address, remote, line=number))
        except ConfigError as err:
            raise _line_error(variable, number, raw, err) from None
    if not rules and not fallbacks and not named and not named_fallbacks:
        raise ConfigError(
            variable, f"no destinations; expected at least one line: {RULE_SYNTAX}"
        )
    ordered = tuple(fallbacks[f] for f in sorted(fallbacks))
    return Destinations(tuple(rules), ordered, tuple(named), tuple(named_fallbacks))


def _names_a_host(tokens: list[str]) -> bool:
    """Whether the destination token of a rule or fallback line is meant as a DNS name.

    Anything with a letter and without ``:`` or ``/`` is; digits-and-dots and
    IPv6 text stay addresses, so their errors keep talking about addresses.
    """
    if len(tokens) not in (1, 3, 4):
        return False
    token = tokens[0] if len(tokens) == 1 else tokens[2]
    return ":" not in token and "/" not in token and _ASCII_LETTER.search(token) is not None


def _fallback_lines(fallbacks: Mapping[int, Fallback], named: list[NamedFallback]) -> list[int]:
    return [f.line for f in fallbacks.values()] + [n.line for n in named]


def _second_fallback(variable: str, first: int, number: int) -> ConfigError:
    return ConfigError(
        variable,
        f"a second fallback; line {first} already is a fallback, and a fallback given as a "
        "host name must be the only one",
        line=number,
    )


def _add_named(
    tokens: list[str],
    variable: str,
    number: int,
    *,
    seen: dict[tuple[int, Proto, int], int],
    fallbacks: Mapping[int, Fallback],
    named: list[NamedRule],
    named_fallbacks: list[NamedFallback],
) -> None:
    """Parse a rule or fallback line whose destination is a DNS name (same checks as addresses).

    The name's family is only known once it is resolved, so a named rule takes
    its local port in both families.
    """
    if len(tokens) == 1:
        host = parse_host(tokens[0], variable, line=number, what="fallback address")
        earlier = _fallback_lines(fallbacks, named_fallbacks)
        if earlier:
            raise _second_fallback(variable, min(earlier), number)
        named_fallbacks.append(NamedFallback(host, line=number))
        return
    port, proto = _rule_head(tokens, variable, number, fallbacks, named_fallbacks)
    host = parse_host(tokens[2], variable, line=number, what="destination address")
    remote = _remote_port(tokens, port, variable, number)
    # A name may resolve in either family: it claims the port in both.
    _claim_ports(seen, (4, 6), proto, port, variable=variable, number=number)
    named.append(NamedRule(port, proto, host, remote, line=number))


