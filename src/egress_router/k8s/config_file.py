"""Our config file (``egress-router render FILE``) -> `RouterSpec`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from egress_router.core import config, proxy_dns, proxy_http
from egress_router.core.config import cniconf
from egress_router.k8s.fields import (
    Fields,
    Lines,
    check_families,
    check_image,
    check_name,
    check_namespace,
    extra_ports,
    finish,
)
from egress_router.k8s.spec import (
    CNI_BIN_DIR,
    DEFAULT_CNI_INTERFACE,
    DEFAULT_IMAGE,
    DEFAULT_MACVLAN_MODE,
    PULL_POLICIES,
    Attachment,
    Overrides,
    RouterSpec,
)
from egress_router.k8s.yaml_input import (
    load_yaml,
    type_name,
)

CONFIG_FIELDS = (
    "name", "namespace", "source", "gateway", "destinations", "extraPorts", "attachment",
    "image", "imagePullPolicy", "nodeSelector", "resources", "backend", "podInterface",
    "httpPort", "debug", "ha", "vrid", "mode",
)
# `mode`: redirect (the default: init + wait) or one of upstream's proxy pods, whose main
# container is the proxy and whose `destinations` are the proxy's lines in its own grammar.
REDIRECT = "redirect"
PROXY_MODES = {"http-proxy": config.Mode.HTTP_PROXY, "dns-proxy": config.Mode.DNS_PROXY}
MODES = (REDIRECT, *PROXY_MODES)
_ANNOTATION_FIELDS = ("type", "macvlan")
_CNI_FIELDS = ("type", "master", "mode", "mtu", "interface", "binDir")
_BIN_DIR = re.compile(r"^(/[A-Za-z0-9._+-]+)+/?$")


# --------------------------------------------------------------------------- our config file


def _address_list(fields: Fields, doc: Mapping[str, Any], key: str, example: str) -> str:
    value = doc.get(key)
    if value is None:
        raise fields.error(key, f"is not set; expected e.g. {example}")
    if isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise fields.error(f"{key}[{index}]", "must be a string (quote it)", item)
        return ",".join(value)
    if not isinstance(value, str):
        raise fields.error(key, f"must be a string or a list of strings, not {type_name(value)}")
    return value


def _destination_lines(
    fields: Fields, doc: Mapping[str, Any], http_field: str, proxy: config.Mode | None = None
) -> Lines:
    value = doc.get("destinations")
    renames = {config.ENV_HTTP_PORT: http_field}
    syntax = {
        None: config.RULE_SYNTAX,
        config.Mode.HTTP_PROXY: proxy_http.SYNTAX,
        config.Mode.DNS_PROXY: proxy_dns.SYNTAX,
    }[proxy]
    if value is None:
        raise fields.error("destinations", f"is not set; expected lines of {syntax}")
    if isinstance(value, str):
        text = value if value.endswith("\n") else value + "\n"
        return Lines(fields, "destinations", text, None, renames)
    if not isinstance(value, list):
        raise fields.error(
            "destinations", f"must be a text block or a list of lines, not {type_name(value)}"
        )
    for index, item in enumerate(value):
        if not isinstance(item, str) or "\n" in item:
            raise fields.error(
                f"destinations[{index}]", f"must be one line: {config.RULE_SYNTAX}", item
            )
    paths = tuple(f"destinations[{i}]" for i in range(len(value)))
    return Lines(fields, "destinations", "".join(f"{v}\n" for v in value), paths, renames)


def _resources(fields: Fields, doc: Mapping[str, Any]) -> dict[str, dict[str, str | int]] | None:
    raw = fields.mapping(doc, "resources")
    if not raw:
        return None
    fields.known(raw, ("requests", "limits"), "resources")
    result: dict[str, dict[str, str | int]] = {}
    for kind, quantities in raw.items():
        if not isinstance(quantities, dict):
            raise fields.error(f"resources.{kind}", "must be a mapping such as {cpu: 10m}")
        for resource, quantity in quantities.items():
            if isinstance(quantity, bool) or not isinstance(quantity, str | int):
                raise fields.error(
                    f"resources.{kind}.{resource}", "must be a quantity such as 10m or 64Mi",
                    quantity,
                )
        result[kind] = {str(k): v for k, v in quantities.items()}
    return result


def _node_selector(fields: Fields, doc: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    raw = fields.mapping(doc, "nodeSelector")
    for key, value in raw.items():
        if not isinstance(value, str):
            raise fields.error(
                f"nodeSelector.{key}", f"must be a string, not {type_name(value)} (quote it)", value
            )
    return tuple((str(k), v) for k, v in raw.items())


def _attachment(fields: Fields, doc: Mapping[str, Any]) -> dict[str, Any]:
    raw = doc.get("attachment")
    if raw is None:
        raise fields.error(
            "attachment",
            "is not set; expected type: annotation (OpenShift SDN) or type: cni (Multus)",
        )
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        raise fields.error("attachment", f"must be a mapping, not {type_name(raw)}")
    kind = fields.required(raw, "attachment.type", "annotation or cni")
    attachment = Attachment(fields.choice(kind, [a.value for a in Attachment], "attachment.type"))
    if attachment is Attachment.ANNOTATION:
        fields.known(raw, _ANNOTATION_FIELDS, "attachment")
        macvlan = raw.get("macvlan", "true")
        if macvlan is True:  # YAML's unquoted true
            macvlan = "true"
        if not isinstance(macvlan, str):
            raise fields.error(
                "attachment.macvlan",
                'expected "true" (the node\'s default-route interface) or the name of the '
                "node interface to use as the macvlan parent",
                macvlan,
            )
        if macvlan != "true":
            fields.ifname(macvlan, "attachment.macvlan")
        return {"attachment": attachment, "macvlan": macvlan}
    fields.known(raw, _CNI_FIELDS, "attachment")
    master = fields.string(raw, "attachment.master")
    mode = fields.string(raw, "attachment.mode", DEFAULT_MACVLAN_MODE) or DEFAULT_MACVLAN_MODE
    interface = fields.string(raw, "attachment.interface", DEFAULT_CNI_INTERFACE)
    bin_dir = fields.string(raw, "attachment.binDir", CNI_BIN_DIR) or ""
    if not _BIN_DIR.match(bin_dir):
        raise fields.error(
            "attachment.binDir",
            "expected the absolute path of the nodes' CNI bin directory, e.g. /opt/cni/bin",
            bin_dir,
        )
    return {
        "attachment": attachment,
        "master": None if master is None else fields.ifname(master, "attachment.master"),
        "macvlan_mode": fields.choice(mode, cniconf.MACVLAN_MODES, "attachment.mode"),
        "mtu": fields.integer(raw, "attachment.mtu", low=68, high=65535),
        "cni_interface": fields.ifname(interface or "", "attachment.interface"),
        "cni_bin_dir": bin_dir.rstrip("/") or "/",
    }


def _ha(fields: Fields, doc: Mapping[str, Any], sources: tuple[config.Source, ...]) -> int | None:
    """``ha: true`` with ``vrid: 1..255``: the VRID, else None (one replica, the default)."""
    on = doc.get("ha", False)
    if not isinstance(on, bool):
        raise fields.error("ha", "must be true or false", on)
    if not on:
        if "vrid" in doc:
            raise fields.error("vrid", "is set but ha is not true; set ha: true or remove vrid",
                               doc["vrid"])
        return None
    if "vrid" not in doc:
        raise fields.error(
            "vrid", "is required with ha: true: a VRRP router id from 1 to 255 that no other "
            "VRRP pair on the egress network uses (e.g. the reserved address's last octet)",
        )
    vrid = fields.integer(doc, "vrid", low=1, high=255)
    if not any(s.family == 4 for s in sources):
        raise fields.error("source", "has no IPv4 address; ha: true elects over IPv4 (VRRPv3)")
    return vrid


def load_config_text(text: str, source: str, overrides: Overrides | None = None) -> RouterSpec:
    """Parse our render config (YAML); ``source`` names the file in error messages."""
    overrides = overrides or Overrides()
    fields = Fields(source)
    doc = load_yaml(text, source)
    fields.known(doc, CONFIG_FIELDS)
    http_field = "--http-port" if overrides.http_port is not None else "httpPort"
    name = check_name(fields, fields.required(doc, "name", "egress-1"), "name")
    namespace = check_namespace(fields, fields.string(doc, "namespace"), "namespace")
    sources = config.parse_sources(
        _address_list(fields, doc, "source", "192.168.12.99/24"), fields.name("source")
    )
    gateways = config.parse_gateways(
        _address_list(fields, doc, "gateway", "192.168.12.1"), fields.name("gateway")
    )
    mode = fields.choice(fields.string(doc, "mode", REDIRECT) or REDIRECT, MODES, "mode")
    proxy = PROXY_MODES.get(mode)
    lines = _destination_lines(fields, doc, http_field, proxy)
    destinations = lines.parse() if proxy is None else config.Destinations(rules=())
    check_families(
        lines, sources, gateways, destinations, source_field="source", gateway_field="gateway"
    )
    http_port = overrides.http_port
    if http_port is None:
        http_port = fields.integer(doc, "httpPort", low=0, high=65535)
    http_port = config.DEFAULT_HTTP_PORT if http_port is None else http_port
    raw_extra = doc.get("extraPorts") or []
    if not isinstance(raw_extra, list):
        raise fields.error("extraPorts", "must be a list such as [9000/tcp, 53/udp]")
    extra = extra_ports(
        lines,
        destinations,
        [(f"extraPorts[{i}]", v) for i, v in enumerate(raw_extra)]
        + [("--extra-port", v) for v in overrides.extra_ports],
        http_port,
    )
    image = overrides.image or fields.string(doc, "image", DEFAULT_IMAGE) or DEFAULT_IMAGE
    pull = fields.string(doc, "imagePullPolicy")
    backend = fields.string(doc, "backend", config.Backend.NFTABLES.value) or ""
    pod_interface = fields.string(doc, "podInterface", config.DEFAULT_POD_INTERFACE) or ""
    debug = doc.get("debug", False)
    if not isinstance(debug, bool):
        raise fields.error("debug", "must be true or false", debug)
    vrid = _ha(fields, doc, sources)
    spec = RouterSpec(
        name=name,
        namespace=namespace,
        sources=sources,
        gateways=gateways,
        destinations=destinations,
        destination_text=lines.text,
        extra_ports=extra,
        image=check_image(fields, image, "--image" if overrides.image else "image"),
        image_pull_policy=(
            None if pull is None else fields.choice(pull, PULL_POLICIES, "imagePullPolicy")
        ),
        backend=config.Backend(
            fields.choice(backend, [b.value for b in config.Backend], "backend")
        ),
        pod_interface=fields.ifname(pod_interface, "podInterface"),
        http_port=http_port,
        node_selector=_node_selector(fields, doc),
        resources=_resources(fields, doc),
        debug=debug,
        vrid=vrid,
        **_attachment(fields, doc),
    )
    if spec.attachment is Attachment.CNI and spec.backend is not config.Backend.NFTABLES:
        raise fields.error(
            "backend",
            "with attachment cni the CNI plugin sets the router up, and it programs nftables; "
            "remove backend, or use attachment annotation",
            spec.backend.value,
        )
    if proxy is not None:
        spec = _proxy_spec(fields, doc, spec, lines, proxy, http_field=http_field)
    finish(fields, spec, interface_field="attachment.interface", http_field=http_field)
    return spec


def _proxy_spec(
    fields: Fields, doc: Mapping[str, Any], spec: RouterSpec, lines: Lines,
    proxy: config.Mode, *, http_field: str,
) -> RouterSpec:
    """A proxy pod: its lines parsed by the proxy's grammar, what it cannot have refused."""
    mode = f"mode {proxy.value}"
    for field, why in (
        ("extraPorts", "the proxy's ports are the Service's ports"),
        ("ha", "one proxy pod holds the address (no VRRP pair yet)"),
    ):
        if field in doc and doc[field] not in (None, False, []):
            raise fields.error(field, f"is not used with {mode}: {why}; remove it")
    try:
        if proxy is config.Mode.HTTP_PROXY:
            proxy_http.parse_rules(lines.text, lines.base)
            ports: tuple[int, ...] = (proxy_http.DEFAULT_PORT,)
            if spec.http_port == proxy_http.DEFAULT_PORT:
                raise fields.error(
                    http_field, f"is the HTTP proxy's port {proxy_http.DEFAULT_PORT}; choose "
                    "another port for the probes and metrics", spec.http_port,
                )
        else:
            reserved = {spec.http_port: f"the router's HTTP port ({http_field})"} \
                if spec.http_port else {}
            forwards = proxy_dns.parse_forwards(lines.text, lines.base, reserved=reserved)
            ports = tuple(f.port for f in forwards)
    except config.ConfigError as err:
        if err.variable == fields.name(http_field):
            raise
        raise lines.relabel(err) from None
    return dataclasses.replace(spec, proxy=proxy, proxy_ports=ports)
