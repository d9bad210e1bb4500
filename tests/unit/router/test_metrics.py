"""Rule metrics read from the nft counters of a real listing (golden/kernel-listing.nft), and the
registry's text format as the reference parser (prometheus-client's) reads it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from egress_router.core import config, listing
from egress_router.router import metrics

LISTING = (Path(__file__).parents[1] / "golden" / "kernel-listing.nft").read_text()


# ----------------------------------------------------------------------------- nft counters


def test_read_counters_from_a_real_listing() -> None:
    counters = listing.read_counters(LISTING.splitlines())
    assert set(counters) == {"conns_v4", "traffic_v4"}
    conns = {
        key: listing.lookup(counters, "conns_v4", key)
        for key in [(config.Proto.UDP, 53), (config.Proto.TCP, 80), (config.Proto.TCP, 8080),
                    (config.Proto.TCP, 443), (config.Proto.TCP, 9)]
    }
    assert conns == {
        (config.Proto.UDP, 53): (0, 0),
        (config.Proto.TCP, 80): (2, 120),
        (config.Proto.TCP, 8080): (0, 0),
        (config.Proto.TCP, 443): (0, 0),
        (config.Proto.TCP, 9): None,
    }
    assert listing.lookup(counters, "traffic_v4", (config.Proto.TCP, 80)) == (20, 1272)
    assert len(counters["traffic_v4"]) == 4


# ----------------------------------------------------------------------------- the text format


def _families(text: str) -> dict[str, Any]:
    """Read ``text`` back with prometheus-client's parser (the reference reader)."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_every_counter_is_exported_at_zero_and_read_back_by_the_reference_parser() -> None:
    registry = metrics.Metrics()
    registry.names(["api.example.com"])
    families = _families(registry.generate().decode())
    counters = {name: f for name, f in families.items() if f.type == "counter"}
    # The parser names a counter family without _total; each sample keeps it.
    assert {"egress_router_applies", "egress_router_drift_repairs",
            "egress_router_dns_resolution_failures", "egress_router_connections_cut",
            "egress_router_process_cpu_seconds"} <= set(counters)
    applies = {s.labels["result"]: s.value for s in counters["egress_router_applies"].samples}
    assert applies == {"ok": 0.0, "invalid": 0.0, "failed": 0.0}
    for name, family in counters.items():
        if name == "egress_router_process_cpu_seconds":
            continue
        assert family.samples, name
        assert all(s.name == f"{name}_total" and s.value == 0.0 for s in family.samples), name
    dns = families["egress_router_dns_changes"].samples
    assert [(s.labels, s.value) for s in dns] == [({"name": "api.example.com"}, 0.0)]
    rss = families["egress_router_process_resident_memory_bytes"].samples[0].value
    assert 5 * 2**20 < rss < 1024 * 2**20


def test_values_labels_and_help_survive_the_round_trip() -> None:
    registry = metrics.Registry()
    counter = metrics.Counter("x_events", 'Help with a \\ backslash\nand a newline.', ["name"],
                              registry=registry)
    gauge = metrics.Gauge("x_level", "A gauge.", registry=registry)
    counter.labels(name='a "quoted"\\name\nline').inc(2.5)
    counter.labels(name="plain").inc()
    gauge.set(-3)
    gauge.inc(0.5)
    families = _families(registry.generate().decode())
    samples = {s.labels["name"]: s.value for s in families["x_events"].samples}
    assert samples == {'a "quoted"\\name\nline': 2.5, "plain": 1.0}
    assert families["x_events"].documentation == 'Help with a \\ backslash\nand a newline.'
    assert families["x_level"].samples[0].value == -2.5
    assert registry.get_sample_value("x_events_total", {"name": "plain"}) == 1.0
    assert registry.get_sample_value("x_level") == -2.5
    assert registry.get_sample_value("x_events_total", {"name": "missing"}) is None
    assert metrics.format_value(float("inf")) == "+Inf"


def test_a_counter_refuses_to_go_down_or_to_lose_its_labels() -> None:
    registry = metrics.Registry()
    counter = metrics.Counter("x_events_total", "Events.", ["kind"], registry=registry)
    assert counter.name == "x_events"  # a _total suffix given is not doubled
    with pytest.raises(ValueError, match="counters only go up"):
        counter.labels(kind="a").inc(-1)
    with pytest.raises(ValueError, match=r"labels \['other'\] given, \['kind'\] expected"):
        counter.labels(other="a")
    with pytest.raises(ValueError, match="without its labels"):
        counter.inc()
    with pytest.raises(ValueError, match="cannot register x_events_total twice"):
        metrics.Counter("x_events", "Again.", registry=registry)


def test_the_registry_owns_every_family_name_once() -> None:
    # A family or a collector's family of a name already taken is refused when it registers;
    # a collector that writes a family it did not register, or one twice, fails the scrape.
    registry = metrics.Registry()
    metrics.Gauge("x_entries", "A gauge.", registry=registry)
    with pytest.raises(ValueError, match="cannot register x_entries twice"):
        registry.collector("capacity", ["x_entries", "x_limit"], lambda out: None)
    registry.collector("events", ["x_events_total"], lambda out: None)
    with pytest.raises(ValueError, match="cannot register x_events_total twice"):
        metrics.Counter("x_events", "A counter.", registry=registry)  # written x_events_total
    registry = metrics.Registry()

    def sneaky(out: metrics.Writer) -> None:
        out.family("x_limit", "gauge", "Declared.")
        out("x_limit 1\n")
        out.family("x_other", "gauge", "Not declared.")

    registry.collector("sneaky", ["x_limit"], sneaky)
    with pytest.raises(ValueError, match="sneaky writes the family x_other, which it did not"):
        registry.generate()
    registry = metrics.Registry()
    registry.collector("twice", ["x_limit"], lambda out: [out.family("x_limit", "gauge", "h")
                                                          for _ in range(2)] and None)
    with pytest.raises(ValueError, match="x_limit is written twice in one scrape"):
        registry.generate()


def test_the_waiting_process_loads_neither_prometheus_client_nor_openssl() -> None:
    # ssl, http.client and prometheus-client's push gateway (~5 MiB) and OpenSSL's libcrypto
    # (hashlib, ~3.5 MiB) are much of the 40 MiB budget.
    code = ("import sys, egress_router.cli, egress_router.wait; "
            "print(sorted(m for m in ('ssl', 'http.client', 'http.server', 'prometheus_client', "
            "'pyroute2', 'hypothesis', '_hashlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "[]"
