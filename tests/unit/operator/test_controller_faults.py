"""The reconcile loop under API faults the real server cannot be made to give on cue.

A fake API (dicts in memory) stands in only here: a 500 on the third write, a 409 between a
read and a write, a 422, a watch that expires (410) or drops. Everything the real API server
can show — creation, no churn, hand edits, status, election — is tested against it
(tests/integration/test_operator.py).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from egress_router.operator import api, controller, desired
from egress_router.operator.api import ApiError

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "egressrouter.yaml"
KEY = desired.Key("egress", "egress-router-redirect")


class FakeApi:
    """Objects by (kind, namespace, name); ``fail`` maps a verb to errors to raise in turn."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.fail: dict[str, list[ApiError]] = {}
        self.calls: list[str] = []
        self.writes: list[str] = []
        self.events: list[tuple[str, str]] = []
        self.watches: list[Iterator[dict[str, Any]] | ApiError] = []
        self.version = 100

    def _maybe_fail(self, verb: str) -> None:
        self.calls.append(verb)
        errors = self.fail.get(verb)
        if errors:
            raise errors.pop(0)

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        return obj

    def add_router(self) -> dict[str, Any]:
        cr = yaml.safe_load(EXAMPLE.read_text())
        cr["metadata"]["uid"] = "uid-1"
        self.objects[("EgressRouter", KEY.namespace, KEY.name)] = self._stamp(cr)
        return cr

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self._maybe_fail("get")
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, kind: str, label_selector: str | None = None
             ) -> tuple[list[dict[str, Any]], str]:
        self._maybe_fail(f"list {kind}")
        items = [copy.deepcopy(o) for (k, _n, _m), o in self.objects.items() if k == kind]
        return items, str(self.version)

    def watch(self, kind: str, resource_version: str, label_selector: str | None = None,
              timeout: int = 300) -> Iterator[dict[str, Any]]:
        self.calls.append(f"watch {kind} {resource_version}")
        if kind != desired.KIND or not self.watches:
            return iter(())
        item = self.watches.pop(0)
        if isinstance(item, ApiError):
            raise item
        return item

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        self._maybe_fail("create")
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        assert key not in self.objects
        self.writes.append(f"create {obj['kind']}")
        self.objects[key] = self._stamp(copy.deepcopy(dict(obj)))
        return copy.deepcopy(self.objects[key])

    def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        self._maybe_fail("replace")
        meta = obj["metadata"]
        self.writes.append(f"update {obj['kind']}")
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = self._stamp(
            copy.deepcopy(dict(obj)))
        return copy.deepcopy(dict(obj))

    def delete(self, obj: Mapping[str, Any]) -> None:
        self._maybe_fail("delete")
        meta = obj["metadata"]
        self.writes.append(f"delete {obj['kind']}")
        self.objects.pop((obj["kind"], meta["namespace"], meta["name"]), None)

    def patch_status(self, router: Mapping[str, Any], status: Mapping[str, Any]
                     ) -> dict[str, Any]:
        self._maybe_fail("status")
        stored = self.objects[("EgressRouter", KEY.namespace, KEY.name)]
        self.writes.append("status")
        stored["status"] = copy.deepcopy(dict(status))
        return self._stamp(stored)

    def event(self, router: Mapping[str, Any], kind: str, reason: str, message: str, *,
              now: str, component: str) -> None:
        self._maybe_fail("event")
        self.events.append((kind, reason))


def make(fake: FakeApi) -> controller.Controller:
    ctl = controller.Controller(fake, controller.Settings(resync=3600),  # type: ignore[arg-type]
                                now=lambda: "2026-12-07T19:00:00Z")
    ctl.backoff = controller.backoff.Backoff(base=0.0, cap=0.0)
    return ctl


def degraded(fake: FakeApi) -> dict[str, Any]:
    cr = fake.objects[("EgressRouter", KEY.namespace, KEY.name)]
    return next(c for c in cr["status"]["conditions"] if c["type"] == "Degraded")


