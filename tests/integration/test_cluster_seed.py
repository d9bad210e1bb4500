"""The seed's procedure, run as written in a real Kubernetes cluster (scripts/cluster.sh).

OpenShift 3 documented the egress router as a Pod (``egress-multi``: a
privileged init container with ``EGRESS_*``, the ``assign-macvlan``
annotation, a wait container) and a Service selecting it; other pods connect
to the Service. Here that Pod and Service are applied with kubectl unchanged
except the image names, on a vanilla cluster made of Kubernetes' own
components. What the OpenShift SDN did for the annotation, our CNI plugin does
as a chained plugin of the node's pod network, installed on both nodes by our
installer DaemonSet (`egress-router render`'s). Client pods on both nodes
connect through the Service's ClusterIP to every flow of the seed, and the
destination server's own log must show the reserved source 192.168.12.99.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import cluster as clustermod

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.timeout(1800),
]

HERE = Path(__file__).parent / "cluster"
# The seed's four flows and the fallback's extra ports: (proto, service port, where it lands).
FLOWS = [
    ("tcp", 80, "203.0.113.25:80"),
    ("tcp", 8080, "203.0.113.26:80"),
    ("tcp", 8443, "203.0.113.26:443"),
    ("tcp", 9000, "203.0.113.27:9000"),
    ("udp", 9000, "203.0.113.27:9000"),
]


def chain_annotation_plugin(cluster: clustermod.Cluster) -> None:
    """The cluster's administrator chains the plugin after the pod network, as OpenShift SDN
    had it built in: it reads the pod's annotation with the node's CNI credential."""
    for node in clustermod.NODES:
        conflist = cluster.dir / node / "cni" / "net.d" / "10-podnet.conflist"
        conf = json.loads(conflist.read_text())
        if not any(p.get("type") == "egress-router" for p in conf["plugins"]):
            conf["plugins"].append(
                {
                    "type": "egress-router",
                    "assignMacvlan": {"kubeconfig": "/etc/cni/net.d/cni.kubeconfig"},
                    "log_level": "debug",
                    "log_file": str(cluster.dir / node / "egress-router-cni.log"),
                }
            )
            tmp = conflist.with_suffix(".tmp")
            tmp.write_text(json.dumps(conf, indent=2))
            tmp.replace(conflist)


@pytest.fixture(scope="module")
def seed(cluster: clustermod.Cluster) -> Iterator[clustermod.Cluster]:
    clustermod.install_plugin(cluster)
    chain_annotation_plugin(cluster)
    # The seed's Pod asks for a node with site=springfield-1.
    cluster.kubectl("label", "node", "n1", "site=springfield-1", "--overwrite")
    manifest = (
        (HERE / "seed-pod.yaml")
        .read_text()
        .replace("__ROUTER_IMAGE__", cluster.image)
        .replace("__POD_IMAGE__", cluster.pause_image)
    )
    cluster.apply(manifest)
    for node in clustermod.NODES:
        cluster.apply(clustermod.client_pod(f"client-{node}", node, cluster.image))
    try:
        cluster.wait("pod/egress-multi", "condition=Ready", timeout=180)
        for node in clustermod.NODES:
            cluster.wait(f"pod/client-{node}", "condition=Ready", timeout=180)
    except clustermod.ClusterError as err:
        logs = cluster.kubectl("logs", "egress-multi", "-c", "egress-router", check=False)
        raise AssertionError(f"{err}\n{cluster.describe('pods')}\n{logs.stdout}") from None
    # kube-proxy programs the new endpoints a moment after the pod is Ready; until then it
    # rejects connections to the Service (refused).
    cluster_ip = cluster.get("service", "egress-1")["spec"]["clusterIP"]
    for node in clustermod.NODES:
        clustermod.wait_until(
            f"kube-proxy on {node} forwards the Service",
            lambda node=node: "server"
            in cluster.dial_from(f"client-{node}", "tcp", cluster_ip, 80, "ready"),
            timeout=60, interval=1,
        )  # fmt: skip
    yield cluster
    # The reserved address is the next test's too: this router leaves the physical network.
    cluster.kubectl("delete", "pod", "egress-multi", "--wait=true", "--timeout=60s", check=False)


def test_the_router_pod_got_macvlan0_from_the_annotation(seed: clustermod.Cluster) -> None:
    pod = seed.get("pod", "egress-multi")
    assert pod["spec"]["nodeName"] == "n1"
    init = pod["status"]["initContainerStatuses"][0]
    assert init["state"]["terminated"]["exitCode"] == 0, init
    # Clients have no annotation: the chained plugin passed their result through untouched.
    links = seed.exec("client-n1", "ip", "-j", "link", "show")
    assert links.returncode == 0, links.stderr
    assert "macvlan0" not in {link["ifname"] for link in json.loads(links.stdout)}


@pytest.mark.parametrize("node", clustermod.NODES)
def test_clients_on_both_nodes_reach_every_seed_flow_from_the_reserved_source(
    seed: clustermod.Cluster, node: str
) -> None:
    cluster_ip = seed.get("service", "egress-1")["spec"]["clusterIP"]
    for proto, port, lands in FLOWS:
        marker = f"seed-{node}-{proto}-{port}-{secrets.token_hex(4)}"
        answer = seed.dial_from(f"client-{node}", proto, cluster_ip, port, marker)
        assert answer.get("server") == lands, (proto, port, answer)
        assert str(answer.get("peer", "")).rsplit(":", 1)[0] == clustermod.SOURCE, answer
        # The destination server's own log, read independently of the client's answer.
        logged = clustermod.peers_of(seed.destination_log(), marker)
        assert logged == [clustermod.SOURCE], (proto, port, logged)
