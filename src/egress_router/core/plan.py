"""The interface plan: which addresses, routes and sysctls the router needs.

Kept as plain data so that ``unit-test`` mode can print it without privilege,
tests can compare it, and the netlink layer only has to execute steps. Each
step is idempotent by construction (replace, not add), which is what makes a
re-run after a pod restart converge instead of failing on "File exists".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from egress_router.core import config, ha

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Policy routing that keeps replies to the pod network on the pod interface once the
# default route points at the egress gateway (see `KeepPodReturnPath`).
POD_TABLE = 25970
RULE_PRIORITY = 25970  # four consecutive priorities, all before the main table's 32766


@dataclass(frozen=True)
class LinkUp:
    """Bring the interface up."""

    ifname: str

    def describe(self) -> str:
        return f"ip link set {self.ifname} up"


@dataclass(frozen=True)
class SetAddress:
    """Put ``interface`` on ``ifname``; other global addresses of its family there are removed.

    ``pool`` lists the other addresses of the same source-address pool: they
    are wanted too, so they are kept.
    """

    ifname: str
    interface: config.IPInterface
    pool: tuple[config.IPInterface, ...] = ()

    def wanted(self) -> tuple[config.IPInterface, ...]:
        """Every global address of this family that may stay on the interface."""
        return (self.interface, *self.pool)

    def describe(self) -> str:
        family = "-6 " if self.interface.version == 6 else ""
        version = self.interface.version
        others = f"other global IPv{version} addresses on {self.ifname} removed"
        if self.pool:
            others = f"global IPv{version} addresses outside the pool removed"
        return (
            f"ip {family}address replace {self.interface.with_prefixlen} dev {self.ifname} "
            f"(nodad; {others})"
        )


@dataclass(frozen=True)
class SetRoute:
    """Route ``destination`` out of ``ifname``, via ``gateway`` or on-link when None.

    A default route replaces every other default route of its family in the
    main table, so the router has exactly one way out.
    """

    ifname: str
    destination: IPNetwork
    gateway: config.IPAddress | None = None

    @property
    def is_default(self) -> bool:
        return self.destination.prefixlen == 0

    def describe(self) -> str:
        family = "-6 " if self.destination.version == 6 else ""
        dst = "default" if self.is_default else self.destination.with_prefixlen
        via = f" via {self.gateway}" if self.gateway is not None else ""
        scope = " scope link" if self.gateway is None else ""
        note = " (other default routes removed)" if self.is_default else ""
        return f"ip {family}route replace {dst}{via} dev {self.ifname}{scope}{note}"


@dataclass(frozen=True)
class KeepPodReturnPath:
    """Keep replies to the pod network on the pod interface after the default route moves.

    Clients reach the router from anywhere in the cluster (other nodes, the
    node itself for probes), but only the pod's own subnet is a connected
    route; the rest went through the pod's default route, which the plan
    replaces. Unless the CNI installs cluster routes in the pod (OpenShift
    SDN and OVN-Kubernetes do; Calico and Cilium do not), replies would leave
    through the egress interface and be lost. So the pod's default route is
    kept in table `POD_TABLE`, and two rule pairs send replies there: packets
    arriving on the egress interface (de-NATed replies of redirected
    connections; the forward policy lets nothing else through) and packets
    from the pod interface's addresses (the router's replies to probes and
    scrapes). Each pair first looks up the main table without its default
    routes, so connected and explicit routes still win.
    """

    family: int
    pod_ifname: str
    egress_ifname: str

    @property
    def ifname(self) -> str:
        return self.pod_ifname

    def describe(self) -> str:
        family = "-6 " if self.family == 6 else ""
        return (
            f"ip {family}route replace default via <pod gateway> dev {self.pod_ifname} "
            f"table {POD_TABLE}; ip {family}rule: iif {self.egress_ifname} and from "
            f"<{self.pod_ifname} addresses> lookup main suppress_prefixlength 0, "
            f"then table {POD_TABLE} (priorities {RULE_PRIORITY}-{RULE_PRIORITY + 3})"
        )


@dataclass(frozen=True)
class EnableForwarding:
    """Turn on forwarding for one address family (sysctl)."""

    family: int

    @property
    def sysctl(self) -> str:
        return "net.ipv4.ip_forward" if self.family == 4 else "net.ipv6.conf.all.forwarding"

    def describe(self) -> str:
        return f"sysctl -w {self.sysctl}=1"


@dataclass(frozen=True)
class SetSysctls:
    """Write sysctls under ``/proc/sys`` (paths relative to it, e.g. ``net/ipv6/conf/x/accept_ra``).

    Written in order. Keys of a family the kernel does not have at all (no
    ``/proc/sys/net/ipv6``) are skipped: there is nothing of it to protect.
    """

    ifname: str
    values: tuple[tuple[str, str], ...]

    def describe(self) -> str:
        settings = " ".join(f"{key.replace('/', '.')}={value}" for key, value in self.values)
        return f"sysctl -w {settings}"


@dataclass(frozen=True)
class RemoveAddresses:
    """Remove every global address of ``family`` from ``ifname`` (a family not configured).

    Link-scope addresses (``169.254.0.0/16 scope link``, as VRRP adverts of a
    future HA pair would use) stay.
    """

    ifname: str
    family: int

    def describe(self) -> str:
        return f"ip -{self.family} address flush dev {self.ifname} scope global"


@dataclass(frozen=True)
class Announce:
    """Tell the physical network who owns ``address`` now (gratuitous ARP / unsolicited NA)."""

    ifname: str
    address: config.IPAddress
    count: int
    interval: float

    def describe(self) -> str:
        kind = "gratuitous ARP" if self.address.version == 4 else "unsolicited neighbour advert"
        return (
            f"announce {self.address} on {self.ifname}: {kind} x{self.count}, "
            f"every {self.interval:g}s"
        )


Step = (
    SetSysctls | RemoveAddresses | LinkUp | SetAddress | SetRoute | KeepPodReturnPath
    | EnableForwarding
)


def hardening_keys(ifname: str) -> tuple[str, ...]:
    """The sysctls `harden_egress` writes for an egress interface named ``ifname``."""
    v4 = f"net/ipv4/conf/{ifname}"
    v6 = f"net/ipv6/conf/{ifname}"
    return (
        f"{v4}/accept_redirects",
        "net/ipv4/conf/all/accept_redirects",
        f"{v4}/accept_source_route",
        f"{v4}/arp_ignore",
        f"{v4}/arp_announce",
        f"{v6}/accept_ra",
        f"{v6}/autoconf",
        f"{v6}/accept_redirects",
        f"{v6}/accept_source_route",
        f"{v6}/disable_ipv6",
    )


def harden_egress(cfg: config.Config) -> SetSysctls:
    """The egress interface takes no configuration from the physical network.

    No router advertisements (routes, prefixes, SLAAC addresses), no ICMP
    redirects, no source routing, in every configuration; ARP answers only
    for addresses on the egress interface (the physical side does not learn
    the pod address). The ``all`` redirect switch is cleared too: with IPv4
    forwarding off (an IPv6-only router) the kernel accepts redirects when
    either switch is on. An IPv6 router needs IPv6 on the interface; an
    IPv4-only one gets it disabled there: no link-local address, so no
    neighbour discovery, no MLD, no RA processing, nothing listening over
    IPv6 on the physical side at all. The last write is ``disable_ipv6``, so
    the interface never runs IPv6 with the defaults.
    """
    ifname = cfg.egress_interface
    values = ("0", "0", "0", "1", "2", "0", "0", "0", "0")
    disable_ipv6 = "0" if cfg.source(6) is not None else "1"
    keys = hardening_keys(ifname)
    return SetSysctls(ifname, tuple(zip(keys, (*values, disable_ipv6), strict=True)))


def plan_interfaces(cfg: config.Config) -> tuple[Step, ...]:
    """The kernel state the egress side needs, in the order it must be applied.

    The egress interface is hardened first (`harden_egress`), then the link
    goes up (routes on a down link are refused for IPv6); the
    gateway gets a host route so that it is reachable even when the source
    has no prefix (upstream's behaviour); with ``/len`` the kernel adds the
    subnet route itself when the address is added.
    """
    ifname = cfg.egress_interface
    # Hardened before the link goes up: not one RA is processed with the defaults.
    steps: list[Step] = [harden_egress(cfg)]
    if cfg.source(4) is None:
        steps.append(RemoveAddresses(ifname, 4))
    steps.append(LinkUp(ifname))
    for family in cfg.families():
        gateway = cfg.gateway(family)
        assert gateway is not None  # config.check_families guarantees one per source family
        host = ipaddress.ip_network(f"{gateway}/{gateway.max_prefixlen}")
        default = ipaddress.ip_network("0.0.0.0/0" if family == 4 else "::/0")
        pool = tuple(s.interface for s in cfg.pool(family))
        if cfg.ha is None:
            # With HA the reserved address(es) are keepalived's: on the active replica only.
            steps += [
                SetAddress(ifname, interface, tuple(i for i in pool if i != interface))
                for interface in pool
            ]
        steps += [
            SetRoute(ifname, host),
            # Before the default route is replaced: it reads the pod's own default route.
            KeepPodReturnPath(family, cfg.pod_interface, ifname),
            # The router's own lookups keep reaching the cluster's resolvers (usually on the
            # service network, not on-link) through the pod interface.
            *(
                SetRoute(cfg.pod_interface, ipaddress.ip_network(address), via)
                for address, via in cfg.pod_routes
                if address.version == family
            ),
            SetRoute(ifname, default, gateway),
            EnableForwarding(family),
        ]
    return tuple(steps)


def parse_nameservers(text: str) -> tuple[config.IPAddress, ...]:
    """The ``nameserver`` addresses of a resolv.conf that need a route (not loopback)."""
    found: list[config.IPAddress] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) < 2 or words[0] != "nameserver":
            continue
        try:
            address = ipaddress.ip_address(words[1].split("%", 1)[0])
        except ValueError:
            continue
        if not (address.is_loopback or address.is_link_local or address.is_unspecified):
            found.append(address)
    return tuple(dict.fromkeys(found))


def plan_announcements(cfg: config.Config) -> tuple[Announce, ...]:
    """One announcement per reserved address (with HA, keepalived announces on taking it)."""
    if cfg.ha is not None:
        return ()
    return tuple(
        Announce(cfg.egress_interface, s.address, cfg.announce_count, cfg.announce_interval)
        for s in cfg.sources
    )


def describe_plan(cfg: config.Config) -> str:
    """Human-readable plan, as ``unit-test`` mode prints it."""
    lines = [step.describe() for step in plan_interfaces(cfg)]
    for family in cfg.families():
        source = cfg.pool(family)[0]
        if source.on_link:
            lines.append(
                f"# kernel adds the subnet route {source.interface.network} dev "
                f"{cfg.egress_interface} with the address"
            )
    lines += [a.describe() for a in plan_announcements(cfg)]
    if cfg.ha is not None:
        lines += ha.describe(cfg, cfg.ha)
    return "\n".join(lines) + "\n"