def test_a_server_error_is_retried_and_then_converges_without_duplicates() -> None:
    fake = FakeApi()
    fake.add_router()
    fake.fail["create"] = [ApiError(0, "Unreachable"), ApiError(503, "ServiceUnavailable")]
    ctl = make(fake)
    with pytest.raises(ApiError):
        ctl.reconcile(KEY)  # no answer: retried, no status written
    assert "status" not in fake.writes
    with pytest.raises(ApiError):
        ctl.reconcile(KEY)  # 503: Degraded, retried
    assert degraded(fake)["reason"] == "ApplyFailed"
    ctl.reconcile(KEY)
    kinds = [k for (k, _n, _m) in fake.objects if k != "EgressRouter"]
    assert sorted(kinds) == sorted(set(kinds))  # one of each
    assert degraded(fake)["status"] == "False"
    writes = len(fake.writes)
    ctl.reconcile(KEY)
    assert len(fake.writes) == writes  # converged: a further pass writes nothing


def test_a_conflict_is_retried_without_touching_the_status() -> None:
    fake = FakeApi()
    fake.add_router()
    ctl = make(fake)
    ctl.reconcile(KEY)
    cm = fake.objects[("ConfigMap", KEY.namespace, KEY.name)]
    cm["data"] = {"cni.json": "{}"}  # a hand edit
    fake.fail["replace"] = [ApiError(409, "Conflict")]
    statuses = fake.writes.count("status")
    with pytest.raises(ApiError):
        ctl.reconcile(KEY)
    assert fake.writes.count("status") == statuses
    ctl.reconcile(KEY)
    assert fake.objects[("ConfigMap", KEY.namespace, KEY.name)]["data"] != {"cni.json": "{}"}


def test_an_invalid_object_is_degraded_with_the_servers_message() -> None:
    fake = FakeApi()
    fake.add_router()
    fake.fail["create"] = [ApiError(422, "Invalid", "Service is invalid: spec.ports[0]")]
    ctl = make(fake)
    with pytest.raises(ApiError):
        ctl.reconcile(KEY)
    assert degraded(fake)["message"] == "422 Invalid: Service is invalid: spec.ports[0]"
    assert ("Warning", "ApplyFailed") in fake.events


def test_the_worker_never_dies_and_backs_off() -> None:
    fake = FakeApi()
    fake.add_router()
    fake.fail["get"] = [ApiError(500, "InternalError")] * 3 + [ApiError(0, "x")]
    ctl = make(fake)
    ctl.queue.add(KEY)
    stop = threading.Event()
    worker = threading.Thread(target=ctl._work, args=(stop,), daemon=True)
    worker.start()
    try:
        for _ in range(200):
            if ("Deployment", KEY.namespace, KEY.name) in fake.objects:
                break
            stop.wait(0.02)
        assert ("Deployment", KEY.namespace, KEY.name) in fake.objects
        assert worker.is_alive()
    finally:
        stop.set()
        worker.join(5)
    assert ctl.backoff.failures(KEY) == 0  # forgotten after the success


def test_an_expired_watch_lists_again_and_a_dropped_one_resumes() -> None:
    fake = FakeApi()
    cr = fake.add_router()
    stop = threading.Event()

    def events() -> Iterator[dict[str, Any]]:
        yield {"type": "MODIFIED", "object": cr}
        stop.set()

    fake.watches = [ApiError(410, "Expired"), ApiError(0, "Unreachable"), events()]
    ctl = make(fake)
    ctl._watch_loop(desired.KIND, stop)
    lists = [c for c in fake.calls if c.startswith("list EgressRouter")]
    assert len(lists) == 2  # the first, and again after the 410
    watches = [c for c in fake.calls if c.startswith("watch EgressRouter")]
    assert len(watches) == 3
    assert len(ctl.queue) == 1  # one key, however many events named it


def test_not_leader_stops_the_worker() -> None:
    fake = FakeApi()
    fake.add_router()
    ctl = make(fake)

    def refuse(obj: Mapping[str, Any]) -> dict[str, Any]:
        raise api.NotLeaderError("cannot create: not the leader")

    fake.create = refuse  # type: ignore[method-assign]
    ctl.queue.add(KEY)
    stop = threading.Event()
    ctl._work(stop)  # returns instead of looping
    assert not stop.is_set()
