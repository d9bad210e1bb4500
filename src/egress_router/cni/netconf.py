"""Read what the runtime hands the plugin: ``CNI_*`` variables and the JSON network configuration.

Everything here is pure and runs before any side effect, so a bad
NetworkAttachmentDefinition is refused with one message naming the field
(``ip.destinations line 2 ...``) and nothing on the node changes. The
configuration is upstream's (openshift/egress-router-cni), so existing
NetworkAttachmentDefinitions keep working::

    {"cniVersion": "1.0.0", "name": "egress", "type": "egress-router",
     "ip": {"addresses": ["192.168.12.99/24"], "gateway": "192.168.12.1",
            "destinations": ["80 tcp 203.0.113.25", "8080 tcp 203.0.113.26 80", "203.0.113.27"]},
     "interfaceType": "macvlan",
     "interfaceArgs": {"master": "ens3", "mode": "private", "mtu": "1500"}}

plus optional ``podInterface``, ``httpPort`` (the ``wait`` container's
port, accepted on the pod interface; default 9090, 0 for none),
``log_level``, ``log_file``, ``announceCount``, ``announceInterval`` and
``ha`` (``{"mode": "vrrp", "vrid": 51}``: one replica of an active/standby
pair; ADD then sets up everything but the reserved address, which the
``wait`` container's keepalived adds on the active replica only) and ``mode``
(``"http-proxy"`` or ``"dns-proxy"``: upstream's proxy pods, whose ADD sets up the network
only, as their init container would, and takes no ``ip.destinations``). Addresses, gateways and
destinations go through the same parsers as the ``EGRESS_*`` variables (one
grammar, one set of messages); a list entry is a "line" in messages.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from egress_router.cni import errors
from egress_router.cni.errors import CniError
from egress_router.core import config, ha
from egress_router.core.config import cniconf
from egress_router.kernel import files

SUPPORTED_VERSIONS = cniconf.SUPPORTED_VERSIONS
LATEST_VERSION = cniconf.LATEST_VERSION

ADD = "ADD"
DEL = "DEL"
CHECK = "CHECK"
VERSION = "VERSION"
STATUS = "STATUS"
GC = "GC"
COMMANDS = (ADD, DEL, CHECK, VERSION, STATUS, GC)
# The first specification version that knows each command.
SINCE = {ADD: "0.1.0", DEL: "0.1.0", VERSION: "0.1.0", CHECK: "0.4.0", STATUS: "1.1.0", GC: "1.1.0"}

MACVLAN_MODES = cniconf.MACVLAN_MODES
DEFAULT_MODE = cniconf.DEFAULT_MACVLAN_MODE
MIN_MTU = cniconf.MIN_MTU
MAX_MTU = cniconf.MAX_MTU

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "verbose": logging.INFO,  # upstream's name for it
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "panic": logging.CRITICAL,
}
DEFAULT_LOG_LEVEL = cniconf.DEFAULT_LOG_LEVEL

VALID_ATTACHMENTS = ("cni.dev/valid-attachments", "cni.dev/attachments")
UNSUPPORTED_FORMS = {
    "podIP": "per-pod addresses are not supported; give one NetworkAttachmentDefinition "
    "per router with \"ip\"",
    "ipConfig": "addresses from a ConfigMap are not supported; put them in \"ip\"",
}

_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_NETWORK_NAME = re.compile(r"[A-Za-z0-9_.\-]+")  # the specification's network name


@dataclass(frozen=True)
class Environment:
    """The ``CNI_*`` variables of one invocation."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: str = ""
    path: tuple[str, ...] = ()


@dataclass(frozen=True)
class Attachment:
    """One still-valid attachment named in a GC request."""

    container_id: str
    ifname: str


@dataclass(frozen=True)
class Macvlan:
    """``interfaceArgs``: ``master`` None means the node's default-route interface."""

    master: str | None = None
    mode: str = DEFAULT_MODE
    mtu: int | None = None


