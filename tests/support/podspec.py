"""A rendered pod's containers as ``podman run`` options, for the tests that run the image.

The image tests run the containers `egress-router render` describes (the router pod's init
and main containers, the installer DaemonSet's) with podman, as a kubelet would: the same
environment, mounts, user, capabilities and read-only root. One translation, shared, so that
every test runs what the manifest really says.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def one(objects: Sequence[Mapping[str, Any]], kind: str) -> Mapping[str, Any]:
    """The one object of this kind among the rendered objects."""
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def run_args(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    volumes: Mapping[str, Path],
    netns: str | None = None,
    user: str | None = None,
) -> list[str]:
    """``podman run`` options for one container of the rendered pod: its environment, its
    mounts, its securityContext, the pod's network namespace (none without ``netns``).

    ``volumes`` maps a ConfigMap's name (a configMap volume) or a volume's own name (a
    hostPath volume, standing in for the node's directory) to a directory of the host.
    """
    sc = container.get("securityContext", {})
    args = ["--network", f"ns:/run/netns/{netns}" if netns else "none"]
    for item in container.get("env", []):
        args += ["--env", f"{item['name']}={item['value']}"]
    pod_volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = pod_volumes[mount["name"]]
        if "emptyDir" in volume:
            # A kubelet's emptyDir (medium Memory): a tmpfs the container's user may write.
            args += ["--tmpfs", f"{mount['mountPath']}:rw,mode=1777"]
            continue
        if "configMap" in volume:
            source = volumes[volume["configMap"]["name"]]
        else:
            assert "hostPath" in volume, f"volume {mount['name']}: neither configMap nor hostPath"
            source = volumes[mount["name"]]
        mode = "ro" if mount.get("readOnly") else "rw"
        args += ["--volume", f"{source}:{mount['mountPath']}:{mode}"]
    if sc.get("privileged"):
        args.append("--privileged")
    caps = sc.get("capabilities", {})
    args += [f"--cap-drop={cap.lower()}" for cap in caps.get("drop", [])]
    args += [f"--cap-add={cap.lower()}" for cap in caps.get("add", [])]
    if sc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if user is not None:
        args += ["--user", user]
    elif "runAsUser" in sc:
        args += ["--user", str(sc["runAsUser"])]
    if "command" in container:
        args += ["--entrypoint", json.dumps(container["command"])]
    return args
