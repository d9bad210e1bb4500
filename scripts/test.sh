#!/usr/bin/env bash
# The full test suite on a fresh machine: set-up, static checks, unit and integration tests.
# As root the privileged (network namespace) tests run; with EGRESS_ROUTER_REQUIRE_PRIVILEGED=1
# (CI) a privileged test that would skip fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports
exec .venv/bin/pytest "$@"
