"""OpenShift SDN's ``pod.network.openshift.io/assign-macvlan``, honoured by a chained plugin.

The seed's procedure creates the router Pod with that annotation and expects
the platform to give the pod ``macvlan0`` on the node's physical interface
(``"true"``: the interface of the node's default route; any other value: that
interface's name); the privileged init container then does everything else
from its ``EGRESS_*`` variables. OpenShift SDN did this inside its own CNI
plugin; a vanilla cluster has no such thing. This is it, as a *chained*
plugin after the node's pod network (the way Multus reads its own annotation,
it reads the pod from the API server with a kubeconfig of the node)::

    {"type": "egress-router", "assignMacvlan": {"kubeconfig": "/etc/cni/net.d/cni.kubeconfig"}}

ADD: no annotation (or no ``K8S_POD_NAME`` in ``CNI_ARGS``) passes the
previous result through untouched; otherwise a macvlan (mode ``private``, as
OpenShift SDN made it, or ``assignMacvlan.mode``) on the chosen interface,
moved into the pod, named ``macvlan0``, up, without addresses, appended to the
result's interfaces. DEL removes ``macvlan0`` from the pod if it is still
there (a gone namespace is success). CHECK checks it is there when the
annotation asks for it. The API server is read with the standard library
only (a client certificate, a token or a token file; the kubeconfig's CA), so
the one-file executable needs nothing more.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2.iproute import IPRoute

from egress_router.cni import errors, macvlan, netconf
from egress_router.cni.errors import CniError
from egress_router.cni.netconf import Environment
from egress_router.kernel import netns

log = logging.getLogger("egress_router.cni")

ANNOTATION = "pod.network.openshift.io/assign-macvlan"
IFNAME = "macvlan0"  # the name OpenShift SDN gave it; the seed's init container expects it
DEFAULT_MODE = "private"  # OpenShift SDN's
API_TIMEOUT = 5.0
KEY = "assignMacvlan"


@dataclass(frozen=True)
class Settings:
    """``assignMacvlan`` of the network configuration."""

    kubeconfig: str
    mode: str = DEFAULT_MODE


def settings(obj: Mapping[str, Any]) -> Settings:
    raw = obj.get(KEY)
    if not isinstance(raw, dict):
        raise CniError(
            errors.INVALID_CONFIG, f"cannot parse {KEY}: expected an object, got {raw!r}"
        )
    kubeconfig = raw.get("kubeconfig")
    if not isinstance(kubeconfig, str) or not kubeconfig:
        raise CniError(
            errors.INVALID_CONFIG,
            f"cannot parse {KEY}.kubeconfig: expected the path of a kubeconfig, got {kubeconfig!r}",
        )
    mode = raw.get("mode", DEFAULT_MODE)
    if mode not in netconf.MACVLAN_MODES:
        raise CniError(
            errors.INVALID_CONFIG,
            f"cannot parse {KEY}.mode: {mode!r}; expected one of "
            f"{', '.join(netconf.MACVLAN_MODES)}",
        )
    return Settings(kubeconfig=kubeconfig, mode=mode)


def cni_args(value: str) -> dict[str, str]:
    """``CNI_ARGS`` (``K8S_POD_NAMESPACE=x;K8S_POD_NAME=y;...``) as a dict."""
    out: dict[str, str] = {}
    for part in value.split(";"):
        key, sep, val = part.partition("=")
        if sep and key:
            out[key.strip()] = val
    return out


# ---------------------------------------------------------------------- the API server


@dataclass(frozen=True)
class ApiAccess:
    """How to reach the API server: what a kubeconfig's current context says."""

    server: str
    ca_file: str | None = None
    ca_data: bytes | None = None
    cert_file: str | None = None
    key_file: str | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    token: str | None = None
    insecure: bool = False


