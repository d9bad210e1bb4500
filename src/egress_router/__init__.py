"""egress-router: OpenShift-compatible egress router (redirect mode) for Kubernetes.

The package is layered as config -> plan/ruleset -> kernel (netlink, nft,
iptables) -> entry points (cli, lab); see DESIGN.md beside the repository.
"""

__version__ = "0.1.0"
