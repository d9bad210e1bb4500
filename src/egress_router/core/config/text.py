"""The error every configuration parser raises, and the lexical rules they share.

Numbers, whitespace, line splitting, interface names and enumerated choices are judged the
same way for every variable, file and CNI field: ASCII only, bounded, with a message that
shows the offending text cut to a readable length.
"""

from __future__ import annotations

import enum
import re
from typing import TypeVar

# Interface names: the kernel's dev_valid_name() (1 to 15 bytes, IFNAMSIZ 16 with the
# NUL; not "." or ".."; no '/', ':' or whitespace), narrowed to what every consumer carries
# verbatim: nft strings ('"' ends one, '*' is a wildcard), iptables-restore tokens ('+' is
# a wildcard, quotes and '!' are syntax), ip(8) arguments (a leading '-' is an option).
IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")
IFNAME_MAX_BYTES = 15
IFNAME_CHARS = "ASCII letters, digits, '_', '-' and '.' (not first), at most 15"
# RFC 1123 labels; with re.fullmatch, so that no trailing newline slips through ("$" would).
HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# Every number is ASCII digits: int() and float() also take Unicode digits ('\u0661'),
# '_' separators, 'nan' and 'inf'. Nine digits bound int()'s work and every range we use.
_DIGITS = re.compile(r"[0-9]{1,9}")
_DECIMAL = re.compile(r"[0-9]{1,9}(?:\.[0-9]{0,9})?|\.[0-9]{1,9}")
# Only ASCII whitespace is trimmed: str.strip() would also eat U+2028, U+00A0 and friends.
_SPACE = " \t\r\n"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


class ConfigError(ValueError):
    """A configuration the router refuses, before touching anything.

    ``variable`` names the input (an environment variable, a file, a CNI
    field), ``line`` the 1-based line of a multi-line value (or None), and
    ``text`` the offending text as the user wrote it.
    """

    def __init__(
        self, variable: str, cause: str, *, line: int | None = None, text: str | None = None
    ) -> None:
        self.variable = variable
        self.cause = cause
        self.line = line
        self.text = text
        where = variable if line is None else f"{variable} line {line}"
        shown = "" if text is None else f" {clip(text)!r}"
        super().__init__(f"cannot parse {where}{shown}: {cause}")


def clip(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters for a message (a line may be megabytes long)."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


def describe_char(ch: str) -> str:
    """A character as a message shows it: ``'"' (U+0022)``, ``U+000A (a control character)``."""
    code = f"U+{ord(ch):04X}"
    if ch.isascii() and ch.isprintable():
        return f"{ch!r} ({code})"
    if not ch.isprintable():
        return f"{code} (a control or invisible character)"
    return f"{ch!r} ({code}, not ASCII)"


def ascii_number(text: str) -> int | None:
    """``text`` as a whole number when it is 1 to 9 ASCII digits (nothing else), else None."""
    return int(text) if _DIGITS.fullmatch(text) else None


def ascii_decimal(text: str) -> float | None:
    """``text`` as a number when it is ASCII digits with an optional fraction, else None."""
    return float(text) if _DECIMAL.fullmatch(text) else None


def strip_space(text: str) -> str:
    """``text`` without leading and trailing ASCII whitespace (and nothing else)."""
    return text.strip(_SPACE)


def split_lines(text: str) -> list[str]:
    """Lines as an editor numbers them: split at LF only (CRLF tolerated).

    ``str.splitlines`` also splits at VT, FF, FS, GS, RS, NEL, U+2028 and U+2029,
    which would make our line numbers disagree with the file's.
    """
    return [line.removesuffix("\r") for line in text.split("\n")]


def interface_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an interface name for the router (None: it can)."""
    if not name:
        return f"it is empty; expected a name such as eth0 ({IFNAME_CHARS})"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > IFNAME_MAX_BYTES:
        return (
            f"it is {size} bytes long and the kernel allows at most {IFNAME_MAX_BYTES} "
            "(IFNAMSIZ); use the interface's real name"
        )
    if name in (".", ".."):
        return f"the kernel refuses '.' and '..' as interface names; expected {IFNAME_CHARS}"
    for ch in name:
        if ch in "/:" or ch in " \t\n\v\f\r":
            return (
                f"it contains {describe_char(ch)}, which the kernel refuses in an interface "
                f"name; expected {IFNAME_CHARS}"
            )
    for index, ch in enumerate(name):
        if not (ch.isascii() and (ch.isalnum() or ch in "_.-")) or (index == 0 and ch in ".-"):
            where = "at the start" if index == 0 and ch in ".-" else ""
            return (
                f"it contains {describe_char(ch)}{' ' + where if where else ''}, which the "
                f"ruleset and ip(8) cannot carry verbatim; rename the interface to "
                f"{IFNAME_CHARS}"
            )
    assert IFNAME.fullmatch(name), name
    return None



def split_list(text: str) -> list[str]:
    """A comma-separated value's parts, trimmed, empty parts dropped."""
    return [strip_space(part) for part in text.split(",") if strip_space(part)]


_E = TypeVar("_E", bound=enum.Enum)


def parse_choice(kind: type[_E], text: str, variable: str) -> _E:
    try:
        return kind(strip_space(text).lower())
    except ValueError:
        choices = ", ".join(repr(m.value) for m in kind)
        raise ConfigError(
            variable, f"unknown value {clip(text)!r}; expected one of {choices}"
        ) from None


def parse_ifname(text: str, variable: str) -> str:
    """An interface name the kernel accepts and the ruleset carries verbatim."""
    problem = interface_name_problem(text)
    if problem is not None:
        raise ConfigError(variable, f"invalid interface name {clip(text)!r}: {problem}")
    return text


def parse_bool(text: str, variable: str) -> bool:
    value = strip_space(text).lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(variable, f"invalid value {clip(text)!r}; expected true or false")

