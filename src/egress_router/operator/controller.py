"""The reconcile loop: watches fill a work queue, one worker makes each EgressRouter true.

Level-triggered, as controller-runtime works: an event only names the resource to look at
(an EgressRouter, or the owner of a changed, deleted or relabelled object it owns); the worker
reads the resource and its objects afresh and writes only what differs (`diff`), so a replayed
event, a resync, a relist after an expired watch (410) or a restarted operator write nothing
when nothing changed. A resource is in the queue at most once, and one worker handles one
resource at a time. A failure requeues the resource after `backoff` (409 conflicts too, without
touching its status); the loop itself never exits for an API error.

Every `Settings.resync` seconds every resource is queued again, which puts back a hand edit even
if its watch event was missed.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from egress_router.core import config
from egress_router.operator import backoff, conditions, desired, diff
from egress_router.operator.api import OWNED_KINDS, Api, ApiError, NotLeaderError, describe

log = logging.getLogger(__name__)

COMPONENT = desired.MANAGED_BY
OWNED_SELECTOR = f"app.kubernetes.io/managed-by={desired.MANAGED_BY}"
WATCH_TIMEOUT = 300  # seconds; the server ends a watch after this and it is resumed
INSTALLER_SUFFIX = "-cni-installer"


@dataclass(frozen=True)
class Settings:
    image: str | None = None  # the router image (None: the one `render` defaults to)
    resync: float = 300.0


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Queue:
    """Keys due at a time; each key at most once (the earliest due time wins)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Hashable]] = []
        self._due: dict[Hashable, float] = {}
        self._seq = itertools.count()
        self._cond = threading.Condition()

    def add(self, key: Hashable, delay: float = 0.0) -> None:
        due = self._clock() + delay
        with self._cond:
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            heapq.heappush(self._heap, (due, next(self._seq), key))
            self._cond.notify()

    def get(self, stop: threading.Event, timeout: float = 1.0) -> Hashable | None:
        """The next due key, or None after ``timeout`` seconds or once ``stop`` is set."""
        deadline = self._clock() + timeout
        with self._cond:
            while not stop.is_set():
                while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded by an earlier due time
                now = self._clock()
                if self._heap and self._heap[0][0] <= now:
                    _due, _seq, key = heapq.heappop(self._heap)
                    del self._due[key]
                    return key
                if now >= deadline:
                    return None
                wait = deadline - now
                if self._heap:
                    wait = min(wait, self._heap[0][0] - now)
                self._cond.wait(max(wait, 0.01))
        return None

    def __len__(self) -> int:
        with self._cond:
            return len(self._due)


