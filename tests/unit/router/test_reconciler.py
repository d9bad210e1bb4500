"""The waiting container's decisions, driven through fakes: reloads, drift, DNS, metrics."""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from egress_router.core import config, plan, ruleset
from egress_router.kernel import conntrack
from egress_router.router import fingerprint, pacing, resolve
from support.router import FakeResolver, Harness


def test_start_applies_in_one_transaction_and_is_ready(harness: Harness) -> None:
    cfg = harness.router.applied
    assert cfg is not None
    assert harness.runner.checked == []  # no `nft -c` first: the apply is checked whole
    assert harness.runner.applied == [ruleset.render_nftables(cfg)]
    assert harness.announcer.sent == [("macvlan0", "192.168.12.99")]
    assert harness.router.readiness() == (True, "ok")
    assert harness.value("egress_router_applies_total", result="ok") == 1
    assert harness.value("egress_router_config_generation") == 1
    assert harness.value("egress_router_last_apply_timestamp_seconds") == 1_700_000_000.0


def test_an_edit_is_applied_in_place_and_cuts_only_removed_rules(harness: Harness) -> None:
    old = harness.router.applied
    harness.edit("80 tcp 203.0.113.25\n9000 udp 203.0.113.27\n")
    assert harness.router.poll_file() is True
    new = harness.router.applied
    assert old is not None and new is not None
    update = ruleset.render_nftables_update(old, new)
    assert harness.runner.applied[-1] == update
    # Only the removed rule's connections are cut, by local port and NAT destination.
    # One pass for all of them (one Cut, one dump of the table).
    assert [c.targets for c in harness.tracker.cuts] == [
        {(4, "tcp", 8080, ipaddress.ip_address("203.0.113.26"), 80)}
    ]
    assert harness.value("egress_router_config_generation") == 2
    assert harness.router.poll_file() is False  # nothing changed since


