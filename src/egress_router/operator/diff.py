"""Whether an object in the cluster already holds what is desired, and the body that restores it.

The API server fills in defaults (a container's terminationMessagePath, a Service's
sessionAffinity, a Deployment's revisionHistoryLimit), so "equal" would see a difference on every
object and write forever. Instead the desired object must be *contained* in the current one:

- a mapping: every desired key holds a contained value (a default the server added is not a
  difference: a probe's ``scheme: HTTP``, an update strategy's ``rollingUpdate``);
- a map of user data (``data``, ``labels``, ``annotations``, ``matchLabels``, ``nodeSelector``,
  a Service's ``selector``): equal, because the server never adds a key there, and a key added
  by hand must go;
- a list: the same length, item by item contained (an added port or container is a difference);
- anything else: equal.

Of the metadata only what the operator sets is compared: its labels and annotations (others may
add their own) and its ownerReference. The update body is the current object with every desired
field put back (PUT, with the resourceVersion read: a concurrent change answers 409 and the
reconcile reads again), its status and the server's metadata kept.

Pure: dicts in, dicts out.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

_SKIP = ("apiVersion", "kind", "metadata", "status")
# Immutable fields the server allocates, kept from the current object in an update.
_ALLOCATED = {"Service": ("clusterIP", "clusterIPs")}


# Keys whose value, when it maps strings to strings, is user data the server never adds to.
_MAPS = frozenset({
    "data", "binaryData", "labels", "annotations", "matchLabels", "nodeSelector", "selector",
})


def _string_map(key: str, value: Mapping[str, Any]) -> bool:
    return key in _MAPS and all(isinstance(v, str) for v in value.values())


def first_difference(current: object, desired: object, path: str = "") -> str | None:
    """The path of the first desired value ``current`` does not hold (None: it holds all)."""
    if isinstance(desired, Mapping):
        if not isinstance(current, Mapping):
            return path or "(top level)"
        if _string_map(path.rsplit(".", 1)[-1], desired):
            return None if dict(current) == dict(desired) else path
        for key, value in desired.items():
            if key not in current:
                return f"{path}.{key}" if path else str(key)
            found = first_difference(current[key], value, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
        return None
    if isinstance(desired, list):
        if not isinstance(current, list) or len(current) != len(desired):
            return path
        for index, (have, want) in enumerate(zip(current, desired, strict=True)):
            found = first_difference(have, want, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    # bool is an int in Python: true and 1 must still differ.
    if type(current) is not type(desired) or current != desired:
        return path
    return None


def _metadata_difference(current: Mapping[str, Any], desired: Mapping[str, Any]) -> str | None:
    for field in ("labels", "annotations"):
        have = current.get(field) or {}
        for key, value in (desired.get(field) or {}).items():
            if have.get(key) != value:
                return f"metadata.{field}.{key}"
    have_refs = current.get("ownerReferences") or []
    for ref in desired.get("ownerReferences") or []:
        if not any(
            first_difference(h, ref) is None for h in have_refs
        ):
            return "metadata.ownerReferences"
    return None


def difference(current: Mapping[str, Any], desired: Mapping[str, Any]) -> str | None:
    """The first field of ``desired`` that ``current`` does not hold, e.g. ``spec.ports[0]``."""
    found = _metadata_difference(current.get("metadata") or {}, desired["metadata"])
    if found is not None:
        return found
    for key, value in desired.items():
        if key in _SKIP:
            continue
        if key not in current:
            return key
        found = first_difference(current[key], value, key)
        if found is not None:
            return found
    return None


def update_body(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """``current`` with every desired field put back: the body of a PUT."""
    body = copy.deepcopy(dict(current))
    meta = body.setdefault("metadata", {})
    want = desired["metadata"]
    for field in ("labels", "annotations"):
        if want.get(field):
            meta[field] = {**(meta.get(field) or {}), **want[field]}
    uids = {r["uid"] for r in want.get("ownerReferences") or []}
    meta["ownerReferences"] = [
        *copy.deepcopy(want.get("ownerReferences") or []),
        *[
            r for r in meta.get("ownerReferences") or []
            if r.get("uid") not in uids and not r.get("controller")
        ],
    ]
    for key, value in desired.items():
        if key in _SKIP:
            continue
        body[key] = copy.deepcopy(value)
    kept = _ALLOCATED.get(str(desired.get("kind")), ())
    if kept and isinstance(current.get("spec"), Mapping):
        for field in kept:
            if field in current["spec"] and field not in body["spec"]:
                body["spec"][field] = copy.deepcopy(current["spec"][field])
    return body
