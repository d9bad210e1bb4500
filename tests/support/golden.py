"""Golden files: the exact text a backend or command gets, reviewed as readable files.

Regenerate after an intended change with ``UPDATE_GOLDEN=1 pytest tests/unit`` and review the diff
like code.
"""

from __future__ import annotations

import os
from pathlib import Path

from egress_router.lab import world as lab

GOLDEN = Path(__file__).resolve().parents[1] / "unit" / "golden"
SEED_ENV = {k: v for k, v in lab.DEMO_ENV.items() if k != "EGRESS_ROUTER_MODE"}


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text()
