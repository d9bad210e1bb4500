"""Render the Kubernetes objects of one egress router from one `manifest.RouterSpec`.

Written by hand, the router pod and its Service drift apart: a rule without a
Service port is unreachable, a Service port without a rule is silently
refused, and a changed ConfigMap needs a manual restart. Here everything is
derived from the one spec: the ConfigMap holds the rules the router reads,
the Service has exactly one named port per rule and protocol (plus the
fallback's ``extraPorts``), the pod template carries a checksum of the
configuration so that a change rolls the pod, and `check` re-derives those
invariants from the rendered objects and validates every object offline
against the Kubernetes OpenAPI schemas (``kubernetes-validate``) or, for the
NetworkAttachmentDefinition, against a schema written from its CRD.

Everything here is pure: objects are plain dicts, YAML is text.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import yaml

from egress_router.core import config, ha, proxy_dns, proxy_http
from egress_router.core.config import cniconf
from egress_router.k8s import manifest

# The newest Kubernetes release whose schemas the pinned kubernetes-validate ships.
KUBERNETES_VERSION = "1.37"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
APP = "egress-router"

ANNOTATION_MACVLAN = "pod.network.openshift.io/assign-macvlan"
ANNOTATION_NETWORKS = "k8s.v1.cni.cncf.io/networks"
ANNOTATION_CHECKSUM = "egress-router/config-sha256"

NAD_API_VERSION = "k8s.cni.cncf.io/v1"
NAD_KIND = "NetworkAttachmentDefinition"
# 1.0.0, not 1.1.0: podman 4.3's libcni (Debian 12) rejects a 1.1.0 result; the plugin answers
# in the version asked, and STATUS/GC (1.1.0) are for runtimes that send their own version.
CNI_VERSION = "1.0.0"
CNI_TYPE = cniconf.CNI_TYPE
CNI_CONFIG_KEY = "cni.json"  # CNI mode: the NetworkAttachmentDefinition's config, for `wait`
CNI_CONFIG_PATH = f"{manifest.DESTINATIONS_DIR}/{CNI_CONFIG_KEY}"

INIT_CONTAINER = "setup"
MAIN_CONTAINER = "egress-router"
INSTALLER_CONTAINER = "install-cni"
INSTALLER_SUFFIX = "-cni-installer"
INSTALLER_COMPONENT = "cni-installer"
INSTALLER_INTERVAL = 60  # seconds between the installer's re-checks of the node's copy
INSTALLER_MOUNT = "/host/cni-bin"
INSTALLER_VOLUME = "cni-bin"
LABEL_COMPONENT = "app.kubernetes.io/component"
VOLUME = "destinations"
HTTP_PORT_NAME = "http"
READY_PATH = "/readyz"
HEALTH_PATH = "/healthz"
WAIT_ARGS = ("wait",)
TMP_VOLUME = "tmp"  # the proxies' generated configuration (the root filesystem is read-only)
PROXY_USER = 65532  # the image's user: the proxy containers need no privilege at all
PROXY_FILE_VARIABLES = {
    config.Mode.HTTP_PROXY: proxy_http.ENV_DESTINATION_FILE,
    config.Mode.DNS_PROXY: proxy_dns.ENV_DESTINATION_FILE,
}
UNPRIVILEGED_PORTS_SYSCTL = "net.ipv4.ip_unprivileged_port_start"
# What `egress-router wait` needs; NET_RAW for the address announcements. With ha: true
# keepalived needs the same two (addresses; VRRP's raw sockets and gratuitous ARP).
MAIN_CAPABILITIES = ("NET_ADMIN", "NET_RAW")
RUN_VOLUME = "run"
HA_REPLICAS = 2
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"

HEADER = "# Rendered by `egress-router render`: change the configuration and render again.\n"


class CheckError(ValueError):
    """A rendered object failed validation; the message names the object and the field."""


@dataclass(frozen=True)
class Rendered:
    """The objects in apply order, and warnings for the person rendering them."""

    objects: tuple[dict[str, Any], ...]
    warnings: tuple[str, ...] = ()


# --------------------------------------------------------------------------- objects


def _labels(spec: manifest.RouterSpec) -> dict[str, str]:
    return {LABEL_NAME: APP, LABEL_INSTANCE: spec.name}


def _metadata(spec: manifest.RouterSpec, *, managed: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": spec.name}
    if spec.namespace is not None:
        meta["namespace"] = spec.namespace
    labels = _labels(spec)
    if managed:
        labels[LABEL_MANAGED_BY] = "egress-router-render"
    meta["labels"] = labels
    return meta


def port_name(port: int, proto: config.Proto) -> str:
    """A Service port name: a valid IANA service name (at most 15 characters, a letter)."""
    return f"{proto.value}-{port}"


def service_ports(spec: manifest.RouterSpec) -> list[dict[str, Any]]:
    """One named port per rule and protocol (both families share it), then the extra ports.

    A proxy pod: the proxy's ports (8080; each forwarded port of the DNS proxy), TCP.
    """
    if spec.proxy is not None:
        return [
            {"name": port_name(port, config.Proto.TCP), "protocol": "TCP", "port": port,
             "targetPort": port}
            for port in spec.proxy_ports
        ]
    keys: list[tuple[int, config.Proto]] = []
    for rule in manifest.port_rules(spec.destinations):
        if (rule.port, rule.proto) not in keys:
            keys.append((rule.port, rule.proto))
    keys += [(p.port, p.proto) for p in spec.extra_ports]
    return [
        {
            "name": port_name(port, proto),
            "protocol": proto.value.upper(),
            "port": port,
            "targetPort": port,
        }
        for port, proto in keys
    ]


def cni_config(spec: manifest.RouterSpec) -> dict[str, Any]:
    """The network configuration our CNI plugin reads (upstream's format)."""
    args: dict[str, str] = {}
    if spec.master is not None:
        args["master"] = spec.master
    args["mode"] = spec.macvlan_mode
    if spec.mtu is not None:
        args["mtu"] = str(spec.mtu)
    gateways = [str(g) for g in spec.gateways]
    ip: dict[str, Any] = {
        "addresses": [s.text for s in spec.sources],
        "gateway": gateways[0] if len(gateways) == 1 else gateways,
    }
    if spec.proxy is None:
        ip["destinations"] = spec.destinations.lines()
    conf: dict[str, Any] = {
        "cniVersion": CNI_VERSION,
        "name": spec.name,
        "type": CNI_TYPE,
        "ip": ip,
        "interfaceType": "macvlan",
        "interfaceArgs": args,
    }
    if spec.pod_interface != config.DEFAULT_POD_INTERFACE:
        conf["podInterface"] = spec.pod_interface
    if spec.http_port != config.DEFAULT_HTTP_PORT:
        conf["httpPort"] = spec.http_port
    if spec.debug:
        conf["log_level"] = "debug"
    if spec.proxy is not None:
        conf["mode"] = spec.proxy.value  # ADD: the network set-up only, as the init container
    if spec.vrid is not None:
        # ADD sets up all but the reserved address; wait's keepalived adds it on the active.
        conf["ha"] = {"mode": ha.HAMode.VRRP.value, "vrid": spec.vrid}
    return conf


def cni_config_text(spec: manifest.RouterSpec) -> str:
    """The configuration as the NetworkAttachmentDefinition and the ConfigMap both hold it."""
    return json.dumps(cni_config(spec), indent=2) + "\n"


def _config_map(spec: manifest.RouterSpec) -> dict[str, Any]:
    # CNI mode: `wait` reads the plugin's own configuration, so the two cannot disagree.
    # A proxy pod has no `wait`: its proxy reads its rules, whatever the attachment.
    if spec.attachment is manifest.Attachment.CNI and spec.proxy is None:
        data = {CNI_CONFIG_KEY: cni_config_text(spec)}
    else:
        data = {manifest.DESTINATIONS_KEY: spec.destination_text}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(spec), "data": data}


