"""Run a CNI plugin by hand, exactly as a container runtime (or Multus) would.

Debugging a NetworkAttachmentDefinition on a cluster means reading kubelet
events after the fact. This helper runs the plugin directly: the ``CNI_*``
environment, the configuration on stdin (a JSON file, or a
NetworkAttachmentDefinition YAML whose ``spec.config`` it extracts), the
result or error on stdout, the exit status passed through. It can run the
plugin inside another network namespace (``--in-netns``: a node, in the lab)
and keeps the ADD result for CHECK and DEL like libcni's cache
(``--save-result`` / ``--prev-result``). The integration tests drive both
Debian's reference plugins and ``egress-router-cni`` through `invoke`.

    python -m egress_router.cni.runtime ADD nad.yaml --netns router --ifname net1 \\
        --save-result /tmp/net1.json
    python -m egress_router.cni.runtime CHECK nad.yaml --netns router --ifname net1 \\
        --prev-result /tmp/net1.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from egress_router.cni import errors
from egress_router.core.config import cniconf

DEFAULT_CNI_PATH = ("/opt/cni/bin", "/usr/lib/cni")
NETNS_DIR = "/var/run/netns"
DEFAULT_CONTAINER_ID = "cnirun"
DEFAULT_TIMEOUT = 60.0
# Our console script's name, for configurations whose type is upstream's "egress-router".
EGRESS_ROUTER_TYPE = cniconf.CNI_TYPE
EGRESS_ROUTER_PLUGIN = "egress-router-cni"


class CniRunError(RuntimeError):
    """The plugin could not be run at all (not found, bad configuration file, timeout)."""


@dataclass(frozen=True)
class Outcome:
    """What the plugin did: exit status, stdout (result or error object), stderr (its log)."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def json(self) -> dict[str, Any] | None:
        """stdout as a JSON object, or None when it is empty or not JSON."""
        try:
            value = json.loads(self.stdout)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    @property
    def code(self) -> int | None:
        """The CNI error code, when the plugin failed with an error object."""
        obj = self.json
        if self.ok or obj is None or not isinstance(obj.get("code"), int):
            return None
        return int(obj["code"])


def netns_path(name_or_path: str) -> str:
    """``router`` -> ``/var/run/netns/router``; a path is kept."""
    if not name_or_path or "/" in name_or_path:
        return name_or_path
    return f"{NETNS_DIR}/{name_or_path}"


def find_plugin(name: str, cni_path: Sequence[str]) -> str:
    """The plugin executable: a path, or a name looked up in CNI_PATH, next to this Python, PATH."""
    if "/" in name:
        if not os.access(name, os.X_OK):
            raise CniRunError(f"cannot run plugin {name!r}: not an executable file")
        return name
    for directory in (*cni_path, str(Path(sys.executable).parent)):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise CniRunError(
        f"cannot find plugin {name!r} in CNI_PATH ({':'.join(cni_path)}) or PATH; "
        "give its path with --plugin"
    )


