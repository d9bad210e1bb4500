"""One writer among the operator's replicas: leader election by a coordination.k8s.io Lease.

The official client's `kubernetes.leaderelection` with its `LeaseLock` (the same Lease record
client-go writes, updated by PUT with the resourceVersion read, so two candidates cannot both
take it). The leader runs the controller until it fails to renew within the renew deadline;
then `leading` is cleared at once (every write checks it: `Api.may_write`), the controller's
stop is set, and the replica stands again as a candidate. Any error of the election itself
(the API server unreachable) is logged and retried after a pause: it never ends the process.

Timings as client-go's defaults: a Lease of 15 s, renewed within 10 s, tried every 2 s; a
standby takes over at most ~15 s after the leader stopped renewing (killed, partitioned).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    lease_duration: int = 15
    renew_deadline: int = 10
    retry_period: int = 2


class Election:
    """Campaign for the Lease and run ``lead(stop)`` while holding it."""

    def __init__(
        self,
        namespace: str,
        name: str,
        identity: str,
        lead: Callable[[threading.Event], None],
        timing: Timing = Timing(),
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lead = lead
        self.timing = timing
        self.leading = threading.Event()

    def is_leader(self) -> bool:
        return self.leading.is_set()

    def run(self, stop: threading.Event) -> None:
        """Campaign until ``stop`` is set (in practice: until the process ends)."""
        while not stop.is_set():
            term = threading.Event()
            worker: list[threading.Thread] = []

            def started(
                term: threading.Event = term, worker: list[threading.Thread] = worker
            ) -> None:
                worker.append(threading.current_thread())
                self.leading.set()
                log.info("%s holds Lease %s/%s: reconciling", self.identity,
                         self.namespace, self.name)
                try:
                    self.lead(term)
                finally:
                    self.leading.clear()
                if not term.is_set() and not stop.is_set():
                    # The controller ended on its own: stop renewing a Lease that guards
                    # nothing (the library stops when this callback raises).
                    raise RuntimeError("the controller stopped while leading")

            def stopped(term: threading.Event = term) -> None:
                self.leading.clear()
                term.set()
                log.warning("%s lost Lease %s/%s: stopped writing", self.identity,
                            self.namespace, self.name)

            lock = LeaseLock(self.name, self.namespace, self.identity)
            cfg = electionconfig.Config(
                lock, self.timing.lease_duration, self.timing.renew_deadline,
                self.timing.retry_period, started, stopped,
            )
            try:
                leaderelection.LeaderElection(cfg).run()
            except Exception as err:
                log.warning("leader election: %s; standing again in %ds", err,
                            self.timing.retry_period)
            self.leading.clear()
            term.set()
            for thread in worker:
                thread.join(timeout=self.timing.renew_deadline)
            stop.wait(self.timing.retry_period)


def release(namespace: str, name: str, identity: str) -> bool:
    """Hand the Lease back if ``identity`` holds it (client-go's ReleaseOnCancel); best effort."""
    from kubernetes import client  # noqa: PLC0415

    api = client.CoordinationV1Api()
    try:
        lease = api.read_namespaced_lease(name, namespace)
        if lease.spec is None or lease.spec.holder_identity != identity:
            return False
        lease.spec.holder_identity = None
        lease.spec.lease_duration_seconds = 1
        api.replace_namespaced_lease(name=name, namespace=namespace, body=lease)
    except Exception as err:
        log.warning("cannot release Lease %s/%s: %s", namespace, name, err)
        return False
    log.info("released Lease %s/%s", namespace, name)
    return True
