"""tests/support's modules never take a standard library module's name.

Some of them run as scripts (``python tests/support/wire.py`` inside a lab namespace), and a
script's own folder comes first on ``sys.path``: a ``support/operator.py`` once shadowed the
standard ``operator`` module and every security test that sent a forged frame failed at import.
"""

from __future__ import annotations

import sys
from pathlib import Path

SUPPORT = Path(__file__).resolve().parents[1] / "support"


def test_no_support_module_shadows_the_standard_library() -> None:
    names = {path.stem for path in SUPPORT.glob("*.py")}
    assert names, SUPPORT
    assert sorted(names & sys.stdlib_module_names) == []