def _network_attachment(spec: manifest.RouterSpec) -> dict[str, Any]:
    return {
        "apiVersion": NAD_API_VERSION,
        "kind": NAD_KIND,
        "metadata": _metadata(spec),
        "spec": {"config": cni_config_text(spec)},
    }


def _installer_labels(spec: manifest.RouterSpec) -> dict[str, str]:
    return {**_labels(spec), LABEL_COMPONENT: INSTALLER_COMPONENT}


def _installer(spec: manifest.RouterSpec) -> dict[str, Any]:
    """The DaemonSet that puts the plugin executable into every node's CNI bin directory."""
    meta = _metadata(spec)
    meta["name"] = f"{spec.name}{INSTALLER_SUFFIX}"
    meta["labels"][LABEL_COMPONENT] = INSTALLER_COMPONENT
    container: dict[str, Any] = {
        "name": INSTALLER_CONTAINER,
        **_container_common(spec),
        "args": [
            "install-cni",
            "--source", manifest.CNI_EXECUTABLE,
            "--dest-dir", INSTALLER_MOUNT,
            "--name", CNI_TYPE,
            "--interval", str(INSTALLER_INTERVAL),
        ],
        # Root to write the root-owned directory, and nothing else.
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": INSTALLER_VOLUME, "mountPath": INSTALLER_MOUNT}],
        "resources": {"requests": {"cpu": "5m", "memory": "32Mi"}},
    }
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # Every node the router may land on, tainted ones included.
        "tolerations": [{"operator": "Exists"}],
    }
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    pod["containers"] = [container]
    pod["volumes"] = [
        {
            "name": INSTALLER_VOLUME,
            "hostPath": {"path": spec.cni_bin_dir, "type": "DirectoryOrCreate"},
        }
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": _installer_labels(spec)},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {"metadata": {"labels": _installer_labels(spec)}, "spec": pod},
        },
    }


