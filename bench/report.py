"""Turn a benchmark run (its JSON document) into markdown tables, a README section and a chart.

Rendering works from the saved JSON alone, so a run can be re-rendered
(``python -m bench data-path --render results.json``) and the tables tested without
a lab. Every figure is shown as a ratio against plain forwarding measured in
the same run, next to its absolute median and min-max over rounds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import stats
from bench.workload import RULE_PATHS, DataPath, Figure

README_BEGIN = "<!-- bench:results:begin (written by python -m bench data-path --update-readme) -->"
README_END = "<!-- bench:results:end -->"

_PATH_ORDER = [p.value for p in DataPath]


def _labels() -> dict[str, str]:
    return {p.value: p.label for p in DataPath}


def fmt_value(value: float | None, figure: str) -> str:
    """A figure's value in its unit: Gbit/s with one decimal, rates as whole numbers."""
    if value is None:
        return "-"
    if figure == Figure.THROUGHPUT.value:
        return f"{value / 1e9:.1f}"
    return f"{value:,.0f}"


def fmt_ratio(summary: stats.Summary | None) -> str:
    """``median (min-max)`` of ratios, two decimals."""
    if summary is None:
        return "-"
    if summary.n == 1:
        return f"{summary.median:.2f}"
    return f"{summary.median:.2f} ({summary.min:.2f}-{summary.max:.2f})"


def fmt_spread(summary: stats.Summary | None, figure: str) -> str:
    """``median (min-max)`` of values in the figure's unit."""
    if summary is None:
        return "-"
    mid = fmt_value(summary.median, figure)
    if summary.n == 1:
        return mid
    return f"{mid} ({fmt_value(summary.min, figure)}-{fmt_value(summary.max, figure)})"


def fmt_us(summary: stats.Summary | None) -> str:
    return "-" if summary is None else f"{summary.median:,.0f}"


def fmt_seconds(summary: stats.Summary | None) -> str:
    if summary is None:
        return "-"
    if summary.n == 1:
        return f"{summary.median:.3f}"
    return f"{summary.median:.3f} ({summary.min:.3f}-{summary.max:.3f})"


def _summary_from(data: Mapping[str, Any] | None) -> stats.Summary | None:
    if not data:
        return None
    return stats.Summary(
        float(data["min"]), float(data["median"]), float(data["max"]), int(data["n"])
    )


def unit_summaries(doc: Mapping[str, Any]) -> list[stats.UnitSummary]:
    """The per-unit summaries of a run document (recomputed from its samples)."""
    samples = [stats.sample_from_dict(s) for s in doc.get("samples", [])]
    return stats.summarize(samples)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _ordered(units: Sequence[stats.UnitSummary], figure: str) -> list[stats.UnitSummary]:
    mine = [u for u in units if u.figure == figure]
    return sorted(
        mine,
        key=lambda u: (
            _PATH_ORDER.index(u.path) if u.path in _PATH_ORDER else 99, u.rules or 0
        ),
    )


def _rules_cell(rules: int | None) -> str:
    return "-" if rules is None else f"{rules:,}"


def render_conn_table(units: Sequence[stats.UnitSummary]) -> str:
    """New connections per path and rule count: rate, ratio to forwarding, latency."""
    labels = _labels()
    rows = [
        [
            labels.get(u.path, u.path),
            _rules_cell(u.rules),
            fmt_spread(u.value, u.figure),
            fmt_ratio(u.ratio),
            fmt_us(u.p50_us),
            fmt_us(u.p99_us),
            str(u.errors) if u.errors else "",
        ]
        for u in _ordered(units, Figure.CONN.value)
    ]
    header = ["path", "rules", "conn/s median (min-max)", "vs forwarding", "p50 us",
              "p99 us", "failed"]
    return _table(header, rows)


