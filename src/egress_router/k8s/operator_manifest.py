"""The operator's own objects: the EgressRouter CRD, its ServiceAccount, RBAC and Deployment.

``egress-router render --operator`` prints them. The CustomResourceDefinition carries the
upstream schema of ``egressrouters.network.operator.openshift.io`` v1 (the same fields, types,
enums, defaults and required lists, the status subresource and printer columns), so a manifest
written for OpenShift applies unchanged and the API server defaults it the same way; our
extensions travel as annotations, which every schema keeps (`manifest.CR_ANNOTATION_PREFIX`).

The RBAC is least privilege, each verb for one reason (`RULES`): the operator reads the
resources and writes only their status; it reads, creates and updates the kinds it renders
(update puts a hand edit back) and deletes only what a resource may stop rendering; owned
objects are deleted by the garbage collector, not by the operator. The Lease is a namespaced
Role in the operator's own namespace.

Pure: plain dicts.
"""

from __future__ import annotations

import re
from typing import Any

from egress_router.k8s import manifest

NAME = "egress-router-operator"
DEFAULT_NAMESPACE = "egress-router-operator"
REPLICAS = 2
LEASE_NAME = NAME
GROUP = "network.operator.openshift.io"
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "operator"}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_IP = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}
_PORT = {"type": "integer", "format": "int32", "minimum": 1, "maximum": 65535}

# Upstream's openAPIV3Schema, field for field (descriptions shortened).
EGRESSROUTER_OPENAPI: dict[str, Any] = {
    "type": "object",
    "description": "An egress router: pods reach external systems from one reserved address.",
    "required": ["spec"],
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "description": "The desired egress router.",
            "required": ["addresses", "mode", "networkInterface"],
            "oneOf": [{"properties": {"mode": {"enum": ["Redirect"]}}, "required": ["redirect"]}],
            "properties": {
                "addresses": {
                    "type": "array",
                    "description": "Addresses of the router's interface on the physical network.",
                    "items": {
                        "type": "object",
                        "required": ["ip"],
                        "properties": {
                            "ip": {"type": "string", "description": "The reserved address, CIDR."},
                            "gateway": {**_IP, "description": "The next hop."},
                        },
                    },
                },
                "mode": {
                    "type": "string", "enum": ["Redirect"], "default": "Redirect",
                    "description": "Redirect, the only mode.",
                },
                "networkInterface": {
                    "type": "object",
                    "description": "The interface to create: macvlan.",
                    "default": {"macvlan": {"mode": "Bridge"}},
                    "oneOf": [{"required": ["macvlan"]}],
                    "properties": {
                        "macvlan": {
                            "type": "object",
                            "default": {"mode": "Bridge"},
                            "required": ["mode"],
                            "properties": {
                                "master": {"type": "string",
                                           "description": "The parent interface on the node."},
                                "mode": {
                                    "type": "string", "default": "Bridge",
                                    "enum": ["Bridge", "Private", "VEPA", "Passthru"],
                                },
                            },
                        },
                    },
                },
                "redirect": {
                    "type": "object",
                    "description": "Redirect mode's rules.",
                    "properties": {
                        "fallbackIP": {**_IP, "description": "Where every other port goes."},
                        "redirectRules": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["destinationIP", "port", "protocol"],
                                "properties": {
                                    "destinationIP": {**_IP},
                                    "port": {**_PORT},
                                    "protocol": {"type": "string",
                                                 "enum": ["TCP", "UDP", "SCTP"]},
                                    "targetPort": {**_PORT},
                                },
                            },
                        },
                    },
                },
            },
        },
        "status": {
            "type": "object",
            "required": ["conditions"],
            "properties": {
                "conditions": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["lastTransitionTime", "status", "type"],
                        "properties": {
                            "lastTransitionTime": {"type": "string", "format": "date-time",
                                                   "nullable": True},
                            "message": {"type": "string"},
                            "reason": {"type": "string"},
                            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                            "type": {"type": "string",
                                     "enum": ["Available", "Progressing", "Degraded"]},
                        },
                    },
                },
            },
        },
    },
}


def valid_namespace(name: str) -> bool:
    """A namespace name: a DNS label."""
    return bool(_DNS_LABEL.match(name))


