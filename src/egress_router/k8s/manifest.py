"""Read what ``egress-router render`` renders from: our config file or an OpenShift EgressRouter.

Both inputs end up as one `RouterSpec`, judged here once, before anything is
rendered. The destinations go through the router's own parser
(`config.parse_destinations` and friends), so an error reads as the container
would report it, but names the field of the input file (``destinations[3]``,
``spec.redirect.redirectRules[1]``) instead of an environment variable. The
last step loads the environment the containers will get through
`config.load_config`: what renders is what the init container accepts.

The module is pure: it parses text it is given and reads no files.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
import yaml

from egress_router import __version__
from egress_router.core import config, ha
from egress_router.core.config import cniconf

DEFAULT_IMAGE = f"egress-router:{__version__}"
DEFAULT_CNI_INTERFACE = "net1"
DEFAULT_MACVLAN_MODE = "bridge"  # upstream's default (the CRD and the CNI plugin)

# Where the ConfigMap is mounted and which key holds the rules.
# The CNI plugin: its file name in the node's CNI bin directory (the NetworkAttachmentDefinition's
# "type", upstream's name), that directory, and where the image carries the one-file executable
# (scripts/build-cni.sh) for the installer DaemonSet to copy.
CNI_TYPE = cniconf.CNI_TYPE
CNI_BIN_DIR = "/opt/cni/bin"
CNI_EXECUTABLE = "/usr/local/libexec/egress-router/egress-router-cni"
DESTINATIONS_DIR = "/etc/egress-router"
DESTINATIONS_KEY = "destinations"
DESTINATIONS_PATH = f"{DESTINATIONS_DIR}/{DESTINATIONS_KEY}"

PULL_POLICIES = ("Always", "IfNotPresent", "Never")

EGRESSROUTER_API_VERSION = "network.operator.openshift.io/v1"
EGRESSROUTER_KIND = "EgressRouter"

CONFIG_FIELDS = (
    "name", "namespace", "source", "gateway", "destinations", "extraPorts", "attachment",
    "image", "imagePullPolicy", "nodeSelector", "resources", "backend", "podInterface",
    "httpPort", "debug", "ha", "vrid",
)
_ANNOTATION_FIELDS = ("type", "macvlan")
_CNI_FIELDS = ("type", "master", "mode", "mtu", "interface", "binDir")

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# The kernel's rule for interface names (IFNAMSIZ, no whitespace, '/' or ':').
_IFNAME = re.compile(r"^[^\s/:]{1,15}$")
_BIN_DIR = re.compile(r"^(/[A-Za-z0-9._+-]+)+/?$")
_IMAGE = re.compile(r"^\S+$")
_LINE_REF = re.compile(r"\bline (\d+)\b")


class Attachment(enum.Enum):
    """How the router pod gets its interface on the physical network."""

    ANNOTATION = "annotation"  # OpenShift SDN: pod.network.openshift.io/assign-macvlan
    CNI = "cni"  # Multus: a NetworkAttachmentDefinition for our CNI plugin


@dataclass(frozen=True)
class ExtraPort:
    """A Service port served by the fallback (a Service cannot expose "every other port")."""

    port: int
    proto: config.Proto

    def __str__(self) -> str:
        return f"{self.port}/{self.proto.value}"


@dataclass(frozen=True)
class Overrides:
    """Command-line options that take precedence over (or complete) the input file."""

    image: str | None = None
    extra_ports: tuple[str, ...] = ()
    http_port: int | None = None


@dataclass(frozen=True)
class RouterSpec:
    """One egress router, validated: everything the renderer needs and nothing it must judge."""

    name: str
    namespace: str | None
    sources: tuple[config.Source, ...]
    gateways: tuple[config.IPAddress, ...]
    destinations: config.Destinations
    destination_text: str  # the ConfigMap's content, as the router will read it
    attachment: Attachment
    extra_ports: tuple[ExtraPort, ...] = ()
    macvlan: str = "true"  # annotation: the annotation's value
    master: str | None = None  # cni: the macvlan parent on the node (None: the plugin picks)
    macvlan_mode: str = DEFAULT_MACVLAN_MODE
    mtu: int | None = None
    cni_interface: str = DEFAULT_CNI_INTERFACE
    cni_bin_dir: str = CNI_BIN_DIR  # cni: the node's CNI bin directory (the installer's target)
    image: str = DEFAULT_IMAGE
    image_pull_policy: str | None = None
    backend: config.Backend = config.Backend.NFTABLES
    pod_interface: str = config.DEFAULT_POD_INTERFACE
    http_port: int = config.DEFAULT_HTTP_PORT
    node_selector: tuple[tuple[str, str], ...] = ()
    resources: Mapping[str, Mapping[str, str | int]] | None = None
    debug: bool = False
    vrid: int | None = None  # ha: true: two replicas, keepalived's VRRP pair with this VRID

    @property
    def ha(self) -> bool:
        return self.vrid is not None

    @property
    def egress_interface(self) -> str:
        if self.attachment is Attachment.CNI:
            return self.cni_interface
        return config.DEFAULT_EGRESS_INTERFACE

    def environment(self) -> list[tuple[str, str]]:
        """The ``EGRESS_*`` environment of both containers (the mode is added per container)."""
        env = [
            (config.ENV_SOURCE, ",".join(s.text for s in self.sources)),
            (config.ENV_GATEWAY, ",".join(str(g) for g in self.gateways)),
            (config.ENV_DESTINATION_FILE, DESTINATIONS_PATH),
            (config.ENV_HTTP_PORT, str(self.http_port)),
        ]
        if self.backend is not config.Backend.NFTABLES:
            env.append((config.ENV_BACKEND, self.backend.value))
        if self.pod_interface != config.DEFAULT_POD_INTERFACE:
            env.append((config.ENV_POD_INTERFACE, self.pod_interface))
        if self.egress_interface != config.DEFAULT_EGRESS_INTERFACE:
            env.append((config.ENV_INTERFACE, self.egress_interface))
        if self.debug:
            env.append((config.ENV_DEBUG, "true"))
        if self.vrid is not None:
            env += [(ha.ENV_HA, ha.HAMode.VRRP.value), (ha.ENV_VRID, str(self.vrid))]
        return env


Rule = config.PortRule | config.NamedRule


def port_rules(destinations: config.Destinations) -> tuple[Rule, ...]:
    """Every rule that owns a local port, by address and by DNS name, in line order."""
    return tuple(sorted((*destinations.rules, *destinations.named), key=lambda r: r.line))


def has_fallback(destinations: config.Destinations) -> bool:
    return bool(destinations.fallbacks or destinations.named_fallbacks)


# --------------------------------------------------------------------------- YAML


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML would silently keep the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return dict(loader.construct_pairs(node))


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def _load_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        documents = [d for d in yaml.load_all(text, Loader=_UniqueKeyLoader) if d is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise config.ConfigError(f"{source}{where}", f"{problem}; fix the YAML") from None
    if len(documents) != 1:
        raise config.ConfigError(
            source, f"expected exactly one YAML document, found {len(documents)}"
        )
    if not isinstance(documents[0], dict):
        raise config.ConfigError(
            source, f"expected a YAML mapping, found {_type(documents[0])}"
        )
    return documents[0]


def _type(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", list: "a list",
             dict: "a mapping", str: "a string"}
    return names.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------- field helpers


@dataclass(frozen=True)
class _Fields:
    """Error helpers that name the input file and a field in it."""

    source: str

    def name(self, field: str) -> str:
        return f"{self.source}: {field}"

    def error(self, field: str, cause: str, value: object = None) -> config.ConfigError:
        if isinstance(value, bool):
            value = "true" if value else "false"  # as YAML wrote it
        return config.ConfigError(
            self.name(field), cause, text=None if value is None else str(value)
        )

    def string(self, doc: Mapping[str, Any], field: str, default: str | None = None) -> str | None:
        key = field.rsplit(".", 1)[-1]
        value = doc.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(field, f"must be a string, not {_type(value)} (quote it)", value)
        return value

    def required(self, doc: Mapping[str, Any], field: str, example: str) -> str:
        value = self.string(doc, field)
        if value is None:
            raise self.error(field, f"is not set; expected e.g. {example}")
        return value

    def integer(self, doc: Mapping[str, Any], field: str, *, low: int, high: int) -> int | None:
        value = doc.get(field.rsplit(".", 1)[-1])
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(field, f"expected a whole number from {low} to {high}", value)
        return value

    def mapping(self, doc: Mapping[str, Any], field: str) -> dict[Any, Any]:
        value = doc.get(field.rsplit(".", 1)[-1])
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(field, f"must be a mapping, not {_type(value)}")
        return value

    def known(self, doc: Mapping[str, Any], allowed: Sequence[str], parent: str = "") -> None:
        for key in doc:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise self.error(
                    f"{parent}.{key}" if parent else str(key),
                    f"unknown field; {hint}expected one of {', '.join(allowed)}",
                )

    def choice(self, value: str, choices: Sequence[str], field: str) -> str:
        if value not in choices:
            raise self.error(field, f"unknown value; expected one of {', '.join(choices)}", value)
        return value

    def ifname(self, value: str, field: str) -> str:
        if not _IFNAME.match(value):
            raise self.error(
                field,
                "invalid interface name; expected 1 to 15 characters without spaces, '/' or ':'",
                value,
            )
        return value


@dataclass(frozen=True)
class _Lines:
    """Destination lines and the input field each came from, for error messages.

    ``paths`` is None for a text block (errors then say ``destinations line
    3``); otherwise it holds one field path per line (``destinations[2]``,
    ``spec.redirect.redirectRules[2]``). ``renames`` turns the environment
    variables the parser mentions into the input's own names.
    """

    fields: _Fields
    base: str
    text: str
    paths: tuple[str, ...] | None
    renames: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def where(self, line: int) -> str:
        if self.paths is None:
            return f"{self.base} line {line}"
        return self.paths[line - 1]

    def relabel(self, err: config.ConfigError) -> config.ConfigError:
        cause = err.cause
        for variable, name in self.renames.items():
            cause = cause.replace(variable, name)
        if self.paths is None:
            return config.ConfigError(
                self.fields.name(self.base), cause, line=err.line, text=err.text
            )
        cause = _LINE_REF.sub(lambda m: self.where(int(m.group(1))), cause)
        if err.line is None:
            return config.ConfigError(self.fields.name(self.base), cause, text=err.text)
        raw = self.text.splitlines()[err.line - 1]
        return config.ConfigError(
            self.fields.name(self.where(err.line)), cause, text=raw.split("#", 1)[0].strip()
        )

    def parse(self) -> config.Destinations:
        try:
            return config.parse_destinations(self.text, self.base)
        except config.ConfigError as err:
            raise self.relabel(err) from None


# --------------------------------------------------------------------------- shared checks


def _parse_extra_ports(
    fields: _Fields, items: Sequence[tuple[str, object]]
) -> tuple[ExtraPort, ...]:
    ports: list[ExtraPort] = []
    for field, value in items:
        if not isinstance(value, str) or value.count("/") != 1:
            raise fields.error(field, "expected <port>/<protocol>, e.g. 9000/tcp", value)
        port_text, proto_text = (part.strip() for part in value.split("/"))
        if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise fields.error(field, "invalid port; expected a number from 1 to 65535", value)
        try:
            proto = config.Proto(proto_text.lower())
        except ValueError:
            raise fields.error(
                field, f"unknown protocol {proto_text!r}; expected tcp, udp or sctp", value
            ) from None
        port = ExtraPort(int(port_text), proto)
        if port in ports:
            raise fields.error(field, "is listed twice", value)
        ports.append(port)
    return tuple(ports)


def _check_families(
    lines: _Lines,
    sources: tuple[config.Source, ...],
    gateways: tuple[config.IPAddress, ...],
    destinations: config.Destinations,
    *,
    source_field: str,
    gateway_field: str,
) -> None:
    try:
        config.check_families(
            sources, gateways, destinations,
            destination_variable=lines.base,
            source_variable=source_field,
            gateway_variable=gateway_field,
        )
    except config.ConfigError as err:
        if err.variable == lines.base:
            raise lines.relabel(err) from None
        raise config.ConfigError(
            lines.fields.name(err.variable), err.cause, line=err.line, text=err.text
        ) from None


def _check_ports(
    lines: _Lines,
    destinations: config.Destinations,
    extra: Sequence[tuple[str, ExtraPort]],
    *,
    http_port: int,
) -> None:
    """The HTTP port is no rule's, and every extra port is the fallback's and only its."""
    try:
        config.check_http_port(destinations, http_port, lines.base, lines.text)
    except config.ConfigError as err:
        raise lines.relabel(err) from None
    http_name = lines.renames.get(config.ENV_HTTP_PORT, config.ENV_HTTP_PORT)
    for field, port in extra:
        for rule in port_rules(destinations):
            if (rule.port, rule.proto) == (port.port, port.proto):
                raise lines.fields.error(
                    field,
                    f"{lines.where(rule.line)} already redirects this port, which makes it a "
                    "Service port; remove it here",
                    port,
                )
        if not has_fallback(destinations):
            raise lines.fields.error(
                field,
                "no fallback in the destinations, so this port would be refused; add a rule "
                "for it, or a last line with the fallback address",
                port,
            )
        if port.proto is config.Proto.TCP and port.port == http_port:
            raise lines.fields.error(
                field,
                f"is the router's own HTTP port ({http_name}), which the fallback does not "
                "serve; remove it here or move the HTTP port",
                port,
            )


def _extra_ports(
    lines: _Lines,
    destinations: config.Destinations,
    items: Sequence[tuple[str, object]],
    http_port: int,
) -> tuple[ExtraPort, ...]:
    ports = _parse_extra_ports(lines.fields, items)
    named = list(zip([field for field, _ in items], ports, strict=True))
    _check_ports(lines, destinations, named, http_port=http_port)
    return ports


def _name(fields: _Fields, value: str, field: str) -> str:
    if len(value) > 63 or not _DNS1035.match(value):
        raise fields.error(
            field,
            "invalid name; expected at most 63 characters a-z, 0-9 and '-', starting with a "
            "letter and ending with a letter or digit (it names the Service)",
            value,
        )
    return value


def _namespace(fields: _Fields, value: str | None, field: str) -> str | None:
    if value is not None and (len(value) > 63 or not _DNS1123.match(value)):
        raise fields.error(
            field,
            "invalid namespace; expected at most 63 characters a-z, 0-9 and '-', starting "
            "and ending with a letter or digit",
            value,
        )
    return value


def _image(fields: _Fields, value: str, field: str) -> str:
    if not _IMAGE.match(value):
        raise fields.error(
            field,
            "invalid image reference; expected e.g. registry.example.com/egress-router:0.1.0",
            value,
        )
    return value


_ENV_FIELDS = {
    config.ENV_POD_INTERFACE: "podInterface",
    config.ENV_BACKEND: "backend",
    config.ENV_DEBUG: "debug",
}


def _finish(fields: _Fields, spec: RouterSpec, *, interface_field: str, http_field: str) -> None:
    """Refuse interface clashes, then load the rendered environment as the init container will."""
    if spec.pod_interface == spec.egress_interface:
        if spec.attachment is Attachment.ANNOTATION:
            raise fields.error(
                "podInterface",
                f"is {spec.egress_interface}, the physical-network interface the platform "
                "adds; expected the pod-network interface (usually eth0)",
                spec.pod_interface,
            )
        raise fields.error(
            interface_field,
            f"is the same interface as podInterface ({spec.pod_interface!r}); the router "
            "needs a pod-side and a physical-side interface",
            spec.egress_interface,
        )
    env = dict(spec.environment())
    env[config.ENV_MODE] = config.Mode.INIT.value

    def read(path: str) -> str:
        del path
        return spec.destination_text

    try:
        config.load_config(env, read_text=read)
    except config.ConfigError as err:
        names = {**_ENV_FIELDS, config.ENV_INTERFACE: interface_field,
                 config.ENV_HTTP_PORT: http_field}
        raise config.ConfigError(
            fields.name(names.get(err.variable, err.variable)),
            err.cause, line=err.line, text=err.text,
        ) from None


# --------------------------------------------------------------------------- our config file


def _address_list(fields: _Fields, doc: Mapping[str, Any], key: str, example: str) -> str:
    value = doc.get(key)
    if value is None:
        raise fields.error(key, f"is not set; expected e.g. {example}")
    if isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise fields.error(f"{key}[{index}]", "must be a string (quote it)", item)
        return ",".join(value)
    if not isinstance(value, str):
        raise fields.error(key, f"must be a string or a list of strings, not {_type(value)}")
    return value


def _destination_lines(fields: _Fields, doc: Mapping[str, Any], http_field: str) -> _Lines:
    value = doc.get("destinations")
    renames = {config.ENV_HTTP_PORT: http_field}
    if value is None:
        raise fields.error("destinations", f"is not set; expected lines of {config.RULE_SYNTAX}")
    if isinstance(value, str):
        text = value if value.endswith("\n") else value + "\n"
        return _Lines(fields, "destinations", text, None, renames)
    if not isinstance(value, list):
        raise fields.error(
            "destinations", f"must be a text block or a list of lines, not {_type(value)}"
        )
    for index, item in enumerate(value):
        if not isinstance(item, str) or "\n" in item:
            raise fields.error(
                f"destinations[{index}]", f"must be one line: {config.RULE_SYNTAX}", item
            )
    paths = tuple(f"destinations[{i}]" for i in range(len(value)))
    return _Lines(fields, "destinations", "".join(f"{v}\n" for v in value), paths, renames)


def _resources(fields: _Fields, doc: Mapping[str, Any]) -> dict[str, dict[str, str | int]] | None:
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


def _node_selector(fields: _Fields, doc: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    raw = fields.mapping(doc, "nodeSelector")
    for key, value in raw.items():
        if not isinstance(value, str):
            raise fields.error(
                f"nodeSelector.{key}", f"must be a string, not {_type(value)} (quote it)", value
            )
    return tuple((str(k), v) for k, v in raw.items())


def _attachment(fields: _Fields, doc: Mapping[str, Any]) -> dict[str, Any]:
    raw = doc.get("attachment")
    if raw is None:
        raise fields.error(
            "attachment",
            "is not set; expected type: annotation (OpenShift SDN) or type: cni (Multus)",
        )
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        raise fields.error("attachment", f"must be a mapping, not {_type(raw)}")
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


def _ha(fields: _Fields, doc: Mapping[str, Any], sources: tuple[config.Source, ...]) -> int | None:
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
    fields = _Fields(source)
    doc = _load_yaml(text, source)
    fields.known(doc, CONFIG_FIELDS)
    http_field = "--http-port" if overrides.http_port is not None else "httpPort"
    name = _name(fields, fields.required(doc, "name", "egress-1"), "name")
    namespace = _namespace(fields, fields.string(doc, "namespace"), "namespace")
    sources = config.parse_sources(
        _address_list(fields, doc, "source", "192.168.12.99/24"), fields.name("source")
    )
    gateways = config.parse_gateways(
        _address_list(fields, doc, "gateway", "192.168.12.1"), fields.name("gateway")
    )
    lines = _destination_lines(fields, doc, http_field)
    destinations = lines.parse()
    _check_families(
        lines, sources, gateways, destinations, source_field="source", gateway_field="gateway"
    )
    http_port = overrides.http_port
    if http_port is None:
        http_port = fields.integer(doc, "httpPort", low=0, high=65535)
    http_port = config.DEFAULT_HTTP_PORT if http_port is None else http_port
    raw_extra = doc.get("extraPorts") or []
    if not isinstance(raw_extra, list):
        raise fields.error("extraPorts", "must be a list such as [9000/tcp, 53/udp]")
    extra = _extra_ports(
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
        image=_image(fields, image, "--image" if overrides.image else "image"),
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
    _finish(fields, spec, interface_field="attachment.interface", http_field=http_field)
    return spec


# --------------------------------------------------------------------------- EgressRouter CR

_ADDRESS = {"type": "string", "minLength": 1}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}

# Written from the CRD egressrouters.network.operator.openshift.io, version v1.
# Unlike the API server, which prunes unknown fields silently, unknown spec
# fields are refused here: a misspelt field would otherwise vanish in the move.
EGRESSROUTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": EGRESSROUTER_API_VERSION},
        "kind": {"const": EGRESSROUTER_KIND},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "annotations": {"type": "object"},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["addresses", "redirect"],
            "properties": {
                "mode": {"enum": ["Redirect"]},
                "addresses": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["ip"],
                        "properties": {"ip": _ADDRESS, "gateway": _ADDRESS},
                    },
                },
                "networkInterface": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["macvlan"],
                    "properties": {
                        "macvlan": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "mode": {"enum": ["Bridge", "Private", "VEPA", "Passthru"]},
                                "master": {"type": "string", "minLength": 1},
                            },
                        }
                    },
                },
                "redirect": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "fallbackIP": _ADDRESS,
                        "redirectRules": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["destinationIP", "port", "protocol"],
                                "properties": {
                                    "destinationIP": _ADDRESS,
                                    "port": _PORT,
                                    "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
                                    "targetPort": _PORT,
                                },
                            },
                        },
                    },
                },
            },
        },
        "status": {"type": "object"},
    },
}


def json_path(path: Sequence[str | int]) -> str:
    """``['spec', 'addresses', 0, 'ip']`` -> ``spec.addresses[0].ip``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def schema_error(
    schema: Mapping[str, Any], document: object, name: Callable[[str], str], hint: str
) -> config.ConfigError | None:
    """Validate ``document`` against a JSON schema: the most relevant error, naming its field."""
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is None:
        return None
    path = json_path(list(error.absolute_path))
    return config.ConfigError(name(path), f"{error.message}; {hint}")