def render_flow_table(units: Sequence[stats.UnitSummary]) -> str:
    """Figures of one established flow: throughput, TCP and UDP request/response."""
    labels = _labels()
    by_key = {(u.path, u.rules, u.figure): u for u in units}
    flow_figures = (Figure.THROUGHPUT.value, Figure.TCP_RR.value, Figure.UDP_RR.value)
    keys = sorted(
        {(u.path, u.rules) for u in units if u.figure in flow_figures},
        key=lambda k: (_PATH_ORDER.index(k[0]) if k[0] in _PATH_ORDER else 99, k[1] or 0),
    )
    rows = []
    for path, rules in keys:
        row = [labels.get(path, path), _rules_cell(rules)]
        for figure in flow_figures:
            u = by_key.get((path, rules, figure))
            if u is None:
                row += ["-", "-"] if figure == Figure.THROUGHPUT.value else ["-", "-", "-"]
                continue
            row += [fmt_value(u.value.median if u.value else None, figure), fmt_ratio(u.ratio)]
            if figure != Figure.THROUGHPUT.value:
                row.append(f"{fmt_us(u.p50_us)} / {fmt_us(u.p99_us)}")
        rows.append(row)
    header = ["path", "rules", "TCP Gbit/s", "vs fwd", "TCP RR/s", "vs fwd",
              "p50/p99 us", "UDP RR/s", "vs fwd", "p50/p99 us"]
    return _table(header, rows)


def render_targets(targets: Sequence[stats.Target]) -> str:
    rows = []
    for t in targets:
        measured = "-" if t.measured is None else f"{t.measured:.3f}"
        limit = f"{'>=' if t.at_least else '<'} {t.limit:g}"
        verdict = {True: "met", False: "**missed**", None: "not measured"}[t.met]
        rows.append([t.name + (f" ({t.note})" if t.note else ""), measured, limit, verdict])
    return _table(["target", "measured (median)", "limit", "result"], rows)


def targets_from(doc: Mapping[str, Any]) -> list[stats.Target]:
    """The targets judged on a run document."""
    samples = [stats.sample_from_dict(s) for s in doc.get("samples", [])]
    apply_s: dict[int, list[float]] = {}
    for entry in doc.get("stages", []):
        if entry["path"] == DataPath.NFTABLES.value and entry.get("apply_s") is not None:
            apply_s.setdefault(int(entry["rules"]), []).append(float(entry["apply_s"]))
    ready: dict[int, list[float]] = {}
    for entry in doc.get("init", []):
        if entry["path"] == DataPath.NFTABLES.value and entry.get("to_ready_s") is not None:
            ready.setdefault(int(entry["rules"]), []).append(float(entry["to_ready_s"]))
    return stats.evaluate_targets(samples, apply_s, ready)


def render_setup_table(doc: Mapping[str, Any]) -> str:
    """Time to apply N rules and init's start-to-ready, per backend and rule count."""
    labels = _labels()
    keys: list[tuple[str, int]] = []
    for entry in [*doc.get("stages", []), *doc.get("init", []), *doc.get("upstream_apply", [])]:
        key = (str(entry.get("path", DataPath.UPSTREAM.value)), int(entry["rules"]))
        if key not in keys:
            keys.append(key)
    keys.sort(key=lambda k: (_PATH_ORDER.index(k[0]) if k[0] in _PATH_ORDER else 99, k[1]))
    rows = []
    for path, rules in keys:
        stages = [e for e in doc.get("stages", []) if e["path"] == path and e["rules"] == rules]
        inits = [e for e in doc.get("init", []) if e["path"] == path and e["rules"] == rules]
        ups = [e for e in doc.get("upstream_apply", []) if e["rules"] == rules]
        if path == DataPath.UPSTREAM.value:
            apply_cell = fmt_seconds(stats.Summary.of(float(e["seconds"]) for e in ups))
            check_cell = "-"
        else:
            apply_cell = fmt_seconds(stats.Summary.of(
                float(e["apply_s"]) for e in stages if e.get("apply_s") is not None))
            medians = [
                stats.Summary.of(
                    float(e["stages"][name]) for e in stages if name in e.get("stages", {})
                )
                for name in (f"check {path} ruleset", f"apply {path} ruleset")
            ]
            check_cell = " / ".join("-" if m is None else f"{m.median:.3f}" for m in medians)

        def col(name: str, rows_: list[dict[str, Any]] = inits) -> str:
            return fmt_seconds(stats.Summary.of(
                float(e[name]) for e in rows_ if e.get(name) is not None))

        rows.append([labels.get(path, path), f"{rules:,}", apply_cell, check_cell,
                     col("to_rules_s"), col("to_ready_s"), col("to_exit_s")])
    header = ["path", "rules", "apply s (check+apply)", "check / apply s",
              "init: start to rules in place s", "start to ready s", "start to exit s"]
    return _table(header, rows)


