"""Copy the plugin executable into a node's CNI bin directory, atomically, and keep it current.

The installer DaemonSet (`egress-router render`) runs ``egress-router install-cni`` on every
node with the host's CNI bin directory mounted. A container runtime may execute the plugin at
any moment, also while a new version is being copied, so the file is never written in place:
the new content goes to a temporary file in the same directory (the same filesystem), is
fsynced and made executable, and is renamed over the old name. rename(2) is atomic: a runtime
executes either the old file or the new one, never a half-written one (and a running old
plugin keeps its inode). The content hash decides whether there is anything to do, so a
restart or the periodic re-check changes nothing on a current node, and a file someone
replaced, truncated or deleted comes back.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MODE = 0o755
TEMP_MARK = ".tmp-"


class InstallError(RuntimeError):
    """The executable could not be installed; the message says what to do."""


@dataclass(frozen=True)
class Installed:
    """The outcome of one `install`."""

    path: Path
    sha256: str
    changed: bool
    previous: str | None = None  # the replaced file's hash (None: there was none)


def sha256_of(path: Path) -> str | None:
    """The hex SHA-256 of a regular file, None when there is none at ``path``."""
    try:
        with path.open("rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            digest = hashlib.sha256()
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def check_name(name: str) -> str:
    """The file name in the CNI bin directory: the configuration's ``type``, one path component."""
    if not name or name in (".", "..") or "/" in name or "\0" in name or name.startswith("."):
        raise InstallError(
            f"cannot install the CNI plugin as {name!r}: expected a file name (the "
            "NetworkAttachmentDefinition's \"type\", e.g. egress-router), not a path"
        )
    return name


def _remove_leftovers(dest_dir: Path, name: str) -> None:
    # Temporary files of an installer that died between write and rename.
    for leftover in dest_dir.glob(f".{name}{TEMP_MARK}*"):
        with contextlib.suppress(OSError):
            leftover.unlink()
            log.info("removed %s, left by an interrupted install", leftover)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install(source: Path, dest_dir: Path, name: str) -> Installed:
    """Make ``dest_dir/name`` an executable copy of ``source``; a no-op when it already is."""
    check_name(name)
    wanted = sha256_of(source)
    if wanted is None:
        raise InstallError(
            f"cannot install the CNI plugin: {source} does not exist or is not a file; "
            "pass --source the plugin executable (scripts/build-cni.sh builds it; the image "
            "carries it)"
        )
    if not dest_dir.is_dir():
        raise InstallError(
            f"cannot install the CNI plugin into {dest_dir}: it is not a directory; mount the "
            "host's CNI bin directory there (hostPath, e.g. /opt/cni/bin)"
        )
    target = dest_dir / name
    current = sha256_of(target)
    if current == wanted and os.stat(target).st_mode & 0o777 == MODE:
        return Installed(target, wanted, changed=False, previous=current)
    _remove_leftovers(dest_dir, name)
    temp = dest_dir / f".{name}{TEMP_MARK}{os.getpid()}"
    digest = hashlib.sha256()
    try:
        with source.open("rb") as src, temp.open("wb") as dst:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fchmod(dst.fileno(), MODE)
            os.fsync(dst.fileno())
        if digest.hexdigest() != wanted:
            raise InstallError(
                f"cannot install the CNI plugin: {source} changed while it was copied; "
                "try again"
            )
        os.replace(temp, target)
        _fsync_dir(dest_dir)
    except OSError as err:
        raise InstallError(
            f"cannot install the CNI plugin as {target}: {err.strerror or err}; check that "
            f"{dest_dir} is the host's CNI bin directory, mounted writable"
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    return Installed(target, wanted, changed=True, previous=current)


def keep_installed(
    source: Path,
    dest_dir: Path,
    name: str,
    interval: float,
    wait: Callable[[float], bool],
) -> None:
    """Install now (an `InstallError` propagates), then re-check every ``interval`` seconds.

    ``wait(seconds)`` sleeps and returns True when the process should stop
    (SIGTERM). A failure after the first install is logged and retried: a
    node that had the plugin keeps the last good copy.
    """
    done = install(source, dest_dir, name)
    report(done)
    while not wait(interval):
        try:
            report(install(source, dest_dir, name), quiet=True)
        except InstallError as err:
            log.error("%s; retrying in %gs", err, interval)


def report(done: Installed, *, quiet: bool = False) -> None:
    if done.changed:
        was = f"replaced {done.previous[:12]}" if done.previous else "new"
        log.info("installed %s (sha256 %s, %s)", done.path, done.sha256[:12], was)
    elif not quiet:
        log.info("%s is current (sha256 %s)", done.path, done.sha256[:12])
