"""The one-file plugin, installed as the DaemonSet installs it, run where no Python and no nft are.

A cluster node has neither this project nor Python 3.11 nor (often) nftables. The executable
gets into a temporary "host" CNI bin directory, under the NetworkAttachmentDefinition's type
name, in two ways: built here (``scripts/build-cni.sh``, cached) and installed with
``egress-router install-cni``; and the real DaemonSet flow, the installer container of the
rendered DaemonSet run from the built image (podman, as rendered: root without capabilities,
read-only root, the host directory as its hostPath mount) copying the executable the image
carries. Then a runtime (``cnirun``, which runs plugins as libcni does) drive the INSTALLED file in
a private mount namespace where the project tree, every Python installation (the virtualenv, its
base interpreter, Debian's) and the node's ``nft`` are hidden under empty mounts. Controls show
that they really are hidden there. Success is judged from the far side: the destination records
192.168.12.99 as the peer; DEL leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from egress_router.cni import runtime as cnirun
from egress_router.k8s import manifest, render
from egress_router.lab import world as labmod
from support.podspec import one, run_args

pytestmark = [pytest.mark.privileged, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "scripts" / "build-cni.sh"
TYPE = "egress-router"
CONTAINER_ID = "ert0exe0pod"
SOURCE4 = "192.168.12.99"
CONF: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "egress",
    "type": TYPE,
    "ip": {
        "addresses": ["192.168.12.99/24"],
        "gateway": "192.168.12.1",
        "destinations": ["80 tcp 203.0.113.25", "8080 tcp 203.0.113.26 80", "203.0.113.27"],
    },
    "interfaceType": "macvlan",
    "interfaceArgs": {"master": "ens3", "mode": "private"},
    "announceInterval": 0.05,
}
BRIDGE: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "pod-network",
    "type": "bridge",
    "bridge": labmod.BRIDGE,
    "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.128.0.0/24", "rangeStart": "10.128.0.2",
                     "rangeEnd": "10.128.0.2", "gateway": "10.128.0.1"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
    },
}


def hidden() -> list[str]:
    """What a node does not have: this project, every Python, the nft binary."""
    paths = {str(ROOT), sys.prefix, sys.base_prefix, sysconfig.get_paths()["stdlib"]}
    paths |= {"/usr/lib/python3", f"/usr/lib/python3.{sys.version_info.minor}",
              f"/usr/local/lib/python3.{sys.version_info.minor}"}
    found = sorted(p for p in paths if os.path.isdir(p))
    # A directory inside another one is covered with it (and would be no mount point after).
    return [p for p in found if not any(p.startswith(f"{q.rstrip('/')}/") for q in found)]


SYSTEM_BIN = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def write_node_runtime(
    directory: Path, plugin: Path, missing: tuple[str, ...] = ("nft",)
) -> Path:
    """An executable that runs ``plugin`` as a node would: everything in `hidden` out of sight.

    ``unshare --mount`` gives it a private mount namespace (nothing leaks to the machine); empty
    read-only tmpfs mounts cover the project and the Python installations, /dev/null (not
    executable: PATH lookups pass over it) covers the ``missing`` programs (nft).
    """
    covers = "".join(f"mount -t tmpfs -o ro,size=4k none {shlex.quote(p)}\n" for p in hidden())
    programs = [f"{d}/{name}" for name in missing for d in SYSTEM_BIN
                if os.path.exists(f"{d}/{name}")]
    covers += "".join(f"mount --bind /dev/null {p}\n" for p in programs)
    inner = (
        "set -e\n" + covers
        + "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        + 'exec "$@"\n'
    )
    script = directory / "node-runtime"
    script.write_text(
        "#!/bin/sh\n"
        f"exec unshare --mount --propagation private sh -c {shlex.quote(inner)} node "
        f'{shlex.quote(str(plugin))} "$@"\n'
    )
    script.chmod(0o755)
    return script


INSTALL_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def executable() -> Path:
    done = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, timeout=1500,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    built = ROOT / "build" / "cni" / "egress-router-cni"
    assert built.is_file()
    return built


def install_from_host_build(executable: Path, host_bin: Path) -> bytes:
    """``egress-router install-cni`` (this venv) of the executable built here."""
    install = [sys.executable, "-m", "egress_router", "install-cni", "--source", str(executable),
               "--dest-dir", str(host_bin), "--name", TYPE]
    done = subprocess.run(install, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return executable.read_bytes()


def install_from_image(image: str, podman: Any, host_bin: Path, name: str) -> bytes:
    """The rendered installer DaemonSet's container, run from the image as a kubelet would,
    with ``host_bin`` as the node's CNI bin directory; stopped once the file is there."""
    spec = manifest.load_config_text((ROOT / "examples" / "cni.yaml").read_text(), "cni.yaml")
    objects = render.render(spec).objects
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (volume,) = pod["volumes"]
    args = run_args(pod, container, {volume["name"]: host_bin})
    assert {"--network", "none", "--read-only", "--cap-drop=all", "--user"} <= set(args)
    assert container["args"][:3] == ["install-cni", "--source", manifest.CNI_EXECUTABLE]
    # The image's own copy (bytes: podman's helper decodes text).
    shipped = subprocess.run(
        ["podman", "run", "--rm", "--network", "none", "--entrypoint", "cat", image,
         manifest.CNI_EXECUTABLE],
        capture_output=True, timeout=120, check=False,
        env={**os.environ, "CONTAINERS_CONF": str(podman.conf)},
    )
    assert shipped.returncode == 0, shipped.stderr.decode(errors="replace")
    assert shipped.stdout[:4] == b"\x7fELF"
    try:
        started = podman("run", "--detach", "--name", name, *args, image, *container["args"])
        assert started.returncode == 0, started.stderr
        installed = host_bin / TYPE
        deadline = time.monotonic() + INSTALL_TIMEOUT
        while time.monotonic() < deadline and not (
            installed.is_file() and installed.read_bytes() == shipped.stdout
        ):
            time.sleep(0.2)
        logs = podman("logs", name)
        assert installed.is_file(), f"not installed in {INSTALL_TIMEOUT:g} s: {logs.stderr}"
        # SIGTERM: the installer (which keeps the file current) stops cleanly.
        stopped = podman("stop", "--time", "10", name, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert code == "0", podman("logs", name).stderr
    finally:
        podman("rm", "--force", "--time", "2", name, timeout=60)
    return shipped.stdout


@pytest.fixture(params=["host-build", "image-installer"])
def installed(
    request: pytest.FixtureRequest, lab_prefix: str, tmp_path: Path
) -> tuple[Path, bytes]:
    """The host's CNI bin directory with the plugin installed as TYPE, and the bytes expected."""
    host_bin = tmp_path / "host" / "opt" / "cni" / "bin"
    host_bin.mkdir(parents=True)
    if request.param == "host-build":
        expected = install_from_host_build(request.getfixturevalue("executable"), host_bin)
    else:
        expected = install_from_image(request.getfixturevalue("built_image"),
                                      request.getfixturevalue("podman"), host_bin,
                                      f"{lab_prefix}-install-cni")
    return host_bin, expected


@pytest.fixture
def lab(lab_prefix: str, tmp_path: Path) -> Iterator[labmod.Lab]:
    world = labmod.up(lab_prefix, macvlan=None, router_eth0=False)
    bridge = {**BRIDGE, "ipam": {**BRIDGE["ipam"], "dataDir": str(tmp_path / "host-local")}}
    primary = cnirun.invoke("bridge", "ADD", bridge, netns=world.router, ifname="eth0",
                            container_id=CONTAINER_ID, cni_path=("/usr/lib/cni",),
                            in_netns=world.node)
    assert primary.ok, primary.stdout + primary.stderr
    yield world


def ip_json(ns: str, *args: str) -> Any:
    done = labmod.run_in(ns, ["ip", "-j", *args], timeout=10)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout or "[]")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_installed_executable_works_on_a_node_without_python_or_nft(
    installed: tuple[Path, bytes], lab: labmod.Lab, tmp_path: Path
) -> None:
    host_bin, expected = installed
    plugin = host_bin / TYPE
    assert plugin.read_bytes() == expected
    assert plugin.stat().st_mode & 0o777 == 0o755
    # Written to a temporary name and renamed: nothing else is left in the directory.
    assert sorted(p.name for p in host_bin.iterdir()) == [TYPE]
    runtime = write_node_runtime(tmp_path, plugin)

    # Controls: in that environment there is no Python, no project and no nft.
    (tmp_path / "probe").mkdir()
    probe = subprocess.run(
        [str(write_node_runtime(tmp_path / "probe", Path("/bin/sh"))), "-c",
         f"ls -A {shlex.quote(str(ROOT))} | wc -l; python3 -c 'import egress_router' "
         "2>/dev/null && echo python; nft --version 2>/dev/null && echo nft; echo done"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert probe.stdout.split() == ["0", "done"], probe.stdout + probe.stderr

    def cni(command: str, conf: dict[str, Any], **kwargs: Any) -> cnirun.Outcome:
        outcome = cnirun.invoke(str(runtime), command, conf, netns=lab.router, ifname="net1",
                                container_id=CONTAINER_ID, cni_path=(str(host_bin),),
                                in_netns=lab.node, **kwargs)
        assert "Traceback" not in outcome.stdout + outcome.stderr, outcome.stderr
        return outcome

    version = cni("VERSION", {"cniVersion": "1.0.0"})
    assert version.ok and version.json is not None, version.stdout + version.stderr
    assert version.json["cniVersion"] == "1.0.0"
    added = cni("ADD", CONF)
    assert added.ok, added.stdout + added.stderr
    assert added.json is not None and added.json["cniVersion"] == "1.0.0"

    # The far side sees the reserved address.
    for port, expected in ((80, "203.0.113.25:80"), (8080, "203.0.113.26:80"),
                           (9000, "203.0.113.27:9000")):
        result = labmod.dial(lab, "tcp", "10.128.0.2", port, timeout=3.0)
        assert result.ok, f"{port}: {result.error} {result.detail}"
        assert result.server == expected
        seen = [e for e in labmod.served(lab) if e.get("server") == expected]
        assert seen and seen[-1]["peer"].rsplit(":", 1)[0] == SOURCE4

    # The bundled nft both applied and can list the ruleset: CHECK compares it.
    checked = cni("CHECK", CONF, prev_result=added.json)
    assert checked.ok, checked.stdout + checked.stderr
    status = cni("STATUS", {**CONF, "cniVersion": "1.1.0"})
    assert status.ok, status.stdout + status.stderr
    # A node without iproute2: STATUS says that CHECK cannot work, and what to install.
    (tmp_path / "no-ip").mkdir()
    no_ip = write_node_runtime(tmp_path / "no-ip", plugin, missing=("nft", "ip"))
    refused = cnirun.invoke(str(no_ip), "STATUS", {**CONF, "cniVersion": "1.1.0"},
                            netns=lab.router, ifname="net1", container_id=CONTAINER_ID,
                            cni_path=(str(host_bin),), in_netns=lab.node)
    assert refused.json is not None and refused.json["code"] == 50, refused.stdout
    assert refused.json["msg"] == (
        "cannot serve CHECK: the ip binary is not on the node (CHECK reads the pod through "
        "`ip -j`); install iproute2 (apt install iproute2)"
    )

    gone = cni("DEL", CONF, prev_result=added.json)
    assert gone.ok, gone.stdout + gone.stderr
    assert {link["ifname"] for link in ip_json(lab.router, "link", "show")} == {"lo", "eth0"}
    listing = labmod.run_in(lab.router, ["nft", "list", "ruleset"], timeout=10)
    assert "egress_router" not in listing.stdout
    assert not {r.get("priority") for r in ip_json(lab.router, "rule")} & {25970, 25971}
