"""The suite protocol: what every benchmark declares so that ``python -m bench`` can run it.

A suite module holds ``SUITES``, a tuple of `Suite`: a name, a one-line summary, the options
it adds to its own sub-command, and the run that measures and returns a `results.Outcome`
(which ``python -m bench`` writes with `results.write`). Options every suite has (``--out``)
are added by ``bench/__main__.py``; a suite reads ``args.command`` for its report.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from bench import results


@dataclass(frozen=True)
class Suite:
    """One benchmark: its name, its options and the run that measures it."""

    name: str
    summary: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], results.Outcome]
