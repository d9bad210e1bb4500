"""The built image, run by a real container runtime in a lab pod, judged from the far side.

`scripts/build-image.sh` builds the image (``scripts/test.sh`` and CI run it first). Here
Debian's podman runs its two containers as the rendered Deployment describes them, in the
lab router pod's network namespace (``--network ns:``, so podman sets up no network of its
own anywhere): the init container privileged with ``EGRESS_ROUTER_MODE=init``, then the
main container, ``wait``, with every capability dropped but NET_ADMIN and NET_RAW, a
read-only root filesystem and the image's non-root user. The destination server's log must
show the reserved source, ``/readyz`` must answer from the client pod, and the waiting
container must be the one that puts the data path back after its table was deleted.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from egress_router.core import ruleset
from egress_router.k8s import manifest, render
from egress_router.lab import world as labmod
from support import httpget as http
from support.podspec import one, run_args

pytestmark = [pytest.mark.privileged, pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
IMAGE_USER = "65532:65532"  # the image's unprivileged user (the Containerfile makes it)
ROUTER_IP = str(labmod.ROUTER_POD4.ip)
SOURCE = str(labmod.EGRESS_SOURCE4)
# CapEff of a process holding exactly CAP_NET_ADMIN (12) and CAP_NET_RAW (13).
NET_ADMIN_NET_RAW = (1 << 12) | (1 << 13)
READY_TIMEOUT = 30.0


# --------------------------------------------------------------------------- the pod


def write_config_map(config_map: Mapping[str, Any], directory: Path) -> Path:
    """The ConfigMap's keys as files, as the kubelet fills the volume."""
    directory.mkdir(parents=True)
    for key, value in config_map["data"].items():
        (directory / key).write_text(value, encoding="utf-8")
    return directory


@contextlib.contextmanager
def removed_afterwards(podman: Any, *names: str) -> Iterator[None]:
    """Remove these containers when the block ends, pass or fail."""
    try:
        yield
    finally:
        for name in names:
            podman("rm", "--force", "--time", "2", name, timeout=60)


def http_status(lab: labmod.Lab, path: str) -> int | None:
    """GET ``path`` on the router's HTTP port from the client pod; the status, None if none."""
    return http.get(lab.client, f"http://{ROUTER_IP}:9090{path}", timeout=2).status


def proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def root_mount_options(pid: int) -> list[str]:
    """The mount options of the process's own root, from the host's /proc."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[5].split(",")
    raise AssertionError(f"no root mount in /proc/{pid}/mountinfo")


def assert_redirected(lab: labmod.Lab, port: int, want: str) -> None:
    result = labmod.dial(lab, "tcp", ROUTER_IP, port)
    assert result.ok, f"tcp {port}: {result.error} {result.detail}"
    assert result.server == want
    assert str(result.peer_ip) == SOURCE
    seen = [e for e in labmod.served(lab) if e["server"] == want]
    assert seen and seen[-1]["peer"].rsplit(":", 1)[0] == SOURCE


# --------------------------------------------------------------------------- the test


def test_image_init_and_wait_containers_redirect_from_the_reserved_source(
    built_image: str,
    podman: Any,
    lab_factory: Any,
    tmp_path: Path,
    root_namespace_untouched: dict[str, object],
) -> None:
    spec = manifest.load_config_text((ROOT / "examples" / "seed.yaml").read_text(), "seed.yaml")
    objects = render.render(spec).objects
    config_map = one(objects, "ConfigMap")
    template = one(objects, "Deployment")["spec"]["template"]
    pod = template["spec"]
    (init,) = pod["initContainers"]
    (main,) = pod["containers"]
    lab = lab_factory(macvlan=template["metadata"]["annotations"][render.ANNOTATION_MACVLAN])
    volumes = {config_map["metadata"]["name"]: write_config_map(config_map, tmp_path / "cm")}
    setup_name, wait_name = f"{lab.prefix}-setup", f"{lab.prefix}-wait"

    with removed_afterwards(podman, setup_name, wait_name):
        # The init container: privileged, as root, set up and exit.
        init_args = run_args(pod, init, volumes, lab.router)
        assert "--privileged" in init_args
        done = podman("run", "--rm", "--name", setup_name, *init_args, built_image,
                      *init.get("args", []))
        assert done.returncode == 0, f"init container failed: {done.stdout}{done.stderr}"
        assert "egress router ready" in done.stderr
        assert_redirected(lab, 80, "203.0.113.25:80")
        assert_redirected(lab, 8080, "203.0.113.26:80")

        # Delete the table: the data path is gone (the control), and only the waiting
        # container, with nothing but NET_ADMIN and NET_RAW, can bring it back.
        labmod.run_in(lab.router, ["nft", "delete", "table", ruleset.TABLE_FAMILY, ruleset.TABLE])
        assert not labmod.dial(lab, "tcp", ROUTER_IP, 80).ok

        main_args = run_args(pod, main, volumes, lab.router, user=IMAGE_USER)
        assert {"--cap-drop=all", "--cap-add=net_admin", "--cap-add=net_raw", "--read-only"} <= set(
            main_args
        )
        done = podman("run", "--detach", "--name", wait_name, *main_args, built_image,
                      *main["args"])
        assert done.returncode == 0, f"wait container did not start: {done.stderr}"
        deadline = time.monotonic() + READY_TIMEOUT
        status = http_status(lab, "/readyz")
        while status != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
            status = http_status(lab, "/readyz")
        logs = podman("logs", wait_name).stderr
        assert status == 200, f"/readyz answered {status} after {READY_TIMEOUT:g} s: {logs}"
        assert http_status(lab, "/healthz") == 200

        # What the kernel says about the container's process (not what podman says).
        pid = int(podman("inspect", "--format", "{{.State.Pid}}", wait_name).stdout)
        status_fields = proc_status(pid)
        assert status_fields["Uid"].split() == ["65532"] * 4
        assert int(status_fields["CapEff"], 16) == NET_ADMIN_NET_RAW
        assert int(status_fields["CapBnd"], 16) == NET_ADMIN_NET_RAW
        assert "ro" in root_mount_options(pid)

        assert_redirected(lab, 80, "203.0.113.25:80")
        assert_redirected(lab, 8443, "203.0.113.26:443")
        assert_redirected(lab, 9000, "203.0.113.27:9000")  # the fallback

        # SIGTERM: it stops promptly and cleanly, and the rules stay.
        stop = podman("stop", "--time", "10", wait_name, timeout=60)
        assert stop.returncode == 0, stop.stderr
        code = podman("inspect", "--format", "{{.State.ExitCode}}", wait_name).stdout.strip()
        assert code == "0", podman("logs", wait_name).stderr
        assert_redirected(lab, 80, "203.0.113.25:80")