def _service(spec: manifest.RouterSpec) -> dict[str, Any]:
    dest = spec.destinations
    families = {r.family for r in dest.rules} | {f.family for f in dest.fallbacks}
    if dest.named or dest.named_fallbacks or spec.proxy is not None:
        # A DNS name is resolved in every family the router has a source for (and a proxy
        # reaches every family it has a source for).
        families |= {s.family for s in spec.sources}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec),
        "spec": {
            "type": "ClusterIP",
            "selector": _labels(spec),
            "ipFamilyPolicy": "RequireDualStack" if len(families) > 1 else "SingleStack",
            "ipFamilies": [f"IPv{f}" for f in sorted(families)],
            "ports": service_ports(spec),
        },
    }


def _env(pairs: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in pairs]


def _container_common(spec: manifest.RouterSpec) -> dict[str, Any]:
    common: dict[str, Any] = {"image": spec.image}
    if spec.image_pull_policy is not None:
        common["imagePullPolicy"] = spec.image_pull_policy
    return common


def _mounts() -> list[dict[str, Any]]:
    return [{"name": VOLUME, "mountPath": manifest.DESTINATIONS_DIR, "readOnly": True}]


def _resources(spec: manifest.RouterSpec) -> dict[str, Any]:
    if not spec.resources:
        return {}
    return {"resources": {k: dict(v) for k, v in spec.resources.items()}}


def _init_container(spec: manifest.RouterSpec) -> dict[str, Any]:
    # As upstream: privileged, because the setup writes the pod's net sysctls
    # (forwarding), which a container only may with a writable /proc/sys.
    return {
        "name": INIT_CONTAINER,
        **_container_common(spec),
        "env": _env(
            [*spec.environment(), (config.ENV_MODE, (spec.proxy or config.Mode.INIT).value)]
        ),
        "securityContext": {"privileged": True, "runAsUser": 0, "runAsNonRoot": False},
        "volumeMounts": _mounts(),
        **_resources(spec),
    }


def _main_environment(spec: manifest.RouterSpec) -> list[tuple[str, str]]:
    if spec.attachment is manifest.Attachment.CNI:
        # Everything else comes from the plugin's configuration (one source of truth);
        # the interface's name is Multus's (the networks annotation), not the plugin's.
        return [
            (config.ENV_CNI_CONFIG, CNI_CONFIG_PATH),
            (config.ENV_INTERFACE, spec.egress_interface),
        ]
    return spec.environment()


def _probes(container: dict[str, Any], port: int) -> None:
    container["ports"].append({"name": HTTP_PORT_NAME, "containerPort": port, "protocol": "TCP"})
    container["readinessProbe"] = {
        "httpGet": {"path": READY_PATH, "port": HTTP_PORT_NAME},
        "periodSeconds": 5,
    }
    container["livenessProbe"] = {
        "httpGet": {"path": HEALTH_PATH, "port": HTTP_PORT_NAME},
        "periodSeconds": 10,
        "failureThreshold": 3,
    }


