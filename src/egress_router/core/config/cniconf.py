"""The CNI network configuration of our plugin, described once: its vocabulary and its schema.

The plugin (`egress_router.cni.netconf`) parses a configuration by hand, for messages that
name the field; the offline renderer (`egress_router.k8s.render`) checks the configuration it
writes into a NetworkAttachmentDefinition against `SCHEMA`. Both take the versions, the
macvlan modes, the log levels, the bounds and the field names from here, so the two cannot
drift apart (a unit test also runs every configuration the renderer writes through the
parser). Pure data: the k8s wing and the CNI plugin may both import it.
"""

from __future__ import annotations

from typing import Any

from egress_router.core.config.settings import HAMode
from egress_router.core.config.text import IFNAME_MAX_BYTES
from egress_router.core.config.variables import MAX_POOL

CNI_TYPE = "egress-router"  # the plugin's file name in the node's CNI bin directory
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]
MACVLAN_MODES = ("bridge", "private", "vepa", "passthru")
DEFAULT_MACVLAN_MODE = "bridge"  # upstream's default
MIN_MTU = 68
MAX_MTU = 65535
# upstream's names; "verbose" is upstream's word for info (cni/netconf maps them to levels)
LOG_LEVEL_NAMES = ("debug", "verbose", "info", "warning", "error", "panic")
DEFAULT_LOG_LEVEL = "info"
HA_FIELDS = ("mode", "vrid")
MAX_ADDRESSES = 2 * MAX_POOL  # ip.addresses: a pool of up to MAX_POOL a family
MAX_GATEWAYS = 2  # one a family
# "mode" (ours): a proxy pod's network set-up, as its init container's EGRESS_ROUTER_MODE.
PROXY_MODES = ("http-proxy", "dns-proxy")

_STRINGS: dict[str, Any] = {"type": "array", "items": {"type": "string"}, "minItems": 1}
_IFNAME: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": IFNAME_MAX_BYTES}

# The configuration the plugin accepts, in the form the renderer writes it (fields the
# renderer never writes, such as log_file or announceCount, are not in it).
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["cniVersion", "name", "type", "ip", "interfaceType", "interfaceArgs"],
    # The redirect (no mode) needs its rules; a proxy pod's set-up (a mode) takes none.
    "if": {"not": {"required": ["mode"]}},
    "then": {"properties": {"ip": {"required": ["destinations"]}}},
    "else": {"properties": {"ip": {"not": {"required": ["destinations"]}}}},
    "properties": {
        "cniVersion": {"enum": list(SUPPORTED_VERSIONS)},
        "name": {"type": "string", "minLength": 1},
        "type": {"const": CNI_TYPE},
        "ip": {
            "type": "object",
            "additionalProperties": False,
            "required": ["addresses", "gateway"],  # and destinations, unless "mode" is set
            "properties": {
                "addresses": {**_STRINGS, "maxItems": MAX_ADDRESSES},
                "gateway": {
                    "anyOf": [{"type": "string"}, {**_STRINGS, "maxItems": MAX_GATEWAYS}]
                },
                "destinations": _STRINGS,
            },
        },
        "interfaceType": {"const": "macvlan"},
        "interfaceArgs": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "master": _IFNAME,
                "mode": {"enum": list(MACVLAN_MODES)},
                "mtu": {"type": "string", "pattern": "^[0-9]+$"},
            },
        },
        "mode": {"enum": list(PROXY_MODES)},
        "podInterface": _IFNAME,
        "httpPort": {"type": "integer", "minimum": 0, "maximum": 65535},
        "log_level": {"enum": list(LOG_LEVEL_NAMES)},
        "ha": {
            "type": "object",
            "additionalProperties": False,
            "required": list(HA_FIELDS),
            "properties": {
                "mode": {"const": HAMode.VRRP.value},
                "vrid": {"type": "integer", "minimum": 1, "maximum": 255},
            },
        },
    },
}
