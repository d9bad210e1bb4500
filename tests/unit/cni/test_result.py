"""CNI results for each spec version, chained onto a prevResult and read back."""

from __future__ import annotations

from egress_router.cni import netconf, result
from support.cni import CONF, MAC, NETNS

# ------------------------------------------------------------------ results


def test_result_for_each_version() -> None:
    link = result.Interface("net1", MAC, 1400, NETNS)
    new = result.build(netconf.parse({**CONF, "cniVersion": "1.1.0"}), link)
    assert new == {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "net1", "mac": MAC, "mtu": 1400, "sandbox": NETNS}],
        "ips": [{"address": "192.168.12.99/24", "gateway": "192.168.12.1", "interface": 0}],
        "routes": [{"dst": "192.168.12.1/32"}, {"dst": "0.0.0.0/0", "gw": "192.168.12.1"}],
    }
    old = result.build(netconf.parse({**CONF, "cniVersion": "0.4.0", "dns": {"nameservers":
                                                                             ["10.0.0.10"]}}),
                       link)
    assert old["interfaces"] == [{"name": "net1", "mac": MAC, "sandbox": NETNS}]
    assert old["ips"][0]["version"] == "4"
    assert old["dns"] == {"nameservers": ["10.0.0.10"]}


def test_result_chains_onto_prev_result() -> None:
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "cbr0", "mac": "aa:aa:aa:aa:aa:aa"},
                       {"name": "eth0", "mac": "bb:bb:bb:bb:bb:bb", "sandbox": NETNS}],
        "ips": [{"address": "10.128.0.2/24", "gateway": "10.128.0.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": ["10.0.0.10"]},
    }
    chained = result.build(netconf.parse(CONF), result.Interface("net1", MAC, 1500, NETNS), prev)
    assert chained["interfaces"][:2] == prev["interfaces"]
    assert chained["interfaces"][2]["name"] == "net1"
    assert chained["ips"] == [
        prev["ips"][0],
        {"address": "192.168.12.99/24", "gateway": "192.168.12.1", "interface": 2},
    ]
    assert chained["routes"][0] == {"dst": "0.0.0.0/0"}
    assert chained["dns"] == prev["dns"]
    recorded = result.recorded(chained, "net1", NETNS)
    assert recorded is not None
    assert recorded.mac == MAC
    assert [str(a) for a in recorded.addresses] == ["192.168.12.99/24"]
    assert result.recorded(chained, "net2", NETNS) is None
