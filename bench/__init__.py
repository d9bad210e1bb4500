"""The benchmarks: one command, ``python -m bench <suite>`` (``bench/__main__.py`` lists them).

The main suite, ``data-path``, asks whether the router is as fast as plain forwarding at any
number of rules (``.venv/bin/python -m bench data-path``, as root; ``--quick`` for a short
development run). It builds the local lab (``egress_router.lab.world``), configures
the router exactly as in production, drives real load generators (iperf3, ab,
sockperf) through five paths and writes JSON, markdown and a PNG chart under
``bench/results/``.

Every suite returns a `results.Outcome`, written by `results.write` (one results folder,
one writer); medians and quartiles come from `stats` only. The pure parts (workload
definition, tool-output parsers, statistics, the upstream-style reference ruleset, report
rendering, the pre-hardening baseline as golden text) are separate modules so that they can
be unit-tested without root; ``harness`` and the suites drive the kernel.
"""
