"""core.ha: the HA variables, the advert source, keepalived's configuration, adverts."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from egress_router.core import config, ha, iptables_rules, plan, ruleset

BASE = {
    "EGRESS_SOURCE": "192.168.12.99",
    "EGRESS_GATEWAY": "192.168.12.1",
    "EGRESS_DESTINATION": "80 tcp 203.0.113.25",
}
HA = {**BASE, "EGRESS_ROUTER_HA": "vrrp", "EGRESS_HA_VRID": "51"}
PATHS = ha.Paths("/run/x/keepalived.conf", "/run/x/notify.fifo", "/run/x/k.pid", "/run/x/v.pid")


def test_off_by_default_and_the_single_replica_contract_is_unchanged() -> None:
    cfg = config.load_config(BASE)
    assert cfg.ha is None
    steps = plan.plan_interfaces(cfg)
    assert plan.SetAddress("macvlan0", ipaddress.ip_interface("192.168.12.99/32")) in steps
    assert len(plan.plan_announcements(cfg)) == 1
    assert "112" not in ruleset.render_nftables(cfg)


def test_vrrp_parses_and_leaves_the_address_to_keepalived() -> None:
    cfg = config.load_config(HA)
    assert cfg.ha == ha.Settings(vrid=51)
    steps = plan.plan_interfaces(cfg)
    assert not [s for s in steps if isinstance(s, plan.SetAddress)]
    # The rest of the data path is there on the standby too: routes, return path.
    assert [s for s in steps if isinstance(s, plan.SetRoute)]
    assert [s for s in steps if isinstance(s, plan.KeepPodReturnPath)]
    assert plan.plan_announcements(cfg) == ()
    assert "# HA: VRRPv3 VRID 51" in plan.describe_plan(cfg)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EGRESS_ROUTER_HA": "vrrp"},
         "cannot parse EGRESS_HA_VRID: is not set; with EGRESS_ROUTER_HA=vrrp set it to a VRRP "
         "router id from 1 to 255"),
        ({"EGRESS_ROUTER_HA": "carp", "EGRESS_HA_VRID": "5"},
         "cannot parse EGRESS_ROUTER_HA: unknown value 'carp'; expected 'vrrp'"),
        ({"EGRESS_ROUTER_HA": "vrrp", "EGRESS_HA_VRID": "0"},
         "cannot parse EGRESS_HA_VRID: invalid value '0'; expected a VRRP router id from 1 to 255"),
        ({"EGRESS_ROUTER_HA": "vrrp", "EGRESS_HA_VRID": "256"},
         "cannot parse EGRESS_HA_VRID: invalid value '256'"),
        ({"EGRESS_ROUTER_HA": "vrrp", "EGRESS_HA_VRID": "٣"},
         "cannot parse EGRESS_HA_VRID: invalid value '٣'"),
        ({"EGRESS_HA_VRID": "7"},
         "cannot parse EGRESS_HA_VRID: is set but EGRESS_ROUTER_HA is off"),
    ],
)
def test_bad_ha_variables_are_refused_by_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.load_config({**BASE, **env})
    assert str(err.value).startswith(message)


def test_vrrp_needs_an_ipv4_reserved_address() -> None:
    env = {**HA, "EGRESS_SOURCE": "2001:db8:12::99", "EGRESS_GATEWAY": "2001:db8:12::1",
           "EGRESS_DESTINATION": "80 tcp 2001:db8:113::25"}
    with pytest.raises(config.ConfigError, match="EGRESS_SOURCE: has no IPv4 address"):
        config.load_config(env)


def test_advert_candidates_are_stable_distinct_and_in_the_usable_range() -> None:
    mac = bytes.fromhex("020000000001")
    first = ha.advert_candidates(mac)
    assert first == ha.advert_candidates(mac)  # same MAC, same address, every restart
    assert len(set(first)) == ha.CANDIDATES
    for candidate in first:
        assert candidate.network == ipaddress.ip_network("169.254.0.0/16")
        assert candidate.ip.packed[2] not in (0, 255)  # RFC 3927's reserved /24s
    other = ha.advert_candidates(bytes.fromhex("020000000002"))
    assert first[0] != other[0]


def test_advert_candidates_rarely_collide_across_macs() -> None:
    firsts = {ha.advert_candidates(struct.pack("!HI", 0x0200, n))[0] for n in range(2000)}
    assert len(firsts) > 1950  # 65024 addresses: a handful of birthday collisions at most


def test_keepalived_config() -> None:
    env = {**HA, "EGRESS_SOURCE": "192.168.12.99/24,2001:db8:12::99",
           "EGRESS_GATEWAY": "192.168.12.1,2001:db8:12::1"}
    cfg = config.load_config(env)
    assert cfg.ha is not None
    text = ha.render_keepalived(cfg, cfg.ha, ipaddress.IPv4Interface("169.254.7.8/16"), PATHS)
    assert text == """\
