"""egress-router: OpenShift-compatible egress router (redirect mode) for Kubernetes.

The folders are the layers, each importing only downwards (import-linter
contracts in pyproject.toml): ``core`` (pure: config, plan, ruleset, the one
parser ``listing``, the one model ``state``, the one comparison ``drift``) ->
``kernel`` (the side-effect edge) -> ``router`` (engine, reconciler) -> the
commands ``cli``, ``wait``, ``status``; the wings ``cni`` (beside the
commands), ``k8s`` and ``lab`` (beside the kernel layer).
"""

__version__ = "0.1.0"
