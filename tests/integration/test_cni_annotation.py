"""The chained assign-macvlan plugin against the real kernel, in namespaces of its own.

The cluster tests run it under containerd; here each case is quick and read back
independently with ``ip -j``: ``"true"`` puts ``macvlan0`` on the node's
default-route interface, an interface name on that one, no annotation leaves the
pod alone (the control), and DEL removes it again. The pod is read through a
stand-in for the API server (the cluster tests use the real one).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.privileged

SCRIPT = r"""
import json, sys
from egress_router.cni import annotation, macvlan, netconf
command, pod_ns, value = sys.argv[1], sys.argv[2], sys.argv[3]
env = netconf.parse_environment({"CNI_COMMAND": command, "CNI_CONTAINERID": "c0ffee" + pod_ns[-5:],
    "CNI_NETNS": "/run/netns/" + pod_ns, "CNI_IFNAME": "eth0", "CNI_PATH": "/x"})
obj = {"cniVersion": "1.0.0", "name": "podnet", "type": "egress-router",
       "assignMacvlan": {"kubeconfig": "/unused"},
       "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}]}}
annotations = {annotation.ANNOTATION: value} if value != "-" else {}
plugin = annotation.AssignMacvlan(env, obj, macvlan.RealKernel(),
                                  lambda ns, n: {"metadata": {"annotations": annotations}})
environ = {"CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"}
if command == "ADD":
    print(json.dumps(plugin.add(environ)))
else:
    plugin.delete()
"""


def sh(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=30).stdout


@pytest.fixture
def node() -> Iterator[str]:
    prefix = "eran" + secrets.token_hex(2)
    names = [f"{prefix}-node", f"{prefix}-pod", f"{prefix}-phy"]
    try:
        for name in names:
            sh("ip", "netns", "add", name)
        node_ns, _, phy = names
        sh("ip", "-n", node_ns, "link", "add", "eth0", "type", "veth", "peer", "p0", "netns", phy)
        sh("ip", "-n", node_ns, "link", "add", "eth9", "type", "veth", "peer", "p9", "netns", phy)
        for ifname in ("eth0", "eth9"):
            sh("ip", "-n", node_ns, "link", "set", ifname, "up")
        sh("ip", "-n", node_ns, "addr", "add", "192.168.12.11/24", "dev", "eth0")
        sh("ip", "-n", node_ns, "route", "add", "default", "via", "192.168.12.1")
        yield prefix
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def plugin(prefix: str, command: str, value: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", f"{prefix}-node", sys.executable, "-c", SCRIPT,
         command, f"{prefix}-pod", value],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def links(netns: str) -> dict[str, dict[str, object]]:
    return {link["ifname"]: link for link in json.loads(sh("ip", "-n", netns, "-d", "-j", "link"))}


@pytest.mark.parametrize(("value", "master"), [("true", "eth0"), ("eth9", "eth9")])
def test_the_annotation_gives_the_pod_macvlan0_on_the_chosen_interface(
    node: str, value: str, master: str
) -> None:
    done = plugin(node, "ADD", value)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [i["name"] for i in result["interfaces"]] == ["eth0", "macvlan0"]
    pod = links(f"{node}-pod")
    assert pod["macvlan0"]["linkinfo"]["info_kind"] == "macvlan"  # type: ignore[index]
    assert pod["macvlan0"]["linkinfo"]["info_data"]["mode"] == "private"  # type: ignore[index]
    assert "UP" in pod["macvlan0"]["flags"]  # type: ignore[operator]
    # Its master is the chosen node interface (the link index the node sees it by).
    node_links = links(f"{node}-node")
    assert pod["macvlan0"]["link_index"] == node_links[master]["ifindex"]
    assert "macvlan" not in {
        str((link.get("linkinfo") or {}).get("info_kind"))  # type: ignore[union-attr]
        for link in node_links.values()
    }
    done = plugin(node, "DEL", value)
    assert done.returncode == 0, done.stderr
    assert "macvlan0" not in links(f"{node}-pod")


def test_a_pod_without_the_annotation_is_left_alone(node: str) -> None:
    done = plugin(node, "ADD", "-")
    assert done.returncode == 0, done.stderr
    assert "macvlan0" not in links(f"{node}-pod")
    assert [i["name"] for i in json.loads(done.stdout)["interfaces"]] == ["eth0"]


def test_an_interface_the_node_lacks_is_refused_and_nothing_is_left(node: str) -> None:
    done = plugin(node, "ADD", "ens3")
    assert done.returncode != 0
    assert "'ens3' does not exist" in done.stderr + done.stdout
    assert "macvlan0" not in links(f"{node}-pod")
