"""The local Kubernetes cluster (scripts/cluster.sh) as the tests drive it.

`scripts/cluster.sh` builds and starts a two-node cluster from Kubernetes' own
components inside network namespaces named after the cluster. The tests
need a handle on it: kubectl in the control-plane namespace, the pods'
state, commands run inside pods, and the destination server's own log of
the peer addresses it saw (the far side every test judges from). One
cluster per test session (start-up is the expensive part), a name of its
own per run, ``down`` at the end even when tests fail, and a sweep of the
clusters of earlier runs whose owner process is gone.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "cluster.sh"
BASE = Path(os.environ.get("EGRESS_ROUTER_CLUSTER_DIR", "/var/tmp/egress-router-cluster"))
NODES = ("n1", "n2")
# The reserved source and gateway of the physical network, the destinations behind it.
SOURCE = "192.168.12.99"
GATEWAY = "192.168.12.1"


class ClusterError(RuntimeError):
    pass


@dataclass
class Cluster:
    name: str

    @property
    def dir(self) -> Path:
        return BASE / self.name

    @property
    def bin(self) -> Path:
        return Path((self.dir / "bin").read_text().strip())

    @property
    def image(self) -> str:
        return (self.dir / "router-image").read_text().strip()

    @property
    def pause_image(self) -> str:
        return (self.dir / "pause-image").read_text().strip()

    def netns(self, role: str) -> str:
        return f"{self.name}-{role}"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "EGRESS_ROUTER_CLUSTER": self.name}

    # ------------------------------------------------------------------ kubectl

    def kubectl(
        self,
        *args: str,
        stdin: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [
            "ip", "netns", "exec", self.netns("cp"),
            str(self.bin / "kubectl"), "--kubeconfig", str(self.dir / "pki" / "admin.kubeconfig"),
            *args,
        ]  # fmt: skip
        done = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise ClusterError(
                f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
            )
        return done

    def apply(self, manifest: str) -> str:
        return self.kubectl("apply", "-f", "-", stdin=manifest).stdout

    def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any]:
        out = self.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
        obj: dict[str, Any] = json.loads(out)
        return obj

    def wait(
        self, what: str, condition: str, timeout: float = 180.0, namespace: str = "default"
    ) -> None:
        self.kubectl(
            "wait", f"--for={condition}", what, "-n", namespace, f"--timeout={int(timeout)}s",
            timeout=timeout + 30,
        )  # fmt: skip

    def exec(self, pod: str, *cmd: str, namespace: str = "default", timeout: float = 60.0,
             container: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        extra = ["-c", container] if container else []
        return self.kubectl(
            "exec", pod, "-n", namespace, *extra, "--", *cmd, check=False, timeout=timeout
        )

    def describe(self, *what: str) -> str:
        """Everything a failure message needs: the objects, their events, the pods' logs."""
        done = self.kubectl("describe", *what, check=False)
        return done.stdout + done.stderr

    # ------------------------------------------------------------------ the far side

    def destination_log(self) -> list[dict[str, Any]]:
        path = self.dir / "dst.log"
        if not path.exists():
            return []
        entries = []
        for line in path.read_text().splitlines():
            if line.strip():
                entries.append(json.loads(line))
        return entries

    def dial_from(
        self,
        pod: str,
        proto: str,
        host: str,
        port: int,
        payload: str,
        *,
        timeout: float = 5.0,
        namespace: str = "default",
    ) -> dict[str, Any]:
        """``egress_router.lab.server dial`` inside ``pod`` (the project's image has it)."""
        done = self.exec(
            pod, "/opt/egress-router/bin/python", "-m", "egress_router.lab.server", "dial",
            proto, host, str(port), "--payload", payload, "--timeout", str(timeout),
            timeout=timeout + 30, namespace=namespace,
        )  # fmt: skip
        line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        try:
            answer: dict[str, Any] = json.loads(line)
        except ValueError:
            answer = {"error": "no-answer", "stdout": done.stdout, "stderr": done.stderr}
        return answer


# ---------------------------------------------------------------------- what tests install

SYSTEM_NAMESPACE = "egress-router-system"


def installer_daemonset(image: str) -> dict[str, Any]:
    """`egress-router render`'s installer DaemonSet (no node selector: every node)."""
    config = {
        "name": "egress-router-cni",
        "namespace": SYSTEM_NAMESPACE,
        "attachment": {"type": "cni", "master": "eth0", "interface": "net1"},
        "source": "192.168.12.98/24",
        "gateway": "192.168.12.1",
        "destinations": ["203.0.113.27"],
        "image": image,
        "imagePullPolicy": "IfNotPresent",
    }
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "egress-router"), "render", "-"],
        input=yaml.safe_dump(config), capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    for doc in yaml.safe_load_all(done.stdout):
        if doc and doc.get("kind") == "DaemonSet":
            return dict(doc)
    raise AssertionError(f"render gave no installer DaemonSet:\n{done.stdout}")


def install_plugin(cluster: Cluster) -> None:
    """Our installer DaemonSet puts the CNI plugin on both nodes (/opt/cni/bin/egress-router)."""
    cluster.apply(
        yaml.safe_dump(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}}
        )
    )
    cluster.apply(yaml.safe_dump(installer_daemonset(cluster.image)))
    for node in NODES:
        plugin = cluster.dir / node / "cni" / "bin" / "egress-router"
        wait_until(
            f"the installer DaemonSet puts the plugin on {node}",
            lambda plugin=plugin: plugin.exists() and os.access(plugin, os.X_OK),
            timeout=240,
        )


def client_pod(name: str, node: str, image: str, namespace: str = "default") -> str:
    """A pod on ``node`` running the project's image idle, to dial from."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": "egress-client"}},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "client",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["sleep", "infinity"],
                    }
                ],
            },
        }
    )


# ---------------------------------------------------------------------- life cycle


def run_script(
    name: str, *args: str, timeout: float = 3600.0, owner: int | None = None, image: str = ""
) -> str:
    env = {**os.environ, "EGRESS_ROUTER_CLUSTER": name}
    if owner is not None:
        env["EGRESS_ROUTER_CLUSTER_OWNER"] = str(owner)
    if image:
        env["EGRESS_ROUTER_CLUSTER_IMAGE"] = image
    done = subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise ClusterError(f"cluster.sh {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return done.stdout + done.stderr


def new_name() -> str:
    return "c" + secrets.token_hex(3)[:5]


def started(name: str | None = None, image: str = "") -> Iterator[Cluster]:
    """A cluster for the duration of the generator (up, yield, down even on failure)."""
    name = name or new_name()
    run_script(name, "sweep")
    start = time.monotonic()
    try:
        run_script(name, "up", owner=os.getpid(), image=image)
        print(f"cluster {name} up in {time.monotonic() - start:.0f} s")
        yield Cluster(name)
    finally:
        run_script(name, "down")


def wait_until(what: str, check: Any, timeout: float = 60.0, interval: float = 0.5) -> Any:
    """Poll ``check()`` until it returns something truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def peers_of(entries: Sequence[dict[str, Any]], marker: str) -> list[str]:
    """The peer addresses the destination server logged for requests carrying ``marker``."""
    peers = []
    for entry in entries:
        if marker in str(entry.get("data", "")):
            peers.append(str(entry.get("peer", "")).rsplit(":", 1)[0])
    return peers