def render_memory_table(doc: Mapping[str, Any]) -> str:
    rows = [
        [str(m["command"]), f"{int(m['rules']):,}", f"{m['rss_kib'] / 1024:.1f}",
         f"{m['hwm_kib'] / 1024:.1f}", "-" if m.get("pss_kib") is None
         else f"{m['pss_kib'] / 1024:.1f}"]
        for m in doc.get("memory", [])
    ]
    return _table(["waiting process", "rules", "RSS MiB", "peak RSS MiB", "PSS MiB"], rows)


def render_calibration(doc: Mapping[str, Any]) -> str:
    cal = doc.get("calibration") or {}
    if not cal:
        return "(no calibration in this run)\n"
    rows = [[str(c["name"]), f"{float(c['rate']):,.0f}", str(c.get("note", ""))]
            for c in cal.get("runs", [])]
    return _table(["client (new connections)", "conn/s", "what it shows"], rows)


def _load_line(doc: Mapping[str, Any]) -> str:
    host = doc.get("host", {})
    load = _summary_from(host.get("load1"))
    start = host.get("loadavg_start") or ["?"]
    end = host.get("loadavg_end") or ["?"]
    spread = "-" if load is None else f"{load.min:.2f} / {load.median:.2f} / {load.max:.2f}"
    return (
        f"{host.get('nproc', '?')} CPUs, kernel {host.get('kernel', '?')}; 1-minute load "
        f"average min/median/max during the run {spread} (start {start[0]}, end {end[0]})"
    )


def render_summary(doc: Mapping[str, Any]) -> str:
    """The compact summary for the README: targets, new connections, flows, setup."""
    units = unit_summaries(doc)
    settings = doc.get("settings", {})
    parts = [
        f"Run of {doc.get('started', '?')} ({'quick' if settings.get('quick') else 'full'}: "
        f"{settings.get('rounds', '?')} rounds, {doc.get('duration_s', 0):.0f} s). "
        f"{_load_line(doc)}. Ratios are against plain forwarding measured in the same round "
        "(median, min-max over rounds).\n",
        render_targets(targets_from(doc)),
        "New connections (connect, one HTTP request, close; `ab` without keep-alive; "
        "latency of one connection at a time):\n",
        render_conn_table(units),
        "One established flow (iperf3; sockperf ping-pong, round-trip p50/p99):\n",
        render_flow_table(units),
        "Setting up (median, min-max):\n",
        render_setup_table(doc),
    ]
    if doc.get("memory"):
        parts += ["Resident memory of the waiting process:\n", render_memory_table(doc)]
    return "\n".join(parts)


def render_markdown(doc: Mapping[str, Any]) -> str:
    """The full report written next to the JSON."""
    settings = doc.get("settings", {})
    parts = [
        "# egress-router data-path benchmark\n",
        f"Command: `{settings.get('command', 'python -m bench data-path')}`\n",
        render_summary(doc),
        "## Is the client the bottleneck?\n",
        render_calibration(doc),
        "## Settings\n",
        "```\n" + "\n".join(f"{k}: {v}" for k, v in sorted(settings.items())) + "\n```\n",
    ]
    notes = doc.get("notes") or []
    if notes:
        parts += ["## Notes\n", "\n".join(f"- {n}" for n in notes) + "\n"]
    return "\n".join(parts)


