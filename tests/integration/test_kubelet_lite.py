"""Kubelet-lite: the rendered manifests brought up as a cluster would, judged from the far side.

The test plays the platform from nothing but the rendered objects. For the
``annotation`` attachment the lab creates macvlan0 the way the OpenShift SDN
does for the pod's ``assign-macvlan`` annotation; the rendered ConfigMap is
"mounted" (its keys written as files under a temporary mount path), and the
init container's command line (the image's ENTRYPOINT from the Containerfile,
then the container's command/args, as the kubelet composes them) runs in the
router's namespace with exactly the container's environment. For the ``cni``
attachment our plugin is invoked from the node with the rendered
NetworkAttachmentDefinition's config on stdin, as Multus does. Then the main
container runs with its own command line and environment until its
readiness probe, sent from the node like the kubelet's, answers 200; every
port of the rendered Service is dialled from the client pod, and the
destination server's own log must show the reserved source address.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from egress_router.k8s import manifest, render
from egress_router.lab import world as labmod
from support import httpget as http

pytestmark = [pytest.mark.privileged, pytest.mark.cluster]

LabFactory = Callable[..., labmod.Lab]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CONTAINERFILE = ROOT / "Containerfile"
BIN = Path(sys.executable).parent  # the console scripts, as the image has them on PATH
PATH = f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READY_TIMEOUT = 15.0
ROUTER_POD_IP = str(labmod.ROUTER_POD4.ip)
SOURCE = "192.168.12.99"
CONTAINER_ID = "ert0kubelet0lite"

# What each example's Service ports must reach: (proto, port) -> the destination
# that answers. Written from the examples' rules, not from the renderer.
SEED_EXPECTED = {
    ("tcp", 80): "203.0.113.25:80",
    ("tcp", 8080): "203.0.113.26:80",
    ("tcp", 8443): "203.0.113.26:443",
    ("tcp", 9000): "203.0.113.27:9000",  # extraPorts, through the fallback
    ("udp", 9000): "203.0.113.27:9000",
}
CNI_EXPECTED = {
    ("tcp", 80): "203.0.113.25:80",
    ("tcp", 8080): "203.0.113.26:80",
    ("tcp", 443): "203.0.113.26:443",
    ("udp", 53): "203.0.113.25:53",
    ("tcp", 7000): "203.0.113.27:7000",
    ("udp", 9000): "203.0.113.27:9000",
}
EGRESSROUTER_EXPECTED = {
    ("tcp", 80): "203.0.113.25:80",
    ("tcp", 8080): "203.0.113.26:80",
    ("tcp", 8443): "203.0.113.26:443",
    ("udp", 53): "203.0.113.25:53",
}


# --------------------------------------------------------------------------- the image


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined."""
    joined = path.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def image_entrypoint() -> list[str]:
    (entrypoint,) = [json.loads(a) for i, a in _instructions(CONTAINERFILE) if i == "ENTRYPOINT"]
    assert isinstance(entrypoint, list), "ENTRYPOINT must be the exec (JSON) form"
    return [str(part) for part in entrypoint]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in _instructions(CONTAINERFILE):
        if instruction == "ENV":
            env.update(dict(part.split("=", 1) for part in shlex.split(args)))
    return env


def container_argv(container: Mapping[str, Any]) -> list[str]:
    """The kubelet's rule: ``command`` replaces ENTRYPOINT, ``args`` are appended (replace CMD)."""
    return [*container.get("command", image_entrypoint()), *container.get("args", [])]


# --------------------------------------------------------------------------- the platform


def one(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def mount_config_map(
    pod: Mapping[str, Any], container: Mapping[str, Any], config_map: Mapping[str, Any],
    root: Path,
) -> dict[str, str]:
    """Write the ConfigMap's keys as files, as the kubelet mounts the volume; mount path -> dir."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts: dict[str, str] = {}
    for index, mount in enumerate(container.get("volumeMounts", [])):
        source = volumes[mount["name"]]["configMap"]["name"]
        assert source == config_map["metadata"]["name"]
        directory = root / f"volume{index}"
        directory.mkdir(parents=True)
        for key, value in config_map["data"].items():
            (directory / key).write_text(value, encoding="utf-8")
        mounts[mount["mountPath"].rstrip("/")] = str(directory)
    return mounts


def container_env(container: Mapping[str, Any], mounts: Mapping[str, str]) -> dict[str, str]:
    """Exactly the container's environment, paths under a mount seen through the mount."""
    env = {}
    for item in container["env"]:
        value = item["value"]
        for mount_path, directory in mounts.items():
            if value == mount_path or value.startswith(mount_path + "/"):
                value = directory + value[len(mount_path):]
        env[item["name"]] = value
    return env


def dial_every_service_port(
    lab: labmod.Lab, service: Mapping[str, Any], expected: Mapping[tuple[str, int], str]
) -> None:
    ports = service["spec"]["ports"]
    assert {(p["protocol"].lower(), p["port"]) for p in ports} == set(expected)
    for port in ports:
        proto = port["protocol"].lower()
        # kube-proxy sends a Service port to the pod's targetPort.
        result = labmod.dial(lab, proto, ROUTER_POD_IP, port["targetPort"], timeout=3.0)
        want = expected[(proto, port["port"])]
        assert result.ok, f"{port['name']}: {result.error} {result.detail}"
        assert result.server == want, port["name"]
        assert str(result.peer_ip) == SOURCE, port["name"]
        seen = [e for e in labmod.served(lab) if e["server"] == want and e["proto"] == proto]
        assert seen, f"{want} recorded nothing for {port['name']}"
        assert seen[-1]["peer"].rsplit(":", 1)[0] == SOURCE


def probe(lab: labmod.Lab, container: Mapping[str, Any], kind: str) -> int | None:
    """One HTTP probe of the pod's IP from the node, as the kubelet sends it; the status."""
    http_get = container[kind]["httpGet"]
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == http_get["port"]]
    url = f"http://{ROUTER_POD_IP}:{port}{http_get['path']}"
    return http.get(lab.node, url, timeout=2).status