def _proxy_container(spec: manifest.RouterSpec) -> dict[str, Any]:
    """Upstream's proxy pods' main container, from our image: unprivileged, the rules mounted."""
    assert spec.proxy is not None
    container: dict[str, Any] = {
        "name": MAIN_CONTAINER,
        **_container_common(spec),
        "args": [spec.proxy.value],
        "env": _env([
            (PROXY_FILE_VARIABLES[spec.proxy], manifest.DESTINATIONS_PATH),
            (config.ENV_HTTP_PORT, str(spec.http_port)),
        ]),
        "ports": [
            {"name": port_name(port, config.Proto.TCP), "containerPort": port, "protocol": "TCP"}
            for port in spec.proxy_ports
        ],
    }
    if spec.http_port:
        _probes(container, spec.http_port)
    container["securityContext"] = {
        "runAsUser": PROXY_USER,
        "runAsGroup": PROXY_USER,
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    container["volumeMounts"] = [*_mounts(), {"name": TMP_VOLUME, "mountPath": "/tmp"}]
    container.update(_resources(spec))
    return container


def _main_container(spec: manifest.RouterSpec) -> dict[str, Any]:
    if spec.proxy is not None:
        return _proxy_container(spec)
    container: dict[str, Any] = {
        "name": MAIN_CONTAINER,
        **_container_common(spec),
        "args": list(WAIT_ARGS),
        "env": _env(_main_environment(spec)),
    }
    if spec.http_port:
        container["ports"] = [
            {"name": HTTP_PORT_NAME, "containerPort": spec.http_port, "protocol": "TCP"}
        ]
        container["readinessProbe"] = {
            "httpGet": {"path": READY_PATH, "port": HTTP_PORT_NAME},
            "periodSeconds": 5,
        }
        if spec.ha:
            # /readyz follows the role (503 "standby"): probe every second and act on
            # one answer, so that the Service moves with the address.
            container["readinessProbe"].update(
                {"periodSeconds": 1, "failureThreshold": 1, "successThreshold": 1,
                 "timeoutSeconds": 1}
            )
        container["livenessProbe"] = {
            "httpGet": {"path": HEALTH_PATH, "port": HTTP_PORT_NAME},
            "periodSeconds": 10,
            "failureThreshold": 3,
        }
    # Root with two capabilities, not a non-root user: Kubernetes cannot grant
    # ambient capabilities, so a non-root process would not hold them.
    container["securityContext"] = {
        "runAsUser": 0,
        "runAsNonRoot": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": list(MAIN_CAPABILITIES)},
    }
    container["volumeMounts"] = _mounts()
    if spec.ha:
        # keepalived's configuration, FIFO and pid files (the root filesystem is read-only).
        container["volumeMounts"].append({"name": RUN_VOLUME, "mountPath": "/run"})
    container.update(_resources(spec))
    return container


def _without_rules(text: str) -> object:
    """A CNI configuration less its rules (``ip.destinations``): what `wait` cannot reload."""
    try:
        conf = json.loads(text)
        conf["ip"].pop("destinations", None)
    except (ValueError, TypeError, KeyError, AttributeError):
        return text
    return conf


def checksum(objects: Iterable[Mapping[str, Any]]) -> str:
    """SHA-256 of what the pod reads at start but cannot reload: a change of it rolls the pod.

    The rules are left out: `wait` reloads them from the mounted ConfigMap in place (the
    destination file, or the CNI configuration's ``ip.destinations``), so a rules change keeps
    the pod and its connections; everything else in the ConfigMap and the
    NetworkAttachmentDefinition (addresses, gateway, macvlan, HA) gives a new pod.
    """
    content: list[object] = []
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            data = dict(obj.get("data") or {})
            data.pop(manifest.DESTINATIONS_KEY, None)
            if CNI_CONFIG_KEY in data:
                data[CNI_CONFIG_KEY] = _without_rules(data[CNI_CONFIG_KEY])
            content.append(data)
        elif obj["kind"] == NAD_KIND:
            spec = dict(obj.get("spec") or {})
            if "config" in spec:
                spec["config"] = _without_rules(spec["config"])
            content.append(spec)
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _deployment(spec: manifest.RouterSpec, config_sha: str) -> dict[str, Any]:
    annotations: dict[str, str] = {}
    if spec.attachment is manifest.Attachment.ANNOTATION:
        annotations[ANNOTATION_MACVLAN] = spec.macvlan
    else:
        network: dict[str, str] = {"name": spec.name}
        if spec.namespace is not None:
            network["namespace"] = spec.namespace
        network["interface"] = spec.cni_interface
        annotations[ANNOTATION_NETWORKS] = json.dumps([network])
    annotations[ANNOTATION_CHECKSUM] = config_sha
    pod: dict[str, Any] = {
        # The router needs no API access, and no service variables in its environment.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.attachment is manifest.Attachment.ANNOTATION:
        # With Multus, the plugin configures the router before any container starts.
        pod["initContainers"] = [_init_container(spec)]
    pod["containers"] = [_main_container(spec)]
    pod["volumes"] = [{"name": VOLUME, "configMap": {"name": spec.name}}]
    if spec.proxy is not None:
        pod["volumes"].append({"name": TMP_VOLUME, "emptyDir": {"medium": "Memory"}})
        low = min(spec.proxy_ports)
        if low < 1024:
            # A non-root proxy binds a port below 1024 only if the pod's network namespace
            # allows it: a safe sysctl, namespaced to the pod (no capability needed).
            pod["securityContext"] = {
                "sysctls": [{"name": UNPRIVILEGED_PORTS_SYSCTL, "value": str(low)}]
            }
    strategy: dict[str, Any] = {"type": "Recreate"}  # one pod may hold the address at a time
    if spec.ha:
        pod["volumes"].append({"name": RUN_VOLUME, "emptyDir": {"medium": "Memory"}})
        # Two nodes, or a node failure takes both replicas.
        pod["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": _labels(spec)}, "topologyKey": HOSTNAME_TOPOLOGY}
        ]}}
        # keepalived holds the address; replace one replica at a time, never both.
        strategy = {"type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec),
        "spec": {
            "replicas": HA_REPLICAS if spec.ha else 1,
            "strategy": strategy,
            "selector": {"matchLabels": _labels(spec)},
            "template": {
                "metadata": {"labels": _labels(spec), "annotations": annotations},
                "spec": pod,
            },
        },
    }


