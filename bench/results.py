"""Where a benchmark's results go and how they are written: one place for every suite.

A suite returns an `Outcome` (a file name, the JSON document with every sample, the markdown
report); `write` puts ``<name>.json`` and ``<name>.md`` into the results folder (``bench/results``
unless ``--out`` names another) and calls the suite's extra writer, if any (the data-path
suite's chart and README summary).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Outcome:
    """What one run of a suite measured."""

    name: str  # the files' stem: <name>.json, <name>.md
    doc: dict[str, Any]
    markdown: str = ""
    also: Callable[[Path], list[Path]] | None = None  # more files, written into the folder


def write(outcome: Outcome, out: Path = DIR) -> list[Path]:
    """Write ``outcome`` into ``out``; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{outcome.name}.json"]
    written[0].write_text(json.dumps(outcome.doc, indent=1) + "\n", encoding="utf-8")
    if outcome.markdown:
        written.append(out / f"{outcome.name}.md")
        written[-1].write_text(outcome.markdown, encoding="utf-8")
    if outcome.also is not None:
        written += outcome.also(out)
    return written
