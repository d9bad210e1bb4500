"""``egress-router wait``: the router pod's main container, which keeps the router right.

Upstream's main container is a pause image: once the init container has
run, nobody watches, and a flushed table, a deleted route, an edited
ConfigMap or a destination that moved leave the router silently wrong. This
process owns the router for as long as the pod lives:

* it applies the configuration at start (converging, like ``init``) and
  announces the reserved address; SIGHUP announces it again;
* it watches ``EGRESS_DESTINATION_FILE`` (a ConfigMap the kubelet swaps in
  through a symlink, so the file is polled by inode, size and mtime, not
  watched with inotify) and applies an edit after validating it: a bad edit
  is reported and counted and the running rules stay; a good one becomes one
  transaction, and the connections of rules it removed are cut;
* every ``EGRESS_ROUTER_RECONCILE_SECONDS`` it compares the kernel with the
  desired state (our table as it was right after the last apply, links,
  addresses, routes, forwarding) and repairs what drifted, counting each repair;
* it re-resolves DNS-named destinations when their TTL runs out;
* it serves ``/healthz``, ``/readyz`` and ``/metrics`` on ``EGRESS_ROUTER_HTTP_PORT``
  (`router.http`: one event loop, a deadline per request, bounded connections);
* it stops within a second on SIGTERM and leaves the rules in place.

One process per network namespace: the lock is an abstract Unix socket,
whose namespace *is* the network namespace. Two containers of one pod share
it (a file under /run would not be shared between containers), while routers
in other namespaces (other pods, parallel test labs) never see each other's.
A second instance waits until the first exits, then takes over: it holds a
connection to the first one's socket, which the kernel resets the moment that
process exits, so the takeover follows within milliseconds, not a poll.

The loop reacts to kernel change events (`events.Watcher`) as well as to its
timers, so drift is repaired about as soon as it happens; the periodic
comparison stays as the safety net. SIGTERM unwinds whatever the main thread
is doing (an apply, a cut, announcements: each leaves the kernel consistent,
nft transactions being atomic) and the process exits 0 at once. Probes and
scrapes are served by the endpoint's own two threads from the last known state,
never waiting for the main thread's work.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType

from egress_router.core import config
from egress_router.kernel import events
from egress_router.router import http, metrics
from egress_router.router.reconciler import Edges, Router, real_edges

log = logging.getLogger(__name__)

LOCK_NAME = b"\0egress-router-wait"
WAIT_SLICE = 0.5  # the loop's longest sleep: a safety net should a signal miss the wait
SETTLE = 0.05  # after a kernel change event, let the burst (one `ip` command's) finish
# A kernel change whose repair is held back this long is checked, and /readyz says 503
# if it broke the data path (issue 18: ready while broken for 12 s).
BROKEN_AFTER = 1.0
HEALTH_GRACE = 30.0  # /healthz fails when the loop has not turned for this long (+ intervals)
# How long the main thread keeps the GIL while an HTTP thread waits for it (CPython's
# default: 5 ms). A probe's answer needs the GIL a handful of times (accept, read, write).
SWITCH_INTERVAL = 0.001
# After SIGTERM/SIGINT the process is gone within this long, whatever the main thread does
# (the kubelet's and the bound is 1 s; the orderly stop takes ~0.3 s).
STOP_DEADLINE = 0.8


class WaitError(RuntimeError):
    """The waiting container cannot run (the message says why and what to do)."""


class Stopping(BaseException):  # like KeyboardInterrupt: not an error
    """Raised by the SIGTERM/SIGINT handler to unwind the main thread's work at once."""


# ---------------------------------------------------------------------- HTTP


def serve_http(
    port: int, router: Router, heartbeat: Callable[[], float], stale_after: float,
) -> http.Server:
    """Start the HTTP endpoint (`router.http`): probes from the last known state, scrapes."""

    def health() -> tuple[bool, str]:
        age = time.monotonic() - heartbeat()
        if age > stale_after:
            return False, f"main loop has not run for {age:.0f}s"
        return True, "ok"

    try:
        server = http.Server(port, http.Handlers(health, router.readiness,
                                                 router.write_rule_metrics))
    except http.HttpError as err:
        raise WaitError(f"{err}; set {config.ENV_HTTP_PORT} to a free port (0 turns the "
                        "server off)") from None
    server.start()
    return server


# ---------------------------------------------------------------------- lock and signals


