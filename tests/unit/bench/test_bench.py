"""The benchmark's pure parts: workload, upstream-style ruleset, parsers, statistics, reports.

The benchmark itself runs on demand (``python -m bench data-path``); these tests
pin down what it computes from tool output, so a figure in the report can be
trusted without re-running it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root: bench/

from bench import (
    ablation,
    baseline,
    capacity,
    flowtable,
    harness,
    parsers,
    report,
    results,
    run,
    stats,
    upstream,
    workload,
)
from bench.workload import DataPath, Figure, Unit

from egress_router.core import config, ruleset

# ---------------------------------------------------------------- workload


def test_destination_text_puts_the_measured_rule_last_after_fillers_of_its_protocol() -> None:
    text = workload.destination_text(4, Figure.UDP_RR)
    parsed = config.parse_destinations(text)
    assert [(r.port, r.proto.value, str(r.address)) for r in parsed.rules] == [
        (20000, "udp", "203.0.113.26"),
        (20001, "udp", "203.0.113.26"),
        (20002, "udp", "203.0.113.26"),
        (11111, "udp", "203.0.113.25"),
    ]


def test_destination_text_of_one_rule_is_only_the_measured_rule() -> None:
    assert workload.destination_text(1, Figure.CONN) == "8080 tcp 203.0.113.25\n"


def test_ten_thousand_rules_parse_and_keep_clear_of_every_service_port() -> None:
    parsed = config.parse_destinations(workload.destination_text(10000, Figure.THROUGHPUT))
    assert len(parsed.rules) == 10000
    service_ports = {s.port for s in workload.SERVICES.values()}
    assert not service_ports & {r.port for r in parsed.rules[:-1]}


@pytest.mark.parametrize("count", [0, -1, workload.MAX_RULES + 1])
def test_destination_text_refuses_impossible_counts(count: int) -> None:
    with pytest.raises(ValueError, match=f"cannot build a rule set of {count} rules"):
        workload.destination_text(count, Figure.CONN)


def test_plan_measures_connections_at_every_count_and_flows_at_flow_counts() -> None:
    units = workload.plan_units([1, 100, 10000], [1, 10000])
    nft = [u for u in units if u.path is DataPath.NFTABLES]
    assert sorted(u.rules or 0 for u in nft if u.figure is Figure.CONN) == [1, 100, 10000]
    assert sorted(u.rules or 0 for u in nft if u.figure is Figure.THROUGHPUT) == [1, 10000]
    forward = [u for u in units if u.path is DataPath.FORWARD]
    assert len(forward) == 2 * len(Figure)  # the baseline twice a round
    assert all(u.rules is None for u in units if u.path is DataPath.DIRECT)


def test_round_order_is_a_reproducible_permutation_that_changes_between_rounds() -> None:
    units = workload.plan_units([1, 100, 1000, 10000], [1, 10000])
    first = workload.round_order(units, seed=6, round_index=0)
    assert sorted(first, key=lambda u: u.key) == sorted(units, key=lambda u: u.key)
    assert first == workload.round_order(units, seed=6, round_index=0)
    assert first != workload.round_order(units, seed=6, round_index=1)


# ---------------------------------------------------------------- upstream-style ruleset

SEED = "80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n53 udp 203.0.113.25\n203.0.113.27\n"


def test_upstream_ruleset_is_what_egress_router_sh_generates() -> None:
    text = upstream.render_upstream(config.parse_destinations(SEED), IPv4Address("192.168.12.99"))
    assert text == (
        "table ip nat {\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        "  }\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        "  }\n"
        "}\n"
        "flush table ip nat\n"
        'add rule ip nat prerouting iifname "eth0" tcp dport 80 dnat to 203.0.113.25\n'
        'add rule ip nat prerouting iifname "eth0" tcp dport 8080 dnat to 203.0.113.26:80\n'
        'add rule ip nat prerouting iifname "eth0" udp dport 53 dnat to 203.0.113.25\n'
        'add rule ip nat prerouting iifname "eth0" dnat to 203.0.113.27\n'
        'add rule ip nat postrouting oifname "macvlan0" snat to 192.168.12.99\n'
    )


def test_upstream_ruleset_is_one_linear_rule_per_port_in_configuration_order() -> None:
    text = upstream.render_upstream(
        config.parse_destinations(workload.destination_text(1000, Figure.CONN)),
        IPv4Address("192.168.12.99"),
    )
    dnat = [line for line in text.splitlines() if "prerouting iifname" in line]
    assert len(dnat) == 1000
    assert dnat[0].endswith("tcp dport 20000 dnat to 203.0.113.26")
    assert dnat[-1].endswith("tcp dport 8080 dnat to 203.0.113.25")


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ("80 tcp 2001:db8:113::25\n", "is not IPv4 TCP/UDP"),
        ("5000 sctp 203.0.113.25\n", "is not IPv4 TCP/UDP"),
        ("80 tcp 203.0.113.25\n2001:db8:113::27\n", "fallback 2001:db8:113::27 is not IPv4"),
    ],
)
def test_upstream_ruleset_refuses_what_upstream_cannot_express(rules: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        upstream.render_upstream(config.parse_destinations(rules), IPv4Address("192.168.12.99"))


# ---------------------------------------------------------------- parsers

AB_OUTPUT = """\
Server Software:        nginx/1.22.1
Server Hostname:        10.128.0.2
Server Port:            8080