@dataclass(frozen=True)
class NetConf:
    """A validated network configuration."""

    cni_version: str
    name: str
    sources: tuple[config.Source, ...]
    gateways: tuple[config.IPAddress, ...]
    destinations: config.Destinations
    macvlan: Macvlan = Macvlan()
    pod_interface: str = config.DEFAULT_POD_INTERFACE
    log_level: int = logging.INFO
    log_file: str | None = None
    announce_count: int = config.DEFAULT_ANNOUNCE_COUNT
    announce_interval: float = config.DEFAULT_ANNOUNCE_INTERVAL
    http_port: int = config.DEFAULT_HTTP_PORT
    dns: dict[str, Any] | None = None
    ha: ha.Settings | None = None  # "ha": an active/standby pair; the address is keepalived's
    prev_result: dict[str, Any] | None = None
    # "mode": "http-proxy"/"dns-proxy" (ours): set up the network for a proxy pod, no redirect.
    mode: config.Mode = config.Mode.INIT
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def router_config(self, ifname: str) -> config.Config:
        """The engine's configuration for the macvlan named ``ifname`` in the pod."""
        return config.Config(
            self.sources,
            self.gateways,
            self.destinations,
            mode=self.mode,
            backend=config.Backend.NFTABLES,
            pod_interface=self.pod_interface,
            egress_interface=ifname,
            debug=self.log_level <= logging.DEBUG,
            announce_count=self.announce_count,
            announce_interval=self.announce_interval,
            http_port=self.http_port,
            ha=self.ha,
        )


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def supports(version: str, command: str) -> bool:
    """Whether configuration ``version`` allows ``command`` (CHECK needs 0.4.0, STATUS/GC 1.1.0)."""
    return version_tuple(version) >= version_tuple(SINCE[command])


def check_ifname(name: str, variable: str) -> str:
    """The kernel's rules for an interface name, narrowed to what the ruleset carries verbatim.

    The same rules as ``EGRESS_INTERFACE`` (`config.interface_name_problem`).
    """
    problem = config.interface_name_problem(name)
    if problem is not None:
        raise CniError(
            errors.INVALID_ENVIRONMENT if variable.startswith("CNI_") else errors.INVALID_CONFIG,
            f"cannot use interface name {name!r} from {variable}: {problem}",
        )
    return name


def parse_environment(env: Mapping[str, str]) -> Environment:
    """The ``CNI_*`` variables, checked for what ``CNI_COMMAND`` needs (code 4 otherwise)."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        shown = repr(command) if command else "not set"
        raise CniError(
            errors.INVALID_ENVIRONMENT,
            f"cannot run the egress-router CNI plugin: CNI_COMMAND is {shown}; expected one of "
            f"{', '.join(COMMANDS)} (a container runtime sets it; see `python -m "
            "egress_router.cni.runtime --help` to run the plugin by hand)",
        )
    needed = {
        ADD: ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
        CHECK: ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
        DEL: ("CNI_CONTAINERID", "CNI_IFNAME"),
    }.get(command, ())
    missing = [name for name in needed if not env.get(name)]
    if missing:
        raise CniError(
            errors.INVALID_ENVIRONMENT,
            f"cannot run CNI {command}: {', '.join(missing)} not set; the runtime must set "
            f"{', '.join(needed)}",
        )
    container_id = env.get("CNI_CONTAINERID", "")
    if container_id and not _CONTAINER_ID.fullmatch(container_id):
        raise CniError(
            errors.INVALID_ENVIRONMENT,
            f"cannot run CNI {command}: CNI_CONTAINERID {container_id!r} is not a valid "
            "container ID; expected letters, digits, '_', '.' and '-', starting with a letter "
            "or digit",
        )
    ifname = env.get("CNI_IFNAME", "")
    if ifname:
        check_ifname(ifname, "CNI_IFNAME")
    path = tuple(p for p in env.get("CNI_PATH", "").split(":") if p)
    return Environment(
        command,
        container_id=container_id,
        netns=env.get("CNI_NETNS", ""),
        ifname=ifname,
        args=env.get("CNI_ARGS", ""),
        path=path,
    )


def decode(data: bytes | str) -> dict[str, Any]:
    """The JSON object on stdin (code 6 when it is not one)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        obj = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        where = ""
        if isinstance(err, json.JSONDecodeError):
            where = f" at line {err.lineno} column {err.colno}"
        raise CniError(
            errors.DECODE_FAILURE,
            f"cannot decode the network configuration on stdin{where}: "
            f"{getattr(err, 'msg', None) or err}; expected one JSON object",
        ) from None
    if not isinstance(obj, dict):
        raise CniError(
            errors.DECODE_FAILURE,
            f"cannot decode the network configuration on stdin: got a JSON "
            f"{type(obj).__name__}, expected an object",
        )
    return obj


