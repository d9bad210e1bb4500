"""``python -m bench <suite>``: every benchmark behind one command, one suite protocol.

A suite (`bench.suite.Suite`) is a name, a one-line summary, the options it adds and a
function that runs it and returns a `results.Outcome`; this module parses the command line
once, runs the suite, writes its results through `results.write` (``bench/results`` unless
``--out``) and prints the report. Suites need root (they build the lab's namespaces) unless
they say otherwise; each bounds its own loops and removes its namespaces when it ends, also on
SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import (
    breaks,
    capacity,
    cni_add,
    flowtable,
    ha,
    harness,
    proxies,
    results,
    run,
    toll,
    wait,
)
from bench.suite import Suite
from egress_router.lab import world as labmod

# Every suite, in the order ``--help`` lists them; a new one is a module with ``SUITES``.
SUITES: dict[str, Suite] = {
    s.name: s
    for module in (run, toll, wait, breaks, capacity, flowtable, ha, proxies, cni_add)
    for s in module.SUITES
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
