"""Where does the router's per-connection and per-packet time go? Variants of its ruleset.

When the nftables path falls short of plain forwarding, the question is
which part of the ruleset costs what. ``python -m bench ablation``
applies the product's own ruleset with parts removed (per-rule accounting,
the fib check, the whole forward policy chain) next to the upstream-style
ruleset and plain forwarding, and measures each the same way as the main
run. The variants are derived from the product's rendered text by these
pure functions, so they follow the ruleset as it changes; a variant that no
longer removes anything is reported as such instead of silently equalling the
full ruleset.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Per-rule counters (sets with counters matched by every new connection or
# every forwarded packet); names as the product renders them.
_ACCOUNTING = re.compile(r"@(traffic|conns)_v[46]\b")
_TRAFFIC = re.compile(r"@traffic_v[46]\b")
_FIB = re.compile(r"^\s*fib daddr type")


def _drop_lines(text: str, pattern: re.Pattern[str]) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not pattern.search(line))


def without_accounting(text: str) -> str:
    """No per-rule counting: drop every match against the counter sets."""
    return _drop_lines(text, _ACCOUNTING)


def without_packet_accounting(text: str) -> str:
    """No per-packet counting in the forward chain (new-connection counting stays)."""
    return _drop_lines(text, _TRAFFIC)


def without_fib_check(text: str) -> str:
    """No ``fib daddr type != local return`` in prerouting."""
    return _drop_lines(text, _FIB)


def without_chain(text: str, name: str) -> str:
    """The ruleset without the base chain ``name`` (its whole ``chain name { ... }`` block)."""
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
    "no-packet-accounting": ("without per-packet counters (forward chain)",
                             without_packet_accounting),
    "no-accounting": ("without any per-rule counters", without_accounting),
    "no-fib": ("without the fib daddr check", without_fib_check),
    "no-forward-chain": ("without the forward (one-way door) chain",
                         lambda text: without_chain(text, "forward")),
}


def variants(full: str) -> dict[str, str]:
    """Every variant's ruleset text; variants identical to ``full`` (nothing removed) left out."""
    out = {}
    for name, (_label, make) in VARIANTS.items():
        text = make(full)
        if name == "full" or text != full:
            out[name] = text
    return out
