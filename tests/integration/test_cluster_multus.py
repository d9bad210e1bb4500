"""The Multus shape in the real cluster: `egress-router render` applied as it is.

Each node's pod network becomes Multus's (the thin plugin built from its Go
module, delegating to bridge + host-local), our installer DaemonSet puts the
egress-router plugin on both nodes, and the rendered NetworkAttachmentDefinition,
ConfigMap, Deployment and Service are applied with kubectl. Clients on both
nodes reach every rule through the Service from the reserved source, as the
destination server logs it; deleting the pod leaves nothing on the node.
A changed configuration applied with kubectl reaches the running router through the
kubelet's swap of the mounted file (live reload, no new pod).
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from support import cluster as clustermod

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.timeout(1800),
]

NAMESPACE = "egress"
NAME = "egress-partners"
CONFIG: dict[str, Any] = {
    "name": NAME,
    "namespace": NAMESPACE,
    "attachment": {"type": "cni", "master": "eth0", "mode": "private", "interface": "net1"},
    "source": "192.168.12.99/24",
    "gateway": "192.168.12.1",
    "destinations": ["80 tcp 203.0.113.25", "8080 tcp 203.0.113.26 80", "203.0.113.27"],
    "extraPorts": ["9000/tcp", "9000/udp"],
    "imagePullPolicy": "IfNotPresent",
}
FLOWS = [
    ("tcp", 80, "203.0.113.25:80"),
    ("tcp", 8080, "203.0.113.26:80"),
    ("tcp", 9000, "203.0.113.27:9000"),
    ("udp", 9000, "203.0.113.27:9000"),
]


def render(config: dict[str, Any]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(clustermod.ROOT / ".venv" / "bin" / "egress-router"), "render", "--check", "-"],
        input=yaml.safe_dump(config), capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def use_multus(cluster: clustermod.Cluster) -> None:
    """Multus's thin plugin becomes each node's network, delegating to the pod network."""
    for node in clustermod.NODES:
        netd = cluster.dir / node / "cni" / "net.d"
        podnet = json.loads((netd / "10-podnet.conflist").read_text())
        conf = {
            "cniVersion": "1.0.0",
            "name": "multus-cni-network",
            "type": "multus",
            "kubeconfig": "/etc/cni/net.d/cni.kubeconfig",
            "cniDir": str(cluster.dir / node / "cni" / "multus"),
            "binDir": "/opt/cni/bin",
            "logFile": str(cluster.dir / node / "multus.log"),
            "logLevel": "verbose",
            "delegates": [podnet],
        }
        tmp = netd / "00-multus.conf.tmp"
        tmp.write_text(json.dumps(conf, indent=2))
        tmp.replace(netd / "00-multus.conf")
    # containerd reloads its CNI configuration on its own time: a pod created before that
    # gets the plain pod network and no attachment. Wait until Multus answers on each node
    # (its network-status annotation on a probe pod).
    for node in clustermod.NODES:
        clustermod.wait_until(
            f"Multus is {node}'s network", lambda node=node: _multus_answers(cluster, node),
            timeout=90, interval=1,
        )  # fmt: skip


def stop_multus(cluster: clustermod.Cluster) -> None:
    """Undo `use_multus`: the pod network alone is each node's network again."""
    for node in clustermod.NODES:
        (cluster.dir / node / "cni" / "net.d" / "00-multus.conf").unlink(missing_ok=True)
    for node in clustermod.NODES:
        clustermod.wait_until(
            f"Multus is no longer {node}'s network",
            lambda node=node: not _multus_answers(cluster, node), timeout=90, interval=1,
        )  # fmt: skip


def _multus_answers(cluster: clustermod.Cluster, node: str) -> bool:
    name = f"multus-probe-{node}"
    cluster.apply(clustermod.client_pod(name, node, cluster.image))
    try:
        cluster.wait(f"pod/{name}", "condition=Ready", timeout=60)
        annotations = cluster.get("pod", name)["metadata"].get("annotations") or {}
        return "k8s.v1.cni.cncf.io/network-status" in annotations
    finally:
        cluster.kubectl("delete", "pod", name, "--wait=true", "--timeout=60s", check=False)