def _cr_addresses(
    fields: _Fields, addresses: Sequence[Mapping[str, str]]
) -> tuple[tuple[config.Source, ...], tuple[config.IPAddress, ...]]:
    """Sources and gateways of ``spec.addresses``; several of one family form a pool."""
    gateways: dict[int, config.IPAddress] = {}
    texts: list[str] = []
    for index, address in enumerate(addresses):
        field = f"spec.addresses[{index}]"
        (source,) = config.parse_sources(address["ip"], fields.name(f"{field}.ip"))
        if "gateway" not in address:
            raise fields.error(
                f"{field}.gateway",
                "is not set; egress-router does not guess the gateway: add the physical "
                "network's gateway",
            )
        gateway = config.parse_address(
            address["gateway"], fields.name(f"{field}.gateway"), what="gateway address"
        )
        if gateway.version != source.family:
            raise fields.error(
                f"{field}.gateway",
                f"is IPv{gateway.version} but ip is IPv{source.family}; expected the same family",
                address["gateway"],
            )
        first = gateways.setdefault(source.family, gateway)
        if first != gateway:
            raise fields.error(
                f"{field}.gateway",
                f"differs from the gateway of the first IPv{source.family} address ({first}); "
                f"the IPv{source.family} addresses form one source-address pool behind one "
                "gateway",
                address["gateway"],
            )
        texts.append(address["ip"])
    # The pool rules (one subnet, no repeats, bounded) are EGRESS_SOURCE's.
    sources = config.parse_sources(",".join(texts), fields.name("spec.addresses"))
    return sources, tuple(gateways[f] for f in sorted(gateways))


