"""The CNI network configuration: upstream fields become the engine's; errors name the field."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from egress_router.cni import netconf
from egress_router.cni.errors import CniError
from egress_router.core import config, ha, plan
from support.cni import CONF

# ------------------------------------------------------------------ configuration


def test_upstreams_configuration_becomes_the_engines() -> None:
    conf = netconf.parse(CONF, "net1")
    cfg = conf.router_config("net1")
    assert conf.macvlan == netconf.Macvlan("ens3", "private", 1500)
    assert [str(s.interface) for s in cfg.sources] == ["192.168.12.99/24"]
    assert [str(g) for g in cfg.gateways] == ["192.168.12.1"]
    assert [(r.port, r.proto.value, str(r.address), r.remote_port) for r in
            cfg.destinations.rules] == [(80, "tcp", "203.0.113.25", 80),
                                        (8080, "tcp", "203.0.113.26", 80)]
    assert [str(f.address) for f in cfg.destinations.fallbacks] == ["203.0.113.27"]
    assert (cfg.pod_interface, cfg.egress_interface, cfg.mode) == (
        "eth0", "net1", config.Mode.INIT)
    assert cfg.http_port == config.DEFAULT_HTTP_PORT


def test_defaults_follow_upstream_and_dual_stack_is_honoured() -> None:
    conf = netconf.parse({
        "cniVersion": "0.4.0", "name": "n", "type": "egress-router",
        "ip": {"addresses": ["192.168.12.99", "2001:db8:12::99/64"],
               "gateway": ["192.168.12.1", "2001:db8:12::1"],
               "destinations": ["80 tcp 2001:db8:113::25/128", "203.0.113.27/32"]},
        "podInterface": "ens5", "log_level": "verbose",
    }, "net1")
    assert conf.macvlan == netconf.Macvlan(None, "bridge", None)
    assert conf.pod_interface == "ens5"
    assert conf.log_level == logging.INFO
    assert [s.on_link for s in conf.sources] == [False, True]
    assert [str(r.address) for r in conf.destinations.rules] == ["2001:db8:113::25"]


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"ip": {**CONF["ip"], "destinations": ["80 tcp 203.0.113.0/24"]}}, 7,
         "cannot parse ip.destinations line 1 '80 tcp 203.0.113.0/24': destination "
         "'203.0.113.0/24' is a network, not one address; write 203.0.113.0 (or "
         "203.0.113.0/32)"),
        ({"ip": {**CONF["ip"], "destinations": ["80 tcp 203.0.113.25\n81 tcp 203.0.113.25"]}}, 7,
         "cannot parse ip.destinations line 1 '80 tcp 203.0.113.25\\n81 tcp 203.0.113.25': one "
         "entry holds several values; put each in its own list entry"),
        ({"ip": {**CONF["ip"], "gateway": ""}}, 7,
         "cannot parse ip.gateway: is missing; expected the physical network's gateway, e.g. "
         "\"192.168.12.1\" (dual stack: \"192.168.12.1,2001:db8:12::1\")"),
        ({"ip": {**CONF["ip"], "destinations": ["80 tcp 2001:db8:113::25"]}}, 7,
         "cannot parse ip.destinations line 1: destination 2001:db8:113::25 is IPv6 but "
         "ip.addresses has no IPv6 address; add one (e.g. ip.addresses=<v4>,<v6>) or remove "
         "the line"),
        ({"ip": {**CONF["ip"], "destinations": ["80 tcp api.example.com"]}}, 2,
         "cannot use host name 'api.example.com' in ip.destinations: the CNI plugin configures "
         "the router once, at ADD, so it takes IP addresses only"),
        ({"ip": "192.168.12.99"}, 7,
         "cannot parse ip: is missing or not an object; expected {\"addresses\": [...], "
         "\"gateway\": \"...\", \"destinations\": [...]}"),
        ({"interfaceArgs": {"mode": "shared"}}, 7,
         "cannot parse interfaceArgs.mode: unknown macvlan mode 'shared'; expected one of "
         "bridge, private, vepa, passthru"),
        ({"interfaceArgs": {"mtu": "jumbo"}}, 7,
         "cannot parse interfaceArgs.mtu: invalid MTU 'jumbo'; expected a number from 68 to "
         "65535 (or leave it out to use the master's MTU)"),
        ({"podIP": {"db": {}}}, 2,
         "cannot use podIP {\"db\": {}}: per-pod addresses are not supported; give one "
         "NetworkAttachmentDefinition per router with \"ip\""),
        ({"podInterface": "net1"}, 7,
         "cannot parse podInterface: is 'net1', the same as CNI_IFNAME; the router needs its "
         "pod interface and the macvlan the plugin creates"),
        ({"log_level": "loud"}, 7,
         "cannot parse log_level 'loud': expected one of debug, verbose, info, warning, error, "
         "panic"),
        ({"cniVersion": "0.2.0"}, 1,
         "cannot use cniVersion '0.2.0': this plugin supports 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"),
        ({"announceCount": "3"}, 7,
         "cannot parse announceCount: invalid value '3'; expected a whole number 0 to 100"),
    ],
)
def test_bad_configuration_names_the_field(
    change: dict[str, Any], code: int, message: str
) -> None:
    with pytest.raises(CniError) as caught:
        netconf.parse({**CONF, **change}, "net1")
    assert (caught.value.code, caught.value.msg) == (code, message)


# ------------------------------------------------------------------ the wait container (CNI mode)

WAIT_CONF: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "egress",
    "type": "egress-router",
    "ip": {
        "addresses": ["192.168.12.99/24"],
        "gateway": "192.168.12.1",
        "destinations": ["80 tcp 203.0.113.25", "8080 tcp 203.0.113.26/32 80", "203.0.113.27"],
    },
    "interfaceType": "macvlan",
    "interfaceArgs": {"master": "ens3"},
    "podInterface": "pod0",
    "httpPort": 8081,
    "announceCount": 5,
    "announceInterval": 0.25,
    "log_level": "debug",
}


def write(tmp_path: Path, conf: object) -> dict[str, str]:
    path = tmp_path / "cni.json"
    path.write_text(conf if isinstance(conf, str) else json.dumps(conf))
    return {"EGRESS_ROUTER_CNI_CONFIG": str(path), "EGRESS_INTERFACE": "net1"}


def test_the_wait_config_is_the_plugins(tmp_path: Path) -> None:
    env = write(tmp_path, WAIT_CONF)
    cfg = config.load_config({**netconf.router_environment(env), "EGRESS_ROUTER_MODE": "legacy"})
    plugin = netconf.parse(WAIT_CONF, "net1").router_config("net1")
    assert cfg.sources == plugin.sources
    assert cfg.gateways == plugin.gateways
    assert cfg.destinations == plugin.destinations
    assert (cfg.pod_interface, cfg.egress_interface, cfg.http_port) == ("pod0", "net1", 8081)
    assert (cfg.announce_count, cfg.announce_interval, cfg.debug) == (5, 0.25, True)
    assert cfg.backend is config.Backend.NFTABLES


def test_without_the_variable_the_environment_is_kept() -> None:
    env = {"EGRESS_SOURCE": "192.168.12.99", "EGRESS_GATEWAY": "192.168.12.1"}
    assert netconf.router_environment(env) == env


def test_repeating_a_value_in_env_is_refused(tmp_path: Path) -> None:
    env = {**write(tmp_path, WAIT_CONF), "EGRESS_SOURCE": "192.168.12.98",
           "EGRESS_DESTINATION": "x"}
    with pytest.raises(config.ConfigError) as caught:
        netconf.router_environment(env)
    assert str(caught.value) == (
        "cannot parse EGRESS_ROUTER_CNI_CONFIG: is set together with EGRESS_SOURCE, "
        "EGRESS_DESTINATION; in CNI mode the network configuration is the one source of "
        "truth: remove EGRESS_SOURCE, EGRESS_DESTINATION"
    )


def test_a_bad_configuration_names_the_file_and_the_field(tmp_path: Path) -> None:
    bad = {**WAIT_CONF,
           "ip": {**WAIT_CONF["ip"], "destinations": ["80 tcp 203.0.113.25", "99999 tcp x"]}}
    env = write(tmp_path, bad)
    with pytest.raises(config.ConfigError) as caught:
        netconf.router_environment(env)
    message = str(caught.value)
    assert message == (
        f"cannot parse EGRESS_ROUTER_CNI_CONFIG: {env['EGRESS_ROUTER_CNI_CONFIG']}: cannot "
        "parse ip.destinations line 2 '99999 tcp x': port 99999 is out of range; expected 1 "
        "to 65535"
    )


def test_not_json_and_unreadable_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="cannot decode the network configuration"):
        netconf.router_environment(write(tmp_path, "{not json"))
    missing = {"EGRESS_ROUTER_CNI_CONFIG": str(tmp_path / "nope.json")}
    with pytest.raises(config.ConfigError, match="No such file or directory; mount the ConfigMap"):
        netconf.router_environment(missing)


# ------------------------------------------------------------------ an HA pair ("ha")

HA = {"mode": "vrrp", "vrid": 51}


def test_ha_makes_the_address_keepaliveds_and_reaches_wait(tmp_path: Path) -> None:
    conf = netconf.parse({**CONF, "ha": HA}, "net1")
    assert conf.ha == ha.Settings(vrid=51)
    cfg = conf.router_config("net1")
    assert cfg.ha == ha.Settings(vrid=51)
    # ADD applies the plan: with ha it holds no step that adds the reserved address.
    assert not [s for s in plan.plan_interfaces(cfg) if isinstance(s, plan.SetAddress)]
    assert plan.plan_announcements(cfg) == ()
    assert netconf.parse(CONF, "net1").ha is None
    env = netconf.router_environment(write(tmp_path, {**WAIT_CONF, "ha": HA}))
    assert (env["EGRESS_ROUTER_HA"], env["EGRESS_HA_VRID"]) == ("vrrp", "51")
    waited = config.load_config({**env, "EGRESS_ROUTER_MODE": "legacy"})
    assert waited.ha == ha.Settings(vrid=51)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("vrrp", 'cannot parse ha: expected a JSON object, got "vrrp"'),
        ({"mode": "carp", "vrid": 51},
         "cannot parse ha.mode: unknown value 'carp'; expected 'vrrp' (active/standby) or 'off'"),
        ({"mode": "off", "vrid": 51},
         'cannot parse ha.mode: invalid value "off"; expected "vrrp" (leave ha out for one '
         "replica)"),
        ({"vrid": 51},
         'cannot parse ha.mode: invalid value null; expected "vrrp" (leave ha out for one '
         "replica)"),
        ({"mode": "vrrp"},
         "cannot parse ha.vrid: invalid value null; expected a VRRP router id from 1 to 255 (a "
         "number), the same on both replicas and unused by any other VRRP pair on the egress "
         "network"),
        ({"mode": "vrrp", "vrid": "51"},
         'cannot parse ha.vrid: invalid value "51"; expected a VRRP router id from 1 to 255 (a '
         "number), the same on both replicas and unused by any other VRRP pair on the egress "
         "network"),
        ({"mode": "vrrp", "vrid": True}, "cannot parse ha.vrid: invalid value true;"),
        ({"mode": "vrrp", "vrid": 256},
         "cannot parse ha.vrid: invalid value '256'; expected a VRRP router id from 1 to 255, "
         "the same on both replicas and unused by any other VRRP pair on the egress network"),
        ({"mode": "vrrp", "vrid": 0}, "cannot parse ha.vrid: invalid value '0';"),
        ({"mode": "vrrp", "vrid": 51, "priority": 200},
         "cannot parse ha.priority: is not a field of ha; expected mode, vrid"),
    ],
)
def test_a_bad_ha_field_is_refused_by_name(value: Any, message: str) -> None:
    with pytest.raises(CniError) as caught:
        netconf.parse({**CONF, "ha": value}, "net1")
    assert caught.value.code == 7
    assert caught.value.msg.startswith(message), caught.value.msg


def test_ha_needs_an_ipv4_address() -> None:
    v6 = {**CONF, "ha": HA, "ip": {"addresses": ["2001:db8:12::99/64"],
                                   "gateway": "2001:db8:12::1",
                                   "destinations": ["80 tcp 2001:db8:113::25"]}}
    with pytest.raises(CniError) as caught:
        netconf.parse(v6, "net1")
    assert caught.value.msg == (
        "cannot parse ip.addresses: has no IPv4 address; EGRESS_ROUTER_HA=vrrp elects over "
        "IPv4 (VRRPv3 adverts from a 169.254.0.0/16 address), add the IPv4 reserved address"
    )


def test_ha_variables_beside_the_cni_config_are_refused(tmp_path: Path) -> None:
    env = {**write(tmp_path, {**WAIT_CONF, "ha": HA}), "EGRESS_HA_VRID": "52"}
    with pytest.raises(config.ConfigError) as caught:
        netconf.router_environment(env)
    assert "is set together with EGRESS_HA_VRID" in str(caught.value)
