"""SHA-256 digests without loading OpenSSL, for the long-running ``wait`` process.

``import hashlib`` loads ``_hashlib`` and with it OpenSSL's libcrypto: about
3.5 MiB of the waiting process's 40 MiB budget, for a few fingerprints
(our nftables table, the destination file, a VRRP address seed). CPython
builds its own SHA-256 into every interpreter (``_sha256`` in 3.11, ``_sha2``
from 3.12), the very code hashlib falls back to without OpenSSL; the digests
are the same bytes either way. hashlib is the last resort.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_SHA256: list[Callable[[bytes], Any]] = []


def _constructor() -> Callable[[bytes], Any]:
    if not _SHA256:
        try:
            from _sha256 import sha256  # type: ignore[import-not-found]  # noqa: PLC0415
        except ImportError:
            try:
                from _sha2 import sha256  # type: ignore[import-not-found]  # noqa: PLC0415
            except ImportError:
                from hashlib import sha256  # noqa: PLC0415
        _SHA256.append(sha256)
    return _SHA256[0]


def sha256(data: bytes) -> bytes:
    """The SHA-256 digest of ``data``."""
    value: bytes = _constructor()(data).digest()
    return value


def sha256_hex(data: bytes) -> str:
    """The SHA-256 digest of ``data`` in hexadecimal."""
    value: str = _constructor()(data).hexdigest()
    return value