def _cr_lines(fields: _Fields, redirect: Mapping[str, Any]) -> _Lines:
    texts: list[str] = []
    paths: list[str] = []
    for index, rule in enumerate(redirect.get("redirectRules") or []):
        path = f"spec.redirect.redirectRules[{index}]"
        target = rule.get("targetPort", rule["port"])
        remote = f" {target}" if target != rule["port"] else ""
        texts.append(
            f"{rule['port']} {rule['protocol'].lower()} {rule['destinationIP']}{remote}"
            f"  # {path}"
        )
        paths.append(path)
    if "fallbackIP" in redirect:
        texts.append(f"{redirect['fallbackIP']}  # spec.redirect.fallbackIP")
        paths.append("spec.redirect.fallbackIP")
    if not texts:
        raise fields.error(
            "spec.redirect", "has neither redirectRules nor fallbackIP; nothing to redirect"
        )
    return _Lines(
        fields, "spec.redirect", "".join(f"{t}\n" for t in texts), tuple(paths),
        {config.ENV_HTTP_PORT: "--http-port"},
    )


# The CRD has no field for a pair, and a spec field of our own would be pruned by the
# API server (or refused by the schema above): an annotation survives both.
CR_ANNOTATION_PREFIX = "egress-router/"
CR_HA_ANNOTATION = f"{CR_ANNOTATION_PREFIX}ha-vrid"
_CR_ANNOTATIONS = (CR_HA_ANNOTATION,)


