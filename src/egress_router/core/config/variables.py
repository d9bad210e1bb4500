"""The names of every variable the router reads, and their defaults.

One list, so that a new variable is added in one place and every parser, renderer and
message says the same name. No logic lives here.
"""

from __future__ import annotations

ENV_SOURCE = "EGRESS_SOURCE"
ENV_GATEWAY = "EGRESS_GATEWAY"
ENV_DESTINATION = "EGRESS_DESTINATION"
ENV_DESTINATION_FILE = "EGRESS_DESTINATION_FILE"
ENV_MODE = "EGRESS_ROUTER_MODE"
ENV_BACKEND = "EGRESS_ROUTER_BACKEND"
ENV_POD_INTERFACE = "EGRESS_POD_INTERFACE"
ENV_INTERFACE = "EGRESS_INTERFACE"
ENV_DEBUG = "EGRESS_ROUTER_DEBUG"
ENV_ANNOUNCE_COUNT = "EGRESS_ANNOUNCE_COUNT"
ENV_ANNOUNCE_INTERVAL = "EGRESS_ANNOUNCE_INTERVAL"
ENV_HTTP_PORT = "EGRESS_ROUTER_HTTP_PORT"
ENV_RECONCILE = "EGRESS_ROUTER_RECONCILE_SECONDS"
ENV_WATCH = "EGRESS_ROUTER_WATCH_SECONDS"
ENV_DNS_MIN_TTL = "EGRESS_ROUTER_DNS_MIN_TTL"
ENV_DNS_MAX_TTL = "EGRESS_ROUTER_DNS_MAX_TTL"
ENV_SAMPLE = "EGRESS_ROUTER_CONNTRACK_SAMPLE_SECONDS"
ENV_METRICS_RULES = "EGRESS_ROUTER_METRICS_RULES"
ENV_HA = "EGRESS_ROUTER_HA"  # active/standby: "vrrp" or off
ENV_VRID = "EGRESS_HA_VRID"
# CNI mode: the plugin's network configuration (JSON), read by `wait` instead of the variables
# above that it would repeat (egress_router.cni.netconf.router_environment).
ENV_CNI_CONFIG = "EGRESS_ROUTER_CNI_CONFIG"

DEFAULT_POD_INTERFACE = "eth0"
DEFAULT_EGRESS_INTERFACE = "macvlan0"
DEFAULT_ANNOUNCE_COUNT = 3
DEFAULT_ANNOUNCE_INTERVAL = 1.0
DEFAULT_HTTP_PORT = 9090
DEFAULT_RECONCILE = 10.0
DEFAULT_WATCH = 1.0
DEFAULT_DNS_MIN_TTL = 5.0
DEFAULT_DNS_MAX_TTL = 300.0
DEFAULT_SAMPLE = 30.0  # one conntrack pass (live connections, NAT port space) per this
DEFAULT_METRICS_RULES = 1000
# The destination file's size limit: 100,000 rules of up to 160 bytes each (a rule
# with an IPv6 address and a comment is about 70).
DESTINATION_FILE_LIMIT = 16 * 1024 * 1024

MAX_POOL = 16  # source addresses per family: bounds the SNAT map and the metrics' labels
