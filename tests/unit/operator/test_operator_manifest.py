"""render --operator: valid objects, upstream's CRD schema, least-privilege RBAC."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from egress_router.cli import cli
from egress_router.k8s import operator_manifest as om
from egress_router.k8s import render
from egress_router.operator import api

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "egressrouter.yaml"


def schema() -> dict[str, Any]:
    return copy.deepcopy(om.EGRESSROUTER_OPENAPI)


def errors(obj: object) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]


@pytest.mark.parametrize("obj", om.objects("ops", "reg/egress-router:1"),
                         ids=lambda o: o["kind"])
def test_every_object_is_valid_for_kubernetes(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, render.KUBERNETES_VERSION, strict=True)


def test_upstream_example_fits_the_crd_schema() -> None:
    cr = yaml.safe_load(EXAMPLE.read_text())
    assert errors(cr) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "mode"), "Proxy"),
        (("spec", "redirect", "redirectRules", 0, "protocol"), "ICMP"),
        (("spec", "redirect", "redirectRules", 0, "port"), 70000),
        (("spec", "redirect", "fallbackIP"), "not-an-ip"),
        (("spec", "networkInterface", "macvlan", "mode"), "bridge"),
    ],
)
def test_crd_schema_refuses_what_upstream_refuses(path: tuple[Any, ...], value: object) -> None:
    cr = yaml.safe_load(EXAMPLE.read_text())
    node = cr
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    assert errors(cr) != []


def test_redirect_mode_needs_redirect() -> None:
    cr = yaml.safe_load(EXAMPLE.read_text())
    del cr["spec"]["redirect"]
    assert errors(cr) != []


def test_crd_names_and_status_subresource() -> None:
    crd = om.custom_resource_definition()
    assert crd["metadata"]["name"] == "egressrouters.network.operator.openshift.io"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1" and version["storage"] and version["served"]
    assert version["subresources"] == {"status": {}}
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["mode"]["default"] == "Redirect"
    assert spec["properties"]["networkInterface"]["default"] == {"macvlan": {"mode": "Bridge"}}


def granted(kind: str) -> set[str]:
    role = next(o for o in om.objects() if o["kind"] == "ClusterRole")
    res = api.RESOURCES[kind]
    verbs: set[str] = set()
    for rule in role["rules"]:
        if res.group in rule["apiGroups"] and res.plural in rule["resources"]:
            verbs |= set(rule["verbs"])
    return verbs


def test_rbac_grants_what_the_operator_does_and_no_more() -> None:
    for kind in api.OWNED_KINDS:
        expected = {"get", "list", "watch", "create", "update"}
        if kind == "PodDisruptionBudget":
            expected.add("delete")
        assert granted(kind) == expected, kind
    assert granted("EgressRouter") == {"get", "list", "watch"}
    assert granted("Event") == {"create"}
    role = next(o for o in om.objects() if o["kind"] == "ClusterRole")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert "secrets" not in rule["resources"] and "pods" not in rule["resources"]
    why = role["metadata"]["annotations"]["egress-router/why"]
    assert len(why.strip().splitlines()) == len(role["rules"])


def test_lease_is_a_namespaced_role() -> None:
    role = next(o for o in om.objects("ops") if o["kind"] == "Role")
    assert role["metadata"]["namespace"] == "ops"
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "create", "update"]}]


def test_deployment_two_replicas_not_root_same_image_for_routers() -> None:
    deployment = next(o for o in om.objects("ops", "reg/er:2", "reg/er:2")
                      if o["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "reg/er:2"
    assert container["args"][:1] == ["operator"]
    assert container["args"][-2:] == ["--router-image", "reg/er:2"]
    assert container["securityContext"]["runAsNonRoot"] is True


def test_render_operator_command() -> None:
    done = CliRunner().invoke(cli, ["render", "--operator", "--namespace", "ops",
                                    "--image", "reg/er:3"])
    assert done.exit_code == 0, done.output
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert [d["kind"] for d in docs] == [o["kind"] for o in om.objects()]
    bad = CliRunner().invoke(cli, ["render", "--operator", "--namespace", "Not_A_Name"])
    assert bad.exit_code == 1
    assert bad.stderr.strip() == ("egress-router: error: cannot parse --namespace "
                                  "'Not_A_Name': expected a DNS label (a-z, 0-9, '-')")