def test_a_bad_edit_is_counted_and_the_running_rules_stay(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    runs = list(harness.runner.applied)
    harness.edit("80 tcp 203.0.113.25\n8080 tcp 999.1.1.1\n")
    with caplog.at_level(logging.ERROR):
        assert harness.router.poll_file() is False
    assert harness.runner.applied == runs
    assert harness.value("egress_router_applies_total", result="invalid") == 1
    assert (
        f"cannot parse {harness.file} line 2 '8080 tcp 999.1.1.1': invalid destination "
        "address '999.1.1.1'" in caplog.text
    )
    assert "the running rules stay" in caplog.text
    assert harness.tracker.cuts == []
    assert harness.router.readiness() == (True, "ok")
    # Fixing the file applies again.
    harness.edit("80 tcp 203.0.113.25\n")
    assert harness.router.poll_file() is True
    # One pass for all of them (one Cut, one dump of the table).
    assert [c.targets for c in harness.tracker.cuts] == [
        {(4, "tcp", 8080, ipaddress.ip_address("203.0.113.26"), 80)}
    ]


def test_a_refused_transaction_keeps_the_old_rules(harness: Harness) -> None:
    old = harness.router.applied
    harness.runner.fail = "Error: Could not process rule: No buffer space available"
    harness.edit("80 tcp 203.0.113.25\n")
    assert harness.router.poll_file() is False
    assert harness.router.applied is old
    assert harness.value("egress_router_applies_total", result="failed") == 1
    assert harness.tracker.cuts == []


def test_removed_fallback_cuts_its_connections_but_not_port_rules(tmp_path: Path) -> None:
    h = Harness(tmp_path, "80 tcp 203.0.113.27\n203.0.113.27\n")
    h.router.start()
    h.tracker.table = [
        conntrack.Flow(4, "tcp", 9000, ipaddress.ip_address("203.0.113.27"), 9000, True),
        conntrack.Flow(4, "tcp", 80, ipaddress.ip_address("203.0.113.27"), 80, True),
    ]
    h.edit("80 tcp 203.0.113.27\n")
    assert h.router.poll_file() is True
    [selection] = h.tracker.cuts
    assert selection.targets == set()
    assert selection.fallbacks == {(4, ipaddress.ip_address("203.0.113.27"))}
    assert [f.port for f in h.tracker.table] == [80]
    assert h.value("egress_router_connections_cut_total") == 1


def test_reconcile_repairs_a_changed_table_and_counts_it(harness: Harness) -> None:
    assert harness.router.reconcile() == []
    assert harness.value("egress_router_drift_repairs_total", kind="ruleset") == 0
    harness.runner.applied.append("table inet egress_router { }  # someone else")
    assert harness.router.check() == (
        False, "our rules in the kernel differ from the applied ones"
    )
    # Probes answer from the last check (they never wait on the kernel): still ready.
    assert harness.router.readiness() == (True, "ok")
    assert harness.router.reconcile() == []
    cfg = harness.router.applied
    assert cfg is not None
    assert harness.runner.applied[-1] == ruleset.render_nftables(cfg)
    assert harness.value("egress_router_drift_repairs_total", kind="ruleset") == 1
    assert harness.router.readiness() == (True, "ok")
    assert harness.value("egress_router_reconciles_total") == 2


def test_reconcile_repairs_interface_drift_and_announces_after_an_address(
    harness: Harness,
) -> None:
    cfg = harness.router.applied
    assert cfg is not None
    steps = plan.plan_interfaces(cfg)
    address = next(s for s in steps if isinstance(s, plan.SetAddress))
    default = next(s for s in steps if isinstance(s, plan.SetRoute) and s.is_default)
    harness.drifted = [(address, "address missing"), (default, "no default route")]
    assert not harness.router.check()[0]
    sent = len(harness.announcer.sent)
    harness.links.applied.clear()
    harness.router.reconcile()
    assert harness.links.applied == [address, default]
    assert harness.value("egress_router_drift_repairs_total", kind="address") == 1
    assert harness.value("egress_router_drift_repairs_total", kind="route") == 1
    assert len(harness.announcer.sent) == sent + 1


def test_an_unrepairable_drift_makes_the_router_unready(harness: Harness) -> None:
    cfg = harness.router.applied
    assert cfg is not None
    link = next(s for s in plan.plan_interfaces(cfg) if isinstance(s, plan.LinkUp))
    harness.drifted = [(link, "interface macvlan0 does not exist")]
    harness.links.fail_on = plan.LinkUp
    problems = harness.router.reconcile()
    assert problems == [
        "interface macvlan0 does not exist (cannot ip link set macvlan0 up: injected failure)"
    ]
    assert harness.value("egress_router_drift_repair_failures_total", kind="link") == 1
    assert harness.value("egress_router_ready") == 0
    assert harness.router.check() == (False, "interface macvlan0 does not exist")
    assert harness.router.readiness() == (False, problems[0])


def test_dns_names_are_resolved_refreshed_on_ttl_and_kept_on_failure(tmp_path: Path) -> None:
    resolver = FakeResolver({"api.example.com": ["203.0.113.25"]}, ttl=30)
    h = Harness(tmp_path, "443 tcp api.example.com\n", resolver=resolver)
    h.router.start()
    cfg = h.router.applied
    assert cfg is not None
    assert [(str(r.address), r.host) for r in cfg.destinations.rules] == [
        ("203.0.113.25", "api.example.com")
    ]
    # Not due yet: no lookup, nothing applied.
    runs = len(h.runner.applied)
    h.clock.now += 10
    assert h.router.refresh_dns() is False
    assert resolver.asked == ["api.example.com"]
    # Due, and the answer changed: both addresses are used from now on.
    resolver.answers["api.example.com"] = ["203.0.113.26", "203.0.113.25"]
    h.clock.now += 25
    assert h.router.refresh_dns() is True
    assert len(h.runner.applied) == runs + 1
    assert "numgen inc mod 2 map { 0 : 203.0.113.25 . 443, 1 : 203.0.113.26 . 443 }" in (
        h.runner.applied[-1]
    )
    assert h.value("egress_router_dns_changes_total", name="api.example.com") == 1
    # A DNS change is not an edit: nothing is cut.
    assert h.tracker.cuts == []
    # The name disappears: its last good addresses stay, the failure is counted.
    del resolver.answers["api.example.com"]
    h.clock.now += 31
    assert h.router.refresh_dns() is False
    assert h.value("egress_router_dns_resolution_failures_total", name="api.example.com") == 1
    kept = h.router.applied
    assert kept is not None and len(kept.destinations.rules) == 2


def test_a_name_that_never_resolved_has_no_rule_until_it_does(tmp_path: Path) -> None:
    resolver = FakeResolver({})
    h = Harness(tmp_path, "80 tcp 203.0.113.25\n443 tcp api.example.com\n", resolver=resolver)
    h.router.start()
    cfg = h.router.applied
    assert cfg is not None
    assert [r.port for r in cfg.destinations.rules] == [80]
    assert h.value("egress_router_dns_resolution_failures_total", name="api.example.com") == 1
    resolver.answers["api.example.com"] = ["203.0.113.26"]
    h.clock.now += resolve.DEFAULT_MIN_TTL + 1
    assert h.router.refresh_dns() is True
    cfg = h.router.applied
    assert cfg is not None
    assert sorted(r.port for r in cfg.destinations.rules) == [80, 443]


def test_rule_metrics_come_from_the_kernel_counters(harness: Harness) -> None:
    listing = (
        "table inet egress_router {\n"
        "\tset conns_v4 {\n\t\ttype inet_proto . inet_service\n\t\tcounter\n"
        "\t\telements = { tcp . 80 counter packets 5 bytes 300,\n"
        "\t\t\t     tcp . 8080 counter packets 0 bytes 0 }\n\t}\n"
        "\tset traffic_v4 {\n\t\ttype inet_proto . inet_service\n\t\tcounter\n"
        "\t\telements = { tcp . 80 counter packets 50 bytes 3180 }\n\t}\n}\n"
    )
    harness.router.kernel.counters = listing.splitlines
    harness.tracker.table = [
        conntrack.Flow(4, "tcp", 80, ipaddress.ip_address("203.0.113.25"), 80, True),
        conntrack.Flow(4, "tcp", 80, ipaddress.ip_address("203.0.113.25"), 80, False),
    ]
    # The live connections per rule come from the background sample, never from a dump
    # inside the scrape: the first scrape starts it, a later one reads it.
    harness.router.write_rule_metrics(lambda _text: None)
    assert harness.router.sampler.wait(5)
    out: list[str] = []
    harness.router.write_rule_metrics(out.append)
    text = "".join(out)
    # Aggregates always: the live count comes from the kernel's count, not a listing.
    assert "egress_router_conntrack_entries 2.0" in text
    assert "egress_router_rule_series_enabled 1.0" in text
    lines = [line for line in text.splitlines() if line.startswith("egress_router_rule_")
             and not line.startswith("egress_router_rule_series")]
    labels = 'family="ipv4",protocol="tcp",port="80",destination="203.0.113.25:80"'
    other = 'family="ipv4",protocol="tcp",port="8080",destination="203.0.113.26:80"'
    assert lines == [
        f"egress_router_rule_connections_total{{{labels}}} 5",
        f"egress_router_rule_connections_total{{{other}}} 0",
        f"egress_router_rule_packets_total{{{labels}}} 50",
        f"egress_router_rule_packets_total{{{other}}} 0",
        f"egress_router_rule_bytes_total{{{labels}}} 3180",
        f"egress_router_rule_bytes_total{{{other}}} 0",
        f"egress_router_rule_active_connections{{{labels}}} 1",
        f"egress_router_rule_active_connections{{{other}}} 0",
    ]


def test_per_rule_series_are_bounded_and_every_counter_starts_at_zero(tmp_path: Path) -> None:
    h = Harness(tmp_path, "80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n",
                env={"EGRESS_ROUTER_METRICS_RULES": "1"})
    h.router.start()
    h.router.kernel.counters = lambda: (_ for _ in ()).throw(AssertionError("not listed"))
    out: list[str] = []
    h.router.write_rule_metrics(out.append)
    text = "".join(out)
    assert "egress_router_rule_series_enabled 0.0" in text
    assert "egress_router_rule_connections_total{" not in text
    assert "egress_router_rules 2.0" in text
    for sample in (
        'egress_router_applies_total{result="invalid"} 0.0',
        'egress_router_applies_total{result="failed"} 0.0',
        'egress_router_drift_repairs_total{kind="forwarding"} 0.0',
        'egress_router_drift_repair_failures_total{kind="ruleset"} 0.0',
        "egress_router_connections_cut_total 0.0",
        "egress_router_drift_backoff_seconds 0.0",
    ):
        assert sample in text, sample


def test_the_fingerprint_is_taken_when_idle_and_a_commit_before_it_means_reapply(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    generation = [1]
    listings: list[bool] = []
    run, list_text = h.runner.run, h.runner.list_table_text

    def committing(script: str, *, check_only: bool = False) -> None:
        run(script, check_only=check_only)
        generation[0] += 0 if check_only else 1

    def listing(*, stateless: bool = False) -> str | None:
        listings.append(stateless)
        return list_text(stateless=stateless)

    h.runner.run = committing  # type: ignore[method-assign]
    h.runner.list_table_text = listing  # type: ignore[method-assign]
    h.router.kernel.generation = lambda: generation[0]
    h.router.start()
    h.edit("80 tcp 203.0.113.25\n")
    assert h.router.poll_file() is True
    assert listings == []  # neither the start nor the edit listed 10,000 rules back
    assert h.router.reconcile() == []  # no commit since ours: nothing to list either
    assert listings == []
    assert h.router.settle() is True  # idle: now
    assert len(listings) == 1
    assert h.router.settle() is False
    # A commit of someone else's, then a check: the fingerprint says ours are intact.
    generation[0] += 1
    assert h.router.reconcile() == []
    assert h.value("egress_router_drift_repairs_total", kind="ruleset") == 0
    # After an apply, a commit before the idle fingerprint: re-applied, to be sure.
    h.edit("80 tcp 203.0.113.26\n")
    assert h.router.poll_file() is True
    generation[0] += 1
    assert h.router.settle() is False
    applied = len(h.runner.applied)
    assert h.router.reconcile() == []
    assert len(h.runner.applied) == applied + 1


def test_a_commit_between_our_repair_and_the_generation_read_is_not_taken_for_ours(
    tmp_path: Path,
) -> None:
    # Found by the fight of issue 18, item 3: the table deleted right after a repair's
    # commit and before the router read the generation back. The router took that
    # generation (which counts the deletion) for its own rules: /readyz said ok and no
    # check ever re-applied them. A generation that moved by more than our one commit is
    # not trusted.
    h = Harness(tmp_path)
    generation = [1]
    run = h.runner.run
    deleted_after = [False]

    def committing(script: str, *, check_only: bool = False) -> None:
        run(script, check_only=check_only)
        generation[0] += 0 if check_only else 1
        if deleted_after[0]:  # someone's deletion lands before our read
            deleted_after[0] = False
            generation[0] += 1
            h.runner.applied.append("table deleted")

    h.runner.run = committing  # type: ignore[method-assign]
    h.router.kernel.generation = lambda: generation[0]
    h.router.start()
    generation[0] += 1  # the table deleted: a kernel event, then a check
    h.runner.applied.append("table deleted")
    deleted_after[0] = True
    assert h.router.reconcile() == []
    applied = len(h.runner.applied)
    # The next check (the deletion's own event) does not trust the generation: re-applied.
    assert h.router.reconcile() == []
    assert len(h.runner.applied) == applied + 1
    assert h.runner.applied[-1] != "table deleted"
    # The control: a repair nobody interleaved with is trusted (nothing applied again).
    assert h.router.reconcile() == []
    assert len(h.runner.applied) == applied + 1


def test_a_fight_over_the_kernel_state_backs_off_and_is_reported(harness: Harness) -> None:
    cfg = harness.router.applied
    assert cfg is not None
    default = next(s for s in plan.plan_interfaces(cfg) if isinstance(s, plan.SetRoute))
    harness.drifted = [(default, "no default route")]
    for _ in range(pacing.BACKOFF_AFTER):
        harness.clock.now += 0.5
        assert harness.router.reconcile() == []
    assert harness.router.backoff == 0
    harness.clock.now += 0.5
    harness.router.reconcile()
    assert harness.router.backoff == pacing.BACKOFF_FIRST
    harness.clock.now += 0.5
    harness.router.reconcile()
    assert harness.router.backoff == 2 * pacing.BACKOFF_FIRST
    assert harness.value("egress_router_drift_backoff_seconds") == 2 * pacing.BACKOFF_FIRST
    ready, why = harness.router.readiness()
    assert ready and "something keeps changing the kernel state" in why
    # It stops fighting: once the window has passed, repairs follow changes at once again.
    harness.drifted = []
    harness.clock.now += pacing.BACKOFF_WINDOW + 1
    harness.router.reconcile()
    assert harness.router.backoff == 0
    assert harness.router.readiness() == (True, "ok")


@pytest.mark.parametrize("kind", ["fifo", "device", "oversized"])
def test_a_reload_reads_through_the_same_bounded_reader(
    harness: Harness, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    runs = list(harness.runner.applied)
    harness.file.unlink()
    if kind == "fifo":
        os.mkfifo(harness.file)  # no writer: a plain read would hang the loop
        cause = "it is a FIFO (named pipe), not a regular file"
    elif kind == "device":
        harness.file.symlink_to("/dev/zero")  # a plain read would fill the memory
        cause = "it is a character device, not a regular file"
    else:
        with harness.file.open("wb") as fh:
            fh.truncate(config.DESTINATION_FILE_LIMIT + 1)
        cause = f"it is larger than {config.DESTINATION_FILE_LIMIT} bytes"
    with caplog.at_level(logging.ERROR):
        assert harness.router.poll_file() is False
    assert (f"cannot parse EGRESS_DESTINATION_FILE: cannot read destination file "
            f"{str(harness.file)!r}: {cause}") in caplog.text
    assert harness.runner.applied == runs
    assert harness.value("egress_router_applies_total", result="invalid") == 1
    assert harness.router.readiness() == (True, "ok")


def test_the_loop_takes_the_fingerprint_in_the_background_and_drops_a_stale_one(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    generation = [1]
    listed = threading.Event()
    release = threading.Event()
    list_text = h.runner.list_table_text

    def slow_listing(*, stateless: bool = False) -> str | None:
        listed.set()
        assert release.wait(5)
        return list_text(stateless=stateless)

    run = h.runner.run

    def committing(script: str, *, check_only: bool = False) -> None:
        run(script, check_only=check_only)
        generation[0] += 0 if check_only else 1  # each commit bumps it, as the kernel does

    h.runner.run = committing  # type: ignore[method-assign]
    h.runner.list_table_text = slow_listing  # type: ignore[method-assign]
    h.router.kernel.generation = lambda: generation[0]
    h.router.start()
    assert h.router.settle(background=True) is False
    assert h.router.rules._settling is None  # not right after an apply: edits may come in a row
    h.clock.now += fingerprint.SETTLE_AFTER
    # While nft lists the table, an edit is applied (not held up by the listing) ...
    assert h.router.settle(background=True) is False
    assert listed.wait(5)
    h.edit("80 tcp 203.0.113.25\n")
    assert h.router.poll_file() is True  # its commit moves the generation
    h.clock.now += fingerprint.SETTLE_AFTER
    thread = h.router.rules._settling
    assert thread is not None
    release.set()
    thread.join(5)
    # ... so the listing, of the table before it, is not taken as the fingerprint.
    assert h.router.expected is None
    listed.clear()
    assert h.router.settle(background=True) is False
    h.router.rules._settling.join(5)  # type: ignore[union-attr]
    assert h.router.expected is not None
    assert h.router.settle(background=True) is False  # taken: nothing more to do


def test_the_start_applies_only_the_steps_prepare_left_undone(tmp_path: Path) -> None:
    prepared: list[list[plan.Step]] = []
    h = Harness(tmp_path)
    h.router.kernel.prepare = lambda steps: prepared.append(list(steps))
    left = [(plan.EnableForwarding(4), "IPv4 forwarding is off")]
    h.router.kernel.drift = lambda cfg: list(left)
    h.router.start()
    assert prepared and len(prepared[0]) > 1
    assert h.links.applied == [plan.EnableForwarding(4)]
    assert h.router.readiness() == (True, "ok")


def _family_names(text: str) -> list[str]:
    """Every family's name as its HELP line gives it, in order (duplicates kept)."""
    return [line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")]


def test_the_whole_scrape_has_each_family_once_with_conntrack_figures(harness: Harness) -> None:
    # A router with every writer active: the registry's families, the per-rule series, the
    # conntrack sample and the kernel's conntrack statistics (issue 18, item 1: the entries
    # gauge was written by the registry and again by the capacity writer).
    harness.router.kernel.stats = lambda: conntrack.Stats({"insert_failed": 1}, 2, 262144)
    harness.tracker.table = [
        conntrack.Flow(4, "tcp", 80, ipaddress.ip_address("203.0.113.25"), 80, True),
    ]
    harness.router.write_rule_metrics(lambda _text: None)
    assert harness.router.sampler.wait(5)
    out: list[str] = []
    harness.router.write_rule_metrics(out.append)
    text = "".join(out)
    names = _family_names(text)
    assert "egress_router_conntrack_entries" in names
    assert "egress_router_nat_ports_in_use" in names
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
    parsed = [f.name for f in text_string_to_metric_families(text)]
    assert len(parsed) == len(set(parsed)) == len(names)
