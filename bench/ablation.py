"""Where does the router's per-connection and per-packet time go? Variants of its ruleset.

When the nftables path falls short of plain forwarding or of upstream's rules,
the question is which part of the ruleset costs what. ``python -m bench
ablation`` and ``python -m bench toll`` apply the product's own ruleset with
one part removed at a time next to the full one, the upstream-style ruleset
and plain forwarding, and measure each the same way. The variants are derived
from the product's rendered text by these pure functions, so they follow the
ruleset as it changes; a variant that no longer removes anything is reported
as such (left out) instead of silently equalling the full ruleset.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Names as the product renders them (egress_router.core.ruleset).
_CONNS_RULE = re.compile(r"@conns_v[46]\b")
_FIB_DADDR = re.compile(r"^\s*fib daddr type")
_FIB_SADDR = re.compile(r"fib saddr \. iif")
_TIMEOUT = re.compile(r"ct timeout set")
_RULE_CHECK = re.compile(
    r"^(\t\t)meta l4proto \{ [^}]* \} meta l4proto \. ct original proto-dst @traffic_v[46] accept$",
    re.M,
)


def _drop_lines(text: str, pattern: re.Pattern[str]) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not pattern.search(line))


def _without_set_counters(text: str, names: re.Pattern[str]) -> str:
    """The sets whose name matches ``names`` without their ``counter`` flag."""
    out: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        found = re.match(r"^\s*set (\S+) \{", line)
        if found:
            inside = bool(names.fullmatch(found.group(1)))
        elif inside and line.strip() == "}":
            inside = False
        elif inside and line.strip() == "counter":
            continue
        out.append(line)
    return "".join(out)


def without_packet_accounting(text: str) -> str:
    """No per-packet counting: the traffic sets lose their counters (their lookup stays)."""
    return _without_set_counters(text, re.compile(r"traffic_v[46]"))


def without_accounting(text: str) -> str:
    """No per-rule counting at all: no counters in the sets, no new-connection lookup."""
    return _drop_lines(_without_set_counters(text, re.compile(r"(traffic|conns)_v[46]")),
                       _CONNS_RULE)


def without_fib_check(text: str) -> str:
    """No ``fib daddr type != local return`` in prerouting."""
    return _drop_lines(text, _FIB_DADDR)


def without_rpfilter_lookup(text: str) -> str:
    """No reverse-path route lookup (``fib saddr . iif``); its chain stays."""
    return _drop_lines(text, _FIB_SADDR)


def without_timeout(text: str) -> str:
    """No conntrack timeout policy set on new redirected TCP connections."""
    return _drop_lines(text, _TIMEOUT)


def without_rule_check(text: str) -> str:
    """A redirected flow's packet accepted without the lookup that proves its rule still
    exists (and counts it: one lookup does both); the door before it stays."""
    return _RULE_CHECK.sub(r"\1accept", text)


def without_chain(text: str, name: str) -> str:
    """The ruleset without the chain ``name`` (its whole ``chain name { ... }`` block)."""
    out: list[str] = []
    depth = 0
    for line in text.splitlines(keepends=True):
        if depth == 0 and re.match(rf"^\s*chain {re.escape(name)} \{{", line):
            depth = 1
            continue
        if depth:
            depth += line.count("{") - line.count("}")
            continue
        out.append(line)
    return "".join(out)


VARIANTS: dict[str, tuple[str, Callable[[str], str]]] = {
    "full": ("the product's ruleset", lambda text: text),
    "no-packet-accounting": ("without per-packet counters (traffic sets)",
                             without_packet_accounting),
    "no-accounting": ("without any per-rule counters", without_accounting),
    "no-fib": ("without the fib daddr check", without_fib_check),
    "no-timeout": ("without the conntrack timeout policy", without_timeout),
    "no-rule-check": ("without the removed-rule check (and its counting lookup)",
                      without_rule_check),
    "no-forward-chain": ("without the forward chain (door, rule check, counting)",
                         lambda text: without_chain(text, "forward")),
    "no-rpfilter": ("without the reverse-path lookup (its chain stays)",
                    without_rpfilter_lookup),
    "no-antispoof": ("without the reverse-path chain", lambda text: without_chain(
        text, "antispoof")),
    "no-source-guard": ("without the egress source guard chain",
                        lambda text: without_chain(text, "source_guard")),
}


def variants(full: str) -> dict[str, str]:
    """Every variant's ruleset text; variants identical to ``full`` (nothing removed) left out."""
    out = {}
    for name, (_label, make) in VARIANTS.items():
        text = make(full)
        if name == "full" or text != full:
            out[name] = text
    return out
