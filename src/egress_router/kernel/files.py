"""Reading the files the configuration names: bounded, regular files only, never blocking.

The pure core (`egress_router.core.config`) parses text; this module is where that text comes
from when the environment names a file (``EGRESS_DESTINATION_FILE``, the CNI configuration of
``EGRESS_ROUTER_CNI_CONFIG``, the file ``egress-router render`` reads). `load_config` and
`read_destination_text` are the core's functions with the real reader passed in.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping

from egress_router.core import config
from egress_router.core.config import ConfigError
from egress_router.core.config.variables import (
    DESTINATION_FILE_LIMIT,
    ENV_CNI_CONFIG,
    ENV_DESTINATION_FILE,
)


def load_config(
    env: Mapping[str, str], read_text: Callable[[str], str] | None = None
) -> config.Config:
    """`config.load_config`, reading the destination file (or through ``read_text``)."""
    return config.load_config(env, read_text or read_destination_file)


def read_destination_text(env: Mapping[str, str]) -> tuple[str, str]:
    """`config.read_destination_text` with the real file reader."""
    return config.read_destination_text(env, read_destination_file)


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(mode: int, variable: str) -> str | None:
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
    mounted = variable in (ENV_DESTINATION_FILE, ENV_CNI_CONFIG)
    return (
        f"it is {kind}, not a regular file; point {variable} at a file"
        + (" (the mounted ConfigMap's key)" if mounted else "")
    )


def _too_large(size: str) -> str:
    return (
        f"it is larger than {DESTINATION_FILE_LIMIT} bytes ({size}); the limit holds "
        "100,000 rules: split the rules over several routers or drop comments"
    )


def read_destination_file(path: str) -> str:
    """The destination file's text: a regular file of at most `DESTINATION_FILE_LIMIT` bytes."""
    return read_bounded_file(path, ENV_DESTINATION_FILE, "destination file")


def read_bounded_file(path: str, variable: str, what: str) -> str:
    """The text of the file ``variable`` names: regular, at most `DESTINATION_FILE_LIMIT` bytes.

    The one reader of the file (``init``, ``wait`` and its reloads), so that a
    FIFO, a device or a socket is refused instead of hanging the router or
    filling its memory: the type is checked before opening (a socket cannot be
    opened at all) and again on the open descriptor (the path may change in
    between), the open never blocks (O_NONBLOCK: a FIFO without writer), and
    at most one byte more than the limit is ever read. Raises `ConfigError`.
    """

    def refuse(cause: str) -> ConfigError:
        return ConfigError(variable, f"cannot read {what} {path!r}: {cause}")

    try:
        problem = _not_regular(os.stat(path).st_mode, variable)
        if problem is not None:
            raise refuse(problem)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            problem = _not_regular(info.st_mode, variable)
            if problem is not None:
                raise refuse(problem)
            if info.st_size > DESTINATION_FILE_LIMIT:
                raise refuse(_too_large(f"{info.st_size} bytes"))
            chunks: list[bytes] = []
            left = DESTINATION_FILE_LIMIT + 1
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
    except ConfigError:
        raise
    except OSError as err:
        raise refuse(
            f"{err.strerror or err}; mount the ConfigMap or fix the path"
        ) from None
    except ValueError:  # a NUL byte, or a code point the file system cannot name
        raise refuse(f"it is not a valid path; fix {variable}") from None
    data = b"".join(chunks)
    if len(data) > DESTINATION_FILE_LIMIT:
        raise refuse(_too_large("it grew while it was read"))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise refuse(
            f"line {line} is not UTF-8 (byte 0x{data[err.start]:02x}); save the file as UTF-8"
        ) from None


