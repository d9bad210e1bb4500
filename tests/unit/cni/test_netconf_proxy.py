"""The CNI configuration of a proxy pod: ``"mode"`` sets up the network only."""

from __future__ import annotations

from typing import Any

import pytest

from egress_router.cni import netconf
from egress_router.cni.errors import CniError
from egress_router.core import config, ruleset
from egress_router.k8s import manifest, render
from support.cni import CONF

PROXY_IP = {"addresses": ["192.168.12.99/24"], "gateway": "192.168.12.1"}


def refused(conf: dict[str, Any]) -> str:
    with pytest.raises(CniError) as caught:
        netconf.parse(conf, "net1")
    return caught.value.msg


@pytest.mark.parametrize("mode", ["http-proxy", "dns-proxy"])
def test_proxy_mode_needs_no_destinations_and_plans_no_redirect(mode: str) -> None:
    conf = netconf.parse({**CONF, "mode": mode, "ip": PROXY_IP}, "net1")
    cfg = conf.router_config("net1")
    assert cfg.mode.value == mode and cfg.destinations.rules == ()
    assert 'iifname "eth0" accept comment "the proxy listens on the pod side"' in (
        ruleset.render_nftables(cfg)
    )


def test_proxy_mode_refuses_destinations_and_unknown_modes() -> None:
    assert "is set, but mode http-proxy redirects nothing" in refused(
        {**CONF, "mode": "http-proxy"}
    )
    assert 'unknown mode "socks"' in refused({**CONF, "mode": "socks", "ip": PROXY_IP})
    # Without a mode the destinations stay required (the redirect, upstream's config).
    assert "ip.destinations" in refused({**CONF, "ip": PROXY_IP})


def test_rendered_cni_proxy_pod_hands_the_plugin_the_mode() -> None:
    text = (
        "name: egress-1\nattachment: {type: cni, master: ens3}\nsource: 192.168.12.99/24\n"
        "gateway: 192.168.12.1\nmode: http-proxy\ndestinations: ['*.example.com']\n"
    )
    objects = render.render(manifest.load_config_text(text, "r.yaml")).objects
    render.check(objects)
    (nad,) = [o for o in objects if o["kind"] == render.NAD_KIND]
    conf = netconf.parse(netconf.decode(nad["spec"]["config"]), "net1")
    assert conf.mode is config.Mode.HTTP_PROXY
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert config_map["data"] == {"destinations": "*.example.com\n"}
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert "initContainers" not in deployment["spec"]["template"]["spec"]