Concurrency Level:      8
Time taken for tests:   2.000 seconds
Complete requests:      22273
Failed requests:        3
Non-2xx responses:      2
Total transferred:      3764137 bytes
Requests per second:    11136.50 [#/sec] (mean)
Time per request:       0.718 [ms] (mean)
"""


def test_parse_ab_reads_rate_and_failures() -> None:
    assert parsers.parse_ab(AB_OUTPUT) == parsers.AbResult(
        complete=22273, failed=3, non_2xx=2, rate=11136.50
    )


def test_parse_ab_without_a_rate_is_an_error_naming_ab() -> None:
    with pytest.raises(parsers.ToolOutputError, match="requests per second from ab"):
        parsers.parse_ab("Complete requests: 5\nFailed requests: 0\n")


def test_parse_ab_percentiles_reads_milliseconds_per_percent() -> None:
    csv = "Percentage served,Time in ms\n0,0.105\n50,0.128\n99,0.245\n100,0.298\n"
    assert parsers.parse_ab_percentiles(csv) == {0: 0.105, 50: 0.128, 99: 0.245, 100: 0.298}
    with pytest.raises(parsers.ToolOutputError):
        parsers.parse_ab_percentiles("Percentage served,Time in ms\n0,0.1\n")


SOCKPERF_OUTPUT = """\
sockperf: [Total Run] RunTime=2.000 sec; Warm up time=400 msec; SentMessages=29680; \
ReceivedMessages=29679
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=1.550 sec; SentMessages=23139; ReceivedMessages=23139
sockperf: \x1b[2;35m====> avg-rtt=66.967 (std-dev=28.028)\x1b[0m
sockperf: ---> percentile 99.900 =  139.585
sockperf: ---> percentile 99.000 =   93.467
sockperf: ---> percentile 90.000 =   71.815
sockperf: ---> percentile 50.000 =   66.037
sockperf: ---> <MIN> observation =   28.151
"""


def test_parse_sockperf_uses_the_valid_duration_and_percentiles() -> None:
    result = parsers.parse_sockperf(SOCKPERF_OUTPUT)
    assert result.rate == pytest.approx(23139 / 1.550)
    assert (result.p50_us, result.p99_us) == (66.037, 93.467)


def test_parse_sockperf_without_a_valid_duration_fails() -> None:
    with pytest.raises(parsers.ToolOutputError, match="valid duration"):
        parsers.parse_sockperf("sockperf: ERROR: Failed to connect\n")


def test_parse_iperf3_reads_received_bits_and_errors() -> None:
    doc = {"end": {"sum_sent": {"bits_per_second": 2.5e10, "retransmits": 7},
                   "sum_received": {"bits_per_second": 2.4e10}}}
    assert parsers.parse_iperf3(json.dumps(doc)) == parsers.IperfResult(2.4e10, 7)
    with pytest.raises(parsers.ToolOutputError, match="iperf3 failed: unable to connect"):
        parsers.parse_iperf3(json.dumps({"start": {}, "error": "unable to connect"}))
    with pytest.raises(parsers.ToolOutputError, match="cannot read iperf3's JSON"):
        parsers.parse_iperf3("")


def test_parse_stages_loadavg_and_status() -> None:
    stderr = ("egress-router: DEBUG: check nftables ruleset: 0.300s\n"
              "egress-router: DEBUG: apply nftables ruleset: 0.218s\n"
              "egress-router: INFO: egress router ready: 192.168.12.99/24\n")
    assert parsers.parse_stages(stderr) == {
        "check nftables ruleset": 0.300, "apply nftables ruleset": 0.218}
    assert parsers.parse_loadavg("1.08 0.73 0.47 3/120 4242\n") == (1.08, 0.73, 0.47)
    assert parsers.parse_status_kib("Name:\tpython3\nVmHWM:\t   33180 kB\nVmRSS:\t   33100 kB\n") \
        == {"VmHWM": 33180, "VmRSS": 33100}


# ---------------------------------------------------------------- statistics


def sample(path: str, rules: int | None, figure: str, rnd: int, value: float | None,
           **extra: Any) -> stats.Sample:
    return stats.Sample(rnd, path, rules, figure, value, **extra)


def test_summary_is_min_median_max() -> None:
    assert stats.Summary.of([3.0, 1.0, 2.0, 10.0]) == stats.Summary(1.0, 2.5, 10.0, 4)
    assert stats.Summary.of([]) is None


def test_ratios_pair_rounds_and_average_a_repeated_baseline() -> None:
    samples = [
        sample("forward", None, "conn", 0, 100.0),
        sample("forward", None, "conn", 0, 300.0),  # round 0 baseline: mean 200
        sample("forward", None, "conn", 1, 50.0),
        sample("nftables", 1, "conn", 0, 180.0),
        sample("nftables", 1, "conn", 1, 45.0),
        sample("nftables", 1, "conn", 2, 99.0),  # no baseline in round 2: left out
    ]
    assert stats.paired_ratios(samples, ("nftables", 1, "conn"), ("forward", None, "conn")) \
        == [pytest.approx(0.9), pytest.approx(0.9)]


def test_summarize_counts_failures_and_ignores_them_in_values() -> None:
    samples = [
        sample("forward", None, "conn", 0, 100.0),
        sample("upstream", 10000, "conn", 0, 20.0, p50_us=500.0, p99_us=900.0),
        sample("upstream", 10000, "conn", 1, None, error="ab failed"),
    ]
    (fwd, up) = stats.summarize(samples)
    assert fwd.ratio == stats.Summary(1.0, 1.0, 1.0, 1)
    assert up.value == stats.Summary(20.0, 20.0, 20.0, 1)
    assert up.ratio == stats.Summary(0.2, 0.2, 0.2, 1)
    assert (up.p50_us, up.errors) == (stats.Summary(500.0, 500.0, 500.0, 1), 1)


def _target_samples(nft_high: float, tput: float) -> list[stats.Sample]:
    out = []
    for rnd in range(3):
        out += [
            sample("forward", None, "conn", rnd, 100.0),
            sample("nftables", 1, "conn", rnd, 95.0),
            sample("nftables", 10000, "conn", rnd, nft_high),
            sample("forward", None, "throughput", rnd, 10e9),
            sample("nftables", 10000, "throughput", rnd, tput),
        ]
    return out


def test_targets_met() -> None:
    targets = stats.evaluate_targets(_target_samples(90.0, 9.5e9), {10000: [0.3, 0.4, 0.6]},
                                     {10000: [1.0, 1.2]})
    assert [t.measured for t in targets] == pytest.approx([90 / 95, 0.9, 0.95, 0.4, 1.1])
    assert [t.met for t in targets] == [True] * 5
    assert targets[0].name == "nftables new-connection rate, 10,000 rules vs 1 rule(s)"


def test_targets_missed() -> None:
    targets = stats.evaluate_targets(_target_samples(70.0, 8e9), {10000: [0.6]}, {10000: [1.6]})
    assert [t.met for t in targets] == [False, False, False, False, False]
    assert stats.evaluate_targets([], {}, {}) == []


# ---------------------------------------------------------------- reports


def _doc() -> dict[str, Any]:
    samples = _target_samples(90.0, 9.5e9) + [
        sample("upstream", 10000, "conn", r, 20.0, p50_us=600.0, p99_us=800.0) for r in range(3)
    ]
    return {
        "started": "2026-11-24 18:29 UTC",
        "duration_s": 840.0,
        "host": {"nproc": 2, "kernel": "6.1", "loadavg_start": [0.5, 0.4, 0.3],
                 "loadavg_end": [1.5, 1.0, 0.8],
                 "load1": {"min": 0.5, "median": 1.0, "max": 2.0, "n": 15}},
        "settings": {"quick": False, "rounds": 3, "command": "python -m bench data-path"},
        "samples": [dataclasses.asdict(s) for s in samples],
        "stages": [{"path": "nftables", "rules": 10000, "apply_s": 0.41,
                    "stages": {"check nftables ruleset": 0.2, "apply nftables ruleset": 0.21}}],
        "init": [{"path": "nftables", "rules": 10000, "to_rules_s": 0.9, "to_ready_s": 1.1,
                  "to_exit_s": 1.2}],
        "upstream_apply": [{"rules": 10000, "seconds": 0.25}],
        "memory": [{"command": "egress-router (legacy mode)", "rules": 10000,
                    "rss_kib": 40960, "hwm_kib": 45056, "pss_kib": 30720}],
        "calibration": {"runs": [{"name": "ab x2, loopback", "rate": 25000.0, "note": "x"}]},
    }


def test_conn_table_shows_rates_ratios_and_latency_per_path() -> None:
    table = report.render_conn_table(report.unit_summaries(_doc()))
    rows = table.splitlines()
    assert rows[0].startswith("| path | rules | conn/s median (min-max) | vs forwarding")
    assert "| plain forwarding (no NAT) | - | 100 (100-100) | 1.00 (1.00-1.00) |" in table
    assert "| upstream-style (rule per port) | 10,000 | 20 (20-20) | 0.20 (0.20-0.20) | 600 " \
        "| 800 |" in table
    order = [row.split("|")[1].strip() for row in rows[2:]]
    assert order == ["plain forwarding (no NAT)", "egress-router nftables",
                     "egress-router nftables", "upstream-style (rule per port)"]


def test_summary_for_the_readme_has_targets_setup_and_memory() -> None:
    text = report.render_summary(_doc())
    assert "| apply 10,000 rules (nftables check + apply), seconds | 0.410 | < 0.5 | met |" in text
    assert "| egress-router nftables | 10,000 | 0.410 | 0.200 / 0.210 | 0.900 | 1.100 | 1.200 |" \
        in text
    assert "| upstream-style (rule per port) | 10,000 | 0.250 | - |" in text
    assert "| egress-router (legacy mode) | 10,000 | 40.0 | 44.0 | 30.0 |" in text
    assert "1-minute load average min/median/max during the run 0.50 / 1.00 / 2.00" in text
    assert "25,000" in report.render_markdown(_doc())


def test_fmt_value_units() -> None:
    assert report.fmt_value(12.34e9, "throughput") == "12.3"
    assert report.fmt_value(12345.6, "conn") == "12,346"
    assert report.fmt_value(None, "conn") == "-"


def test_readme_section_is_replaced_between_markers_only() -> None:
    text = f"intro\n{report.README_BEGIN}\nold table\n{report.README_END}\noutro\n"
    assert report.replace_between_markers(text, "new table\n") == (
        f"intro\n{report.README_BEGIN}\nnew table\n{report.README_END}\noutro\n"
    )
    with pytest.raises(ValueError, match="the benchmark markers are missing"):
        report.replace_between_markers("intro\n", "new")


def test_chart_is_written(tmp_path: Path) -> None:
    out = tmp_path / "chart.png"
    report.plot(_doc(), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unit_keys_are_readable() -> None:
    assert Unit(DataPath.UPSTREAM, 10000, Figure.CONN).key == "upstream/10000/conn"
    assert Unit(DataPath.FORWARD, None, Figure.UDP_RR).key == "forward/-/udp_rr"


# ---------------------------------------------------------------- ablation

RULESET = """\
table inet egress_router {
\tset traffic_v4 {
\t\ttype inet_proto . inet_service
\t\tcounter
\t}
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tfib daddr type != local return
\t\tmeta nfproto ipv4 meta l4proto . th dport @conns_v4
\t\tmeta nfproto ipv4 dnat ip to meta l4proto . th dport map @redirect_v4
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy drop;
\t\tmeta l4proto . ct original proto-dst @traffic_v4
\t\tct state established,related accept
\t}
}
"""


def test_ablation_variants_remove_exactly_their_part() -> None:
    full_lines = RULESET.splitlines()

    def removed(text: str) -> list[str]:
        return [line.strip() for line in full_lines if line not in text.splitlines()]

    assert removed(ablation.without_fib_check(RULESET)) == ["fib daddr type != local return"]
    assert removed(ablation.without_packet_accounting(RULESET)) == [
        "meta l4proto . ct original proto-dst @traffic_v4"]
    assert removed(ablation.without_accounting(RULESET)) == [
        "meta nfproto ipv4 meta l4proto . th dport @conns_v4",
        "meta l4proto . ct original proto-dst @traffic_v4"]
    no_forward = ablation.without_chain(RULESET, "forward")
    assert "chain forward" not in no_forward and "ct state" not in no_forward
    assert no_forward.count("{") == no_forward.count("}")
    assert "chain prerouting {" in no_forward


def test_ablation_leaves_out_variants_that_remove_nothing() -> None:
    plain = "table ip t {\n\tchain prerouting {\n\t\ttype nat hook prerouting priority 0;\n\t}\n}\n"
    assert list(ablation.variants(plain)) == ["full"]
    assert list(ablation.variants(RULESET)) == [
        "full", "no-packet-accounting", "no-accounting", "no-fib", "no-forward-chain"]


def test_ablation_applies_to_the_products_own_ruleset() -> None:
    cfg = config.load_config({
        "EGRESS_SOURCE": "192.168.12.99/24", "EGRESS_GATEWAY": "192.168.12.1",
        "EGRESS_DESTINATION": "8080 tcp 203.0.113.25\n"})
    full = ruleset.render_nftables(cfg)
    no_forward = ablation.without_chain(full, "forward")
    assert "chain forward" in full and "chain forward" not in no_forward
    assert "chain postrouting" in no_forward and "chain input" in no_forward


def test_ablation_report_names_variants_and_ratios() -> None:
    samples = [
        sample("forward", None, "conn", 0, 100.0, p50_us=90.0, p99_us=150.0),
        sample("nftables:no-fib", 1, "conn", 0, 80.0, p50_us=110.0, p99_us=190.0),
        sample("forward", None, "throughput", 0, 10e9),
        sample("nftables:no-fib", 1, "throughput", 0, 9e9),
    ]
    doc = {"started": "now", "settings": {"rounds": 1},
           "variants": {"no-fib": "without the fib daddr check"},
           "samples": [dataclasses.asdict(s) for s in samples]}
    text = report.render_ablation(doc)
    assert "| nftables: without the fib daddr check | 80 | 0.80 | 110 | 190 | 9.0 | 0.90 |" in text
    assert "| plain forwarding (no NAT) | 100 | 1.00 | 90 | 150 | 10.0 | 1.00 |" in text


def test_the_baseline_golden_describes_the_benchmarks_configuration() -> None:
    """bench/golden/baseline.* (history, never regenerated) redirect what the hardened ruleset
    of the same configuration redirects: the pair measures the hardening and nothing else."""
    cfg = config.load_config({**harness.ROUTER_ENV, config.ENV_DESTINATION: run.ABLATION_RULES})
    element = re.compile(r"^\s*(tcp|udp|sctp) \. (\d+) : (\S+) \. (\d+),?$", re.M)
    today = element.findall(baseline.nftables())
    assert today and today == element.findall(ruleset.render_nftables(cfg))
    assert "ct state established,related accept" in baseline.nftables()  # before the hardening
    assert "--to-destination 203.0.113.25:5201" in baseline.iptables()
    assert baseline.iptables().endswith("COMMIT\n")


def test_hardening_report_pairs_the_rulesets_of_the_same_round() -> None:
    """Ratios come from the same round (rate: hardened / today; CPU: today / hardened)."""
    from bench import run as benchrun  # noqa: PLC0415 (imports the lab module)

    def sample(round_index: int, path: str, rate: float, cpu: float) -> dict[str, Any]:
        return {"round": round_index, "path": path, "value": rate, "load1": 1.0 + round_index,
                "detail": {"cpu_us_per_conn": cpu}}

    samples = []
    # nftables: rates 0.90, 1.00, 0.96 of today in rounds 0-2; CPU 300 against 330, 300, 310.
    for r, (today, hard, cpu_hard) in enumerate([(1000, 900, 330), (800, 800, 300),
                                                 (500, 480, 310)]):
        samples += [sample(r, "nftables:today", today, 300),
                    sample(r, "nftables:hardened", hard, cpu_hard)]
    samples += [sample(0, "iptables:today", 100, 200), sample(0, "iptables:hardened", 90, 200)]
    text = benchrun.render_hardening({"samples": samples, "settings": {"rounds": 3},
                                      "host": {"nproc": 2, "loadavg_start": [1, 2, 3],
                                               "loadavg_end": [4, 5, 6]}})
    assert ("| nftables | 3 | 800 | 800 | 0.960 (IQR 0.930-0.980, range 0.900-1.000) | "
            "0.968 (IQR 0.938-0.984, range 0.909-1.000) | met |") in text
    assert ("| iptables | 1 | 100 | 90 | 0.900 (IQR 0.900-0.900, range 0.900-0.900) | "
            "1.000 (IQR 1.000-1.000, range 1.000-1.000) | MISSED |") in text
    assert "median 1.50, 1.00-3.00; at the start 1.00 2.00 3.00, at the end 4.00 5.00 6.00" in text


def test_capacity_variants_change_one_nat_knob_of_the_products_ruleset() -> None:
    cfg = config.load_config({
        "EGRESS_SOURCE": "192.168.12.99/24,192.168.12.100/24",
        "EGRESS_GATEWAY": "192.168.12.1",
        "EGRESS_DESTINATION": "80 tcp 203.0.113.25",
    })
    text = ruleset.render_nftables(cfg)
    snat = (
        "snat ip to jhash ip saddr . th sport mod 2 map { 0 : 192.168.12.99, 1 : 192.168.12.100 }"
    )
    assert snat in text
    assert "snat ip to numgen inc mod 2 map" in capacity.variant(text, "numgen")
    assert snat + " fully-random\n" in capacity.variant(text, "fully-random")
    bare = capacity.variant(text, "no-ct-timeout")
    assert "ct timeout" not in bare and "ct timeout" in text
    assert bare.replace("\n", "") != text.replace("\n", "")
    fast = flowtable.with_flowtable(text)
    assert "flowtable fastpath {" in fast
    assert fast.index("flow add @fastpath") < fast.index("ct direction original ct status dnat")


def test_one_command_runs_every_suite_and_one_writer_writes_its_results(tmp_path: Path) -> None:
    from bench import __main__ as cli  # noqa: PLC0415

    parser = cli.parser()
    for name in cli.SUITES:
        args = parser.parse_args([name, "--out", str(tmp_path)])
        assert args.suite == name and args.out == tmp_path
    with pytest.raises(SystemExit):
        parser.parse_args(["no-such-suite"])
    outcome = results.Outcome("example", {"samples": [1, 2]}, "# Example\n",
                              also=lambda out: [out / "extra"])
    assert results.write(outcome, tmp_path) == [
        tmp_path / "example.json", tmp_path / "example.md", tmp_path / "extra"
    ]
    assert json.loads((tmp_path / "example.json").read_text()) == {"samples": [1, 2]}
    assert (tmp_path / "example.md").read_text() == "# Example\n"


def test_statistics_and_the_results_folder_are_defined_once() -> None:
    root = Path(__file__).resolve().parents[3] / "bench"
    for path in root.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        if path.name != "stats.py":
            assert "import statistics" not in text, path.name
        if path.name != "results.py":
            assert not re.search(r"^RESULTS\s*=", text, re.M), path.name
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.spread([1.0, 2.0, 3.0, 4.0, 5.0]) == (3.0, 2.0, 4.0, 1.0, 5.0)