def read_network_config(path: Path, index: int | None = None) -> dict[str, Any]:
    """A plugin configuration from a JSON file, a .conflist, or a NetworkAttachmentDefinition."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise CniRunError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        obj = json.loads(text)
    except ValueError:
        try:
            obj = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise CniRunError(f"cannot parse {path}: neither JSON nor YAML ({err})") from None
    if isinstance(obj, dict) and obj.get("kind") == "NetworkAttachmentDefinition":
        config_text = (obj.get("spec") or {}).get("config")
        if not isinstance(config_text, str):
            raise CniRunError(
                f"cannot use {path}: the NetworkAttachmentDefinition has no spec.config "
                "(Multus then reads a file from its configuration directory; pass that file)"
            )
        try:
            obj = json.loads(config_text)
        except ValueError as err:
            raise CniRunError(f"cannot parse spec.config of {path}: {err}") from None
    if not isinstance(obj, dict):
        raise CniRunError(f"cannot use {path}: expected a JSON object")
    plugins = obj.get("plugins")
    if isinstance(plugins, list):
        if index is None and len(plugins) != 1:
            raise CniRunError(
                f"{path} is a configuration list of {len(plugins)} plugins; choose one with "
                "--plugin-index"
            )
        try:
            single = dict(plugins[index or 0])
        except (IndexError, TypeError, ValueError):
            raise CniRunError(f"cannot use plugin {index} of {path}") from None
        single.setdefault("cniVersion", obj.get("cniVersion"))
        single.setdefault("name", obj.get("name"))
        obj = single
    return obj


def invoke(
    plugin: str,
    command: str,
    conf: Mapping[str, Any] | str | None,
    *,
    netns: str = "",
    ifname: str = "",
    container_id: str = DEFAULT_CONTAINER_ID,
    cni_path: Sequence[str] = DEFAULT_CNI_PATH,
    cni_args: str = "",
    prev_result: Mapping[str, Any] | None = None,
    in_netns: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Outcome:
    """Run ``plugin`` once with ``CNI_COMMAND=command`` and ``conf`` on stdin.

    ``netns`` is a namespace name or path (CNI_NETNS); ``in_netns`` names the
    namespace the plugin itself runs in (``ip netns exec``), e.g. a node's.
    ``prev_result`` is added to the configuration as ``prevResult``. The
    environment is a runtime's: PATH plus the ``CNI_*`` variables, nothing else.
    """
    executable = find_plugin(plugin, cni_path)
    if isinstance(conf, Mapping):
        body: dict[str, Any] = dict(conf)
        if prev_result is not None:
            body["prevResult"] = dict(prev_result)
        stdin = json.dumps(body)
    else:
        stdin = conf or ""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns_path(netns),
        "CNI_IFNAME": ifname,
        "CNI_PATH": ":".join(cni_path),
        **({"CNI_ARGS": cni_args} if cni_args else {}),
        **(extra_env or {}),
    }
    argv = [executable]
    if in_netns:
        argv = ["ip", "netns", "exec", in_netns, *argv]
    try:
        done = subprocess.run(
            argv,
            input=stdin,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CniRunError(
            f"cannot run {plugin} {command}: no answer within {timeout:g}s, killed"
        ) from None
    except OSError as err:
        raise CniRunError(f"cannot run {plugin}: {err.strerror or err}") from None
    return Outcome(done.returncode, done.stdout, done.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m egress_router.cni.runtime",
        description="Run a CNI plugin as a container runtime would (CNI_* environment, "
        "configuration on stdin) and show its answer.",
    )
    parser.add_argument("command", choices=("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC"))
    parser.add_argument(
        "config", type=Path, nargs="?",
        help="plugin configuration: JSON, a .conflist, or a NetworkAttachmentDefinition YAML",
    )
    parser.add_argument("--netns", default="", help="CNI_NETNS: namespace name or path")
    parser.add_argument("--ifname", default="net1", help="CNI_IFNAME (default: net1)")
    parser.add_argument("--container-id", default=DEFAULT_CONTAINER_ID, help="CNI_CONTAINERID")
    parser.add_argument("--cni-args", default="", help="CNI_ARGS, e.g. K8S_POD_NAME=router")
    parser.add_argument(
        "--cni-path", default=":".join(DEFAULT_CNI_PATH), help="CNI_PATH (colon-separated)"
    )
    parser.add_argument(
        "--plugin", default=None,
        help="plugin name or path (default: the configuration's type; "
        f"{EGRESS_ROUTER_TYPE!r} runs {EGRESS_ROUTER_PLUGIN})",
    )
    parser.add_argument("--plugin-index", type=int, default=None, help="plugin of a conflist")
    parser.add_argument("--in-netns", default=None, help="run the plugin in this namespace")
    parser.add_argument("--prev-result", type=Path, help="file with the ADD result (CHECK, DEL)")
    parser.add_argument("--save-result", type=Path, help="write ADD's result to this file")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    return parser


def _plugin_for(conf: Mapping[str, Any] | None, cni_path: Sequence[str]) -> str:
    kind = str((conf or {}).get("type") or EGRESS_ROUTER_PLUGIN)
    if kind != EGRESS_ROUTER_TYPE:
        return kind
    # "egress-router" on PATH is this package's command line, not a plugin: only a
    # binary of that name installed in CNI_PATH counts, else our console script.
    installed = [Path(d) / kind for d in cni_path if (Path(d) / kind).is_file()]
    return str(installed[0]) if installed else EGRESS_ROUTER_PLUGIN


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; the exit status is the plugin's."""
    args = _parser().parse_args(argv)
    cni_path = tuple(p for p in args.cni_path.split(":") if p)
    try:
        conf = read_network_config(args.config, args.plugin_index) if args.config else None
        if conf is None and args.command != "VERSION":
            raise CniRunError(f"{args.command} needs a configuration file")
        prev = None
        if args.prev_result is not None:
            prev = read_network_config(args.prev_result)
        plugin = args.plugin or _plugin_for(conf, cni_path)
        outcome = invoke(
            plugin,
            args.command,
            conf if conf is not None else {"cniVersion": "1.1.0"},
            netns=args.netns,
            ifname=args.ifname,
            container_id=args.container_id,
            cni_path=cni_path,
            cni_args=args.cni_args,
            prev_result=prev,
            in_netns=args.in_netns,
            timeout=args.timeout,
        )
    except CniRunError as err:
        print(f"cnirun: error: {err}", file=sys.stderr)
        return 2
    sys.stderr.write(outcome.stderr)
    sys.stdout.write(outcome.stdout)
    if outcome.code is not None:
        meaning = errors.DESCRIPTIONS.get(outcome.code, "plugin-specific error")
        print(f"cnirun: {plugin} {args.command} failed: code {outcome.code} ({meaning})",
              file=sys.stderr)
    elif outcome.ok and args.command == "ADD" and args.save_result is not None:
        args.save_result.write_text(outcome.stdout, encoding="utf-8")
        print(f"cnirun: result saved to {args.save_result}", file=sys.stderr)
    return outcome.returncode


if __name__ == "__main__":
    sys.exit(main())
