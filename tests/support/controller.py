"""The operator as the integration tests run it: processes in the control-plane namespace.

The operator only talks to the API server, so the tests run it as a plain process (the venv's
``egress-router operator``) inside the cluster's control-plane network namespace, with the
credentials of the ServiceAccount that ``render --operator`` makes (a token from ``kubectl
create token``): the rendered RBAC is what it works with. Each process logs to a file of its
own; every write it makes is one ``write:`` line, which is how the tests count writes (and the
API server's resourceVersions, read independently through kubectl, say the same).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXECUTABLE = Path(sys.executable).with_name("egress-router")
NAMESPACE = "egress-router-operator"
ACCOUNT = "egress-router-operator"


def router_image(cluster: Any) -> str:
    """The image the cluster's nodes hold; the default name on a control plane alone."""
    from egress_router.k8s import manifest  # noqa: PLC0415

    path = cluster.dir / "router-image"
    return path.read_text().strip() if path.exists() else manifest.DEFAULT_IMAGE


def service_account_kubeconfig(cluster: Any, path: Path) -> Path:
    """A kubeconfig for the operator's ServiceAccount (server and CA from the admin's)."""
    admin = yaml.safe_load((cluster.dir / "pki" / "admin.kubeconfig").read_text())
    token = cluster.kubectl("create", "token", ACCOUNT, "-n", NAMESPACE,
                            "--duration", "2h").stdout.strip()
    (entry,) = admin["clusters"]
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [entry],
        "users": [{"name": ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": ACCOUNT, "context": {"cluster": entry["name"], "user": ACCOUNT}}],
        "current-context": ACCOUNT,
    }
    path.write_text(yaml.safe_dump(config))
    return path


class Operator:
    """One ``egress-router operator`` process in the control-plane namespace."""

    def __init__(self, cluster: Any, kubeconfig: Path, log: Path, identity: str,
                 *extra: str) -> None:
        self.identity = identity
        self.log = log
        cmd = [
            "ip", "netns", "exec", cluster.netns("cp"), str(EXECUTABLE), "operator",
            "--kubeconfig", str(kubeconfig), "--lease-namespace", NAMESPACE,
            "--identity", identity, "--router-image", router_image(cluster), *extra,
        ]
        self._out = log.open("ab")
        # Its own process group: the test ends exactly this process and what it started.
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def writes(self) -> list[str]:
        return [line for line in self.text().splitlines() if ": write: " in line]

    def leading(self) -> bool:
        return f"{self.identity} holds Lease" in self.text()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._out.close()

    def stop(self) -> int:
        """SIGTERM: it stops writing, hands the Lease back and exits 0."""
        self.kill(signal.SIGTERM)
        return int(self.proc.returncode)


def wait_for(what: str, check: Any, timeout: float = 60.0, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")
