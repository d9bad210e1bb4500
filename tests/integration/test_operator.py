"""egress-router operator against the local cluster's real API server.

Each test gives the operator (a process in the control-plane namespace with the rendered
ServiceAccount's token, see support/operator.py) an EgressRouter in a namespace of its own and
judges from the API server, read through kubectl: the objects, their ownerReferences and
resourceVersions, the resource's status and events, the Lease. Writes are counted from the
operator's own log (one ``write:`` line each) and cross-checked against the resourceVersions.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from egress_router.k8s import operator_manifest, render
from support import controller as op

pytestmark = pytest.mark.privileged

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "examples" / "egressrouter.yaml").read_text()
NAME = "egress-router-redirect"
OWNED = ("configmap", "network-attachment-definitions.k8s.cni.cncf.io", "service", "deployment")
RESYNC = "2"

# Multus' CRD, as small as the API server takes it (the cluster may already have it).
NAD_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "network-attachment-definitions.k8s.cni.cncf.io"},
    "spec": {
        "group": "k8s.cni.cncf.io", "scope": "Namespaced",
        "names": {"kind": "NetworkAttachmentDefinition", "plural": "network-attachment-definitions",
                  "singular": "network-attachment-definition", "shortNames": ["net-attach-def"]},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
            "type": "object", "properties": {"spec": {"type": "object", "properties": {
                "config": {"type": "string"}}}}}}}],
    },
}


@dataclass
class Env:
    cluster: Any
    kubeconfig: Path
    logs: Path

    def operator(self, identity: str, *extra: str) -> op.Operator:
        return op.Operator(self.cluster, self.kubeconfig, self.logs / f"{identity}.log",
                           identity, "--resync", RESYNC, *extra)


@pytest.fixture(scope="module")
def env(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    image = op.router_image(cluster)
    objects = operator_manifest.objects(op.NAMESPACE, image, image)
    # Everything but the operator's own Deployment: the tests run the operator as processes.
    cluster.apply(render.to_yaml([o for o in objects if o["kind"] != "Deployment"]))
    if cluster.kubectl("get", "crd", NAD_CRD["metadata"]["name"], check=False).returncode:
        cluster.apply(yaml.safe_dump(NAD_CRD))
    for crd in ("egressrouters.network.operator.openshift.io", NAD_CRD["metadata"]["name"]):
        cluster.wait(f"crd/{crd}", "condition=Established", timeout=60)
    logs = tmp_path_factory.mktemp("operator")
    yield Env(cluster, op.service_account_kubeconfig(cluster, logs / "kubeconfig"), logs)
    # The resources first (their objects go with them), then the operator's objects.
    cluster.kubectl("delete", "egressrouters", "--all", "-A", "--wait=false", check=False)
    cluster.kubectl("delete", "-f", "-", "--wait=false", check=False,
                    stdin=render.to_yaml(objects[1:]))


@pytest.fixture
def namespace(env: Env, request: pytest.FixtureRequest) -> Iterator[str]:
    name = "op-" + request.node.name.removeprefix("test_").replace("_", "-")[:40].rstrip("-")
    env.cluster.kubectl("create", "namespace", name)
    yield name
    # The resource first (a namespace's deletion may remove its objects before it, and the
    # next test's operator would make them again), then the namespace.
    env.cluster.kubectl("delete", "egressrouters", "--all", "-n", name, "--timeout=30s",
                        check=False)
    env.cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def cr_text(namespace: str, name: str = NAME) -> str:
    """The upstream example, only its namespace (and name) changed."""
    return EXAMPLE.replace("  namespace: egress\n", f"  namespace: {namespace}\n").replace(
        f"  name: {NAME}\n", f"  name: {name}\n")


def get(env: Env, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    done = env.cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    if done.returncode:
        return None
    obj: dict[str, Any] = json.loads(done.stdout)
    return obj


def router(env: Env, namespace: str, name: str = NAME) -> dict[str, Any]:
    obj = get(env, "egressrouter", name, namespace)
    assert obj is not None
    return obj


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return {}


def converged(env: Env, namespace: str, name: str = NAME) -> dict[str, dict[str, Any]]:
    """Every owned object, once they all exist and are owned by the resource."""
    uid = router(env, namespace, name)["metadata"]["uid"]

    def check() -> dict[str, dict[str, Any]] | None:
        found = {}
        for kind in OWNED:
            obj = get(env, kind, name, namespace)
            if obj is None or not any(r["uid"] == uid and r.get("controller")
                                      for r in obj["metadata"].get("ownerReferences", [])):
                return None
            found[kind] = obj
        installer = get(env, "daemonset", f"{name}-cni-installer", namespace)
        if installer is None:
            return None
        found["daemonset"] = installer
        if not condition(router(env, namespace, name), "Degraded"):
            return None
        return found

    result: dict[str, dict[str, Any]] = op.wait_for(f"objects of {namespace}/{name}", check, 60)
    return result


def versions(env: Env, namespace: str, name: str = NAME) -> dict[str, str]:
    out = {kind: obj["metadata"]["resourceVersion"]
           for kind, obj in converged(env, namespace, name).items()
           if kind not in ("deployment", "daemonset")}  # their status is the controllers'
    for kind in ("deployment", "daemonset"):
        obj = get(env, kind, name if kind == "deployment" else f"{name}-cni-installer", namespace)
        assert obj is not None
        out[kind + ".generation"] = str(obj["metadata"]["generation"])
    return out


def events(env: Env, namespace: str) -> list[dict[str, Any]]:
    done = env.cluster.kubectl("get", "events", "-n", namespace, "-o", "json")
    items: list[dict[str, Any]] = json.loads(done.stdout)["items"]
    return [e for e in items if e["involvedObject"]["kind"] == "EgressRouter"]


def offline(env: Env, obj: dict[str, Any], tmp: Path) -> subprocess.CompletedProcess[str]:
    """``egress-router render --from-egressrouter`` of the resource as the API server has it."""
    path = tmp / "cr.json"
    path.write_text(json.dumps(obj))
    return subprocess.run(
        [str(op.EXECUTABLE), "render", "--from-egressrouter", str(path),
         "--image", op.router_image(env.cluster)],
        capture_output=True, text=True, timeout=60, check=False,
    )


# ---------------------------------------------------------------------------- tests


def test_create_makes_renders_objects_owned_with_status_and_events(
    env: Env, namespace: str, tmp_path: Path
) -> None:
    a = env.operator("create-a")
    try:
        op.wait_for("the Lease", a.leading, 40)
        env.cluster.apply(cr_text(namespace))
        found = converged(env, namespace)
        cr = router(env, namespace)
        # What the cluster holds is what render prints for the same stored resource.
        done = offline(env, cr, tmp_path)
        assert done.returncode == 0, done.stderr
        rendered = {(o["kind"], o["metadata"]["name"]): o
                    for o in yaml.safe_load_all(done.stdout) if o}
        cm = rendered[("ConfigMap", NAME)]
        assert found["configmap"]["data"] == cm["data"]
        nad = rendered[("NetworkAttachmentDefinition", NAME)]
        assert found["network-attachment-definitions.k8s.cni.cncf.io"]["spec"] == nad["spec"]
        svc = rendered[("Service", NAME)]
        assert [(p["name"], p["port"], p["protocol"]) for p in found["service"]["spec"]["ports"]] \
            == [(p["name"], p["port"], p["protocol"]) for p in svc["spec"]["ports"]]
        dep = rendered[("Deployment", NAME)]
        assert found["deployment"]["spec"]["template"]["metadata"]["annotations"] \
            == dep["spec"]["template"]["metadata"]["annotations"]
        for obj in found.values():
            assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] \
                == "egress-router-operator"
        # Status as upstream: three conditions with reason, message and a transition time.
        conds = {c["type"]: c for c in cr["status"]["conditions"]}
        assert set(conds) == {"Available", "Progressing", "Degraded"}
        assert conds["Degraded"]["status"] == "False"
        for cond in conds.values():
            assert cond["reason"] and cond["message"] and cond["lastTransitionTime"]
        reasons = [e["reason"] for e in events(env, namespace)]
        assert reasons.count("Created") == 5, reasons
        # One write per object, one status (and its events): nothing more.
        assert sum(": write: create " in w for w in a.writes()) == 5
    finally:
        assert a.stop() == 0


def test_no_write_when_nothing_changed_not_even_after_a_restart(
    env: Env, namespace: str
) -> None:
    a = env.operator("churn-a")
    try:
        op.wait_for("the Lease", a.leading, 40)
        env.cluster.apply(cr_text(namespace))
        converged(env, namespace)
        op.wait_for("a quiet operator", lambda: _quiet(a), 60, interval=3)
        before = versions(env, namespace)
        count = len(a.writes())
        time.sleep(3 * float(RESYNC) + 2)  # three resyncs
        assert len(a.writes()) == count, a.writes()[count:]
        assert versions(env, namespace) == before
    finally:
        assert a.stop() == 0
    b = env.operator("churn-b")
    try:
        op.wait_for("the Lease", b.leading, 40)
        time.sleep(3 * float(RESYNC) + 2)
        assert b.writes() == []
        assert versions(env, namespace) == before
        assert "reconcil" in b.text()
    finally:
        assert b.stop() == 0


def _quiet(proc: op.Operator) -> bool:
    count = len(proc.writes())
    time.sleep(2 * float(RESYNC) + 1)
    return len(proc.writes()) == count


def test_hand_edits_are_put_back(env: Env, namespace: str) -> None:
    a = env.operator("edit-a")
    try:
        op.wait_for("the Lease", a.leading, 40)
        env.cluster.apply(cr_text(namespace))
        found = converged(env, namespace)
        data = found["configmap"]["data"]
        ports = found["service"]["spec"]["ports"]
        env.cluster.kubectl("patch", "configmap", NAME, "-n", namespace, "--type", "merge",
                            "-p", json.dumps({"data": {"cni.json": "{}", "extra": "x"}}))
        env.cluster.kubectl("patch", "service", NAME, "-n", namespace, "--type", "json", "-p",
                            json.dumps([{"op": "replace", "path": "/spec/ports/0/port",
                                         "value": 1234}]))
        op.wait_for("the ConfigMap put back",
                    lambda: (get(env, "configmap", NAME, namespace) or {}).get("data") == data)
        op.wait_for("the Service port put back",
                    lambda: [p["port"] for p in (get(env, "service", NAME, namespace)
                                                 or {"spec": {"ports": []}})["spec"]["ports"]]
                    == [p["port"] for p in ports])
        old_uid = found["service"]["metadata"]["uid"]
        env.cluster.kubectl("delete", "service", NAME, "-n", namespace)
        op.wait_for("the Service made again",
                    lambda: (get(env, "service", NAME, namespace) or {"metadata": {"uid": old_uid}}
                             )["metadata"]["uid"] != old_uid)
        reasons = [e["reason"] for e in events(env, namespace)]
        assert reasons.count("Updated") >= 2 and reasons.count("Created") >= 6, reasons
    finally:
        assert a.stop() == 0


def test_invalid_resource_is_degraded_with_renders_message_and_nothing_running_changes(
    env: Env, namespace: str, tmp_path: Path
) -> None:
    a = env.operator("invalid-a")
    try:
        op.wait_for("the Lease", a.leading, 40)
        env.cluster.apply(cr_text(namespace))
        converged(env, namespace)
        op.wait_for("a quiet operator", lambda: _quiet(a), 60, interval=3)
        before = versions(env, namespace)
        # 9090 is the router's HTTP port: the CRD takes it, the router refuses it.
        env.cluster.kubectl("patch", "egressrouter", NAME, "-n", namespace, "--type", "json",
                            "-p", json.dumps([{"op": "replace",
                                               "path": "/spec/redirect/redirectRules/0/port",
                                               "value": 9090}]))
        degraded = op.wait_for(
            "Degraded", lambda: condition(router(env, namespace), "Degraded").get("status")
            == "True" and router(env, namespace), 30)
        cond = condition(degraded, "Degraded")
        assert cond["reason"] == "InvalidSpec"
        done = offline(env, degraded, tmp_path)
        assert done.returncode == 1
        line = done.stderr.strip().splitlines()[-1]
        source = f"EgressRouter {namespace}/{NAME}"
        assert line == "egress-router: error: " + cond["message"].replace(
            source, str(tmp_path / "cr.json"))
        assert "\n" not in cond["message"]
        warnings = [e for e in events(env, namespace) if e["type"] == "Warning"]
        assert [e["reason"] for e in warnings] == ["InvalidSpec"]
        assert versions(env, namespace) == before  # the old router untouched
        # Fixed: Degraded clears.
        env.cluster.kubectl("patch", "egressrouter", NAME, "-n", namespace, "--type", "json",
                            "-p", json.dumps([{"op": "replace",
                                               "path": "/spec/redirect/redirectRules/0/port",
                                               "value": 80}]))
        op.wait_for("Degraded cleared",
                    lambda: condition(router(env, namespace), "Degraded").get("status")
                    == "False", 30)
    finally:
        assert a.stop() == 0


def test_rules_change_reaches_the_configmap_and_the_pod_template_stays(
    env: Env, namespace: str
) -> None:
    a = env.operator("rules-a")
    try:
        op.wait_for("the Lease", a.leading, 40)
        env.cluster.apply(cr_text(namespace))
        found = converged(env, namespace)
        template = found["deployment"]["spec"]["template"]
        generation = found["deployment"]["metadata"]["generation"]
        env.cluster.kubectl("patch", "egressrouter", NAME, "-n", namespace, "--type", "json",
                            "-p", json.dumps([{"op": "replace",
                                               "path": "/spec/redirect/redirectRules/0/"
                                                       "destinationIP",
                                               "value": "203.0.113.28"}]))
        cm = op.wait_for(
            "the new rule in the ConfigMap",
            lambda: "80 tcp 203.0.113.28" in json.dumps(
                (get(env, "configmap", NAME, namespace) or {}).get("data")), 30)
        assert cm
        dep = get(env, "deployment", NAME, namespace)
        assert dep is not None
        assert dep["spec"]["template"] == template  # no new pod: wait reloads the file
        assert dep["metadata"]["generation"] == generation
    finally:
        assert a.stop() == 0


def test_ha_annotation_adds_a_pair_and_its_budget_and_removing_it_prunes_the_budget(
    env: Env, namespace: str
) -> None:
    a = env.operator("ha-a")
    try:
        op.wait_for("the Lease", a.leading, 40)
        env.cluster.apply(cr_text(namespace))
        converged(env, namespace)
        assert get(env, "poddisruptionbudget", NAME, namespace) is None
        env.cluster.kubectl("annotate", "egressrouter", NAME, "-n", namespace,
                            "egress-router/ha-vrid=7")
        pdb = op.wait_for("the pair's PodDisruptionBudget",
                          lambda: get(env, "poddisruptionbudget", NAME, namespace), 30)
        uid = router(env, namespace)["metadata"]["uid"]
        assert [r["uid"] for r in pdb["metadata"]["ownerReferences"]] == [uid]
        dep = get(env, "deployment", NAME, namespace)
        assert dep is not None and dep["spec"]["replicas"] == 2
        env.cluster.kubectl("annotate", "egressrouter", NAME, "-n", namespace,
                            "egress-router/ha-vrid-")
        op.wait_for("the budget pruned",
                    lambda: get(env, "poddisruptionbudget", NAME, namespace) is None, 30)
        dep = get(env, "deployment", NAME, namespace)
        assert dep is not None and dep["spec"]["replicas"] == 1
        assert any("delete PodDisruptionBudget" in w for w in a.writes())
    finally:
        assert a.stop() == 0


def test_two_operators_one_writer_and_the_standby_takes_over(
    env: Env, namespace: str
) -> None:
    a = env.operator("pair-a")
    b = env.operator("pair-b")
    try:
        leader, standby = op.wait_for(
            "one leader",
            lambda: (a, b) if a.leading() else ((b, a) if b.leading() else None), 40)
        env.cluster.apply(cr_text(namespace))
        converged(env, namespace)
        assert not standby.leading()
        assert standby.writes() == []
        assert leader.writes()
        lease = get(env, "lease", operator_manifest.LEASE_NAME, op.NAMESPACE)
        assert lease is not None and lease["spec"]["holderIdentity"] == leader.identity
        leader.kill(signal.SIGKILL)  # no hand-back: the standby waits out the Lease
        op.wait_for("the standby leading", standby.leading, 40)
        env.cluster.kubectl("delete", "configmap", NAME, "-n", namespace)
        op.wait_for("the ConfigMap made again by the new leader",
                    lambda: get(env, "configmap", NAME, namespace), 30)
        assert any("create ConfigMap" in w for w in standby.writes())
    finally:
        a.kill()
        b.kill()


def test_killed_mid_reconcile_converges_without_duplicates(env: Env, namespace: str) -> None:
    a = env.operator("kill-a")
    try:
        op.wait_for("the Lease", a.leading, 40)
        env.cluster.apply(cr_text(namespace))
        op.wait_for("the first create", lambda: any(" create " in w for w in a.writes()), 30,
                    interval=0.05)
    finally:
        a.kill(signal.SIGKILL)
    b = env.operator("kill-b")
    try:
        converged(env, namespace)
        for kind in (*OWNED, "daemonset"):
            done = env.cluster.kubectl(
                "get", kind, "-n", namespace, "-l", f"app.kubernetes.io/instance={NAME}",
                "-o", "json")
            assert len(json.loads(done.stdout)["items"]) == 1, kind
        assert b.leading()
    finally:
        assert b.stop() == 0


def test_delete_lets_the_garbage_collector_remove_everything(env: Env, namespace: str) -> None:
    a = env.operator("delete-a")
    try:
        op.wait_for("the Lease", a.leading, 40)
        env.cluster.apply(cr_text(namespace))
        converged(env, namespace)
        env.cluster.kubectl("delete", "egressrouter", NAME, "-n", namespace)

        def gone() -> bool:
            for kind in (*OWNED, "daemonset"):
                done = env.cluster.kubectl(
                    "get", kind, "-n", namespace, "-l", f"app.kubernetes.io/instance={NAME}",
                    "-o", "name")
                if done.stdout.strip():
                    return False
            return True

        op.wait_for("every owned object gone", gone, 90, interval=2)
        assert not any(" delete " in w for w in a.writes())  # the garbage collector's work
    finally:
        assert a.stop() == 0


def test_the_rendered_operator_deployment_runs_two_replicas_one_writer(
    env: Env, namespace: str
) -> None:
    """`render --operator`'s Deployment in the cluster: its pods, its RBAC, its Lease."""
    nodes = json.loads(env.cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    if not nodes:
        pytest.skip("the cluster has no nodes (EGRESS_ROUTER_CLUSTER_CONTROL_PLANE_ONLY)")
    image = op.router_image(env.cluster)
    (deployment,) = [o for o in operator_manifest.objects(op.NAMESPACE, image, image)
                     if o["kind"] == "Deployment"]
    env.cluster.apply(yaml.safe_dump(deployment))
    try:
        env.cluster.wait(f"deployment/{operator_manifest.NAME}", "condition=Available",
                         timeout=180, namespace=op.NAMESPACE)

        def pods() -> list[str]:
            out = env.cluster.kubectl(
                "get", "pods", "-n", op.NAMESPACE, "-l",
                "app.kubernetes.io/name=egress-router-operator", "-o", "json").stdout
            return [p["metadata"]["name"] for p in json.loads(out)["items"]
                    if p["status"].get("phase") == "Running"
                    and not p["metadata"].get("deletionTimestamp")]

        running = op.wait_for("two operator pods", lambda: len(pods()) == 2 and pods(), 180)

        def holder() -> str:
            lease = get(env, "lease", operator_manifest.LEASE_NAME, op.NAMESPACE) or {}
            return str((lease.get("spec") or {}).get("holderIdentity") or "")

        leader = op.wait_for("a pod holding the Lease", lambda: holder() in running and holder(),
                             60)
        (standby,) = [p for p in running if p != leader]
        env.cluster.apply(cr_text(namespace))
        converged(env, namespace)

        def reporters(reason: str) -> list[str]:
            """Which replica recorded each Event (its reportingInstance): the writer."""
            return [e.get("reportingInstance", "") for e in events(env, namespace)
                    if e["reason"] == reason]

        assert reporters("Created") == [leader] * 5
        # The leader's pod goes (SIGTERM: it hands the Lease back); another replica takes
        # over (the standby, or the Deployment's replacement pod if it is quicker).
        env.cluster.kubectl("delete", "pod", leader, "-n", op.NAMESPACE, "--wait=false")
        try:
            successor = op.wait_for("another replica leading",
                                    lambda: holder() not in ("", leader) and holder(), 60)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{_operator_logs(env)}") from None
        print(f"the Lease went to the {'standby' if successor == standby else 'new pod'}")
        env.cluster.kubectl("delete", "configmap", NAME, "-n", namespace)
        op.wait_for("the ConfigMap made again", lambda: get(env, "configmap", NAME, namespace), 60)
        op.wait_for("its Event", lambda: sorted(reporters("Created"))
                    == sorted([leader] * 5 + [successor]), 30)
    finally:
        env.cluster.kubectl("delete", "deployment", operator_manifest.NAME, "-n", op.NAMESPACE,
                            "--timeout=60s", check=False)


def _operator_logs(env: Env) -> str:
    """The operator pods' logs as the nodes keep them (for a failure message)."""
    lease = get(env, "lease", operator_manifest.LEASE_NAME, op.NAMESPACE)
    out = [f"Lease: {json.dumps((lease or {}).get('spec'))}"]
    for path in sorted(env.cluster.dir.glob(f"n*/**/{op.NAMESPACE}_*/**/*.log")):
        out.append(f"--- {path}\n{path.read_text(errors='replace')[-3000:]}")
    return "\n".join(out)