class Controller:
    """Watches, resync and the worker of one leader's term."""

    def __init__(
        self, api: Api, settings: Settings, *, now: Callable[[], str] = now_rfc3339
    ) -> None:
        self.api = api
        self.settings = settings
        self.now = now
        self.queue = Queue()
        self.backoff = backoff.Backoff()
        self.reconciles = 0

    # ------------------------------------------------------------------ run

    def run(self, stop: threading.Event) -> None:
        """Reconcile until ``stop`` is set (the Lease lost, or the process ends)."""
        threads = [
            threading.Thread(target=self._watch_loop, args=(kind, stop), daemon=True,
                             name=f"watch-{kind}")
            for kind in (desired.KIND, *OWNED_KINDS)
        ]
        threads.append(threading.Thread(target=self._resync_loop, args=(stop,), daemon=True,
                                        name="resync"))
        for thread in threads:
            thread.start()
        self._work(stop)

    def _work(self, stop: threading.Event) -> None:
        while not stop.is_set():
            key = self.queue.get(stop)
            if key is None:
                continue
            assert isinstance(key, desired.Key)
            self.reconciles += 1
            try:
                self.reconcile(key)
            except NotLeaderError as err:
                log.warning("%s", err)
                return
            except ApiError as err:
                delay = self.backoff.fail(key)
                log.warning("cannot reconcile EgressRouter %s: %s; retrying in %.1fs",
                            key, err, delay)
                self.queue.add(key, delay)
            except Exception:
                # A bug must not end the loop (nor restart the pod in a loop): log it, back off.
                delay = self.backoff.fail(key)
                log.exception("cannot reconcile EgressRouter %s; retrying in %.1fs", key, delay)
                self.queue.add(key, delay)
            else:
                self.backoff.forget(key)

    def _watch_loop(self, kind: str, stop: threading.Event) -> None:
        """List, then watch from the list's version; list again after 410, back off on errors."""
        selector = None if kind == desired.KIND else OWNED_SELECTOR
        version: str | None = None
        delays = backoff.Backoff()
        while not stop.is_set():
            try:
                if version is None:
                    items, version = self.api.list(kind, selector)
                    for item in items:
                        self._enqueue(kind, item)
                for event in self.api.watch(kind, version, selector, WATCH_TIMEOUT):
                    obj = event.get("object") or {}
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if event.get("type") != "BOOKMARK":
                        self._enqueue(kind, obj)
                    if stop.is_set():
                        return
                delays.forget(kind)
            except ApiError as err:
                if err.status == 410:
                    log.info("watch of %s expired (410): listing again", kind)
                    version = None
                    continue
                delay = delays.fail(kind)
                log.warning("cannot watch %s: %s; again in %.1fs", kind, err, delay)
                stop.wait(delay)
            except Exception:
                delay = delays.fail(kind)
                log.exception("cannot watch %s; again in %.1fs", kind, delay)
                stop.wait(delay)

    def _enqueue(self, kind: str, obj: Mapping[str, Any]) -> None:
        if kind == desired.KIND:
            self.queue.add(desired.key_of(obj))
            return
        owner = desired.owner_key(obj)
        if owner is not None:
            self.queue.add(owner)

    def _resync_loop(self, stop: threading.Event) -> None:
        delays = backoff.Backoff()
        while not stop.wait(self.settings.resync):
            try:
                items, _version = self.api.list(desired.KIND)
            except ApiError as err:
                log.warning("cannot list EgressRouters for the resync: %s", err)
                stop.wait(delays.fail("resync"))
                continue
            delays.forget("resync")
            for item in items:
                self.queue.add(desired.key_of(item))

    # ------------------------------------------------------------------ reconcile

    def reconcile(self, key: desired.Key) -> None:
        """Make one EgressRouter's objects and status true; raises `ApiError` to retry."""
        router = self.api.get(desired.KIND, key.namespace, key.name)
        if router is None or router["metadata"].get("deletionTimestamp"):
            return  # the garbage collector deletes what it owned
        uid = router["metadata"]["uid"]
        try:
            want = desired.desired_objects(router, self.settings.image)
        except config.ConfigError as err:
            # Nothing running is touched: the old objects stay as they are.
            found = self.api.get("Deployment", key.namespace, key.name)
            owned = found if found is not None and desired.owned_by(found, uid) else None
            self._status(router, conditions.Facts(invalid=str(err), deployment=owned))
            return
        deployment: Mapping[str, Any] | None = None
        try:
            for obj in want.objects:
                current = self._apply(router, obj)
                if obj["kind"] == "Deployment":
                    deployment = current
            self._prune(router, {(o["kind"], o["metadata"]["name"]) for o in want.objects})
        except ApiError as err:
            if err.status in {409, 0}:
                raise  # someone wrote meanwhile / no answer: read again after a pause
            self._status(router, conditions.Facts(failure=str(err), deployment=deployment))
            raise
        except _ForeignError as err:
            self._status(router, conditions.Facts(failure=str(err), deployment=deployment))
            return
        self._status(router, conditions.Facts(deployment=deployment))

    def _apply(self, router: Mapping[str, Any], obj: Mapping[str, Any]) -> Mapping[str, Any]:
        meta = obj["metadata"]
        current: Mapping[str, Any] | None = self.api.get(
            obj["kind"], meta["namespace"], meta["name"]
        )
        if current is None:
            created = self.api.create(obj)
            self._event(router, "Normal", "Created", f"created {describe(obj)}")
            return created
        if not desired.owned_by(current, router["metadata"]["uid"]):
            raise _ForeignError(
                f"cannot manage {describe(obj)}: it exists and is not owned by this "
                f"EgressRouter; delete or rename it"
            )
        where = diff.difference(current, obj)
        if where is None:
            return current
        updated = self.api.replace(diff.update_body(current, obj))
        self._event(router, "Normal", "Updated", f"updated {describe(obj)} ({where} differed)")
        return updated

    def _prune(self, router: Mapping[str, Any], wanted: set[tuple[str, str]]) -> None:
        """Delete what this resource owned but no longer renders (a pair's PodDisruptionBudget)."""
        meta = router["metadata"]
        names = (meta["name"], f"{meta['name']}{INSTALLER_SUFFIX}")
        for kind in OWNED_KINDS:
            name = names[1] if kind == "DaemonSet" else names[0]
            if (kind, name) in wanted:
                continue
            current = self.api.get(kind, meta["namespace"], name)
            if current is not None and desired.owned_by(current, meta["uid"]):
                self.api.delete(current)
                self._event(router, "Normal", "Deleted", f"deleted {describe(current)}")

    def _status(self, router: Mapping[str, Any], facts: conditions.Facts) -> None:
        previous = (router.get("status") or {}).get("conditions") or []
        new = conditions.conditions(facts, previous, self.now())
        if conditions.same(previous, new):
            return
        try:
            self.api.patch_status(router, {"conditions": new})
        except ApiError as err:
            if err.status == 404:
                return  # deleted meanwhile: nothing left to report on
            raise
        old_degraded = conditions.find(previous, conditions.DEGRADED) or {}
        degraded = conditions.find(new, conditions.DEGRADED) or {}
        if degraded.get("status") == "True" and (
            old_degraded.get("status") != "True"
            or old_degraded.get("message") != degraded.get("message")
        ):
            self._event(router, "Warning", str(degraded["reason"]), str(degraded["message"]))
        old_available = (conditions.find(previous, conditions.AVAILABLE) or {}).get("status")
        available = conditions.find(new, conditions.AVAILABLE) or {}
        if available.get("status") != old_available and old_available is not None:
            self._event(router, "Normal", str(available["reason"]), str(available["message"]))

    def _event(self, router: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        log.info("EgressRouter %s: %s: %s", desired.key_of(router), reason, message)
        try:
            self.api.event(router, kind, reason, message, now=self.now(), component=COMPONENT)
        except ApiError as err:
            log.warning("cannot record event %s: %s", reason, err)  # the change itself stands


class _ForeignError(Exception):
    """An object of the resource's name exists and belongs to someone else."""
