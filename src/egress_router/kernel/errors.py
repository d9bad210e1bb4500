"""One error family for the kernel edge: `KernelError` and the kind of failure it is.

Before it, the callers kept tuples of exception types (``nft.NftError, iptables.IptablesError,
netlink.KernelRefusedError, OSError``) in two places, and a read failure was an `OSError` like
any other, so "the kernel refused" and "a bug opened the wrong file" looked the same. Every
module of ``egress_router.kernel`` now raises a `KernelError` subclass (with a `Kind` a caller can
branch on, e.g. to count failures by kind), and turns the `OSError` of a spawned tool or a /proc
write into one at its own edge. Callers catch `KernelError` and nothing else.
"""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    """What went wrong, independent of which tool or socket said so."""

    NFT_REFUSED = "nft refused"
    IPTABLES_REFUSED = "iptables refused"
    NETLINK_REFUSED = "netlink refused"
    CONNTRACK_FAILED = "conntrack failed"
    READ_FAILED = "read failed"
    TOOL_MISSING = "tool missing"
    TIMED_OUT = "timed out"
    NAMESPACE_FAILED = "namespace failed"
    SETUP_FAILED = "setup failed"


class KernelError(RuntimeError):
    """The kernel (or a tool talking to it) refused or could not be asked; ``kind`` says how."""

    default_kind = Kind.READ_FAILED

    def __init__(self, message: str, kind: Kind | None = None) -> None:
        super().__init__(message)
        self.kind = kind or self.default_kind
