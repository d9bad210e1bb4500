#!/usr/bin/env bash
# The local lab demo on a fresh machine (needs root): set-up, then build the lab in network
# namespaces, configure the router with the seed example, send real TCP and UDP traffic and
# print who answered and which source address each destination saw; the lab is removed after.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/egress-router lab demo "$@"
