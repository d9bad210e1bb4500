"""The plugin's side effects: the macvlan on the node, and everything inside the pod.

The plugin runs in the node's network namespace. Work on the node (find the
master, create the macvlan under a temporary name, move it) goes through
pyroute2 directly (`egress_router.cni.node`); work in the pod (rename, the engine's
ruleset, plan and announcements, CHECK's inspection, DEL's teardown) runs in a forked
child that entered ``CNI_NETNS`` (`egress_router.cni.pod`); an HA replica's VRID check
is `egress_router.cni.vrid`; what both sides share is `egress_router.cni.links`.

Everything the command layer needs is behind the `Kernel` protocol; unit
tests drive ADD/DEL/CHECK and their rollbacks with a fake.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from egress_router.cni.links import (
    HostLink,
    PodProbe,
)
from egress_router.cni.node import (
    NodeKernel,
)
from egress_router.cni.pod import (
    PodKernel,
)
from egress_router.cni.result import Interface
from egress_router.core import config, state

__all__ = [
    "POD_TIMEOUT", "TEMP_PREFIX", "HostLink", "Kernel", "PodProbe", "RealKernel", "is_temp_name",
    "temp_name",
]


TEMP_PREFIX = "egr"
_TEMP_NAME = re.compile(rf"^{TEMP_PREFIX}[0-9a-f]{{12}}$")
POD_TIMEOUT = 30.0


def temp_name(container_id: str, ifname: str) -> str:
    """The macvlan's name on the node before it moves: stable per attachment, 15 characters.

    Stable, so that a leftover of a crashed ADD is found again by the next
    ADD, DEL or GC of the same attachment.
    """
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return f"{TEMP_PREFIX}{digest[:12]}"


def is_temp_name(name: str) -> bool:
    return bool(_TEMP_NAME.match(name))


class Kernel(Protocol):
    """Every side effect (and every read of kernel state) the plugin needs."""

    def netns_exists(self, path: str) -> bool: ...

    def default_route_interface(self) -> str | None: ...

    def host_link(self, name: str) -> HostLink | None: ...

    def host_link_names(self) -> list[str]: ...

    def nft_problem(self) -> str | None: ...

    def ip_problem(self) -> str | None: ...

    def create_macvlan(self, name: str, master: HostLink, mode: str, mtu: int) -> None: ...

    def delete_host_macvlan(self, name: str) -> bool: ...

    def host_macvlans(self) -> list[str]: ...

    def move_to_netns(self, name: str, path: str) -> None: ...

    def probe_pod(self, path: str, ifname: str, pod_interface: str) -> PodProbe: ...

    def setup_pod(
        self, path: str, temp: str, cfg: config.Config, *, pod_side: bool = True
    ) -> Interface: ...

    def undo_pod(self, path: str, names: Sequence[str], probe: PodProbe) -> None: ...

    def teardown_pod(self, path: str, ifname: str) -> list[str]: ...

    def inspect_pod(self, path: str) -> state.Snapshot: ...

    def ruleset_listing(self, cfg: config.Config) -> str: ...


@dataclass
class RealKernel(NodeKernel, PodKernel):
    """The node's namespace through pyroute2 (`node`), the pod's through forked children (`pod`)."""

    pod_timeout: float = POD_TIMEOUT