def _relative(base: Path, value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    path = Path(value)
    return str(path if path.is_absolute() else base / path)


def _parse_kubeconfig(text: str, where: str) -> Any:
    """JSON (which is YAML too) directly; other YAML through PyYAML where it is installed.

    The one-file executable leaves PyYAML out (every module it holds is unpacked at every
    call): there a kubeconfig must be JSON, as ``kubectl config view --flatten -o json``
    writes it.
    """
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        import yaml  # noqa: PLC0415 (optional: see above)
    except ImportError:
        raise CniError(
            errors.INVALID_CONFIG,
            f"cannot read {where}: it is not JSON, and this build of the plugin reads YAML "
            "kubeconfigs only as JSON (kubectl config view --flatten -o json)",
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CniError(errors.INVALID_CONFIG, f"cannot read {where}: {err}") from None


def load_kubeconfig(path: str) -> ApiAccess:
    where = f"{KEY}.kubeconfig {path!r}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise CniError(errors.INVALID_CONFIG, f"cannot read {where}: {err}") from None
    doc = _parse_kubeconfig(text, where)
    if not isinstance(doc, dict):
        raise CniError(errors.INVALID_CONFIG, f"cannot read {where}: not a kubeconfig")
    base = Path(path).parent

    def named(section: str, name: Any) -> dict[str, Any]:
        for entry in doc.get(section) or []:
            if isinstance(entry, dict) and entry.get("name") == name:
                inner = entry.get(section[:-1])
                return inner if isinstance(inner, dict) else {}
        raise CniError(errors.INVALID_CONFIG, f"cannot read {where}: no {section[:-1]} {name!r}")

    context = named("contexts", doc.get("current-context"))
    cluster = named("clusters", context.get("cluster"))
    user = named("users", context.get("user"))
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith("https://"):
        raise CniError(
            errors.INVALID_CONFIG, f"cannot read {where}: server {server!r} is not https://"
        )
    token = user.get("token")
    token_file = _relative(base, user.get("tokenFile"))
    if not token and token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise CniError(
                errors.INVALID_CONFIG, f"cannot read {where}: tokenFile: {err}"
            ) from None

    def data(value: Any) -> bytes | None:
        return base64.b64decode(value) if isinstance(value, str) and value else None

    return ApiAccess(
        server=server.rstrip("/"),
        ca_file=_relative(base, cluster.get("certificate-authority")),
        ca_data=data(cluster.get("certificate-authority-data")),
        cert_file=_relative(base, user.get("client-certificate")),
        key_file=_relative(base, user.get("client-key")),
        cert_data=data(user.get("client-certificate-data")),
        key_data=data(user.get("client-key-data")),
        token=token if isinstance(token, str) and token else None,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
    )


def _ssl_context(access: ApiAccess) -> ssl.SSLContext:
    ctx = ssl.create_default_context(
        cafile=access.ca_file,
        cadata=access.ca_data.decode() if access.ca_data else None,
    )
    if access.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if access.cert_file and access.key_file:
        ctx.load_cert_chain(access.cert_file, access.key_file)
    elif access.cert_data and access.key_data:
        # ssl loads a certificate chain from files only: a private temporary directory.
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp, "cert"), Path(tmp, "key")
            cert.write_bytes(access.cert_data)
            key.touch(mode=0o600)
            key.write_bytes(access.key_data)
            ctx.load_cert_chain(str(cert), str(key))
    return ctx


def get_pod(
    access: ApiAccess, namespace: str, name: str, timeout: float = API_TIMEOUT
) -> dict[str, Any]:
    """The pod object, read from the API server."""
    url = (
        f"{access.server}/api/v1/namespaces/{urllib.parse.quote(namespace, safe='')}"
        f"/pods/{urllib.parse.quote(name, safe='')}"
    )
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if access.token:
        request.add_header("Authorization", f"Bearer {access.token}")
    try:
        with urllib.request.urlopen(
            request, timeout=timeout, context=_ssl_context(access)
        ) as reply:
            pod = json.loads(reply.read())
    except urllib.error.HTTPError as err:
        raise CniError(
            errors.TRY_AGAIN_LATER,
            f"cannot read pod {namespace}/{name} from {access.server}: "
            f"HTTP {err.code} {err.reason}",
        ) from None
    except (OSError, ValueError, ssl.SSLError) as err:
        raise CniError(
            errors.TRY_AGAIN_LATER,
            f"cannot read pod {namespace}/{name} from {access.server}: {err}",
        ) from None
    if not isinstance(pod, dict):
        raise CniError(errors.TRY_AGAIN_LATER, f"cannot read pod {namespace}/{name}: not an object")
    return pod


def annotation_of(pod: Mapping[str, Any]) -> str | None:
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
    return value if isinstance(value, str) and value else None


# ---------------------------------------------------------------------- in the pod


def _rename_up(temp: str) -> dict[str, Any]:
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=temp)[0]
        ipr.link("set", index=index, ifname=IFNAME)
        ipr.link("set", index=index, state="up")
        link = ipr.get_links(index)[0]
        return {"mac": str(link.get("IFLA_ADDRESS")), "mtu": int(link.get("IFLA_MTU"))}


def _delete_in_pod() -> bool:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=IFNAME)
        if not found:
            return False
        ipr.link("del", index=found[0])
        return True


def _exists_in_pod() -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=IFNAME))


# ---------------------------------------------------------------------- the commands

