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

from egress_router.cni.plugin import main, run

__all__ = ["main", "run"]
