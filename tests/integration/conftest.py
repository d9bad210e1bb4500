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

import hashlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from egress_router import __version__
from egress_router.lab import world as labmod
from support import cluster as clustermod

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


# --------------------------------------------------------------------------- the host's namespace


def _strip_counters(value: object) -> object:
    """nft JSON without packet/byte counts, which traffic changes between two reads."""
    if isinstance(value, dict):
        if "counter" in value and isinstance(value["counter"], dict):
            return {"counter": {}}
        return {key: _strip_counters(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_strip_counters(item) for item in value]
    return value


def _as_list(value: object) -> list[dict[str, object]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def root_namespace_state() -> dict[str, object]:
    """What tests must never change in the namespace they run in (the host's), read with
    iproute2 and nft: links, addresses, routes, policy rules, the ruleset, forwarding."""

    def run_json(*argv: str) -> object:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
        return json.loads(done.stdout) if done.stdout.strip() else []

    links = run_json("ip", "-j", "link", "show")
    addrs = run_json("ip", "-j", "addr", "show")
    assert isinstance(links, list) and isinstance(addrs, list)
    ruleset = run_json("nft", "-j", "list", "ruleset")
    assert isinstance(ruleset, dict)
    forwarding = {
        key: Path("/proc/sys/net", key).read_text(encoding="utf-8").strip()
        for key in ("ipv4/ip_forward", "ipv6/conf/all/forwarding")
    }
    return {
        "links": sorted(str(link["ifname"]) for link in links),
        "addresses": sorted(
            f"{a['ifname']} {i['local']}/{i['prefixlen']}"
            for a in addrs
            for i in a.get("addr_info", [])
        ),
        "routes": sorted(
            " ".join(str(route.get(key, "")) for key in ("table", "type", "dst", "gateway", "dev"))
            for family in ("-4", "-6")
            for route in _as_list(run_json("ip", "-j", family, "route", "show", "table", "all"))
        ),
        "rules": [run_json("ip", "-j", family, "rule", "show") for family in ("-4", "-6")],
        "ruleset": _strip_counters(
            [item for item in ruleset.get("nftables", []) if "metainfo" not in item]
        ),
        "forwarding": forwarding,
    }


@pytest.fixture
def root_namespace_untouched() -> Iterator[dict[str, object]]:
    """Fail the test if the host's own namespace changed while it ran (container runtimes
    create bridges, addresses and firewall rules wherever they run)."""
    require_privileged()
    before = root_namespace_state()
    yield before
    after = root_namespace_state()
    changed = sorted(key for key in before if before[key] != after[key])
    assert not changed, (
        f"the host's network namespace changed ({', '.join(changed)}):"
        f" before {[before[k] for k in changed]}, after {[after[k] for k in changed]}"
    )


# --------------------------------------------------------------------------- podman and the image

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "scripts" / "containers.conf"
IMAGE_REPOSITORY = "localhost/egress-router"
IMAGE_SOURCE_LABEL = "egress-router.source-sha256"


class Podman:
    """Debian's podman with the project's settings (runc, ulimits, no default network:
    scripts/containers.conf), run in this network namespace or in ``netns``."""

    def __init__(
        self, conf: Path = CONTAINERS_CONF, netns: str | None = None,
        global_args: Sequence[str] = (),
    ) -> None:
        self.conf = conf
        self.netns = netns
        self.global_args = tuple(global_args)

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = ["podman", *self.global_args, *args]
        if self.netns is not None:
            # nsenter, not `ip netns exec`: that one mounts a fresh /sys, hiding the cgroup
            # mounts runc needs, and a private mount namespace would hide the container
            # namespaces podman mounts under /run/netns from everyone else.
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", *argv]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "CONTAINERS_CONF": str(self.conf)}, check=False,
        )


def image_source_digest(root: Path = ROOT) -> str:
    """The digest scripts/build-image.sh labels the image with: sha256sum of the sorted
    sha256sum lines of what the Containerfile copies."""
    names = ("pyproject.toml", "constraints.txt", "README.md", "Containerfile")
    files = [root / name for name in (*names, "scripts/build-cni.sh")]
    files += [
        path
        for path in (root / "src").rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and not any(part.endswith(".egg-info") for part in path.parts)
    ]
    names = sorted(str(path.relative_to(root)) for path in files)
    lines = "".join(
        f"{hashlib.sha256((root / name).read_bytes()).hexdigest()}  {name}\n" for name in names
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def _no_image(reason: str) -> None:
    reason = f"{reason}: run `bash scripts/build-image.sh`"
    if os.environ.get(REQUIRE_PRIVILEGED_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_PRIVILEGED_ENV}=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def podman() -> Podman:
    """podman in the host's namespace, for containers that join a lab namespace
    (``--network ns:/run/netns/...``) and never get a network of podman's own."""
    if shutil.which("podman") is None:
        _no_image("podman is not installed")
    return Podman()


@pytest.fixture(scope="session")
def built_image(podman: Podman) -> str:
    """The image scripts/build-image.sh built; it must be built from this very source."""
    require_privileged()
    digest = image_source_digest()
    # The tag scripts/build-image.sh gives the image of this source (EGRESS_ROUTER_IMAGE:
    # another one, which must still be built from this source).
    image = os.environ.get("EGRESS_ROUTER_IMAGE") or f"{IMAGE_REPOSITORY}:src-{digest[:16]}"
    done = podman("image", "inspect", "--format", "{{json .Labels}}", image)
    if done.returncode != 0:
        _no_image(f"there is no image {image} (egress-router {__version__}, this source)")
    built_from = (json.loads(done.stdout) or {}).get(IMAGE_SOURCE_LABEL)
    if built_from != digest:
        _no_image(f"image {image} was built from another source"
                  f" ({IMAGE_SOURCE_LABEL}={built_from})")
    return image


# --------------------------------------------------------------------------- the whole run's guard


def _session_view(state: dict[str, object], known_links: set[str]) -> dict[str, object]:
    """The part of the host's state a whole run compares. Links come and go while a test (or
    a parallel run on the same machine) creates a veth pair and moves its ends into lab
    namespaces, so a link that is not the host's own counts only if it carries a global
    address (a kernel link-local address or route on a transient link is not a change)."""

    def own(text: str) -> bool:
        device = text.split(maxsplit=1)[0] if text else ""
        return device in known_links or not any(
            part.startswith(("fe80:", "ff00:", "ff02:")) for part in text.split()
        )

    view = {key: value for key, value in state.items() if key != "links"}
    addresses = state.get("addresses")
    if isinstance(addresses, list):
        view["addresses"] = [a for a in addresses if isinstance(a, str) and own(a)]
    routes = state.get("routes")
    if isinstance(routes, list):
        view["routes"] = [
            r for r in routes
            if isinstance(r, str)
            and not any(part.startswith(("fe80:", "ff00:")) for part in r.split())
        ]
    return view


@pytest.fixture(scope="session", autouse=True)
def _root_namespace_guard() -> Iterator[None]:
    """Fail the run if it left an address, route, policy rule, firewall rule or forwarding
    switch behind in the host's own namespace: no test may change it, and the per-test
    fixture above only guards the tests that ask for it (as root only)."""
    if _why_not_privileged() is not None:
        yield
        return
    start = root_namespace_state()
    links = start.get("links")
    known = {str(link) for link in links} if isinstance(links, list) else set()
    before = _session_view(start, known)
    yield
    after = _session_view(root_namespace_state(), known)
    changed = sorted(key for key in before if before[key] != after.get(key))
    if changed:
        details = "; ".join(
            f"{key} before {before[key]}, after {after.get(key)}" for key in changed
        )
        pytest.fail(
            f"the run changed the host's network namespace ({', '.join(changed)}): {details}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def cluster(built_image: str) -> Iterator[clustermod.Cluster]:
    """The local two-node Kubernetes cluster (scripts/cluster.sh), once per session, its
    nodes given the image of this very source (the version tag is shared by every checkout
    on the machine)."""
    require_privileged()
    yield from clustermod.started(image=built_image)