PodReader = Callable[[str, str], dict[str, Any]]


class AssignMacvlan:
    """One invocation of the chained plugin."""

    def __init__(
        self,
        env: Environment,
        obj: Mapping[str, Any],
        kern: macvlan.Kernel,
        read_pod: PodReader | None = None,
    ) -> None:
        self.env = env
        self.obj = obj
        self.kernel = kern
        self.settings = settings(obj)
        self._read_pod = read_pod

    def _wanted(self, environ: Mapping[str, str]) -> str | None:
        args = cni_args(environ.get("CNI_ARGS", ""))
        namespace, name = args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")
        if not namespace or not name:
            log.info("no K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS: nothing to assign")
            return None
        reader = self._read_pod or (
            lambda ns, n: get_pod(load_kubeconfig(self.settings.kubeconfig), ns, n)
        )
        value = annotation_of(reader(namespace, name))
        log.info("pod %s/%s: %s=%r", namespace, name, ANNOTATION, value)
        return value

    def add(self, environ: Mapping[str, str]) -> dict[str, Any]:
        prev = self.obj.get("prevResult")
        result: dict[str, Any] = dict(prev) if isinstance(prev, dict) else {}
        result["cniVersion"] = netconf.cni_version(self.obj)
        value = self._wanted(environ)
        if value is None:
            return result
        env = self.env
        if not self.kernel.netns_exists(env.netns):
            raise CniError(
                errors.CONTAINER_UNKNOWN, f"network namespace {env.netns!r} does not exist"
            )
        master_name = self.kernel.default_route_interface() if value == "true" else value
        if master_name is None:
            raise CniError(
                errors.MASTER_NOT_FOUND,
                f'cannot honour {ANNOTATION}: "true": the node has no default route; '
                "name the node's interface as the annotation's value instead",
            )
        master = self.kernel.host_link(master_name)
        if master is None:
            names = [n for n in self.kernel.host_link_names() if n != "lo"][:12]
            raise CniError(
                errors.MASTER_NOT_FOUND,
                f"cannot honour {ANNOTATION}={value!r}: interface {master_name!r} does not exist "
                f"on this node; one of: {', '.join(names) or '(none)'}",
            )
        temp = macvlan.temp_name(env.container_id, IFNAME)
        self.kernel.create_macvlan(temp, master, self.settings.mode, master.mtu)
        try:
            self.kernel.move_to_netns(temp, env.netns)
        except BaseException:
            self.kernel.delete_host_macvlan(temp)
            raise
        try:
            link = netns.run(env.netns, lambda: _rename_up(temp))
        except netns.NetnsError as err:
            with contextlib.suppress(netns.NetnsError):
                netns.run(env.netns, _delete_in_pod)
            raise CniError(
                errors.INTERFACE_SETUP_FAILED, f"cannot set up {IFNAME} in the pod: {err}"
            ) from None
        log.info("gave the pod %s on %s (mode %s)", IFNAME, master.name, self.settings.mode)
        interfaces = list(result.get("interfaces") or [])
        interfaces.append({"name": IFNAME, "mac": link["mac"], "sandbox": env.netns})
        result["interfaces"] = interfaces
        return result

    def delete(self) -> None:
        env = self.env
        if not env.netns or not self.kernel.netns_exists(env.netns):
            return
        try:
            if netns.run(env.netns, _delete_in_pod):
                log.info("deleted %s from the pod", IFNAME)
        except netns.NamespaceGoneError:
            return

    def check(self, environ: Mapping[str, str]) -> None:
        if self._wanted(environ) is None:
            return
        if not netns.run(self.env.netns, _exists_in_pod):
            raise CniError(
                errors.INTERFACE_SETUP_FAILED,
                f"{IFNAME} is missing from the pod although {ANNOTATION} asks for it",
            )


def handle(
    env: Environment,
    obj: Mapping[str, Any],
    environ: Mapping[str, str],
    kern: macvlan.Kernel,
    print_result: Callable[[Mapping[str, Any]], None],
    *,
    read_pod: PodReader | None = None,
) -> None:
    """Run ``env.command`` for a configuration with ``assignMacvlan``."""
    plugin = AssignMacvlan(env, obj, kern, read_pod)
    if env.command == netconf.ADD:
        print_result(plugin.add(environ))
    elif env.command == netconf.DEL:
        plugin.delete()
    elif env.command == netconf.CHECK:
        plugin.check(environ)
    # STATUS and GC: nothing of this plugin's outlives its pod's namespace.


__all__ = ["ANNOTATION", "IFNAME", "AssignMacvlan", "handle", "load_kubeconfig"]
