"""One comparison: server defaults are no difference, a changed or added item is."""

from __future__ import annotations

import copy
from typing import Any

from egress_router.operator import diff

WANT: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "r", "namespace": "n", "labels": {"a": "1"},
                 "ownerReferences": [{"uid": "u", "controller": True, "kind": "EgressRouter",
                                      "name": "r", "apiVersion": "x/v1",
                                      "blockOwnerDeletion": True}]},
    "spec": {"selector": {"app": "r"}, "ports": [{"name": "tcp-80", "port": 80,
                                                  "protocol": "TCP", "targetPort": 80}]},
}


def served() -> dict[str, Any]:
    """WANT as the API server returns it: defaults and its own metadata added."""
    obj = copy.deepcopy(WANT)
    obj["metadata"].update({"uid": "s", "resourceVersion": "9",
                            "labels": {"a": "1", "someone-else": "x"},
                            "annotations": {"note": "by hand"}})
    obj["spec"].update({"clusterIP": "172.30.0.5", "clusterIPs": ["172.30.0.5"],
                        "sessionAffinity": "None", "type": "ClusterIP"})
    obj["spec"]["ports"][0]["nodePort"] = None
    obj["status"] = {"loadBalancer": {}}
    return obj


def test_defaults_and_foreign_metadata_are_no_difference() -> None:
    assert diff.difference(served(), WANT) is None


def test_changed_value_is_named() -> None:
    current = served()
    current["spec"]["ports"][0]["port"] = 81
    assert diff.difference(current, WANT) == "spec.ports[0].port"


def test_added_list_item_is_a_difference() -> None:
    current = served()
    current["spec"]["ports"].append({"name": "x", "port": 9, "protocol": "TCP"})
    assert diff.difference(current, WANT) == "spec.ports"


def test_string_maps_compare_whole() -> None:
    current = served()
    current["spec"]["selector"]["extra"] = "y"
    assert diff.difference(current, WANT) == "spec.selector"


def test_bool_is_not_int() -> None:
    assert diff.first_difference(1, True) == ""
    assert diff.first_difference(True, True) is None


def test_metadata_our_label_and_owner() -> None:
    current = served()
    current["metadata"]["labels"]["a"] = "2"
    assert diff.difference(current, WANT) == "metadata.labels.a"
    current = served()
    current["metadata"]["ownerReferences"] = []
    assert diff.difference(current, WANT) == "metadata.ownerReferences"


def test_update_body_restores_and_keeps_the_servers() -> None:
    current = served()
    current["spec"]["ports"][0]["port"] = 81
    current["spec"]["ports"].append({"name": "x", "port": 9})
    body = diff.update_body(current, WANT)
    assert diff.difference(body, WANT) is None
    assert body["spec"]["ports"] == WANT["spec"]["ports"]
    assert body["spec"]["clusterIP"] == "172.30.0.5"  # immutable, allocated
    assert body["metadata"]["resourceVersion"] == "9"  # the PUT is guarded by it
    assert body["metadata"]["labels"] == {"a": "1", "someone-else": "x"}
    assert body["status"] == {"loadBalancer": {}}
    assert current["spec"]["ports"][0]["port"] == 81  # not mutated


def test_defaults_inside_string_valued_structs_are_no_difference() -> None:
    # Seen on a real API server: a probe's scheme and an update strategy's rollingUpdate.
    want = {"spec": {"updateStrategy": {"type": "RollingUpdate"},
                     "probe": {"httpGet": {"path": "/readyz", "port": "http"}}}}
    have = {"spec": {"updateStrategy": {"type": "RollingUpdate",
                                        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
                     "probe": {"httpGet": {"path": "/readyz", "port": "http",
                                           "scheme": "HTTP"}}}}
    assert diff.first_difference(have, want) is None
    have["spec"]["updateStrategy"]["type"] = "OnDelete"
    assert diff.first_difference(have, want) == "spec.updateStrategy.type"


def test_pod_annotations_compare_whole() -> None:
    want = {"template": {"metadata": {"annotations": {"a": "1"}}}}
    have = {"template": {"metadata": {"annotations": {"a": "1", "restartedAt": "now"}}}}
    assert diff.first_difference(have, want) == "template.metadata.annotations"
