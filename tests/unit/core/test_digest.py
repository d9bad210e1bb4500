"""core.digest: the same SHA-256 as hashlib's, without loading OpenSSL."""

from __future__ import annotations

import hashlib

from egress_router.core import digest


def test_digests_equal_hashlibs() -> None:
    for data in (b"", b"abc", b"x" * 100_000):
        assert digest.sha256(data) == hashlib.sha256(data).digest()
        assert digest.sha256_hex(data) == hashlib.sha256(data).hexdigest()
    # The NIST test vector: a wrong constructor cannot pass this.
    assert digest.sha256_hex(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
