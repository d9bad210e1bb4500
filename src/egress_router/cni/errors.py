"""CNI error codes and the one error type the plugin reports.

The runtime (and Multus, and the kubelet event a person finally reads) only
sees the error object printed on stdout, so every failure carries a code from
the specification or from our own range, a ``msg`` that says what is wrong
and what to do, and optional ``details``. Codes 100 and up are ours; the
README lists them.
"""

from __future__ import annotations

from typing import Any

# Well-known codes of the CNI specification (1.1.0, "Error").
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
CONTAINER_UNKNOWN = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
PLUGIN_NOT_AVAILABLE_CONTAINERS_DAMAGED = 51

# Ours (100+).
INTERNAL = 100
INTERFACE_SETUP_FAILED = 101
MASTER_NOT_FOUND = 102
INTERFACE_EXISTS = 103
ROUTER_SETUP_FAILED = 104
CHECK_FAILED = 105
TIMED_OUT = 106

DESCRIPTIONS: dict[int, str] = {
    INCOMPATIBLE_VERSION: "incompatible CNI version",
    UNSUPPORTED_FIELD: "unsupported field in the network configuration",
    CONTAINER_UNKNOWN: "the container (its network namespace) does not exist",
    INVALID_ENVIRONMENT: "invalid or missing CNI_* environment variables",
    IO_FAILURE: "I/O failure",
    DECODE_FAILURE: "the network configuration is not a JSON object",
    INVALID_CONFIG: "invalid network configuration",
    TRY_AGAIN_LATER: "a transient condition; try again later",
    PLUGIN_NOT_AVAILABLE: "the plugin cannot serve ADD on this node",
    INTERNAL: "unexpected internal error (a bug: please report it with the debug log)",
    INTERFACE_SETUP_FAILED: "the kernel refused to create, move or rename the macvlan",
    MASTER_NOT_FOUND: "the master (parent) interface does not exist on this node",
    INTERFACE_EXISTS: "the interface name is already taken in the container",
    ROUTER_SETUP_FAILED: "the egress router setup inside the container failed",
    CHECK_FAILED: "the container's egress router differs from its configuration",
    TIMED_OUT: "a step did not finish in time",
}


class CniError(Exception):
    """A failure reported to the runtime as a CNI error object (never a traceback)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        obj: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            obj["details"] = self.details
        return obj