def _disruption_budget(spec: manifest.RouterSpec) -> dict[str, Any]:
    """A drain takes at most one replica of the pair at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(spec)}},
    }


def _check_ha(deployment: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]) -> None:
    """More than one replica only as a VRRP pair: env, anti-affinity, a PodDisruptionBudget."""
    spec = deployment["spec"]
    if spec.get("replicas", 1) == 1:
        return
    name = _describe(deployment)
    pod = spec["template"]["spec"]
    cni_ha: dict[str, Any] = {}
    for obj in objects:
        if obj.get("kind") == "ConfigMap" and CNI_CONFIG_KEY in obj.get("data", {}):
            with contextlib.suppress(ValueError, AttributeError):
                cni_ha = json.loads(obj["data"][CNI_CONFIG_KEY]).get("ha") or {}
    for container in pod["containers"]:
        env = _env_of(container)
        # In CNI mode wait reads the pair from the plugin's configuration ("ha").
        from_cni = config.ENV_CNI_CONFIG in env and cni_ha.get("mode") == ha.HAMode.VRRP.value
        if env.get(ha.ENV_HA) != ha.HAMode.VRRP.value and not from_cni:
            raise CheckError(
                f"cannot check {name}: {spec['replicas']} replicas but container "
                f"{container['name']} does not run EGRESS_ROUTER_HA=vrrp; both would hold "
                "the reserved address"
            )
    terms = pod.get("affinity", {}).get("podAntiAffinity", {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution", [])
    if not any(t.get("topologyKey") == HOSTNAME_TOPOLOGY
               and t.get("labelSelector", {}).get("matchLabels")
               == spec["selector"]["matchLabels"] for t in terms):
        raise CheckError(f"cannot check {name}: the replicas may share a node (no required "
                         "pod anti-affinity on kubernetes.io/hostname)")
    budgets = [o for o in objects if o.get("kind") == "PodDisruptionBudget"
               and o["spec"]["selector"] == spec["selector"]]
    if not budgets:
        raise CheckError(f"cannot check {name}: no PodDisruptionBudget for its pods")


def _warnings(spec: manifest.RouterSpec) -> list[str]:
    if not manifest.has_fallback(spec.destinations) or spec.extra_ports:
        return []
    fallbacks = [str(f.address) for f in spec.destinations.fallbacks]
    fallbacks += [f.host for f in spec.destinations.named_fallbacks]
    ports = ", ".join(f"{p['port']}/{p['protocol'].lower()}" for p in service_ports(spec))
    return [
        f"the fallback ({', '.join(fallbacks)}) serves every other port, but a Service cannot "
        f"expose \"every other port\": Service {spec.name} gets only the rules' ports "
        f"({ports}); list the ports your clients use through the fallback in extraPorts "
        "(e.g. extraPorts: [9000/tcp]) or with --extra-port 9000/tcp, and they become "
        "Service ports"
    ]


def render(spec: manifest.RouterSpec) -> Rendered:
    """All objects of one router, in the order to apply them."""
    objects: list[dict[str, Any]] = [_config_map(spec)]
    if spec.attachment is manifest.Attachment.CNI:
        objects.append(_network_attachment(spec))
        # Before the router: its pod's ADD needs the plugin on the node.
        objects.append(_installer(spec))
    objects.append(_service(spec))
    objects.append(_deployment(spec, checksum(objects)))
    if spec.ha:
        objects.append(_disruption_budget(spec))
    return Rendered(tuple(objects), tuple(_warnings(spec)))


# --------------------------------------------------------------------------- YAML


class _Dumper(yaml.SafeDumper):
    """Block style throughout, multi-line strings as literal blocks (readable rules and JSON)."""


def _represent_str(dumper: _Dumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def to_yaml(objects: Sequence[Mapping[str, Any]], *, header: bool = True) -> str:
    """The objects as one multi-document YAML stream, ready for ``kubectl apply -f -``."""
    documents = [
        yaml.dump(dict(obj), Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)
        for obj in objects
    ]
    return (HEADER if header else "") + "---\n" + "---\n".join(documents)


def file_names(objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """One file per object, numbered so that ``kubectl apply -f DIR`` keeps the order."""
    return [f"{i:02d}-{obj['kind'].lower()}.yaml" for i, obj in enumerate(objects, start=1)]


# --------------------------------------------------------------------------- check

# Written from the CRD network-attachment-definitions.k8s.cni.cncf.io (v1),
# stricter where the CRD is silent: metadata names, no unknown fields.
NAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": NAD_API_VERSION},
        "kind": {"const": NAD_KIND},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                         "maxLength": 253},
                "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                              "maxLength": 63},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"config": {"type": "string"}},
        },
    },
}

def kubernetes_versions() -> list[str]:
    """The Kubernetes versions whose schemas the installed kubernetes-validate ships."""
    return [kubernetes_validate.utils.major_minor(v)
            for v in kubernetes_validate.utils.all_versions()]


def _describe(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('kind', '?')} {obj.get('metadata', {}).get('name', '?')}"


def _validate_schema(obj: Mapping[str, Any], version: str) -> None:
    if obj.get("kind") == NAD_KIND:
        _validate_json(NAD_SCHEMA, obj, f"{_describe(obj)} against the {NAD_KIND} CRD")
        try:
            conf = json.loads(obj["spec"]["config"])
        except (KeyError, json.JSONDecodeError) as err:
            raise CheckError(
                f"cannot validate {_describe(obj)}: spec.config is not JSON: {err}"
            ) from None
        _validate_json(cniconf.SCHEMA, conf, f"{_describe(obj)} spec.config (CNI)")
        return
    try:
        kubernetes_validate.validate(dict(obj), version, strict=True)
    except kubernetes_validate.ValidationError as err:
        raise CheckError(
            f"cannot validate {_describe(obj)} against Kubernetes {version}: "
            f"{manifest.json_path(list(err.path))}: {err.message}"
        ) from None
    except kubernetes_validate.SchemaNotFoundError as err:
        raise CheckError(f"cannot validate {_describe(obj)}: {err.message}") from None


def _validate_json(schema: Mapping[str, Any], obj: object, what: str) -> None:
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(obj)
    )
    if error is not None:
        raise CheckError(
            f"cannot validate {what}: {manifest.json_path(list(error.absolute_path))}: "
            f"{error.message}"
        )


def _one(objects: Sequence[Mapping[str, Any]], kind: str) -> Mapping[str, Any]:
    found = [o for o in objects if o.get("kind") == kind]
    if len(found) != 1:
        raise CheckError(f"cannot check the router: expected one {kind}, found {len(found)}")
    return found[0]


def _env_of(container: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def _check_router(objects: Sequence[Mapping[str, Any]]) -> None:
    """Re-derive the invariants from the rendered objects, independently of how they were built.

    Every rule has exactly one Service port (targetPort = the rule's port) and
    every other Service port is served by a fallback and is not the HTTP port;
    each container reads the ConfigMap through the file it mounts; the
    CNI configuration holds the same rules as the ConfigMap.
    """
    config_map = _one(objects, "ConfigMap")
    service = _one(objects, "Service")
    deployment = _one(objects, "Deployment")
    main = deployment["spec"]["template"]["spec"]["containers"][0]
    proxy = next((m for m in PROXY_FILE_VARIABLES if main.get("args") == [m.value]), None)
    if proxy is not None:
        _check_proxy(proxy, objects, config_map, service, deployment)
        return
    name = _describe(service)
    data = config_map["data"]
    cni_text = data.get(CNI_CONFIG_KEY)
    try:
        if cni_text is None:
            text = data[manifest.DESTINATIONS_KEY]
            destinations = config.parse_destinations(
                text, f"{_describe(config_map)} destinations"
            )
        else:
            cni_conf = json.loads(cni_text)
            destinations = config.parse_destinations(
                "\n".join(cni_conf["ip"]["destinations"]),
                f"{_describe(config_map)} {CNI_CONFIG_KEY} ip.destinations",
                host_prefix=True,
            )
    except config.ConfigError as err:
        raise CheckError(str(err)) from None
    except (KeyError, TypeError, ValueError) as err:
        raise CheckError(
            f"cannot check {_describe(config_map)}: {CNI_CONFIG_KEY} is not a CNI "
            f"configuration: {err}"
        ) from None
    ports = {(p["port"], p["protocol"].lower()): p for p in service["spec"]["ports"]}
    rules = {(r.port, r.proto.value) for r in manifest.port_rules(destinations)}
    for port, proto in sorted(rules):
        found = ports.get((port, proto))
        if found is None:
            raise CheckError(
                f"cannot check {name}: the rule for {port}/{proto} has no Service port"
            )
        if found["targetPort"] != port:
            raise CheckError(
                f"cannot check {name}: port {found['name']} targets {found['targetPort']}, "
                f"but the rule listens on {port}"
            )
    pod = deployment["spec"]["template"]["spec"]
    containers = [*pod.get("initContainers", []), *pod["containers"]]
    http_ports = {int(_env_of(c).get(config.ENV_HTTP_PORT, "0")) for c in containers}
    if cni_text is not None:
        http_ports.add(int(json.loads(cni_text).get("httpPort", config.DEFAULT_HTTP_PORT)))
    for port, proto in sorted(set(ports) - rules):
        if not manifest.has_fallback(destinations):
            raise CheckError(
                f"cannot check {name}: Service port {port}/{proto} has no rule and there is "
                "no fallback; it would be refused"
            )
        if proto == "tcp" and port in http_ports:
            raise CheckError(
                f"cannot check {name}: Service port {port}/tcp is the router's HTTP port"
            )
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for container in containers:
        _check_reads_config_map(deployment, container, volumes, config_map)
    _check_ha(deployment, objects)
    for nad in (o for o in objects if o.get("kind") == NAD_KIND):
        if nad["spec"]["config"] != cni_text:
            raise CheckError(
                f"cannot check {_describe(nad)}: its config differs from ConfigMap "
                f"{config_map['metadata']['name']}'s {CNI_CONFIG_KEY}, which the router's "
                "wait container reads"
            )
        _check_installer(objects, json.loads(nad["spec"]["config"])["type"])


def _check_proxy(
    proxy: config.Mode,
    objects: Sequence[Mapping[str, Any]],
    config_map: Mapping[str, Any],
    service: Mapping[str, Any],
    deployment: Mapping[str, Any],
) -> None:
    """A proxy pod: the rules parse, the Service has exactly the proxy's ports, the init
    container sets up the network in the same mode and redirects nothing, the proxy reads the
    mounted ConfigMap and holds no privilege."""
    text = config_map["data"].get(manifest.DESTINATIONS_KEY, "")
    variable = f"{_describe(config_map)} {manifest.DESTINATIONS_KEY}"
    try:
        if proxy is config.Mode.HTTP_PROXY:
            proxy_http.parse_rules(text, variable)
            wanted = {proxy_http.DEFAULT_PORT}
        else:
            wanted = {f.port for f in proxy_dns.parse_forwards(text, variable)}
    except config.ConfigError as err:
        raise CheckError(str(err)) from None
    name = _describe(service)
    ports = {(p["port"], p["protocol"].lower(), p["targetPort"]) for p in service["spec"]["ports"]}
    if ports != {(p, "tcp", p) for p in wanted}:
        raise CheckError(
            f"cannot check {name}: its ports {sorted(ports)} are not the {proxy.value}'s "
            f"ports {sorted(wanted)} (TCP, same target port)"
        )
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for init in pod.get("initContainers", []):
        env = _env_of(init)
        if env.get(config.ENV_MODE) != proxy.value or config.ENV_DESTINATION_FILE in env:
            raise CheckError(
                f"cannot check {_describe(deployment)}: init container {init['name']} does not "
                f"run {config.ENV_MODE}={proxy.value} alone (the network set-up, no redirect)"
            )
    main = pod["containers"][0]
    _check_reads_config_map(deployment, main, volumes, config_map, PROXY_FILE_VARIABLES[proxy])
    for nad in (o for o in objects if o.get("kind") == NAD_KIND):
        conf = json.loads(nad["spec"]["config"])
        if conf.get("mode") != proxy.value or conf.get("ip", {}).get("destinations"):
            raise CheckError(
                f"cannot check {_describe(nad)}: its config does not set up the network only "
                f"(\"mode\": \"{proxy.value}\", no ip.destinations) for the {proxy.value} pod"
            )
        _check_installer(objects, conf["type"])
    context = main.get("securityContext", {})
    if not context.get("runAsNonRoot") or context.get("capabilities", {}).get("add"):
        raise CheckError(
            f"cannot check {_describe(deployment)}: the {proxy.value} container must run as "
            "non-root without added capabilities"
        )


def _check_reads_config_map(
    deployment: Mapping[str, Any],
    container: Mapping[str, Any],
    volumes: Mapping[str, Any],
    config_map: Mapping[str, Any],
    file_variable: str = config.ENV_DESTINATION_FILE,
) -> None:
    """The container reads its configuration from the ConfigMap, and only from there."""
    env = _env_of(container)
    if config.ENV_CNI_CONFIG in env:
        variable, key = config.ENV_CNI_CONFIG, CNI_CONFIG_KEY
        repeated = [v for v in (config.ENV_SOURCE, config.ENV_GATEWAY, config.ENV_DESTINATION,
                                config.ENV_DESTINATION_FILE, config.ENV_HTTP_PORT) if v in env]
        if repeated:
            raise CheckError(
                f"cannot check {_describe(deployment)}: container {container['name']} sets "
                f"{', '.join(repeated)} besides {config.ENV_CNI_CONFIG}"
            )
    else:
        variable, key = file_variable, manifest.DESTINATIONS_KEY
    path = env.get(variable, "")
    mounted = [
        m for m in container.get("volumeMounts", [])
        if path == f"{m['mountPath'].rstrip('/')}/{key}"
        and volumes.get(m["name"], {}).get("configMap", {}).get("name")
        == config_map["metadata"]["name"]
    ]
    if not mounted or key not in config_map["data"]:
        raise CheckError(
            f"cannot check {_describe(deployment)}: container {container['name']} reads "
            f"{variable}={path!r}, which is not the mounted ConfigMap"
        )


def _check_installer(objects: Sequence[Mapping[str, Any]], cni_type: str) -> None:
    """The installer writes the plugin under the configuration's type into a hostPath mount."""
    installer = _one(objects, "DaemonSet")
    pod = installer["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container.get("args", [])
    options = dict(zip(args[1::2], args[2::2], strict=False)) if args[:1] == ["install-cni"] \
        else {}
    if options.get("--name") != cni_type:
        raise CheckError(
            f"cannot check {_describe(installer)}: it installs the plugin as "
            f"{options.get('--name')!r}, but the NetworkAttachmentDefinition's type is "
            f"{cni_type!r}"
        )
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    target = [
        m for m in container.get("volumeMounts", [])
        if m["mountPath"] == options.get("--dest-dir") and "hostPath" in volumes.get(m["name"], {})
        and not m.get("readOnly", False)
    ]
    if not target:
        raise CheckError(
            f"cannot check {_describe(installer)}: --dest-dir {options.get('--dest-dir')!r} is "
            "not a writable hostPath mount (the node's CNI bin directory)"
        )


def check(objects: Sequence[Mapping[str, Any]], version: str = KUBERNETES_VERSION) -> list[str]:
    """Validate every object offline and the router's invariants; what was checked, per object.

    Raises `CheckError` naming the object and the field.
    """
    if version not in kubernetes_versions():
        raise CheckError(
            f"cannot validate against Kubernetes {version}: kubernetes-validate "
            f"{kubernetes_validate.__version__} ships {', '.join(kubernetes_versions())}"
        )
    checked = []
    for obj in objects:
        _validate_schema(obj, version)
        against = (
            f"the {NAD_KIND} CRD and the plugin's configuration"
            if obj.get("kind") == NAD_KIND else f"Kubernetes {version}"
        )
        checked.append(f"{_describe(obj)}: valid against {against}")
    _check_router(objects)
    summary = "Service ports match the rules one to one; the pod reads the ConfigMap"
    if any(o.get("kind") == NAD_KIND for o in objects):
        summary += (
            " (in CNI mode the NetworkAttachmentDefinition's config itself); the installer "
            "writes the plugin under its type"
        )
    checked.append(summary)
    return checked
