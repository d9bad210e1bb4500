"""The proxy pods from the built image, as `render` describes them, judged from the far side.

Upstream's HTTP and DNS proxy pods with our one image in both containers: podman runs the
rendered init container (privileged, ``EGRESS_ROUTER_MODE=http-proxy``/``dns-proxy``) and then
the rendered main container (``http-proxy``/``dns-proxy``: the image's non-root user, every
capability dropped, a read-only root, the rules from the mounted ConfigMap) in the lab router
pod's network namespace. curl and the lab's dialer in the client pod go through the proxy; the
destination server's log must show the reserved source.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from egress_router.k8s import manifest, render
from egress_router.lab import world as labmod
from support.podspec import one, run_args

from .test_image import IMAGE_USER, proc_status, removed_afterwards, write_config_map

pytestmark = pytest.mark.privileged

ROUTER = str(labmod.ROUTER_POD4.ip)
SOURCE = str(labmod.EGRESS_SOURCE4)
READY_TIMEOUT = 30.0
BASE = """\
name: egress-proxy
attachment: annotation
source: 192.168.12.99/24
gateway: 192.168.12.1
"""


def curl(lab: labmod.Lab, *args: str) -> str:
    done = labmod.run_in(lab.client, ["curl", "-sS", "-m", "5", "-o", "/dev/null",
                                      "-w", "%{http_code}", *args], timeout=20)
    return done.stdout


def start_pod(
    text: str, podman: Any, lab_factory: Any, tmp_path: Path, built_image: str
) -> tuple[labmod.Lab, str, str]:
    spec = manifest.load_config_text(BASE + text, "proxy.yaml")
    objects = render.render(spec).objects
    render.check(objects)
    config_map = one(objects, "ConfigMap")
    template = one(objects, "Deployment")["spec"]["template"]
    pod = template["spec"]
    (init,) = pod["initContainers"]
    (main,) = pod["containers"]
    lab = lab_factory(macvlan=template["metadata"]["annotations"][render.ANNOTATION_MACVLAN])
    volumes = {config_map["metadata"]["name"]: write_config_map(config_map, tmp_path / "cm")}
    setup, proxy = f"{lab.prefix}-setup", f"{lab.prefix}-proxy"
    try:
        run_pod(podman, (pod, init, main), volumes, lab, built_image=built_image,
                names=(setup, proxy))
    except BaseException:
        for name in (setup, proxy):
            podman("rm", "--force", "--time", "2", name, timeout=60)
        raise
    return lab, setup, proxy


def run_pod(
    podman: Any, containers: tuple[Any, Any, Any], volumes: dict[str, Path], lab: labmod.Lab,
    *, built_image: str, names: tuple[str, str],
) -> None:
    pod, init, main = containers
    setup, proxy = names
    done = podman("run", "--rm", "--name", setup, *run_args(pod, init, volumes, lab.router),
                  built_image, *init.get("args", []))
    assert done.returncode == 0, f"init container failed: {done.stdout}{done.stderr}"
    assert "ready for the" in done.stderr
    main_args = run_args(pod, main, volumes, lab.router)
    assert {"--cap-drop=all", "--read-only", "--user"} <= set(main_args)
    assert "--cap-add" not in " ".join(main_args)
    done = podman("run", "--detach", "--name", proxy, *main_args, built_image, *main["args"])
    assert done.returncode == 0, f"proxy container did not start: {done.stderr}"
    deadline = time.monotonic() + READY_TIMEOUT
    while curl(lab, f"http://{ROUTER}:9090/readyz") != "200":
        if time.monotonic() > deadline:
            pytest.fail(f"the proxy is not ready: {podman('logs', proxy).stderr}")
        time.sleep(0.3)


def test_http_proxy_pod_from_the_image(
    built_image: str, podman: Any, lab_factory: Any, tmp_path: Path,
    root_namespace_untouched: dict[str, object],
) -> None:
    text = "mode: http-proxy\ndestinations: ['!203.0.113.26', 203.0.113.24/30]\n"
    lab, setup, proxy = start_pod(text, podman, lab_factory, tmp_path, built_image)
    with removed_afterwards(podman, setup, proxy):
        assert curl(lab, "-x", f"http://{ROUTER}:8080", "http://203.0.113.25/image") == "200"
        assert curl(lab, "-x", f"http://{ROUTER}:8080", "http://203.0.113.26/image") == "403"
        seen = [e for e in labmod.served(lab) if "/image" in e["data"]]
        assert [e["peer"].rsplit(":", 1)[0] for e in seen] == [SOURCE]
        pid = int(podman("inspect", "--format", "{{.State.Pid}}", proxy).stdout)
        status = proc_status(pid)
        assert status["Uid"].split() == [IMAGE_USER.split(":")[0]] * 4
        assert int(status["CapEff"], 16) == 0
        logs = podman("logs", proxy).stderr
        assert "denied GET http://203.0.113.26/image from 10.128.0.10: line 1" in logs


def test_dns_proxy_pod_from_the_image(
    built_image: str, podman: Any, lab_factory: Any, tmp_path: Path,
    root_namespace_untouched: dict[str, object],
) -> None:
    text = "mode: dns-proxy\ndestinations: [5000 203.0.113.25 80, 5001 203.0.113.27 9000]\n"
    lab, setup, proxy = start_pod(text, podman, lab_factory, tmp_path, built_image)
    with removed_afterwards(podman, setup, proxy):
        for port, server in ((5000, "203.0.113.25:80"), (5001, "203.0.113.27:9000")):
            result = labmod.dial(lab, "tcp", ROUTER, port)
            assert result.ok and result.server == server, result
            assert str(result.peer_ip) == SOURCE
        pid = int(podman("inspect", "--format", "{{.State.Pid}}", proxy).stdout)
        assert int(proc_status(pid)["CapEff"], 16) == 0
