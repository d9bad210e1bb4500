"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.router import Harness


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    h = Harness(tmp_path)
    h.router.start()
    return h