class NamespaceLock:
    """Held by at most one waiting process per network namespace (see the module docstring)."""

    def __init__(self, name: bytes = LOCK_NAME) -> None:
        self._name = name
        self._sock: socket.socket | None = None

    def try_acquire(self) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self._name)
            sock.listen(64)  # standbys wait in the queue (see `wait`)
        except OSError as err:
            sock.close()
            if err.errno == errno.EADDRINUSE:
                return False
            raise WaitError(f"cannot take the wait lock: {err}") from None
        self._sock = sock
        return True

    def wait(self) -> None:
        """Block until the holder is gone, then take the lock (SIGTERM unwinds the wait).

        The kernel resets a connection still queued on a listening socket when
        that socket closes, i.e. when its process exits, however it exits.
        """
        while not self.try_acquire():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                try:
                    sock.connect(self._name)
                except OSError:
                    time.sleep(0.01)  # released between our bind and connect: bind again
                    continue
                while not select.select([sock], [], [], WAIT_SLICE)[0]:
                    pass

    def holder(self) -> int | None:
        """The process id of the holder (0 or None when it is in another PID namespace)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            try:
                sock.connect(self._name)
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            except OSError:
                return None
            pid: int = struct.unpack("3i", creds)[0]
            return pid or None

    def release(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


class Signals:
    """SIGTERM/SIGINT stop, SIGHUP asks for an announcement, kernel events ask for a check.

    One handler each. While ``armed``, a stop signal raises `Stopping` in the
    main thread, wherever it is; ``changed`` is set (to when) by the kernel
    event thread.
    """

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.stopping = False
        self.armed = False
        self.hup = False
        self.changed: float | None = None

    def forget(self) -> None:
        """Forget the kernel events seen so far (the start-up's own changes)."""
        self.changed = None

    def kernel_changed(self) -> None:
        if self.changed is None:
            self.changed = time.monotonic()
        self.wake.set()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._hup)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            return
        log.info("received %s, exiting", signal.Signals(signum).name)
        self.stopping = True
        # No `wake.set()` here: the handler runs in the main thread, possibly inside
        # `wake.wait()` with the event's lock held, and would deadlock on it. The raise
        # unwinds the wait itself; unarmed (the shell's own cleanup), nothing waits.
        if self.armed:
            raise Stopping

    def _hup(self, signum: int, frame: FrameType | None) -> None:
        self.hup = True  # seen within WAIT_SLICE (no `wake.set()`: see `_stop`)


