"""The operator's desired objects are render's, owned by the resource; invalid: render's message."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from egress_router.cli import cli
from egress_router.core import config
from egress_router.k8s import manifest, render
from egress_router.operator import desired

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "egressrouter.yaml"
UID = "0b6f3c1e-8d2a-4d5e-9f00-123456789abc"


def stored(text: str | None = None) -> dict[str, Any]:
    """The example as the API server returns it: defaults, uid, managedFields, status."""
    obj: dict[str, Any] = yaml.safe_load(text or EXAMPLE.read_text())
    obj["metadata"].update({
        "uid": UID, "resourceVersion": "812", "generation": 1,
        "creationTimestamp": "2026-12-07T19:00:00Z",
        "managedFields": [{"manager": "kubectl", "operation": "Update",
                           "fieldsV1": {"f:spec": {}}}],
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
    })
    obj["status"] = {"conditions": []}
    return obj


def test_desired_objects_are_what_render_gives_plus_ownership() -> None:
    router = stored()
    got = desired.desired_objects(router, image="reg/egress-router:1")
    offline = render.render(manifest.load_egressrouter_text(
        EXAMPLE.read_text(), "x", manifest.Overrides(image="reg/egress-router:1")))
    assert [o["kind"] for o in got.objects] == [o["kind"] for o in offline.objects]
    for mine, theirs in zip(got.objects, offline.objects, strict=True):
        meta = mine["metadata"]
        assert meta["namespace"] == "egress"
        assert meta["labels"][render.LABEL_MANAGED_BY] == desired.MANAGED_BY
        assert meta["ownerReferences"] == [{
            "apiVersion": "network.operator.openshift.io/v1", "kind": "EgressRouter",
            "name": "egress-router-redirect", "uid": UID, "controller": True,
            "blockOwnerDeletion": True,
        }]
        stripped = copy.deepcopy(mine)
        del stripped["metadata"]["ownerReferences"]
        stripped["metadata"]["labels"][render.LABEL_MANAGED_BY] = "egress-router-render"
        assert stripped == theirs
    assert got.warnings == offline.warnings


def test_server_fields_do_not_change_the_objects() -> None:
    plain: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    plain["metadata"]["uid"] = UID
    assert desired.desired_objects(stored()).objects == desired.desired_objects(plain).objects


def test_api_server_defaults_give_the_same_objects_as_the_file_without_them() -> None:
    text = EXAMPLE.read_text().replace("  mode: Redirect\n", "").replace(
        "  networkInterface:\n    macvlan:\n      mode: Private\n      master: ens3\n", "")
    bare = stored(text)
    defaulted = stored(text)
    defaulted["spec"]["mode"] = "Redirect"
    defaulted["spec"]["networkInterface"] = {"macvlan": {"mode": "Bridge"}}
    assert desired.desired_objects(bare).objects == desired.desired_objects(defaulted).objects


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("port: 8443", "port: 9090"),  # the HTTP port
        ("destinationIP: 203.0.113.26\n        port: 8080",
         "destinationIP: 203.0.113.300\n        port: 8080"),
        ("gateway: 192.168.12.1", "gateway: 2001:db8:12::1"),
    ],
)
def test_invalid_resource_has_renders_one_line_message(old: str, new: str, tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace(old, new, 1)
    assert text != EXAMPLE.read_text()
    with pytest.raises(config.ConfigError) as caught:
        desired.desired_objects(stored(text))
    ours = str(caught.value)
    assert desired.invalid_message(stored(text)) == ours
    assert "\n" not in ours
    # The same resource through `egress-router render --from-egressrouter FILE`.
    path = tmp_path / "cr.yaml"
    path.write_text(text)
    done = CliRunner().invoke(cli, ["render", "--from-egressrouter", str(path)])
    assert done.exit_code == 1
    line = done.stderr.strip().splitlines()[-1]
    source = desired.source_name(desired.Key("egress", "egress-router-redirect"))
    assert line == "egress-router: error: " + ours.replace(source, str(path))


def test_resource_text_keeps_only_what_the_loader_reads() -> None:
    doc = json.loads(desired.resource_text(stored()))
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(doc["metadata"]) == {"name", "namespace", "annotations"}


def test_owner_key_and_owned_by() -> None:
    obj = desired.desired_objects(stored()).objects[0]
    assert desired.owner_key(obj) == desired.Key("egress", "egress-router-redirect")
    assert desired.owned_by(obj, UID)
    assert not desired.owned_by(obj, "another-uid")
    foreign = {"metadata": {"name": "x", "namespace": "egress", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": "1"}]}}
    assert desired.owner_key(foreign) is None
