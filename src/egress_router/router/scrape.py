"""The scrape: what ``/metrics`` writes beyond the process's own counters, read at scrape time.

The registry (`metrics`) owns every family; this module registers the two collectors whose
figures live in the kernel, not in the process: the per-rule series (the element counters
of our nft sets, one listing, only while the ruleset is within
``EGRESS_ROUTER_METRICS_RULES``) and the NAT's port space with conntrack's failure counters
(`capacity`, from the last background sample: a scrape never dumps the conntrack table).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from egress_router.core import config, listing
from egress_router.kernel import conntrack, errors
from egress_router.kernel.conntrack import Conntrack, Stats
from egress_router.kernel.memory import HEAP
from egress_router.router import capacity, metrics

log = logging.getLogger(__name__)


class Edges(Protocol):
    """What a scrape reads of the kernel (the router's `reconciler.Edges`)."""

    @property
    def conntrack(self) -> Conntrack: ...

    @property
    def counters(self) -> Callable[[], Iterable[str]] | None: ...

    @property
    def stats(self) -> Callable[[], Stats | None]: ...


class Scrape:
    """The scrape's collectors, registered in the router's registry, and the scrape itself."""

    def __init__(self, registry: metrics.Metrics, kernel: Edges,
                 applied: Callable[[], config.Config | None], series_limit: int,
                 sampler: capacity.Sampler) -> None:
        self.metrics = registry
        self.kernel = kernel
        self._applied = applied
        self.series_limit = series_limit
        self.sampler = sampler
        registry.registry.collector(
            "the rule series", [name for name, _kind, _help in metrics.RULE_FAMILIES],
            self._write_rules,
        )
        registry.registry.collector("the NAT capacity", capacity.FAMILIES, self._write_capacity)

    def write(self, write: Callable[[str], object]) -> None:
        """The whole scrape: the aggregate gauges read now, then every family of the registry.

        Cheap at any size: the conntrack count is one read; the rule counters
        (one ``nft`` listing) only while the ruleset is within the series limit.
        """
        cfg = self._applied()
        self.metrics.conntrack_entries.set(self.kernel.conntrack.count() or 0)
        self.metrics.rule_series.set(1 if self._series_enabled(cfg) else 0)
        try:
            self.metrics.registry.write(write)
        finally:
            HEAP.release()

    def _flows(self, cfg: config.Config) -> Iterator[conntrack.Flow]:
        for family in cfg.families():
            yield from self.kernel.conntrack.flows(family)

    def _series_enabled(self, cfg: config.Config | None) -> bool:
        return (
            cfg is not None
            and self.kernel.counters is not None
            and 0 < len(cfg.destinations.rules) <= self.series_limit
        )

    def _sample(self, cfg: config.Config) -> capacity.Sample | None:
        return self.sampler.latest(cfg, lambda: self._flows(cfg))

    def _write_rules(self, out: metrics.Writer) -> None:
        """The per-rule families (a collector of the registry), while they are enabled."""
        cfg = self._applied()
        counters_of = self.kernel.counters
        if cfg is None or not self._series_enabled(cfg) or counters_of is None:
            return
        try:
            counters: listing.Counters = listing.read_counters(counters_of())
        except errors.KernelError as err:
            log.warning("cannot read rule counters: %s", err)
            counters = {}
        sample = self._sample(cfg)
        active = sample.active if sample is not None else {}
        metrics.write_rule_metrics(out, cfg, counters, active)

    def _write_capacity(self, out: metrics.Writer) -> None:
        """The NAT port space and conntrack's failures (a collector of the registry)."""
        cfg = self._applied()
        if cfg is None:
            return
        capacity.write_metrics(out, self._sample(cfg), self.kernel.stats())