def render_ablation(doc: Mapping[str, Any]) -> str:
    """The ablation run: each ruleset variant's new-connection rate, latency and throughput."""
    units = unit_summaries(doc)
    by_key = {(u.path, u.figure): u for u in units}
    described = {"forward": DataPath.FORWARD.label, "upstream": DataPath.UPSTREAM.label,
                 **{f"nftables:{k}": f"nftables: {v}" for k, v in doc.get("variants", {}).items()}}
    rows = []
    for path in dict.fromkeys(u.path for u in units):
        conn = by_key.get((path, Figure.CONN.value))
        tput = by_key.get((path, Figure.THROUGHPUT.value))
        rows.append([
            described.get(path, path),
            fmt_spread(conn.value if conn else None, Figure.CONN.value),
            fmt_ratio(conn.ratio if conn else None),
            fmt_us(conn.p50_us if conn else None), fmt_us(conn.p99_us if conn else None),
            fmt_spread(tput.value if tput else None, Figure.THROUGHPUT.value),
            fmt_ratio(tput.ratio if tput else None),
        ])
    rows.sort(key=lambda r: r[0])
    settings = doc.get("settings", {})
    return (
        f"# Where the time goes: ruleset ablation ({doc.get('started', '?')}, "
        f"{settings.get('rounds', '?')} rounds)\n\n"
        "Each variant is the product's nftables ruleset (2 rules) with one part removed, applied "
        "with `nft -f`; ratios against plain forwarding in the same round.\n\n"
        + _table(["ruleset", "conn/s median (min-max)", "vs forwarding", "conn p50 us",
                  "conn p99 us", "TCP Gbit/s", "vs forwarding"], rows)
    )


def replace_between_markers(text: str, body: str, begin: str = README_BEGIN,
                            end: str = README_END) -> str:
    """``text`` with everything between the two marker lines replaced by ``body``.

    Raises ``ValueError`` if the markers are missing or out of order, so a
    README without them is never silently left stale.
    """
    pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.DOTALL)
    if begin not in text or end not in text or text.index(begin) > text.index(end):
        raise ValueError(
            "cannot update the README: the benchmark markers are missing; add the lines "
            f"{begin!r} and {end!r} where the results belong"
        )
    return pattern.sub(lambda _: f"{begin}\n{body.rstrip()}\n{end}", text, count=1)


def plot(doc: Mapping[str, Any], out: Path) -> None:
    """The PNG chart: new-connection rate against rule count per path, and its ratio."""
    # Imported here: rendering tables must not need matplotlib (or its start-up time).
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    units = [u for u in unit_summaries(doc) if u.figure == Figure.CONN.value]
    labels = _labels()
    fig, (ax_rate, ax_ratio) = plt.subplots(1, 2, figsize=(12, 4.8))
    counts = sorted({u.rules for u in units if u.rules is not None})
    for path in RULE_PATHS:
        mine = sorted(
            (u for u in units if u.path == path.value and u.value is not None
             and u.rules is not None),
            key=lambda u: u.rules or 0,
        )
        if not mine:
            continue
        xs = [u.rules for u in mine]
        for ax, attr in ((ax_rate, "value"), (ax_ratio, "ratio")):
            pts = [(x, getattr(u, attr)) for x, u in zip(xs, mine, strict=True)
                   if getattr(u, attr) is not None]
            if not pts:
                continue
            med = [s.median for _, s in pts]
            err = [[s.median - s.min for _, s in pts], [s.max - s.median for _, s in pts]]
            ax.errorbar([x for x, _ in pts], med, yerr=err, marker="o", capsize=3,
                        label=labels[path.value])
    for path, style in ((DataPath.FORWARD, "--"), (DataPath.DIRECT, ":")):
        base = next((u for u in units if u.path == path.value), None)
        if base is None or base.value is None or not counts:
            continue
        ax_rate.axhline(base.value.median, linestyle=style, color="gray",
                        label=f"{labels[path.value]} (median)")
        ax_rate.axhspan(base.value.min, base.value.max, color="gray", alpha=0.12)
        if base.ratio is not None:
            ax_ratio.axhline(base.ratio.median, linestyle=style, color="gray",
                             label=labels[path.value])
    ax_ratio.axhline(stats.CONN_VS_FORWARD_MIN, color="red", linewidth=0.8,
                     label=f"target {stats.CONN_VS_FORWARD_MIN} of forwarding")
    for ax in (ax_rate, ax_ratio):
        ax.set_xscale("log")
        if counts:
            ax.set_xticks(counts, [f"{c:,}" for c in counts])
            ax.minorticks_off()
        ax.set_xlabel("rules in the configuration (matched port last)")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    ax_rate.set_ylabel("new connections per second")
    ax_rate.set_title("new-connection rate (median, min-max over rounds)")
    ax_ratio.set_ylabel("ratio to plain forwarding, same round")
    ax_ratio.set_title("new-connection rate / plain forwarding")
    fig.suptitle(f"egress-router benchmark, {doc.get('started', '')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
