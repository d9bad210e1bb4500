"""The data-path benchmark: is the router as fast as plain forwarding, at any number of rules?

Run it with ``.venv/bin/python -m bench.run`` (as root; ``--quick`` for a short
development run). It builds the local lab (``egress_router.lab.world``), configures
the router exactly as in production, drives real load generators (iperf3, ab,
sockperf) through five paths and writes JSON, markdown and a PNG chart under
``bench/results/``.

The pure parts (workload definition, tool-output parsers, statistics, the
upstream-style reference ruleset, report rendering) are separate modules so
that they can be unit-tested without root; ``harness`` and ``run`` drive the
kernel.
"""
