"""The OpenShift ``EgressRouter`` resource (``network.operator.openshift.io/v1``): its schema.

Written from the CRD ``egressrouters.network.operator.openshift.io`` (v1), stricter in one
place (unknown spec fields are refused). Pure data, reusable wherever the resource is read,
rendered or served (a CRD's ``openAPIV3Schema``, a controller's admission check).
"""

from __future__ import annotations

from typing import Any

EGRESSROUTER_API_VERSION = "network.operator.openshift.io/v1"
EGRESSROUTER_KIND = "EgressRouter"

_ADDRESS = {"type": "string", "minLength": 1}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}

# Written from the CRD egressrouters.network.operator.openshift.io, version v1.
# Unlike the API server, which prunes unknown fields silently, unknown spec
# fields are refused here: a misspelt field would otherwise vanish in the move.
EGRESSROUTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": EGRESSROUTER_API_VERSION},
        "kind": {"const": EGRESSROUTER_KIND},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "annotations": {"type": "object"},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["addresses", "redirect"],
            "properties": {
                "mode": {"enum": ["Redirect"]},
                "addresses": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["ip"],
                        "properties": {"ip": _ADDRESS, "gateway": _ADDRESS},
                    },
                },
                "networkInterface": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["macvlan"],
                    "properties": {
                        "macvlan": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "mode": {"enum": ["Bridge", "Private", "VEPA", "Passthru"]},
                                "master": {"type": "string", "minLength": 1},
                            },
                        }
                    },
                },
                "redirect": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "fallbackIP": _ADDRESS,
                        "redirectRules": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["destinationIP", "port", "protocol"],
                                "properties": {
                                    "destinationIP": _ADDRESS,
                                    "port": _PORT,
                                    "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
                                    "targetPort": _PORT,
                                },
                            },
                        },
                    },
                },
            },
        },
        "status": {"type": "object"},
    },
}
