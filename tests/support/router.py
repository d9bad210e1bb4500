"""A reconciler over fakes (the router's Harness), shared by the router and wait tests."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from egress_router.core import config, plan, ruleset
from egress_router.kernel import announce, conntrack, netlink, nft
from egress_router.router import engine, metrics, reconciler, resolve
from support.environments import BASE_ENV

RULES = "80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n"


class FakeResolver:
    """Answers from a dict; a missing name fails like NXDOMAIN."""

    def __init__(self, answers: dict[str, list[str]], ttl: float = 30.0) -> None:
        self.answers = answers
        self.ttl = ttl
        self.asked: list[str] = []

    def resolve(self, host: str, families: Sequence[int]) -> resolve.Answer:
        self.asked.append(host)
        if host not in self.answers:
            raise resolve.ResolveError(f"cannot resolve {host}: no such name (NXDOMAIN)")
        addresses = tuple(ipaddress.ip_address(a) for a in self.answers[host])
        return resolve.Answer(addresses, self.ttl)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A router over fakes, with its destination file in ``tmp``."""

    def __init__(
        self,
        tmp: Path,
        text: str = RULES,
        *,
        drift: Callable[[config.Config], list[tuple[plan.Step, str]]] | None = None,
        resolver: FakeResolver | None = None,
        env: dict[str, str] | None = None,
        reread: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self.file = tmp / "destinations"
        self.file.write_text(text)
        self.runner = nft.FakeNft()
        self.links = netlink.FakeNetlink()
        self.announcer = announce.FakeAnnouncer()
        self.tracker = conntrack.FakeConntrack()
        self.resolver = resolver or FakeResolver({})
        self.drifted: list[tuple[plan.Step, str]] = []
        self.clock = Clock()
        self.registry = metrics.Metrics()
        kernel = reconciler.Edges(
            firewall=engine.NftablesFirewall(self.runner),
            links=self.links,
            announcer=self.announcer,
            conntrack=self.tracker,
            resolver=self.resolver,
            drift=drift or (lambda cfg: list(self.drifted)),
            counters=self.runner.table_lines,
        )
        full_env = {**BASE_ENV, "EGRESS_DESTINATION_FILE": str(self.file), **(env or {})}
        if reread is not None:
            full_env = reread()  # CNI mode: the environment completed from the plugin's file
        settings = config.parse_wait_settings(full_env)
        self.router = reconciler.Router(
            full_env, settings, kernel, self.registry, clock=self.clock,
            wall=lambda: 1_700_000_000.0, reread=reread,
        )

    def tamper(self) -> None:
        """Someone else empties our prerouting chain: a drift of the (fake) kernel's table."""
        table = f"{ruleset.TABLE_FAMILY} {ruleset.TABLE}"
        self.runner.run(f"flush chain {table} {ruleset.CHAIN_PREROUTING}\n")

    def edit(self, text: str) -> None:
        # A new inode, as the kubelet's symlink swap gives the ConfigMap's file.
        tmp = self.file.with_name("destinations.new")
        tmp.write_text(text)
        os.replace(tmp, self.file)

    def value(self, metric: str, **labels: str) -> float | None:
        return self.registry.registry.get_sample_value(metric, labels)