def cni_version(obj: Mapping[str, Any]) -> str:
    """``cniVersion``, which must be one we speak (code 1) and present (code 7)."""
    version = obj.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(
            errors.INVALID_CONFIG,
            "cannot use the network configuration: cniVersion is missing; set it, e.g. "
            '"cniVersion": "1.0.0"',
        )
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            errors.INCOMPATIBLE_VERSION,
            f"cannot use cniVersion {version!r}: this plugin supports "
            f"{', '.join(SUPPORTED_VERSIONS)}",
        )
    return version


def logging_settings(obj: Mapping[str, Any]) -> tuple[int, str | None]:
    """``log_level`` and ``log_file``, read first so that even a failure is logged there."""
    level_text = obj.get("log_level", DEFAULT_LOG_LEVEL)
    if not isinstance(level_text, str) or level_text.strip().lower() not in LOG_LEVELS:
        raise CniError(
            errors.INVALID_CONFIG,
            f"cannot parse log_level {level_text!r}: expected one of {', '.join(LOG_LEVELS)}",
        )
    log_file = obj.get("log_file")
    if log_file is not None and (not isinstance(log_file, str) or not log_file.strip()):
        raise CniError(
            errors.INVALID_CONFIG,
            f"cannot parse log_file {log_file!r}: expected the path of a file to append to",
        )
    return LOG_LEVELS[level_text.strip().lower()], log_file


def _invalid(err: config.ConfigError) -> CniError:
    return CniError(errors.INVALID_CONFIG, str(err))


