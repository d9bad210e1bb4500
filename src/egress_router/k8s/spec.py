"""What one egress router is, whichever input described it: `RouterSpec` and its constants.

The config file and the EgressRouter resource both become a `RouterSpec`; `egress_router.k8s.render`
turns it into objects. Pure values, no parsing.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from egress_router import __version__
from egress_router.core import config, ha
from egress_router.core.config import cniconf

DEFAULT_IMAGE = f"egress-router:{__version__}"
DEFAULT_CNI_INTERFACE = "net1"
DEFAULT_MACVLAN_MODE = cniconf.DEFAULT_MACVLAN_MODE  # upstream's (the CRD's and the plugin's)

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
    proxy: config.Mode | None = None  # mode http-proxy/dns-proxy (None: redirect)
    proxy_ports: tuple[int, ...] = ()  # the proxy's TCP ports (the Service's ports)

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
        if self.proxy is not None:
            # The init container of a proxy pod sets up the network only (upstream's too).
            env = [e for e in env if e[0] != config.ENV_DESTINATION_FILE]
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