class StopDeadline:
    """The hard bound behind the orderly stop: exit 0 within `STOP_DEADLINE` of a stop signal.

    `Stopping` unwinds the main thread from a signal handler, which Python runs
    between two bytecodes wherever they are: inside a lock's or an event's
    internals, a finalizer, a library's cleanup. Almost always the unwinding
    and the shell's cleanup take a few hundred milliseconds; should one of those
    places ever swallow the exception or leave a lock held (one hang in ~14
    bench runs of SIGTERM during an apply was seen, cause not found), the
    process would outlive the kubelet's grace period. So the stop does not rest
    on the main thread alone: CPython's C-level handler writes every caught
    signal's number to the wakeup fd (`signal.set_wakeup_fd`) whatever the main
    thread is doing, and this thread, blocked on the other end of that pipe,
    ends the process with `os._exit(0)` once the deadline passes. Nothing is
    lost by that: nft transactions are atomic, the rules stay in place by design,
    the lock socket dies with the process and keepalived (HA) follows its parent
    out through PR_SET_PDEATHSIG, releasing the address.
    """

    def __init__(self, deadline: float = STOP_DEADLINE) -> None:
        self.deadline = deadline
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)  # set_wakeup_fd requires it
        self._thread = threading.Thread(target=self._watch, name="stop-deadline", daemon=True)

    def install(self) -> None:
        """From the main thread (as `signal.set_wakeup_fd` demands), after the handlers."""
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._thread.start()

    def _watch(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        stops = {int(signal.SIGTERM), int(signal.SIGINT)}
        while not stops.intersection(os.read(self._read, 64)):
            pass  # SIGHUP: the main thread's business
        time.sleep(self.deadline)
        # No logging: its locks may be the very ones the main thread is stuck in.
        os.write(2, b"egress-router: the orderly stop took too long; exiting now\n")
        os._exit(0)


def _loop(
    router: Router, settings: config.WaitSettings, signals: Signals, beat: list[float]
) -> None:
    now = time.monotonic()
    next_watch = now + settings.watch
    next_reconcile = now + settings.reconcile
    last_event_check = 0.0
    verified: float | None = None  # the pending event a held-back check was made for
    generation = router.generation
    while not signals.stopping:
        now = time.monotonic()
        beat[0] = now
        if router.generation != generation:
            generation = router.generation
            _freeze(signals)
            continue  # a SIGTERM during the collection: seen at the top of the loop
        if signals.hup:
            signals.hup = False
            router.announce()
        if now >= next_watch:
            router.poll_file()
            next_watch = time.monotonic() + settings.watch
        router.refresh_dns()
        router.announce_due()
        changed = signals.changed
        event_due = (
            None if changed is None else max(changed + SETTLE, last_event_check + router.backoff)
        )
        if (event_due is not None and now >= event_due) or now >= next_reconcile:
            signals.changed = None
            verified = None
            router.reconcile()
            last_event_check = time.monotonic()
            next_reconcile = last_event_check + settings.reconcile
            continue  # our own repairs are kernel changes too: look at the clock again
        deadlines = [next_watch, next_reconcile]
        if event_due is not None and changed is not None:
            # The repair is held back (the backoff): after BROKEN_AFTER, check without
            # repairing, so that /readyz says 503 while the data path is known broken.
            if verified != changed:
                if now >= changed + BROKEN_AFTER:
                    verified = changed
                    router.verify()
                    continue
                deadlines.append(changed + BROKEN_AFTER)
            deadlines.append(event_due)
        else:
            router.settle(background=True)  # idle work (a second or two at 10,000 rules)
        for due in (router.next_dns(), router.next_announcement()):
            if due is not None:
                deadlines.append(due)
        timeout = max(0.0, min(deadlines) - time.monotonic())
        signals.wake.wait(min(timeout, WAIT_SLICE))
        signals.wake.clear()


def _freeze(signals: Signals) -> None:
    """Take what the process holds now out of the cyclic garbage collector's sight.

    At 10,000 rules the configuration is some 100,000 objects, which every full
    collection would walk again (tens of milliseconds each, several per edit,
    with the GIL held: probes wait meanwhile). They hold no reference cycles
    and are freed by reference counting when an edit replaces them; frozen,
    the collector walks only what is younger. Called after every apply.

    Unarmed meanwhile: a collection runs finalizers (``__del__``), and an
    exception raised inside one is printed and dropped, so a `Stopping` raised
    there would be lost; the stop flag is seen right after.
    """
    armed, signals.armed = signals.armed, False
    try:
        gc.collect()
        gc.freeze()
    finally:
        signals.armed = armed


def _backend(env: Mapping[str, str]) -> config.Backend:
    try:
        return config.Backend((env.get(config.ENV_BACKEND) or "nftables").strip().lower())
    except ValueError:
        return config.Backend.NFTABLES  # Router.load reports the bad value


def run(
    env: Mapping[str, str],
    kernel: Edges | None = None,
    reread: Callable[[], Mapping[str, str]] | None = None,
) -> int:
    """Take the lock, apply, serve and watch until SIGTERM; the exit code (0).

    Raises `config.ConfigError` (exit 1) for a bad configuration and
    `engine.ApplyError` or `WaitError` (exit 3) when the router cannot run.
    """
    settings = config.parse_wait_settings(env)
    http_port = config.parse_http_port(
        env.get(config.ENV_HTTP_PORT, str(config.DEFAULT_HTTP_PORT))
    )
    sys.setswitchinterval(SWITCH_INTERVAL)
    signals = Signals()
    signals.install()
    StopDeadline().install()
    signals.armed = True
    lock = NamespaceLock()
    server = None
    watcher: events.Watcher | None = None
    router: Router | None = None
    try:
        if not lock.try_acquire():
            holder = lock.holder()
            who = f"process {holder}" if holder else "a process in another container"
            log.warning(
                "another egress-router wait (%s) runs in this network namespace; "
                "standing by until it exits",
                who,
            )
            lock.wait()
            log.info("the other instance exited; taking over")
        registry = metrics.Metrics()
        router = Router(
            env, settings, kernel or real_edges(_backend(env), settings), registry,
            reread=reread,
        )
        router.load()  # parsed once, here: 10,000 rules are worth not parsing twice
        beat = [time.monotonic()]
        if http_port:
            server = serve_http(
                http_port, router, lambda: beat[0],
                HEALTH_GRACE + settings.reconcile + settings.watch,
            )
        if kernel is None:
            watcher = events.Watcher(signals.kernel_changed)
            watcher.start()
        router.start(on_ready=signals.forget)  # events after that are drift to repair
        _freeze(signals)
        _loop(router, settings, signals, beat)
    except Stopping:
        pass
    finally:
        signals.armed = False
        if router is not None:
            router.stop()  # HA: keepalived releases the reserved address
        if watcher is not None:
            watcher.stop()
        if server is not None:
            server.close()
        lock.release()
    return 0