def _object(obj: Mapping[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = obj.get(key)
    name = f"{where}{key}"
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise config.ConfigError(name, f"expected a JSON object, got {json.dumps(value)}")
    return value


def _strings(value: Any, variable: str, *, allow_string: bool) -> list[str]:
    if isinstance(value, str) and allow_string:
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        kind = "a string or a list of strings" if allow_string else "a list of strings"
        raise config.ConfigError(variable, f"expected {kind}, got {json.dumps(value)}")
    return list(value)


def _one_line(entries: list[str], variable: str, separator: str = "") -> None:
    for number, entry in enumerate(entries, start=1):
        if "\n" in entry or "\r" in entry or (separator and separator in entry):
            raise config.ConfigError(
                variable,
                "one entry holds several values; put each in its own list entry",
                line=number,
                text=entry,
            )


def _mtu(value: Any) -> int | None:
    if value is None or value == "":
        return None
    number = None
    if isinstance(value, str):
        number = config.ascii_number(config.strip_space(value))
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    if number is None or not MIN_MTU <= number <= MAX_MTU:
        raise config.ConfigError(
            "interfaceArgs.mtu",
            f"invalid MTU {value!r}; expected a number from {MIN_MTU} to {MAX_MTU} "
            "(or leave it out to use the master's MTU)",
        )
    return number


def _macvlan(obj: Mapping[str, Any]) -> Macvlan:
    kind = obj.get("interfaceType", "macvlan")
    if kind != "macvlan":
        raise CniError(
            errors.UNSUPPORTED_FIELD,
            f"cannot use interfaceType {json.dumps(kind)}: only \"macvlan\" is supported "
            "(leave interfaceType out or set it to \"macvlan\")",
        )
    args = _object(obj, "interfaceArgs")
    master = args.get("master")
    if master is not None and master != "":
        if not isinstance(master, str):
            raise config.ConfigError(
                "interfaceArgs.master", f"expected an interface name, got {json.dumps(master)}"
            )
        check_ifname(master, "interfaceArgs.master")
    mode = args.get("mode") or DEFAULT_MODE
    if not isinstance(mode, str) or mode.lower() not in MACVLAN_MODES:
        raise config.ConfigError(
            "interfaceArgs.mode",
            f"unknown macvlan mode {mode!r}; expected one of {', '.join(MACVLAN_MODES)}",
        )
    return Macvlan(master=master or None, mode=mode.lower(), mtu=_mtu(args.get("mtu")))


def _count(obj: Mapping[str, Any], key: str, default: int) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise config.ConfigError(key, f"invalid value {value!r}; expected a whole number 0 to 100")
    return value


def _interval(obj: Mapping[str, Any], key: str, default: float) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 60:
        raise config.ConfigError(key, f"invalid value {value!r}; expected seconds from 0 to 60")
    return float(value)


PROXY_MODES = tuple(config.Mode(m) for m in cniconf.PROXY_MODES)


def _router_mode(obj: Mapping[str, Any]) -> config.Mode:
    """``"mode"`` (ours, optional): a proxy pod's network set-up instead of the redirect."""
    if "mode" not in obj:
        return config.Mode.INIT
    value = obj["mode"]
    for mode in PROXY_MODES:
        if value == mode.value:
            return mode
    raise config.ConfigError(
        "mode", f"unknown mode {json.dumps(value)[:100]}; expected "
        f"{' or '.join(json.dumps(m.value) for m in PROXY_MODES)} (a proxy pod), or no mode "
        "(the redirect)",
    )


HA_FIELDS = cniconf.HA_FIELDS


def _ha(obj: Mapping[str, Any], sources: tuple[config.Source, ...]) -> ha.Settings | None:
    """``"ha": {"mode": "vrrp", "vrid": 1..255}``, as ``EGRESS_ROUTER_HA``/``EGRESS_HA_VRID``."""
    if "ha" not in obj:
        return None
    raw = _object(obj, "ha")
    unknown = sorted(set(raw) - set(HA_FIELDS))
    if unknown:
        raise config.ConfigError(
            f"ha.{unknown[0]}", f"is not a field of ha; expected {', '.join(HA_FIELDS)}"
        )
    mode = raw.get("mode")
    if not isinstance(mode, str) or ha.parse_mode(mode, "ha.mode") is not ha.HAMode.VRRP:
        raise config.ConfigError(
            "ha.mode", f"invalid value {json.dumps(mode)}; expected \"vrrp\" (leave ha out "
            "for one replica)"
        )
    vrid = raw.get("vrid")
    if isinstance(vrid, bool) or not isinstance(vrid, int):
        raise config.ConfigError(
            "ha.vrid", f"invalid value {json.dumps(vrid)}; expected a VRRP router id from 1 "
            "to 255 (a number), the same on both replicas and unused by any other VRRP pair "
            "on the egress network"
        )
    settings = ha.Settings(vrid=ha.parse_vrid(str(vrid), "ha.vrid"))
    probe = config.Config(sources, (), config.Destinations((), ()))
    ha.check_sources(probe, "ip.addresses")
    return settings


def parse(obj: Mapping[str, Any], ifname: str = "") -> NetConf:
    """Validate a decoded network configuration; ``ifname`` is CNI_IFNAME (the macvlan's name).

    Raises `CniError`: code 1 for an unknown cniVersion, 2 for a form this
    plugin does not implement, 7 for everything else, naming the field.
    """
    version = cni_version(obj)
    log_level, log_file = logging_settings(obj)
    for key, why in UNSUPPORTED_FORMS.items():
        if key in obj:
            raise CniError(
                errors.UNSUPPORTED_FIELD,
                f"cannot use {key} {json.dumps(obj[key])[:200]}: {why}",
            )
    try:
        name = obj.get("name")
        if not isinstance(name, str) or not name:
            raise config.ConfigError("name", "is missing; set the network's name")
        if not _NETWORK_NAME.fullmatch(name):
            raise config.ConfigError(
                "name",
                f"invalid network name {name!r}; the CNI specification allows only ASCII "
                "letters, digits, '_', '-' and '.'",
            )
        macvlan = _macvlan(obj)
        ip = obj.get("ip")
        if not isinstance(ip, dict):
            raise config.ConfigError(
                "ip",
                "is missing or not an object; expected {\"addresses\": [...], \"gateway\": "
                "\"...\", \"destinations\": [...]}",
            )
        if not ip.get("addresses"):
            raise config.ConfigError(
                "ip.addresses", "is missing; expected the reserved address, e.g. "
                "[\"192.168.12.99/24\"]"
            )
        addresses = _strings(ip["addresses"], "ip.addresses", allow_string=False)
        _one_line(addresses, "ip.addresses", ",")
        sources = config.parse_sources(",".join(addresses), "ip.addresses")
        if not ip.get("gateway"):
            raise config.ConfigError(
                "ip.gateway", "is missing; expected the physical network's gateway, e.g. "
                "\"192.168.12.1\" (dual stack: \"192.168.12.1,2001:db8:12::1\")"
            )
        gateways = config.parse_gateways(
            ",".join(_strings(ip["gateway"], "ip.gateway", allow_string=True)), "ip.gateway"
        )
        mode = _router_mode(obj)
        if not mode.redirects:
            if ip.get("destinations"):
                raise config.ConfigError(
                    "ip.destinations",
                    f"is set, but mode {mode.value} redirects nothing (the pod's proxy "
                    "container decides where traffic goes); remove it, or remove mode",
                )
            ip = {**ip, "destinations": []}
        elif not ip.get("destinations"):
            raise config.ConfigError(
                "ip.destinations",
                f"is missing; expected a list of rules: {config.RULE_SYNTAX}",
            )
        entries = _strings(ip["destinations"], "ip.destinations", allow_string=False)
        _one_line(entries, "ip.destinations")
        destinations = config.parse_destinations(
            "\n".join(entries), "ip.destinations", host_prefix=True
        ) if entries else config.Destinations(rules=())
        if destinations.hosts():
            raise CniError(
                errors.UNSUPPORTED_FIELD,
                f"cannot use host name {destinations.hosts()[0]!r} in ip.destinations: the CNI "
                "plugin configures the router once, at ADD, so it takes IP addresses only",
            )
        http_port = config.parse_http_port(
            str(obj.get("httpPort", config.DEFAULT_HTTP_PORT)), "httpPort"
        )
        config.check_http_port(destinations, http_port, "ip.destinations", "\n".join(entries))
        config.check_families(
            sources,
            gateways,
            destinations,
            destination_variable="ip.destinations",
            source_variable="ip.addresses",
            gateway_variable="ip.gateway",
        )
        config.check_destinations(
            sources, gateways, destinations, "ip.destinations", "\n".join(entries)
        )
        pod_interface = obj.get("podInterface", config.DEFAULT_POD_INTERFACE)
        if not isinstance(pod_interface, str):
            raise config.ConfigError("podInterface", f"expected an interface name, got "
                                     f"{json.dumps(pod_interface)}")
        check_ifname(pod_interface, "podInterface")
        if ifname and pod_interface == ifname:
            raise config.ConfigError(
                "podInterface",
                f"is {pod_interface!r}, the same as CNI_IFNAME; the router needs its pod "
                "interface and the macvlan the plugin creates",
            )
        announce_count = _count(obj, "announceCount", config.DEFAULT_ANNOUNCE_COUNT)
        announce_interval = _interval(
            obj, "announceInterval", config.DEFAULT_ANNOUNCE_INTERVAL
        )
        ha_settings = _ha(obj, sources)
        dns = _object(obj, "dns") or None
        prev_result = _object(obj, "prevResult") or None
    except config.ConfigError as err:
        raise _invalid(err) from None
    return NetConf(
        cni_version=version,
        name=name,
        sources=sources,
        gateways=gateways,
        destinations=destinations,
        macvlan=macvlan,
        pod_interface=pod_interface,
        log_level=log_level,
        log_file=log_file,
        announce_count=announce_count,
        announce_interval=announce_interval,
        http_port=http_port,
        dns=dns,
        ha=ha_settings,
        prev_result=prev_result,
        mode=mode,
        raw=dict(obj),
    )


def valid_attachments(obj: Mapping[str, Any]) -> tuple[Attachment, ...]:
    """The GC request's still-valid attachments (libcni sends the list under both keys).

    A runtime with no valid attachments leaves the key out (libcni omits an
    empty list, and upstream's ``cnitool gc`` sends none): missing means
    empty, nothing is still in use.
    """
    key = next((k for k in VALID_ATTACHMENTS if k in obj), None)
    if key is None or obj[key] is None:
        return ()
    items = obj[key]
    if not isinstance(items, list):
        raise CniError(errors.INVALID_CONFIG, f"cannot parse {key}: expected a list")
    found: list[Attachment] = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str):
            raise CniError(
                errors.INVALID_CONFIG,
                f"cannot parse {key} entry {number}: expected "
                '{"containerID": "...", "ifname": "..."}',
            )
        ifname = item.get("ifname", "")
        found.append(Attachment(item["containerID"], ifname if isinstance(ifname, str) else ""))
    return tuple(found)


# The variables the CNI configuration answers; `wait` must not get them twice.
_REPEATED = (
    config.ENV_SOURCE,
    config.ENV_GATEWAY,
    config.ENV_DESTINATION,
    config.ENV_DESTINATION_FILE,
    config.ENV_POD_INTERFACE,
    config.ENV_HTTP_PORT,
    config.ENV_ANNOUNCE_COUNT,
    config.ENV_ANNOUNCE_INTERVAL,
    config.ENV_BACKEND,
    ha.ENV_HA,
    ha.ENV_VRID,
)


def router_environment(
    env: Mapping[str, str], read_text: Callable[[str], str] | None = None
) -> dict[str, str]:
    """``env`` completed from the CNI configuration named by ``EGRESS_ROUTER_CNI_CONFIG``.

    In CNI mode the plugin configured the router from the
    NetworkAttachmentDefinition's config; the ``wait`` container reads the
    same JSON (mounted from a ConfigMap), validated by the same `parse`, so
    the two cannot disagree. The result is the ``EGRESS_*`` environment
    `config.load_config` reads (one grammar); ``env`` is returned unchanged
    when the variable is not set. Raises `config.ConfigError` naming the
    variable (and the field) when the file is unreadable or invalid, or when
    ``env`` also sets a variable the configuration answers.
    """
    path = env.get(config.ENV_CNI_CONFIG, "").strip()
    if not path:
        return dict(env)
    twice = [name for name in _REPEATED if name in env]
    if twice:
        raise config.ConfigError(
            config.ENV_CNI_CONFIG,
            f"is set together with {', '.join(twice)}; in CNI mode the network configuration "
            f"is the one source of truth: remove {', '.join(twice)}",
        )
    if read_text is None:
        # The same bounded reader as the destination file: a FIFO or a device never hangs.
        text = files.read_bounded_file(path, config.ENV_CNI_CONFIG, "the CNI configuration")
    else:
        text = read_text(path)
    ifname = env.get(config.ENV_INTERFACE, config.DEFAULT_EGRESS_INTERFACE)
    try:
        conf = parse(decode(text), ifname)
    except CniError as err:
        raise config.ConfigError(config.ENV_CNI_CONFIG, f"{path}: {err.msg}") from None
    completed = dict(env)
    completed.update(
        {
            config.ENV_SOURCE: ",".join(conf.raw["ip"]["addresses"]),
            config.ENV_GATEWAY: ",".join(str(g) for g in conf.gateways),
            config.ENV_DESTINATION: "\n".join(conf.destinations.lines()),
            config.ENV_POD_INTERFACE: conf.pod_interface,
            config.ENV_HTTP_PORT: str(conf.http_port),
            config.ENV_ANNOUNCE_COUNT: str(conf.announce_count),
            config.ENV_ANNOUNCE_INTERVAL: repr(conf.announce_interval),
            config.ENV_BACKEND: config.Backend.NFTABLES.value,  # what the plugin programs
        }
    )
    if not conf.mode.redirects:  # a proxy pod: the network only (status reads it so)
        del completed[config.ENV_DESTINATION]
        completed[config.ENV_MODE] = conf.mode.value
    if conf.ha is not None:
        completed[ha.ENV_HA] = ha.HAMode.VRRP.value
        completed[ha.ENV_VRID] = str(conf.ha.vrid)
    if conf.log_level <= logging.DEBUG and config.ENV_DEBUG not in env:
        completed[config.ENV_DEBUG] = "true"
    return completed
