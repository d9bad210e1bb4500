"""Fixtures for tests against a real kernel: a fresh lab per test.

Integration tests need root and network namespaces. Without them they skip
with the reason, except where ``EGRESS_ROUTER_REQUIRE_PRIVILEGED=1`` (CI):
there a test that cannot run is a failure, so a broken runner cannot pass
by skipping everything.

Every lab gets its own short prefix (``ert`` + 5 hex digits), so namespaces of
parallel runs never collide; ``down`` runs even when the test fails, and a
session-wide sweep removes leftovers of earlier, crashed runs.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Sequence
from typing import Protocol

import pytest

from egress_router.lab import world as labmod

RUN_PREFIX = "ert"
REQUIRE_PRIVILEGED_ENV = "EGRESS_ROUTER_REQUIRE_PRIVILEGED"

_host_problem: list[str | None] = []


def _why_not_privileged() -> str | None:
    """Checked once per session: creating a namespace is not free."""
    if not _host_problem:
        _host_problem.append(labmod.check_host())
    return _host_problem[0]


def require_privileged() -> None:
    """Skip (locally) or fail (CI) unless root and network namespaces work."""
    problem = _why_not_privileged()
    if problem is None:
        return
    reason = f"integration test needs root and network namespaces: {problem}"
    if os.environ.get(REQUIRE_PRIVILEGED_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_PRIVILEGED_ENV}=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged") is not None:
        require_privileged()


def new_prefix() -> str:
    return RUN_PREFIX + secrets.token_hex(3)[:5]


@pytest.fixture(scope="session", autouse=True)
def _sweep_leftovers() -> Iterator[None]:
    """Remove labs of earlier runs before, and our own stragglers after."""
    if _why_not_privileged() is None:
        labmod.sweep(RUN_PREFIX)
    yield
    if _why_not_privileged() is None:
        labmod.sweep(RUN_PREFIX)


class LabFactory(Protocol):
    def __call__(
        self,
        prefix: str | None = None,
        macvlan: str | None = "true",
        endpoints: Sequence[str] = labmod.DEFAULT_ENDPOINTS,
        *,
        phys_mtu: int = labmod.DEFAULT_MTU,
    ) -> labmod.Lab: ...


@pytest.fixture
def lab_factory() -> Iterator[LabFactory]:
    """Build labs with custom arguments: ``lab_factory(macvlan="ens3")``.

    Each call gets a fresh prefix unless ``prefix`` is given; every lab built
    through the factory is taken down after the test, pass or fail.
    """
    require_privileged()
    prefixes: list[str] = []

    def make(
        prefix: str | None = None,
        macvlan: str | None = "true",
        endpoints: Sequence[str] = labmod.DEFAULT_ENDPOINTS,
        *,
        phys_mtu: int = labmod.DEFAULT_MTU,
    ) -> labmod.Lab:
        prefix = prefix or new_prefix()
        prefixes.append(prefix)
        return labmod.up(prefix, macvlan, endpoints, phys_mtu=phys_mtu)

    yield make
    errors: list[str] = []
    for prefix in prefixes:
        try:
            labmod.down(prefix)
        except labmod.LabError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("cannot take the lab down: " + "; ".join(errors), pytrace=False)


@pytest.fixture
def lab_prefix() -> Iterator[str]:
    """A fresh prefix for a test that builds (or fakes) a lab by hand; the
    lab with that prefix is taken down afterwards in any case."""
    require_privileged()
    prefix = new_prefix()
    yield prefix
    labmod.down(prefix)


@pytest.fixture
def lab(lab_factory: LabFactory) -> labmod.Lab:
    """A fresh default lab: macvlan0 on the node's default-route NIC."""
    return lab_factory()
