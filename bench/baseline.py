"""Today's ruleset before the data-path hardening, kept as golden text for side-by-side runs.

``python -m bench hardening`` measures the new-connection rate of this ruleset next to the
product's current one in the same rounds, so the price of direction-bound state, the
reverse-path check and the egress source guard is a ratio measured under the same load, not a
comparison across runs. The texts in ``bench/golden/`` are what main rendered just before the
hardening for the benchmark's one configuration (`harness.ROUTER_ENV` with
`run.ABLATION_RULES`: IPv4, two TCP rules). They are history: never regenerated, and no longer
rendered from the product's private helpers (a change to ``core/ruleset.py`` cannot change them).
A unit test checks that they still describe the benchmark's configuration.
"""

from __future__ import annotations

from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden"


def nftables() -> str:
    """The pre-hardening ``nft -f`` transaction for the benchmark's configuration."""
    return (GOLDEN / "baseline.nft").read_text(encoding="utf-8")


def iptables() -> str:
    """The pre-hardening ``iptables-restore`` payload (IPv4) for the same configuration."""
    return (GOLDEN / "baseline.iptables").read_text(encoding="utf-8")