def _cr_ha(
    fields: _Fields, metadata: Mapping[str, Any], sources: tuple[config.Source, ...]
) -> int | None:
    """``egress-router/ha-vrid: "N"`` on the CR: an active/standby pair with VRID N."""
    annotations = metadata.get("annotations") or {}
    for key in annotations:
        if str(key).startswith(CR_ANNOTATION_PREFIX) and key not in _CR_ANNOTATIONS:
            close = difflib.get_close_matches(str(key), _CR_ANNOTATIONS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise fields.error(
                f"metadata.annotations.{key}",
                f"unknown annotation; {hint}expected {', '.join(_CR_ANNOTATIONS)}",
            )
    if CR_HA_ANNOTATION not in annotations:
        return None
    field = f"metadata.annotations.{CR_HA_ANNOTATION}"
    value = annotations[CR_HA_ANNOTATION]
    if not isinstance(value, str):
        raise fields.error(field, f"must be a string, not {_type(value)} (quote it)", value)
    vrid = ha.parse_vrid(value, fields.name(field))
    if not any(s.family == 4 for s in sources):
        raise fields.error(
            "spec.addresses",
            f"has no IPv4 address; {CR_HA_ANNOTATION} elects over IPv4 (VRRPv3): add the "
            "IPv4 reserved address or remove the annotation",
        )
    return vrid


def load_egressrouter_text(
    text: str, source: str, overrides: Overrides | None = None
) -> RouterSpec:
    """Parse an OpenShift ``EgressRouter`` (redirect mode) into our equivalent.

    Every field is honoured: the router is attached through our CNI plugin as
    the cluster network operator does it, but unlike upstream the macvlan mode
    and master and the fallback address are applied. The annotation
    ``egress-router/ha-vrid: "N"`` (the CRD has no field for it) makes it an
    active/standby pair with VRID N, as ``ha: true`` + ``vrid: N`` does.
    """
    overrides = overrides or Overrides()
    fields = _Fields(source)
    doc = _load_yaml(text, source)
    error = schema_error(
        EGRESSROUTER_SCHEMA, doc, fields.name,
        f"expected an {EGRESSROUTER_KIND} of {EGRESSROUTER_API_VERSION} in redirect mode",
    )
    if error is not None:
        raise error
    metadata, spec = doc["metadata"], doc["spec"]
    sources, gateways = _cr_addresses(fields, spec["addresses"])
    lines = _cr_lines(fields, spec["redirect"])
    destinations = lines.parse()
    _check_families(
        lines, sources, gateways, destinations,
        source_field="spec.addresses", gateway_field="spec.addresses",
    )
    http_port = (
        config.DEFAULT_HTTP_PORT if overrides.http_port is None else overrides.http_port
    )
    extra = _extra_ports(
        lines, destinations, [("--extra-port", v) for v in overrides.extra_ports], http_port
    )
    macvlan = (spec.get("networkInterface") or {}).get("macvlan") or {}
    master = macvlan.get("master")
    result = RouterSpec(
        name=_name(fields, metadata["name"], "metadata.name"),
        namespace=_namespace(fields, metadata.get("namespace"), "metadata.namespace"),
        sources=sources,
        gateways=gateways,
        destinations=destinations,
        destination_text=lines.text,
        attachment=Attachment.CNI,
        extra_ports=extra,
        master=None if master is None else fields.ifname(
            master, "spec.networkInterface.macvlan.master"
        ),
        # The CRD's default, which the API server fills in when the field is omitted.
        macvlan_mode=str(macvlan.get("mode", "Bridge")).lower(),
        image=_image(fields, overrides.image, "--image") if overrides.image else DEFAULT_IMAGE,
        http_port=http_port,
        vrid=_cr_ha(fields, metadata, sources),
    )
    _finish(fields, result, interface_field="spec.networkInterface", http_field="--http-port")
    return result
