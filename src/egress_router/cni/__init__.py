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
pure), `drift` (CHECK's comparison, pure), `kernel` (side effects) and
`plugin` (the commands).
"""

from egress_router.cni.plugin import main, run

__all__ = ["main", "run"]