def custom_resource_definition() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"egressrouters.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {"kind": manifest.EGRESSROUTER_KIND, "listKind": "EgressRouterList",
                      "plural": "egressrouters", "singular": "egressrouter"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1",
                "served": True,
                "storage": True,
                "additionalPrinterColumns": [
                    {"name": "Condition", "type": "string",
                     "jsonPath": ".status.conditions[*].type"},
                    {"name": "Status", "type": "string",
                     "jsonPath": ".status.conditions[*].status"},
                ],
                "schema": {"openAPIV3Schema": EGRESSROUTER_OPENAPI},
                "subresources": {"status": {}},
            }],
        },
    }


# (apiGroups, resources, verbs, why): the ClusterRole, one rule a line.
RULES: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], str], ...] = (
    ((GROUP,), ("egressrouters",), ("get", "list", "watch"),
     "read every EgressRouter: list+watch feed the work queue, get reads one afresh"),
    ((GROUP,), ("egressrouters/status",), ("patch",),
     "write the conditions (a merge patch of the status subresource, nothing else)"),
    ((GROUP,), ("egressrouters/finalizers",), ("update",),
     "set blockOwnerDeletion in ownerReferences (OwnerReferencesPermissionEnforcement)"),
    (("",), ("configmaps", "services"), ("get", "list", "watch", "create", "update"),
     "the rules' ConfigMap and the Service: create, see hand edits, put them back"),
    (("apps",), ("deployments", "daemonsets"), ("get", "list", "watch", "create", "update"),
     "the router Deployment and the CNI installer DaemonSet: as above"),
    (("k8s.cni.cncf.io",), ("network-attachment-definitions",),
     ("get", "list", "watch", "create", "update"),
     "the NetworkAttachmentDefinition for the CNI plugin: as above"),
    (("policy",), ("poddisruptionbudgets",), ("get", "list", "watch", "create", "update",
                                              "delete"),
     "a pair's PodDisruptionBudget; delete: when the ha-vrid annotation goes, so must it"),
    (("",), ("events",), ("create",), "an Event on the resource for each change and error"),
)
LEASE_RULE = (("coordination.k8s.io",), ("leases",), ("get", "create", "update"),
              "leader election: read the Lease, create it once, renew or take it over")


def _rule(groups: tuple[str, ...], resources: tuple[str, ...], verbs: tuple[str, ...]
          ) -> dict[str, Any]:
    return {"apiGroups": list(groups), "resources": list(resources), "verbs": list(verbs)}


def _meta(name: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": dict(LABELS)}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def _why(rules: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], str], ...]
         ) -> dict[str, str]:
    text = "\n".join(f"{'/'.join(r)} {','.join(v)}: {why}" for _g, r, v, why in rules)
    return {"egress-router/why": text + "\n"}


def objects(namespace: str = DEFAULT_NAMESPACE, image: str = manifest.DEFAULT_IMAGE,
            router_image: str | None = None) -> list[dict[str, Any]]:
    """Everything the operator needs, in apply order."""
    account = {"kind": "ServiceAccount", "name": NAME, "namespace": namespace}
    cluster_role = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {**_meta(NAME), "annotations": _why(RULES)},
        "rules": [_rule(g, r, v) for g, r, v, _why_ in RULES],
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {**_meta(NAME, namespace), "annotations": _why((LEASE_RULE,))},
        "rules": [_rule(*LEASE_RULE[:3])],
    }
    args = ["operator", "--lease-name", LEASE_NAME]
    if router_image is not None:
        args += ["--router-image", router_image]
    container = {
        "name": "operator",
        "image": image,
        "args": args,
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE",
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"},
                      "limits": {"memory": "256Mi"}},
        # It only talks to the API: no capability, no writable root, not root.
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(NAME, namespace),
        "spec": {
            # Two replicas, one active (the Lease): an upgrade or a lost node does not stop
            # reconciliation; the standby takes over within a Lease duration.
            "replicas": REPLICAS,
            "selector": {"matchLabels": dict(LABELS)},
            "template": {
                "metadata": {"labels": dict(LABELS)},
                "spec": {
                    "serviceAccountName": NAME,
                    "enableServiceLinks": False,
                    "containers": [container],
                    "affinity": {"podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [{
                            "weight": 100,
                            "podAffinityTerm": {"labelSelector": {"matchLabels": dict(LABELS)},
                                                "topologyKey": "kubernetes.io/hostname"},
                        }],
                    }},
                },
            },
        },
    }
    return [
        custom_resource_definition(),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(namespace)},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME, namespace)},
        cluster_role,
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": _meta(NAME),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": NAME},
         "subjects": [account]},
        role,
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": _meta(NAME, namespace),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
         "subjects": [account]},
        deployment,
    ]
