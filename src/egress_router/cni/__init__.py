"""The egress router as a CNI plugin: Multus adds the macvlan and configures the router.

OpenShift 3's SDN gave the router pod its ``macvlan0`` through the
``pod.network.openshift.io/assign-macvlan`` annotation; current clusters have
no such SDN. Called by Multus as a secondary network, ``egress-router-cni``
creates the macvlan on the node's physical interface, moves it into the pod
and runs the same engine as the init container there (ruleset, addresses,
routes, announcements), so the router works on any Kubernetes cluster.
It reads upstream's network configuration (openshift/egress-router-cni), so
existing NetworkAttachmentDefinitions keep working.

Layout: `netconf` (environment and JSON, pure), `result` (the ADD result,
pure), `errors` (the spec's error codes), `macvlan` (the side effects: the
macvlan on the node, everything in the pod through the same engine and nft
edge as the init container), `plugin` (the commands, read as the spec) and
`runtime` (a small runtime that invokes plugins, for tests and people).
CHECK fails from the same comparison `wait` repairs from and `status`
reports (``egress_router.core.drift`` over a snapshot the kernel layer reads
inside the pod), as the reference plugins share ``ip.ValidateExpected*``.
The wing sits beside the commands: it imports the router, kernel and core
layers, never ``cli``/``wait``/``status``, and they never import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from egress_router.cni import macvlan

__all__ = ["main", "run"]

# The plugin (pyroute2, the engine) is imported on first call, not with the package:
# `wait` reads the configuration through `egress_router.cni.netconf` and needs none of it.


def _skip_pyroute2_init() -> None:
    """Import pyroute2's modules without its ``__init__``, in the plugin's own process.

    ``pyroute2/__init__.py`` imports every part of the library (NDB, IPDB, conntrack,
    WiFi, IPVS, ...): about 0.3 s of an invocation whose budget is one second, for modules
    the plugin never uses. The package is registered unexecuted, so ``pyroute2.iproute``
    and ``pyroute2.netlink.exceptions`` (all the plugin imports) load alone. Only here, in
    the executable's entry point: a process that imports pyroute2 otherwise keeps it whole.
    """
    import importlib.util  # noqa: PLC0415
    import sys  # noqa: PLC0415

    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is not None:
        sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)


def main() -> None:
    """Console-script entry point ``egress-router-cni`` (and the one-file executable's)."""
    _skip_pyroute2_init()
    from egress_router.cni import plugin  # noqa: PLC0415 (see above)

    plugin.main()


def run(
    environ: Mapping[str, str],
    stdin: bytes,
    out: TextIO,
    err: TextIO,
    kern: macvlan.Kernel | None = None,
) -> int:
    """One plugin invocation (`egress_router.cni.plugin.run`)."""
    from egress_router.cni import plugin  # noqa: PLC0415 (see above)

    return plugin.run(environ, stdin, out, err, kern)