# Written by egress-router (EGRESS_ROUTER_HA=vrrp); regenerated at every start.
global_defs {
    router_id egress-router-51
    vrrp_version 3
    notify_fifo /run/x/notify.fifo
    vrrp_garp_master_delay 1
    vrrp_garp_master_repeat 3
    vrrp_garp_lower_prio_repeat 1
    vrrp_higher_prio_send_advert true
    script_user root
}

vrrp_instance egress_router {
    state BACKUP
    nopreempt
    interface macvlan0
    virtual_router_id 51
    priority 250
    advert_int 0.1
    mcast_src_ip 169.254.7.8
    virtual_ipaddress {
        192.168.12.99/24 dev macvlan0
    }
    virtual_ipaddress_excluded {
        2001:db8:12::99/128 dev macvlan0 no_dad
    }
}
"""


def test_vrrp_adverts_leave_without_snat_in_both_backends() -> None:
    cfg = config.load_config(HA)
    nft = ruleset.render_nftables(cfg)
    exempt = nft.index('oifname "macvlan0" ip protocol 112 accept')
    assert exempt < nft.index("snat ip to 192.168.12.99")
    ipt = iptables_rules.render_iptables(cfg, 4)
    assert ipt.index("-p 112 -j RETURN") < ipt.index("-j SNAT --to-source 192.168.12.99")


@pytest.mark.parametrize(
    ("line", "role"),
    [
        ('INSTANCE "egress_router" MASTER 250', ha.Role.ACTIVE),
        ('INSTANCE "egress_router" BACKUP 250', ha.Role.STANDBY),
        ('INSTANCE "egress_router" FAULT 0', ha.Role.FAULT),
        ('INSTANCE "egress_router" STOP 0', ha.Role.STOPPED),
    ],
)
def test_notify_lines(line: str, role: ha.Role) -> None:
    notice = ha.parse_notify(line)
    assert notice is not None and notice.role is role


@pytest.mark.parametrize("line", ["", 'INSTANCE "other" MASTER 100', 'GROUP "g" MASTER',
                                  'INSTANCE "egress_router" WEIRD 1'])
def test_notify_lines_not_ours(line: str) -> None:
    assert ha.parse_notify(line) is None


def _advert(vrid: int, addresses: list[str], version: int = 3, src: str = "169.254.9.9") -> bytes:
    body = struct.pack("!BBBBH", version << 4 | 1, vrid, 250, len(addresses),
                       10 if version == 3 else 1) + b"\0\0"
    body += b"".join(ipaddress.IPv4Address(a).packed for a in addresses)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 255, 112, 0,
                         ipaddress.IPv4Address(src).packed, ha.VRRP_GROUP4.packed)
    return header + body


def test_adverts_are_parsed() -> None:
    advert = ha.parse_advert(_advert(51, ["192.168.12.99"]))
    assert advert == ha.Advert(ipaddress.IPv4Address("169.254.9.9"), 3, 51, 250, 0.1,
                               (ipaddress.IPv4Address("192.168.12.99"),))
    assert ha.parse_advert(_advert(51, ["192.168.12.99"])[:30]) is None
    assert ha.parse_advert(b"\x45" + b"\0" * 30) is None


def test_a_clash_is_another_group_on_our_vrid() -> None:
    cfg = config.load_config(HA)
    assert cfg.ha is not None
    peer = ha.parse_advert(_advert(51, ["192.168.12.99"]))
    other_vrid = ha.parse_advert(_advert(52, ["192.168.12.50"]))
    other_group = ha.parse_advert(_advert(51, ["192.168.12.50"]))
    v2 = ha.parse_advert(_advert(51, ["192.168.12.99"], version=2))
    assert peer and other_vrid and other_group and v2
    assert ha.clash(peer, cfg.ha, cfg) is None
    assert ha.clash(other_vrid, cfg.ha, cfg) is None
    assert ha.clash(other_group, cfg.ha, cfg) == "169.254.9.9 advertises VRID 51 for 192.168.12.50"
    assert ha.clash(v2, cfg.ha, cfg) == "169.254.9.9 sends VRRPv2 adverts for VRID 51"
    assert str(ha.clash_error("x", 51)).startswith(
        "cannot parse EGRESS_HA_VRID '51': another VRRP group on the egress network uses this VRID"
    )
