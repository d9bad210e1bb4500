#!/usr/bin/env bash
# The full test suite on a fresh machine: set-up, the image, the cluster's components, static
# checks, unit and integration tests (the cluster tests among them).
# As root the privileged (network namespace) tests run; with EGRESS_ROUTER_REQUIRE_PRIVILEGED=1
# (CI) a privileged test that would skip fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The image the image tests run (tests/integration/test_image.py); it needs root, as they do.
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/build-image.sh >/dev/null
  # The local Kubernetes cluster's components (tests/integration/test_cluster_*.py), built
  # from their Go modules and cached by input hash under /var/cache/egress-router/cluster.
  bash scripts/build-cluster.sh >/dev/null
fi
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports
exec .venv/bin/pytest "$@"
