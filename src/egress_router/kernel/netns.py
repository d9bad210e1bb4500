"""Run a piece of Python inside another network namespace, in a forked child.

A CNI plugin is started in the host's network namespace but has to configure
the pod's (``CNI_NETNS``): addresses, routes, sysctls, an nftables ruleset
and raw-socket announcements. The engine does all of that in "the current
namespace", and the ``nft`` binary it spawns inherits the namespace of its
parent, so the simplest correct way is to fork a child, move the child into
the pod's namespace (``setns``), run the engine there and send the result
back through a pipe. The plugin process itself never leaves the host
namespace, so a failure in the child cannot strand it in the wrong one.

Python 3.11 has no ``os.setns``/``os.unshare``, so both are called through
libc. Unlike ``pyroute2.netns.setns`` (which defaults to ``O_CREAT``), opening
a namespace here never creates one: a missing path is an error, which is what
DEL and CHECK need to tell "the pod is gone" from "it is there".
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import TypeVar

from egress_router.kernel import errors

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
NSFS_MAGIC = 0x6E736673
DEFAULT_TIMEOUT = 60.0

_T = TypeVar("_T")
_LIBC: list[ctypes.CDLL] = []


class NetnsError(errors.KernelError):
    """Entering a namespace, or the code run inside it, failed unexpectedly.

    ``details`` carries the child's traceback (for the debug log, never for users); ``kind``
    is `errors.Kind.TIMED_OUT` when the child gave no answer in time, so that a caller branches
    on the kind and never on the message's text.
    """

    default_kind = errors.Kind.NAMESPACE_FAILED

    def __init__(
        self, message: str, details: str = "", kind: errors.Kind | None = None
    ) -> None:
        super().__init__(message, kind)
        self.details = details


class NamespaceGoneError(NetnsError):
    """The namespace path does not exist or is not a network namespace."""


def _c() -> ctypes.CDLL:
    if not _LIBC:
        # The C library the interpreter is linked with (dlopen(NULL)): ctypes.util.find_library
        # would run `ldconfig -p` in a child process at every plugin invocation.
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


def is_netns(path: str) -> bool:
    """True when ``path`` exists and is a network namespace (a bind mount or /proc/PID/ns/net)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        # An nsfs file is what setns() accepts; checking the filesystem type keeps
        # a plain file (e.g. /var/run/netns/x after its bind mount went away) out.
        return _is_nsfs(fd)
    finally:
        os.close(fd)


def _is_nsfs(fd: int) -> bool:
    class _Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 120)]

    buf = _Statfs()
    if _c().fstatfs(fd, ctypes.byref(buf)) != 0:
        return False
    return int(buf.f_type) == NSFS_MAGIC


def enter(path: str) -> None:
    """Move the calling process (single-threaded: a forked child) into the namespace at ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise NamespaceGoneError(
            f"cannot open network namespace {path!r}: {err.strerror or err}"
        ) from None
    try:
        if _c().setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise NamespaceGoneError(
                f"cannot enter network namespace {path!r}: {os.strerror(code)}"
            )
    finally:
        os.close(fd)


def unshare() -> None:
    """Move the calling process into a new, empty network namespace (gone when it exits)."""
    if _c().unshare(CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise NetnsError(f"cannot create a scratch network namespace: {os.strerror(code)}")


def run(
    path: str | None, fn: Callable[[], _T], *, timeout: float = DEFAULT_TIMEOUT
) -> _T:
    """Run ``fn`` in a forked child inside the namespace at ``path`` and return its result.

    ``path=None`` runs it in a fresh scratch namespace instead (nothing in it
    survives the child). The result must be picklable. An exception in the
    child comes back as `NetnsError` (`NamespaceGoneError` when the namespace
    cannot be entered); a child still running after ``timeout`` seconds is
    killed. ``fn`` must not write to stdout: that belongs to the parent.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        _child(path, fn, write_end)
    os.close(write_end)
    try:
        payload = _read_all(read_end, pid, timeout, path)
    except BaseException:
        # Interrupted (a signal, a timeout): the child must not outlive the caller's undo.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.close(read_end)
        _reap(pid)
    try:
        status, value, details = pickle.loads(payload)
    except Exception:
        raise NetnsError(
            f"cannot run in network namespace {path or '(scratch)'}: the child died without "
            "an answer"
        ) from None
    if status == "ok":
        return value  # type: ignore[no-any-return]
    if status == "gone":
        raise NamespaceGoneError(str(value))
    raise NetnsError(str(value), str(details))


def _child(path: str | None, fn: Callable[[], object], write_end: int) -> None:
    code = 0
    try:
        try:
            if path is None:
                unshare()
            else:
                enter(path)
            answer: tuple[str, object, str] = ("ok", fn(), "")
        except NamespaceGoneError as err:
            answer = ("gone", str(err), "")
        except BaseException as err:  # reported to the parent, which decides
            answer = ("error", f"{type(err).__name__}: {err}", traceback.format_exc())
        try:
            data = pickle.dumps(answer)
        except Exception as err:
            data = pickle.dumps(("error", f"cannot send the result back: {err}", ""))
        with os.fdopen(write_end, "wb") as out:
            out.write(data)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _read_all(fd: int, pid: int, timeout: float, path: str | None) -> bytes:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NetnsError(
                f"cannot run in network namespace {path or '(scratch)'}: no answer within "
                f"{timeout:g}s, stopped",
                kind=errors.Kind.TIMED_OUT,
            )
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
