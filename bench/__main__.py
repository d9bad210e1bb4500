"""``python -m bench <suite>``: every benchmark behind one command, one suite protocol.

A suite is a name, a one-line summary, the options it adds and a function that runs it and
returns a `results.Outcome`; this module parses the command line once, runs the suite, writes
its results through `results.write` (``bench/results`` unless ``--out``) and prints the report.
Suites need root (they build the lab's namespaces) unless they say otherwise; each bounds its
own loops and removes its namespaces when it ends, also on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import breaks, capacity, cni_add, flowtable, ha, harness, proxies, results, run, wait
from egress_router.lab import world as labmod


@dataclass(frozen=True)
class Suite:
    """One benchmark: its options and the run that measures it."""

    summary: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], results.Outcome]


SUITES: dict[str, Suite] = {
    "data-path": Suite(
        "the router's data path against plain forwarding, at 1 to 10,000 rules (~15 min)",
        run.add_data_path_arguments, run.run_data_path,
    ),
    "ablation": Suite(
        "where the time goes: the product's nftables ruleset with parts removed (~3 min)",
        run.add_arguments, run.run_ablation_suite,
    ),
    "hardening": Suite(
        "the price of the data-path hardening: today's ruleset against the hardened one",
        run.add_arguments, run.run_hardening_suite,
    ),
    "wait": Suite(
        "the waiting container at 10,000 rules: edits, drift, scrapes, start, SIGTERM",
        wait.add_arguments, wait.run_suite,
    ),
    "breaks": Suite(
        "issue 18's figures against another checkout: drift windows, drifts in a row, a flood",
        breaks.add_arguments, breaks.run_suite,
    ),
    "capacity": Suite(
        "connections to one destination through the source-address pool",
        capacity.add_arguments, capacity.run_suite,
    ),
    "flowtable": Suite(
        "an nftables flowtable fast path against the product's ruleset",
        flowtable.add_arguments, flowtable.run_suite,
    ),
    "ha": Suite(
        "active/standby failover and healed partitions (keepalived, two replicas)",
        ha.add_arguments, ha.run_suite,
    ),
    "proxies": Suite(
        "the HTTP and DNS proxy modes against the redirect mode and upstream's configs (~3 min)",
        proxies.add_arguments, proxies.run_suite,
    ),
    "cni-add": Suite(
        "CNI ADD+DEL time: the one-file executable against the console script",
        cni_add.add_arguments, cni_add.run_suite,
    ),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None
    )
    suites = top.add_subparsers(dest="suite", required=True, metavar="SUITE")
    for name, suite in SUITES.items():
        sub = suites.add_parser(name, help=suite.summary, description=suite.summary)
        sub.add_argument("--out", type=Path, default=None,
                         help=f"results folder (default {results.DIR})")
        suite.add_arguments(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(words)
    args.command = "python -m bench " + " ".join(words)
    try:
        outcome = SUITES[args.suite].run(args)
    except (harness.BenchError, labmod.LabError) as exc:
        print(f"python -m bench {args.suite}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"python -m bench {args.suite}: interrupted; the lab was removed", file=sys.stderr)
        return 130
    written = results.write(outcome, args.out or results.DIR)
    print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    with contextlib.suppress(BrokenPipeError):
        print(outcome.markdown, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