def node_macvlans(cluster: clustermod.Cluster, node: str) -> list[str]:
    """The macvlan links in the node's namespace (read with ip -d -j, independently)."""
    done = subprocess.run(
        ["ip", "-n", cluster.netns(node), "-d", "-j", "link", "show"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return [
        str(link["ifname"])
        for link in json.loads(done.stdout)
        if (link.get("linkinfo") or {}).get("info_kind") == "macvlan"
    ]


def pod_namespaces(cluster: clustermod.Cluster, node: str) -> list[str]:
    """The pods' network namespaces containerd keeps in the node's private /run/netns."""
    done = subprocess.run(
        ["nsenter", f"--mount={cluster.dir / node / 'mnt'}", "--", "ls", "/run/netns"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return done.stdout.split()


@pytest.fixture(scope="module")
def multus(cluster: clustermod.Cluster) -> Iterator[clustermod.Cluster]:
    clustermod.install_plugin(cluster)
    use_multus(cluster)
    cluster.apply(
        yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    )
    docs = render({**CONFIG, "image": cluster.image})
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == sorted(
        ["ConfigMap", "DaemonSet", "Deployment", "NetworkAttachmentDefinition", "Service"]
    ), kinds
    # The router on n1 (the DaemonSet is already there from install_plugin: same installer).
    for doc in docs:
        if doc["kind"] == "Deployment":
            doc["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "n1"}
    cluster.apply(yaml.safe_dump_all(d for d in docs if d["kind"] != "DaemonSet"))
    for node in clustermod.NODES:
        cluster.apply(clustermod.client_pod(f"mclient-{node}", node, cluster.image, NAMESPACE))
    try:
        cluster.wait(f"deployment/{NAME}", "condition=Available", timeout=240, namespace=NAMESPACE)
        for node in clustermod.NODES:
            cluster.wait(f"pod/mclient-{node}", "condition=Ready", timeout=180, namespace=NAMESPACE)
    except clustermod.ClusterError as err:
        raise AssertionError(f"{err}\n{cluster.describe('pods', '-n', NAMESPACE)}") from None
    # kube-proxy programs the new endpoints a moment after the pod is Ready; until then it
    # rejects connections to the Service (refused).
    for node in clustermod.NODES:
        clustermod.wait_until(
            f"kube-proxy on {node} forwards the Service",
            lambda node=node: "server" in _dial(cluster, node, "tcp", 80)[0],
            timeout=60, interval=1,
        )  # fmt: skip
    yield cluster
    # The cluster is the session's: the next module (the seed's procedure) gets the plain
    # pod network back, and no router of ours holds the reserved address any more.
    cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=true", "--timeout=120s",
                    check=False)
    stop_multus(cluster)


def _router_pod(cluster: clustermod.Cluster) -> dict[str, Any]:
    pods = json.loads(
        cluster.kubectl(
            "get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component!=cni-installer,"
            f"app.kubernetes.io/instance={NAME}", "-o", "json",
        ).stdout
    )["items"]  # fmt: skip
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return dict(pods[0])


def _diagnose(cluster: clustermod.Cluster) -> str:
    """What a failure message needs: the router pod, its attachments, its log, its endpoints."""
    pod = _router_pod(cluster)
    name = pod["metadata"]["name"]
    status = (pod["metadata"].get("annotations") or {}).get("k8s.v1.cni.cncf.io/network-status")
    logs = cluster.kubectl("logs", "-n", NAMESPACE, name, check=False).stdout
    slices = cluster.kubectl("get", "endpointslices", "-n", NAMESPACE, "-o", "wide", check=False)
    return f"pod {name} network-status {status}\nlog:\n{logs}\n{slices.stdout}"


def _dial(
    cluster: clustermod.Cluster, node: str, proto: str, port: int
) -> tuple[dict[str, Any], list[str]]:
    cluster_ip = cluster.get("service", NAME, NAMESPACE)["spec"]["clusterIP"]
    marker = f"multus-{node}-{proto}-{port}-{secrets.token_hex(4)}"
    answer = cluster.dial_from(
        f"mclient-{node}", proto, cluster_ip, port, marker, namespace=NAMESPACE
    )
    return answer, clustermod.peers_of(cluster.destination_log(), marker)


@pytest.mark.parametrize("node", clustermod.NODES)
def test_clients_reach_every_rule_through_the_service_from_the_reserved_source(
    multus: clustermod.Cluster, node: str
) -> None:
    for proto, port, lands in FLOWS:
        answer, logged = _dial(multus, node, proto, port)
        assert answer.get("server") == lands, (proto, port, answer, _diagnose(multus))
        assert logged == [clustermod.SOURCE], (proto, port, logged)


def test_a_changed_configmap_reaches_the_running_router_without_a_new_pod(
    multus: clustermod.Cluster,
) -> None:
    # kubectl apply of the re-rendered objects: the ConfigMap (the kubelet swaps the mounted
    # file in) and the Service (its new port); the pod stays. 8080 goes, 8443 comes, 80 stays.
    before = _router_pod(multus)
    pod_ip = before["status"]["podIP"]
    changed = {**CONFIG, "destinations": [
        "80 tcp 203.0.113.25", "8443 tcp 203.0.113.26 443", "203.0.113.27"]}
    docs = render({**changed, "image": multus.image})
    multus.apply(yaml.safe_dump_all(d for d in docs if d["kind"] in ("ConfigMap", "Service")))

    def new_rule_works() -> bool:
        return _dial(multus, "n2", "tcp", 8443)[0].get("server") == "203.0.113.26:443"

    clustermod.wait_until("the new rule reaches the router", new_rule_works,
                          timeout=120, interval=2)
    answer, logged = _dial(multus, "n2", "tcp", 8443)
    assert logged == [clustermod.SOURCE], (answer, logged)
    assert _dial(multus, "n1", "tcp", 80)[0].get("server") == "203.0.113.25:80"
    # The removed rule, dialled at the pod itself (the Service no longer has the port): the
    # fallback takes it now, and nothing listens at 203.0.113.27:8080.
    marker = f"removed-{secrets.token_hex(4)}"
    gone = multus.dial_from("mclient-n2", "tcp", pod_ip, 8080, marker, namespace=NAMESPACE)
    assert gone.get("server") != "203.0.113.26:80", gone
    after = _router_pod(multus)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]  # the same pod, reloaded
    assert after["status"]["containerStatuses"][0]["restartCount"] == \
        before["status"]["containerStatuses"][0]["restartCount"]


def test_deleting_the_router_pod_leaves_nothing_on_the_node(multus: clustermod.Cluster) -> None:
    pod = _router_pod(multus)
    name = pod["metadata"]["name"]
    assert pod["spec"]["nodeName"] == "n1"
    namespaces_before = len(pod_namespaces(multus, "n1"))
    multus.kubectl("scale", f"deployment/{NAME}", "-n", NAMESPACE, "--replicas=0")
    multus.kubectl("wait", "--for=delete", f"pod/{name}", "-n", NAMESPACE, "--timeout=60s")
    assert node_macvlans(multus, "n1") == []
    # The pod's network namespace (and with it net1, its addresses, routes and rules) is
    # gone: one namespace fewer in the node's /run/netns, where containerd keeps them.
    assert len(pod_namespaces(multus, "n1")) == namespaces_before - 1
