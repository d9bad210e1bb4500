"""What an EgressRouter should own: the objects ``render --from-egressrouter`` gives, nothing else.

The operator has no renderer of its own. The resource as the API server stores it goes through
the offline conversion (`manifest.load_egressrouter_text`, then `render.render`), so the cluster
gets exactly what ``egress-router render --from-egressrouter`` prints for the same resource, and
an invalid resource fails with the same one-line message. This module only adds what makes the
objects the resource's own: the namespace, the operator's managed-by label and an
ownerReference (controller, blockOwnerDeletion), so that deleting the resource lets the garbage
collector delete them.

Pure: dicts in, dicts out.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from egress_router.core import config
from egress_router.k8s import manifest, render

GROUP = "network.operator.openshift.io"
VERSION = "v1"
PLURAL = "egressrouters"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "EgressRouter"
MANAGED_BY = "egress-router-operator"

# What the offline loader reads of the resource's metadata; the rest (uid, managedFields, ...)
# is the API server's.
_METADATA_KEYS = ("name", "namespace", "annotations")


@dataclass(frozen=True)
class Key:
    """One EgressRouter: its namespace and name."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Desired:
    """The objects the resource should own, in apply order."""

    objects: tuple[dict[str, Any], ...]
    warnings: tuple[str, ...] = ()


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj["metadata"]
    return Key(str(meta.get("namespace") or "default"), str(meta["name"]))


def source_name(key: Key) -> str:
    """How errors name the resource (``render`` names the file it read)."""
    return f"{KIND} {key}"


def resource_text(router: Mapping[str, Any]) -> str:
    """The resource as the offline loader reads it (JSON is YAML): kind, metadata, spec."""
    meta = router.get("metadata") or {}
    doc: dict[str, Any] = {
        "apiVersion": router.get("apiVersion", API_VERSION),
        "kind": router.get("kind", KIND),
        "metadata": {k: meta[k] for k in _METADATA_KEYS if k in meta},
    }
    if "spec" in router:
        doc["spec"] = router["spec"]
    return json.dumps(doc, indent=1)


def owner_reference(router: Mapping[str, Any]) -> dict[str, Any]:
    meta = router["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def desired_objects(router: Mapping[str, Any], image: str | None = None) -> Desired:
    """The objects of one resource; raises `config.ConfigError` (render's message) if invalid."""
    key = key_of(router)
    spec = manifest.load_egressrouter_text(
        resource_text(router), source_name(key), manifest.Overrides(image=image)
    )
    rendered = render.render(spec)
    owner = owner_reference(router)
    objects = []
    for obj in rendered.objects:
        owned = copy.deepcopy(obj)
        meta = owned["metadata"]
        meta["namespace"] = key.namespace
        meta.setdefault("labels", {})[render.LABEL_MANAGED_BY] = MANAGED_BY
        meta["ownerReferences"] = [owner]
        objects.append(owned)
    return Desired(tuple(objects), rendered.warnings)


def invalid_message(router: Mapping[str, Any], image: str | None = None) -> str | None:
    """The one-line error of an invalid resource, None when it converts."""
    try:
        desired_objects(router, image)
    except config.ConfigError as err:
        return str(err)
    return None


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether ``obj`` names the resource with ``uid`` as its controller."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def owner_key(obj: Mapping[str, Any]) -> Key | None:
    """The EgressRouter that controls an object, from its ownerReferences (None: none)."""
    meta = obj.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return Key(str(meta.get("namespace") or "default"), str(ref.get("name")))
    return None
