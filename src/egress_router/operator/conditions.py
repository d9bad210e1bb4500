"""The status of an EgressRouter as upstream reports it: Available, Progressing, Degraded.

Each condition has a status (True/False/Unknown), a CamelCase reason, a one-line message and the
time its status last changed; as apimachinery's SetStatusCondition does, a new reason or message
keeps the time when the status stays. Computed from three facts: the resource's own one-line
error (invalid: render's message), the last failure to write its objects, and its Deployment's
status. The operator writes the status only when this list differs from the stored one.

Pure: the clock is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

AVAILABLE = "Available"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
TYPES = (AVAILABLE, PROGRESSING, DEGRADED)

INVALID = "InvalidSpec"
APPLY_FAILED = "ApplyFailed"
AS_EXPECTED = "AsExpected"
DEPLOYMENT_AVAILABLE = "DeploymentAvailable"
DEPLOYMENT_UNAVAILABLE = "DeploymentUnavailable"
DEPLOYING = "Deploying"
DEPLOYED = "Deployed"


@dataclass(frozen=True)
class Facts:
    """What the conditions are computed from."""

    invalid: str | None = None  # the resource's one-line error (render's)
    failure: str | None = None  # the last error writing its objects
    deployment: Mapping[str, Any] | None = None  # its Deployment as the API server has it


def _rollout(deployment: Mapping[str, Any]) -> tuple[bool, bool, str]:
    """(available, progressing, message) of a Deployment's status."""
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    meta = deployment.get("metadata") or {}
    wanted = int(spec.get("replicas", 1))
    available = int(status.get("availableReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    observed = int(status.get("observedGeneration") or 0)
    generation = int(meta.get("generation") or 0)
    message = (
        f"Deployment {meta.get('name')}: {available} of {wanted} replicas available, "
        f"{updated} updated"
    )
    progressing = observed < generation or updated < wanted or available < wanted
    return available >= 1, progressing, message


def compute(facts: Facts) -> list[tuple[str, str, str, str]]:
    """(type, status, reason, message) for Available, Progressing, Degraded."""
    if facts.deployment is None:
        available, progressing, rollout = False, facts.invalid is None, "no Deployment yet"
    else:
        available, progressing, rollout = _rollout(facts.deployment)
    if facts.invalid is not None:
        kept = " (the previous configuration keeps running)" if facts.deployment else ""
        degraded = ("True", INVALID, facts.invalid)
        progress = ("False", INVALID, f"not applied: the resource is invalid{kept}")
    elif facts.failure is not None:
        degraded = ("True", APPLY_FAILED, facts.failure)
        progress = ("True", DEPLOYING, rollout)
    else:
        degraded = ("False", AS_EXPECTED, "all objects as the resource says")
        progress = ("True", DEPLOYING, rollout) if progressing else ("False", DEPLOYED, rollout)
    avail = (
        ("True", DEPLOYMENT_AVAILABLE, rollout) if available
        else ("False", DEPLOYMENT_UNAVAILABLE, rollout)
    )
    return [(AVAILABLE, *avail), (PROGRESSING, *progress), (DEGRADED, *degraded)]


def conditions(
    facts: Facts, previous: Sequence[Mapping[str, Any]], now: str
) -> list[dict[str, str]]:
    """The conditions to store; ``now`` (RFC 3339) only where a status changed."""
    before = {c.get("type"): c for c in previous}
    out = []
    for kind, status, reason, message in compute(facts):
        old = before.get(kind)
        changed = old is None or old.get("status") != status or not old.get("lastTransitionTime")
        out.append({
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now if changed else str(old["lastTransitionTime"]),  # type: ignore[index]
        })
    return out


def same(stored: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the stored conditions already say ``new`` (order aside)."""
    def index(items: Sequence[Mapping[str, Any]]) -> dict[Any, dict[str, Any]]:
        return {c.get("type"): dict(c) for c in items}
    return index(stored) == index(new)


def find(items: Sequence[Mapping[str, Any]], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in items if c.get("type") == kind), None)