@contextlib.contextmanager
def main_container(
    lab: labmod.Lab, container: Mapping[str, Any], env: Mapping[str, str]
) -> Iterator[subprocess.Popen[str]]:
    """Run the pod's main container in the router namespace until the block ends."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.router, *container_argv(container)],
        env={**image_env(), "PATH": PATH, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)


def wait_ready(lab: labmod.Lab, container: Mapping[str, Any], proc: subprocess.Popen[str]) -> None:
    """The kubelet's view: readiness turns 200 within a bounded time, liveness answers 200."""
    deadline = time.monotonic() + READY_TIMEOUT
    status = None
    while time.monotonic() < deadline and proc.poll() is None:
        status = probe(lab, container, "readinessProbe")
        if status == 200:
            break
        time.sleep(0.2)
    if status != 200:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"main container not ready (last status {status}): {err[-2000:]}")
    assert probe(lab, container, "livenessProbe") == 200


def test_annotation_pod_runs_the_image_entry_point_and_serves_every_service_port(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    spec = manifest.load_config_text((EXAMPLES / "seed.yaml").read_text(), "seed.yaml")
    objects = render.render(spec).objects
    deployment = one(objects, "Deployment")
    template = deployment["spec"]["template"]
    pod = template["spec"]
    # The SDN creates macvlan0 as the annotation asks, before any container runs.
    lab = lab_factory(macvlan=template["metadata"]["annotations"][render.ANNOTATION_MACVLAN])
    (init,) = pod["initContainers"]
    mounts = mount_config_map(pod, init, one(objects, "ConfigMap"), tmp_path)
    env = container_env(init, mounts)
    assert env["EGRESS_DESTINATION_FILE"].startswith(str(tmp_path))
    argv = container_argv(init)
    assert argv == ["egress-router"]  # the image's ENTRYPOINT, no arguments: init mode by env
    done = labmod.run_in(lab.router, argv, env={**image_env(), "PATH": PATH, **env}, timeout=60)
    assert done.returncode == 0, f"init container failed ({done.returncode}): {done.stderr}"
    assert "egress router ready" in done.stderr
    (main,) = pod["containers"]
    mounts = mount_config_map(pod, main, one(objects, "ConfigMap"), tmp_path / "main")
    env = container_env(main, mounts)
    with main_container(lab, main, env) as proc:
        wait_ready(lab, main, proc)
        dial_every_service_port(lab, one(objects, "Service"), SEED_EXPECTED)


@pytest.mark.parametrize(
    ("example", "expected"),
    [("cni.yaml", CNI_EXPECTED), ("egressrouter.yaml", EGRESSROUTER_EXPECTED)],
)
def test_cni_attachment_from_the_rendered_network_attachment_serves_every_service_port(
    lab_factory: LabFactory, tmp_path: Path, example: str, expected: dict[tuple[str, int], str]
) -> None:
    plugin = BIN / "egress-router-cni"
    if not os.access(plugin, os.X_OK):
        pytest.fail(f"{plugin} is missing: run `bash scripts/setup.sh`", pytrace=False)
    text = (EXAMPLES / example).read_text()
    if example == "egressrouter.yaml":
        spec = manifest.load_egressrouter_text(text, example)
    else:
        spec = manifest.load_config_text(text, example)
    objects = render.render(spec).objects
    pod_template = one(objects, "Deployment")["spec"]["template"]
    assert "initContainers" not in pod_template["spec"]  # the plugin does the set-up
    (network,) = json.loads(pod_template["metadata"]["annotations"][render.ANNOTATION_NETWORKS])
    nad = one(objects, render.NAD_KIND)
    assert network["name"] == nad["metadata"]["name"]
    lab = lab_factory(macvlan=None)  # the router pod has eth0 only; the plugin adds the rest
    # Multus runs the plugin in the node's namespace, the pod's namespace in CNI_NETNS.
    cni_env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": CONTAINER_ID,
        "CNI_NETNS": f"/var/run/netns/{lab.router}",
        "CNI_IFNAME": network["interface"],
        "CNI_PATH": "/usr/lib/cni",
        "PATH": PATH,
    }
    done = labmod.run_in(
        lab.node, [str(plugin)], env=cni_env, input=nad["spec"]["config"], timeout=60
    )
    assert done.returncode == 0, f"CNI ADD failed ({done.returncode}): {done.stdout}{done.stderr}"
    result = json.loads(done.stdout)
    assert [i["name"] for i in result["interfaces"]] == [network["interface"]]
    pod = pod_template["spec"]
    (main,) = pod["containers"]
    env = container_env(main, mount_config_map(pod, main, one(objects, "ConfigMap"), tmp_path))
    with main_container(lab, main, env) as proc:
        wait_ready(lab, main, proc)
        dial_every_service_port(lab, one(objects, "Service"), expected)
