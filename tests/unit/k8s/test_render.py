"""`egress-router render`: golden manifests, schema validation, the port invariant, input errors.

Golden files under ``golden/render/`` are the exact YAML for the examples;
regenerate after an intended change with ``UPDATE_GOLDEN=1 pytest
tests/unit/k8s/test_render.py`` and review the diff like code.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from egress_router.cni import netconf
from egress_router.core import config
from egress_router.core.config import cniconf
from egress_router.k8s import manifest, render

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
GOLDEN = Path(__file__).parents[1] / "golden" / "render"

DUAL = """\
name: egress-dual
namespace: egress
attachment: {type: cni, master: ens3, mtu: 9000, interface: phys0}
source: [192.168.12.99/24, 2001:db8:12::99/64]
gateway: [192.168.12.1, 2001:db8:12::1]
destinations: |
  # partners, both families
  80   tcp  203.0.113.25
  80   tcp  2001:db8:113::25
  5000 sctp 203.0.113.25
  53   udp  2001:db8:113::25 5353
  2001:db8:113::27
podInterface: pod0
httpPort: 8081
debug: true
"""

HA = """\
name: egress-ha
attachment: annotation
source: 192.168.12.99
gateway: 192.168.12.1
destinations: |
  80 tcp 203.0.113.25
ha: true
vrid: 99
"""

BASE = """\
name: egress-1
attachment: annotation
source: 192.168.12.99/24
gateway: 192.168.12.1
"""


def load(name: str, overrides: manifest.Overrides | None = None) -> manifest.RouterSpec:
    if name == "dual":
        return manifest.load_config_text(DUAL, "dual.yaml", overrides)
    if name == "ha":
        return manifest.load_config_text(HA, "ha.yaml", overrides)
    if name == "ha-cni":
        text = (EXAMPLES / "cni.yaml").read_text() + "ha: true\nvrid: 5\n"
        return manifest.load_config_text(text, "ha-cni.yaml", overrides)
    text = (EXAMPLES / f"{name}.yaml").read_text()
    if name == "egressrouter":
        return manifest.load_egressrouter_text(text, f"examples/{name}.yaml", overrides)
    return manifest.load_config_text(text, f"examples/{name}.yaml", overrides)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text()


def one(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def error_of(text: str, loader: Any = manifest.load_config_text) -> str:
    with pytest.raises(config.ConfigError) as caught:
        loader(text, "r.yaml")
    return str(caught.value)


# --------------------------------------------------------------------------- golden


@pytest.mark.parametrize(
    "name", ["seed", "cni", "egressrouter", "dual", "ha", "ha-cni", "http-proxy", "dns-proxy"]
)
def test_golden_manifests(name: str) -> None:
    check_golden(f"{name}.yaml", render.to_yaml(render.render(load(name)).objects))


@pytest.mark.parametrize("name", ["seed", "cni", "egressrouter", "dual"])
def test_every_rendered_object_validates_offline(name: str) -> None:
    objects = render.render(load(name)).objects
    checked = render.check(objects)
    kinds = [o["kind"] for o in objects]
    assert len(checked) == len(objects) + 1
    assert kinds[0] == "ConfigMap" and kinds[-1] == "Deployment"
    assert ("NetworkAttachmentDefinition" in kinds) == (name != "seed")


def test_the_seed_example_is_the_seed_shape() -> None:
    objects = render.render(load("seed")).objects
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"][render.ANNOTATION_MACVLAN] == "true"
    (init,) = template["spec"]["initContainers"]
    assert init["securityContext"]["privileged"] is True
    assert "command" not in init and "args" not in init  # the image's entry point
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env == {
        "EGRESS_SOURCE": "192.168.12.99/24",
        "EGRESS_GATEWAY": "192.168.12.1",
        "EGRESS_DESTINATION_FILE": "/etc/egress-router/destinations",
        "EGRESS_ROUTER_HTTP_PORT": "9090",
        "EGRESS_ROUTER_MODE": "init",
    }
    (main,) = template["spec"]["containers"]
    assert main["args"] == ["wait"]
    assert main["securityContext"]["capabilities"] == {
        "drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]
    }
    assert "privileged" not in main["securityContext"]
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["ports"] == [{"name": "http", "containerPort": 9090, "protocol": "TCP"}]
    service_ports = [p["port"] for p in one(objects, "Service")["spec"]["ports"]]
    assert 9090 not in service_ports


def test_init_environment_loads_with_the_routers_own_parser() -> None:
    spec = load("seed")
    objects = render.render(spec).objects
    data = one(objects, "ConfigMap")["data"]["destinations"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    for container in (*pod["initContainers"], *pod["containers"]):
        env = {e["name"]: e["value"] for e in container["env"]}
        cfg = config.load_config(env, read_text=lambda path: data)
        assert cfg.destinations == spec.destinations
        assert cfg.sources == spec.sources


def test_cni_wait_container_reads_the_plugins_own_configuration() -> None:
    spec = load("dual")
    objects = render.render(spec).objects
    data = one(objects, "ConfigMap")["data"]
    nad_config = one(objects, "NetworkAttachmentDefinition")["spec"]["config"]
    # One source of truth: the ConfigMap holds exactly the plugin's configuration.
    assert data == {"cni.json": nad_config}
    (main,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in main["env"]}
    assert env == {"EGRESS_ROUTER_CNI_CONFIG": "/etc/egress-router/cni.json",
                   "EGRESS_INTERFACE": "phys0"}
    mounts = {m["mountPath"] for m in main["volumeMounts"]}
    assert "/etc/egress-router" in mounts

    def read(path: str) -> str:
        assert path == "/etc/egress-router/cni.json"
        return data["cni.json"]

    cfg = config.load_config(netconf.router_environment(env, read_text=read))
    assert cfg.destinations == spec.destinations
    assert cfg.sources == spec.sources
    assert cfg.gateways == spec.gateways
    assert (cfg.pod_interface, cfg.egress_interface, cfg.http_port, cfg.debug) == (
        "pod0", "phys0", 8081, True
    )
    # ... and it is what the plugin configured at ADD.
    plugin = netconf.parse(json.loads(nad_config), ifname="phys0").router_config("phys0")
    assert plugin.destinations == cfg.destinations
    assert (plugin.pod_interface, plugin.http_port) == (cfg.pod_interface, cfg.http_port)


def test_cni_installer_copies_the_plugin_under_the_configured_type() -> None:
    spec = manifest.load_config_text(
        (EXAMPLES / "cni.yaml").read_text().replace("interface: net1", "interface: net1\n"
                                                    "  binDir: /var/lib/cni/bin"),
        "cni.yaml",
    )
    objects = render.render(spec).objects
    assert [o["kind"] for o in objects] == [
        "ConfigMap", "NetworkAttachmentDefinition", "DaemonSet", "Service", "Deployment"
    ]
    installer = one(objects, "DaemonSet")
    pod = installer["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "install-cni"
    options = dict(zip(args[1::2], args[2::2], strict=True))
    nad_type = json.loads(one(objects, "NetworkAttachmentDefinition")["spec"]["config"])["type"]
    assert options["--name"] == nad_type == "egress-router"
    assert options["--source"] == manifest.CNI_EXECUTABLE
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == options["--dest-dir"]
    (volume,) = pod["volumes"]
    assert volume["hostPath"] == {"path": "/var/lib/cni/bin", "type": "DirectoryOrCreate"}
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["nodeSelector"] == dict(spec.node_selector)
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_check_refuses_an_installer_that_writes_another_name() -> None:
    objects = copy.deepcopy(render.render(load("cni")).objects)
    container = one(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    container["args"][container["args"].index("--name") + 1] = "egress-router-cni"
    with pytest.raises(render.CheckError, match="installs the plugin as 'egress-router-cni', "
                       "but the NetworkAttachmentDefinition's type is 'egress-router'"):
        render.check(objects)


def test_check_refuses_a_wait_config_that_differs_from_the_plugins() -> None:
    objects = copy.deepcopy(render.render(load("cni")).objects)
    data = one(objects, "ConfigMap")["data"]
    data["cni.json"] = data["cni.json"].replace("203.0.113.25", "203.0.113.99")
    with pytest.raises(render.CheckError, match=r"its config differs from ConfigMap "
                       r"egress-partners's cni\.json"):
        render.check(objects)


def test_check_refuses_a_cni_wait_container_that_repeats_the_configuration() -> None:
    objects = copy.deepcopy(render.render(load("cni")).objects)
    main = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    main["env"].append({"name": "EGRESS_SOURCE", "value": "192.168.12.98/24"})
    with pytest.raises(render.CheckError, match="sets EGRESS_SOURCE besides "
                       "EGRESS_ROUTER_CNI_CONFIG"):
        render.check(objects)


@pytest.mark.parametrize("value", ["opt/cni/bin", "/opt/cni bin", ""])
def test_bin_dir_must_be_an_absolute_path(value: str) -> None:
    text = (EXAMPLES / "cni.yaml").read_text().replace(
        "interface: net1", f"interface: net1\n  binDir: '{value}'"
    )
    with pytest.raises(config.ConfigError, match=r"attachment\.binDir.*absolute path"):
        manifest.load_config_text(text, "cni.yaml")


def test_backend_reaches_both_containers_of_the_annotation_pod() -> None:
    spec = manifest.load_config_text(
        BASE + "destinations: ['80 tcp 203.0.113.25']\nbackend: iptables\n", "r.yaml"
    )
    pod = one(render.render(spec).objects, "Deployment")["spec"]["template"]["spec"]
    for container in (*pod["initContainers"], *pod["containers"]):
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["EGRESS_ROUTER_BACKEND"] == "iptables", container["name"]


@pytest.mark.parametrize("name", ["cni", "egressrouter", "dual"])
def test_network_attachment_config_is_accepted_by_the_plugin(name: str) -> None:
    spec = load(name)
    nad = one(render.render(spec).objects, "NetworkAttachmentDefinition")
    conf = netconf.parse(json.loads(nad["spec"]["config"]), ifname=spec.cni_interface)
    assert conf.name == spec.name
    assert conf.sources == spec.sources
    assert conf.gateways == spec.gateways
    assert conf.destinations == spec.destinations
    assert (conf.macvlan.master, conf.macvlan.mode, conf.macvlan.mtu) == (
        spec.master, spec.macvlan_mode, spec.mtu
    )
    assert conf.pod_interface == spec.pod_interface
    assert conf.log_level == (logging.DEBUG if spec.debug else logging.INFO)


def test_egressrouter_fields_are_all_honoured() -> None:
    spec = load("egressrouter")
    assert spec.name == "egress-router-redirect" and spec.namespace == "egress"
    assert [str(s.interface) for s in spec.sources] == ["192.168.12.99/24"]
    assert [str(g) for g in spec.gateways] == ["192.168.12.1"]
    assert (spec.attachment, spec.master, spec.macvlan_mode) == (
        manifest.Attachment.CNI, "ens3", "private"
    )
    assert spec.destinations.lines() == [
        "80 tcp 203.0.113.25",
        "8080 tcp 203.0.113.26 80",
        "8443 tcp 203.0.113.26 443",
        "53 udp 203.0.113.25",
        "203.0.113.27",
    ]


def test_egressrouter_defaults_are_the_crds() -> None:
    text = (EXAMPLES / "egressrouter.yaml").read_text()
    text = text.replace("  mode: Redirect\n", "").replace(
        "  networkInterface:\n    macvlan:\n      mode: Private\n      master: ens3\n", ""
    )
    spec = manifest.load_egressrouter_text(text, "cr.yaml")
    assert (spec.master, spec.macvlan_mode) == (None, "bridge")
    nad = one(render.render(spec).objects, "NetworkAttachmentDefinition")
    assert json.loads(nad["spec"]["config"])["interfaceArgs"] == {"mode": "bridge"}


# --------------------------------------------------------------------------- the port invariant


def test_fallback_without_extra_ports_warns_how_to_list_them() -> None:
    spec = manifest.load_config_text(
        BASE + "destinations: ['80 tcp 203.0.113.25', '53 udp 203.0.113.25', 203.0.113.27]\n",
        "r.yaml",
    )
    assert render.render(spec).warnings == (
        'the fallback (203.0.113.27) serves every other port, but a Service cannot expose '
        '"every other port": Service egress-1 gets only the rules\' ports (80/tcp, 53/udp); '
        "list the ports your clients use through the fallback in extraPorts (e.g. extraPorts: "
        "[9000/tcp]) or with --extra-port 9000/tcp, and they become Service ports",
    )
    assert render.render(load("seed")).warnings == ()  # it lists its extraPorts


def test_extra_ports_from_the_command_line_become_service_ports() -> None:
    spec = load("egressrouter", manifest.Overrides(extra_ports=("9000/tcp", "9000/udp")))
    rendered = render.render(spec)
    names = [p["name"] for p in one(rendered.objects, "Service")["spec"]["ports"]]
    assert names == ["tcp-80", "tcp-8080", "tcp-8443", "udp-53", "tcp-9000", "udp-9000"]
    assert rendered.warnings == ()


def test_both_families_share_one_service_port() -> None:
    service = one(render.render(load("dual")).objects, "Service")
    assert [(p["name"], p["protocol"]) for p in service["spec"]["ports"]] == [
        ("tcp-80", "TCP"), ("sctp-5000", "SCTP"), ("udp-53", "UDP")
    ]
    assert service["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
    assert service["spec"]["ipFamilyPolicy"] == "RequireDualStack"


def test_a_rule_by_dns_name_gets_its_service_port_in_every_source_family() -> None:
    text = (
        "name: egress-1\nattachment: cni\nsource: [192.168.12.99/24, 2001:db8:12::99/64]\n"
        "gateway: [192.168.12.1, 2001:db8:12::1]\n"
        "destinations: ['443 tcp api.example.com', '80 tcp 203.0.113.25']\n"
    )
    objects = render.render(manifest.load_config_text(text, "r.yaml")).objects
    service = one(objects, "Service")
    assert [p["name"] for p in service["spec"]["ports"]] == ["tcp-443", "tcp-80"]
    assert service["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
    conf = json.loads(one(objects, "NetworkAttachmentDefinition")["spec"]["config"])
    assert conf["ip"]["destinations"] == ["443 tcp api.example.com", "80 tcp 203.0.113.25"]
    render.check(objects)


RULE = st.tuples(
    st.integers(1, 65535), st.sampled_from(["tcp", "udp", "sctp"]), st.sampled_from([4, 6])
)


@settings(max_examples=60, deadline=None)
@given(
    rules=st.lists(RULE, min_size=1, max_size=12, unique=True),
    fallback=st.booleans(),
    extra=st.lists(
        st.tuples(st.integers(1, 65535), st.sampled_from(["tcp", "udp"])),
        max_size=4, unique=True,
    ),
)
def test_service_ports_are_exactly_the_rules_and_extra_ports(
    rules: list[tuple[int, str, int]], fallback: bool, extra: list[tuple[int, str]]
) -> None:
    address = {4: "203.0.113.25", 6: "2001:db8:113::25"}
    lines = [f"{port} {proto} {address[family]}" for port, proto, family in rules
             if not (proto == "tcp" and port == config.DEFAULT_HTTP_PORT)]
    if not lines:
        return
    http = (config.DEFAULT_HTTP_PORT, "tcp")
    keys = {(p, proto) for p, proto, _ in rules if (p, proto) != http}
    extra = [e for e in extra if e not in keys and e != http]
    if fallback:
        lines += ["203.0.113.27", "2001:db8:113::27"]
    text = (
        "name: r\nattachment: cni\nsource: [192.168.12.99/24, 2001:db8:12::99/64]\n"
        f"gateway: [192.168.12.1, 2001:db8:12::1]\ndestinations: {json.dumps(lines)}\n"
        f"extraPorts: {json.dumps([f'{p}/{proto}' for p, proto in extra])}\n"
    )
    if extra and not fallback:
        assert "no fallback in the destinations" in error_of(text)
        return
    objects = render.render(manifest.load_config_text(text, "r.yaml")).objects
    ports = one(objects, "Service")["spec"]["ports"]
    assert {(p["port"], p["protocol"].lower()) for p in ports} == keys | set(extra)
    assert len(ports) == len(keys) + len(extra)
    assert all(p["targetPort"] == p["port"] for p in ports)
    assert len({p["name"] for p in ports}) == len(ports)
    assert all(len(p["name"]) <= 15 for p in ports)
    render.check(objects)


def test_check_refuses_a_rule_without_service_port() -> None:
    objects = copy.deepcopy(render.render(load("seed")).objects)
    service = one(objects, "Service")
    service["spec"]["ports"] = [p for p in service["spec"]["ports"] if p["port"] != 8080]
    with pytest.raises(render.CheckError) as caught:
        render.check(objects)
    assert str(caught.value) == (
        "cannot check Service egress-1: the rule for 8080/tcp has no Service port"
    )


def test_check_refuses_a_service_port_without_rule_or_fallback() -> None:
    spec = manifest.load_config_text(BASE + "destinations: ['80 tcp 203.0.113.25']\n", "r.yaml")
    objects = copy.deepcopy(render.render(spec).objects)
    one(objects, "Service")["spec"]["ports"].append(
        {"name": "tcp-81", "protocol": "TCP", "port": 81, "targetPort": 81}
    )
    with pytest.raises(render.CheckError) as caught:
        render.check(objects)
    assert str(caught.value) == (
        "cannot check Service egress-1: Service port 81/tcp has no rule and there is no "
        "fallback; it would be refused"
    )


def test_check_refuses_a_container_that_does_not_read_the_mounted_config_map() -> None:
    objects = copy.deepcopy(render.render(load("seed")).objects)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    pod["initContainers"][0]["volumeMounts"][0]["mountPath"] = "/etc/other"
    with pytest.raises(render.CheckError, match=r"container setup reads EGRESS_DESTINATION_FILE"):
        render.check(objects)


def test_check_names_the_field_kubernetes_refuses() -> None:
    objects = copy.deepcopy(render.render(load("seed")).objects)
    one(objects, "Deployment")["spec"]["strategy"]["rollingUpdate"] = "yes"
    with pytest.raises(render.CheckError) as caught:
        render.check(objects)
    assert str(caught.value).startswith(
        "cannot validate Deployment egress-1 against Kubernetes 1.37: spec.strategy.rollingUpdate:"
    )


def test_check_validates_the_network_attachment_against_its_crd() -> None:
    objects = copy.deepcopy(render.render(load("cni")).objects)
    nad = one(objects, "NetworkAttachmentDefinition")
    conf = json.loads(nad["spec"]["config"])
    conf["interfaceArgs"]["mode"] = "l2"
    nad["spec"]["config"] = json.dumps(conf)
    with pytest.raises(render.CheckError) as caught:
        render.check(objects)
    assert str(caught.value) == (
        "cannot validate NetworkAttachmentDefinition egress-partners spec.config (CNI): "
        "interfaceArgs.mode: 'l2' is not one of ['bridge', 'private', 'vepa', 'passthru']"
    )
    nad["spec"] = {"config": "{}", "plugins": []}
    with pytest.raises(render.CheckError, match=r"against the NetworkAttachmentDefinition CRD"):
        render.check(objects)


def test_check_refuses_a_kubernetes_version_it_has_no_schemas_for() -> None:
    with pytest.raises(render.CheckError) as caught:
        render.check(render.render(load("seed")).objects, "1.12")
    assert str(caught.value).startswith(
        "cannot validate against Kubernetes 1.12: kubernetes-validate 1.37.0 ships 1.25, "
    )


def test_a_change_wait_cannot_reload_rolls_the_pod_and_nothing_else_does() -> None:
    seed = (EXAMPLES / "seed.yaml").read_text()

    def template(text: str) -> object:
        objects = render.render(manifest.load_config_text(text, "r.yaml")).objects
        return one(objects, "Deployment")["spec"]["template"]

    assert template(seed) == template(seed.replace("# The fallback", "# the fallback"))
    # The rules are reloaded in place from the mounted file: the pod stays.
    rules = seed.replace("8443 tcp 203.0.113.26 443", "8443 tcp 203.0.113.26 8443")
    assert template(seed) == template(rules)
    assert template(seed) != template(seed.replace("192.168.12.99", "192.168.12.98"))
    cni = (EXAMPLES / "cni.yaml").read_text()
    assert template(cni) != template(cni.replace("mode: private", "mode: vepa"))  # in the NAD
    assert template(cni) != template(cni.replace("192.168.12.99", "192.168.12.98"))  # CNI conf
    assert template(cni) == template(cni.replace("203.0.113.26", "203.0.113.28"))  # rules


# --------------------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            BASE + "destinations: ['80 tcp 203.0.113.25', '8080 tcp 203.0.113.26 80', "
            "'8443 tcp 203.0.113.26 443', '8080 tcp 999.999.999.999 80']\n",
            "cannot parse r.yaml: destinations[3] '8080 tcp 999.999.999.999 80': invalid "
            "destination address '999.999.999.999'; expected an IPv4 address such as "
            "203.0.113.25 or an IPv6 address such as 2001:db8::25",
        ),
        (
            BASE + "destinations: |\n  80 tcp 203.0.113.25\n  8080 tcp 999.999.999.999 80\n",
            "cannot parse r.yaml: destinations line 2 '8080 tcp 999.999.999.999 80': invalid "
            "destination address '999.999.999.999'; expected an IPv4 address such as "
            "203.0.113.25 or an IPv6 address such as 2001:db8::25",
        ),
        (
            BASE + "destinations: ['80 tcp 203.0.113.25', '80 tcp 203.0.113.26']\n",
            "cannot parse r.yaml: destinations[1] '80 tcp 203.0.113.26': port 80/tcp is already "
            "redirected on destinations[0]; each local port may have one rule per protocol",
        ),
        (
            BASE + "destinations: ['9090 tcp 203.0.113.25']\n",
            "cannot parse r.yaml: destinations[0] '9090 tcp 203.0.113.25': port 9090/tcp is the "
            "router's own HTTP port (httpPort, /healthz, /readyz, /metrics); use another local "
            "port, or set httpPort to a free port (0 turns the HTTP server off)",
        ),
        (
            BASE + "destinations: ['80 tcp 203.0.113.25']\nextraPorts: [9000/tcp]\n",
            "cannot parse r.yaml: extraPorts[0] '9000/tcp': no fallback in the destinations, so "
            "this port would be refused; add a rule for it, or a last line with the fallback "
            "address",
        ),
        (
            BASE + "destinations: ['80 tcp 203.0.113.25', 203.0.113.27]\nextraPorts: [80/tcp]\n",
            "cannot parse r.yaml: extraPorts[0] '80/tcp': destinations[0] already redirects "
            "this port, which makes it a Service port; remove it here",
        ),
        (
            BASE + "destinations: ['80 tcp 203.0.113.25', 203.0.113.27]\nextraPorts: [9090/tcp]\n",
            "cannot parse r.yaml: extraPorts[0] '9090/tcp': is the router's own HTTP port "
            "(httpPort), which the fallback does not serve; remove it here or move the HTTP port",
        ),
        (
            BASE + "destinations: ['80 tcp 203.0.113.25', 203.0.113.27]\nextraPorts: [9000]\n",
            "cannot parse r.yaml: extraPorts[0] '9000': expected <port>/<protocol>, e.g. 9000/tcp",
        ),
        (
            BASE + "destinations: ['80 tcp 2001:db8:113::25']\n",
            "cannot parse r.yaml: destinations[0] '80 tcp 2001:db8:113::25': destination "
            "2001:db8:113::25 is IPv6 but source has no IPv6 address; add one (e.g. "
            "source=<v4>,<v6>) or remove the line",
        ),
        (
            BASE + "destinations: ['80 tcp 203.0.113.25']\ndestination: x\n",
            "cannot parse r.yaml: destination: unknown field; did you mean destinations? expected "
            "one of name, namespace, source, gateway, destinations, extraPorts, attachment, image, "
            "imagePullPolicy, nodeSelector, resources, backend, podInterface, httpPort, debug, "
            "ha, vrid, mode",
        ),
        (
            BASE + "destinations: ['80 tcp 203.0.113.25'\n",
            "cannot parse r.yaml line 6 column 1: expected ',' or ']', but got '<stream end>'; "
            "fix the YAML",
        ),
        (
            BASE + "destinations: ['80 tcp 203.0.113.25']\nsource: 192.168.12.98\n",
            "cannot parse r.yaml line 6 column 1: duplicate key 'source'; fix the YAML",
        ),
        (
            BASE.replace("egress-1", "Egress_1") + "destinations: ['80 tcp 203.0.113.25']\n",
            "cannot parse r.yaml: name 'Egress_1': invalid name; expected at most 63 characters "
            "a-z, 0-9 and '-', starting with a letter and ending with a letter or digit (it "
            "names the Service)",
        ),
        (
            BASE.replace("/24", "/33") + "destinations: ['80 tcp 203.0.113.25']\n",
            "cannot parse r.yaml: source '192.168.12.99/33': prefix length 33 is out of range "
            "for IPv4; expected 1 to 32",
        ),
        (
            BASE.replace("annotation", "{type: sdn}") + "destinations: ['80 tcp 203.0.113.25']\n",
            "cannot parse r.yaml: attachment.type 'sdn': unknown value; expected one of "
            "annotation, cni",
        ),
        (
            BASE.replace("attachment: annotation\n", "")
            + "destinations: ['80 tcp 203.0.113.25']\n",
            "cannot parse r.yaml: attachment: is not set; expected type: annotation (OpenShift "
            "SDN) or type: cni (Multus)",
        ),
        (
            BASE.replace("annotation", "{type: cni, mode: Bridge}")
            + "destinations: ['80 tcp 203.0.113.25']\n",
            "cannot parse r.yaml: attachment.mode 'Bridge': unknown value; expected one of "
            "bridge, private, vepa, passthru",
        ),
        (
            BASE + "destinations: ['80 tcp 203.0.113.25']\npodInterface: macvlan0\n",
            "cannot parse r.yaml: podInterface 'macvlan0': is macvlan0, the physical-network "
            "interface the platform adds; expected the pod-network interface (usually eth0)",
        ),
        (
            BASE + "destinations: ['80 tcp 203.0.113.25']\nnodeSelector: {egress: true}\n",
            "cannot parse r.yaml: nodeSelector.egress 'true': must be a string, not a boolean "
            "(quote it)",
        ),
        (
            BASE + "destinations: ['80 tcp 203.0.113.25']\nhttpPort: 99999\n",
            "cannot parse r.yaml: httpPort '99999': expected a whole number from 0 to 65535",
        ),
        ("- a\n", "cannot parse r.yaml: expected a YAML mapping, found a list"),
        (
            BASE.replace("annotation", "cni") + "destinations: ['80 tcp 203.0.113.25']\n"
            "backend: iptables\n",
            "cannot parse r.yaml: backend 'iptables': with attachment cni the CNI plugin sets the "
            "router up, and it programs nftables; remove backend, or use attachment annotation",
        ),
    ],
    ids=[
        "list-line", "block-line", "duplicate-port", "http-port", "extra-without-fallback",
        "extra-with-rule", "extra-http-port", "extra-form", "family", "unknown-field",
        "yaml-syntax", "duplicate-key", "name", "source", "attachment-type", "no-attachment",
        "macvlan-mode", "pod-interface", "node-selector", "http-port-range", "not-a-mapping",
        "cni-backend",
    ],
)
def test_config_errors_name_the_field(text: str, message: str) -> None:
    assert error_of(text) == message


CR = (EXAMPLES / "egressrouter.yaml").read_text()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            CR.replace("port: 8080", "port: '8080'"),
            "cannot parse r.yaml: spec.redirect.redirectRules[1].port: '8080' is not of type "
            "'integer'; expected an EgressRouter of network.operator.openshift.io/v1 in "
            "redirect mode",
        ),
        (
            CR.replace("protocol: UDP", "protocol: ICMP"),
            "cannot parse r.yaml: spec.redirect.redirectRules[3].protocol: 'ICMP' is not one of "
            "['TCP', 'UDP', 'SCTP']; expected an EgressRouter of network.operator.openshift.io/v1 "
            "in redirect mode",
        ),
        (
            CR.replace("      gateway: 192.168.12.1\n", ""),
            "cannot parse r.yaml: spec.addresses[0].gateway: is not set; egress-router does not "
            "guess the gateway: add the physical network's gateway",
        ),
        (
            CR.replace("fallbackIP", "fallbackIp"),
            "cannot parse r.yaml: spec.redirect: Additional properties are not allowed "
            "('fallbackIp' was unexpected); expected an EgressRouter of "
            "network.operator.openshift.io/v1 in redirect mode",
        ),
        (
            CR.replace("203.0.113.26\n        port: 8443", "203.0.113.260\n        port: 8443"),
            "cannot parse r.yaml: spec.redirect.redirectRules[2] '8443 tcp 203.0.113.260 443': "
            "invalid destination address '203.0.113.260'; expected an IPv4 address such as "
            "203.0.113.25 or an IPv6 address such as 2001:db8::25",
        ),
        (
            CR.replace("port: 8443", "port: 80"),
            "cannot parse r.yaml: spec.redirect.redirectRules[2] '80 tcp 203.0.113.26 443': port "
            "80/tcp is already redirected on spec.redirect.redirectRules[0]; each local port may "
            "have one rule per protocol",
        ),
        (
            CR.replace("port: 8443", "port: 9090"),
            "cannot parse r.yaml: spec.redirect.redirectRules[2] '9090 tcp 203.0.113.26 443': "
            "port 9090/tcp is the router's own HTTP port (--http-port, /healthz, /readyz, "
            "/metrics); use another local port, or set --http-port to a free port (0 turns the "
            "HTTP server off)",
        ),
        (
            CR.replace("mode: Redirect", "mode: HTTPProxy"),
            "cannot parse r.yaml: spec.mode: 'HTTPProxy' is not one of ['Redirect']; expected an "
            "EgressRouter of network.operator.openshift.io/v1 in redirect mode",
        ),
        (
            CR.replace("name: egress-router-redirect", "name: 1egress"),
            "cannot parse r.yaml: metadata.name '1egress': invalid name; expected at most 63 "
            "characters a-z, 0-9 and '-', starting with a letter and ending with a letter or "
            "digit (it names the Service)",
        ),
    ],
    ids=["port-type", "protocol", "no-gateway", "typo", "address", "duplicate", "http-port",
         "mode", "name"],
)
def test_egressrouter_errors_name_the_field(text: str, message: str) -> None:
    assert error_of(text, manifest.load_egressrouter_text) == message


# --------------------------------------------------------------------------- the command


def run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egress_router", "render", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_render_command_prints_the_golden_yaml_and_checks_it() -> None:
    done = run(["--check", "examples/seed.yaml"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == (GOLDEN / "seed.yaml").read_text()
    assert done.stderr.splitlines() == [
        "egress-router: checked ConfigMap egress-1: valid against Kubernetes 1.37",
        "egress-router: checked Service egress-1: valid against Kubernetes 1.37",
        "egress-router: checked Deployment egress-1: valid against Kubernetes 1.37",
        "egress-router: checked Service ports match the rules one to one; the pod reads the "
        "ConfigMap",
    ]


def test_render_command_from_egressrouter_on_stdin_warns_about_the_fallback() -> None:
    done = run(["--from-egressrouter", "-"], stdin=CR)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (GOLDEN / "egressrouter.yaml").read_text()
    assert done.stderr.startswith("egress-router: warning: the fallback (203.0.113.27) serves")


def test_render_command_writes_one_file_per_object(tmp_path: Path) -> None:
    done = run(["--output-dir", str(tmp_path / "out"), "examples/cni.yaml"])
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == [
        "01-configmap.yaml", "02-networkattachmentdefinition.yaml", "03-daemonset.yaml",
        "04-service.yaml", "05-deployment.yaml",
    ]
    documents = [
        d for f in files
        for d in yaml.safe_load_all((tmp_path / "out" / f).read_text()) if d is not None
    ]
    golden = [d for d in yaml.safe_load_all((GOLDEN / "cni.yaml").read_text()) if d is not None]
    assert documents == golden


def test_render_command_bad_input_exits_1_with_one_line() -> None:
    done = run(["-"], stdin=BASE + "destinations: ['80 tcp 203.0.113.25', 80 tcp x]\n")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        "egress-router: error: cannot parse <stdin>: destinations[1] '80 tcp x': invalid "
        "destination address 'x'; expected an IPv4 address such as 203.0.113.25, an IPv6 "
        "address such as 2001:db8::25 or a host name such as api.example.com\n"
    )


def test_render_command_refuses_a_fifo_and_a_huge_file_instead_of_hanging(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "router.yaml"
    os.mkfifo(fifo)  # no writer: a plain read would block forever (run's timeout would fire)
    done = run([str(fifo)])
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        f"egress-router: error: cannot read config file {str(fifo)!r}: it is a FIFO (named "
        "pipe), not a regular file; point FILE at a file\n"
    )
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as fh:  # sparse: no disk used
        fh.truncate(config.DESTINATION_FILE_LIMIT + 1)
    done = run(["--from-egressrouter", str(huge)])
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"egress-router: error: cannot read file {str(huge)!r}: it is larger than "
        f"{config.DESTINATION_FILE_LIMIT} bytes ({config.DESTINATION_FILE_LIMIT + 1} bytes)"
    )
    # The control: the same path as a regular file renders.
    fifo.unlink()
    fifo.write_text((ROOT / "examples" / "seed.yaml").read_text())
    assert run([str(fifo)]).returncode == 0


def test_render_command_refuses_a_huge_stdin() -> None:
    done = run(["-"], stdin="#" * (config.DESTINATION_FILE_LIMIT + 1))
    assert done.returncode == 1
    assert done.stderr == (
        f"egress-router: error: cannot read <stdin>: it is larger than "
        f"{config.DESTINATION_FILE_LIMIT} bytes; give a smaller configuration\n"
    )


def test_render_command_needs_exactly_one_input() -> None:
    both = run(["examples/seed.yaml", "--from-egressrouter", "examples/egressrouter.yaml"])
    neither = run([])
    for done in (both, neither):
        assert done.returncode == 2
        assert "give either a config file or --from-egressrouter FILE" in done.stderr


# --------------------------------------------------------------------------- the image


def containerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Containerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(" ", 1)[0], line.split(" ", 1)[1])
        for line in lines if line and not line.startswith("#")
    ]


def test_image_entry_point_is_the_console_script_and_runs_as_root_like_upstreams() -> None:
    instructions = containerfile()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entrypoint,) = [json.loads(a) for i, a in instructions if i == "ENTRYPOINT"]
    assert entrypoint == ["egress-router"]
    assert entrypoint[0] in scripts
    # Build stages on one base (a build argument whose default is the public Python base),
    # the image on the same base.
    (arg,) = [a for i, a in instructions if i == "ARG"]
    name, _, default = arg.partition("=")
    assert "python:3.11-slim" in default
    assert [a.split()[0] for i, a in instructions if i == "FROM"] == [
        f"${{{name}}}", "deps", "deps", f"${{{name}}}"]
    # The installer DaemonSet's --source: the one-file plugin the cni stage built.
    copies = [a.split() for i, a in instructions if i == "COPY"]
    assert ["--from=cni", "/cni/egress-router-cni", manifest.CNI_EXECUTABLE] in copies
    # Root by default, as OpenShift's image: the seed's Pod sets no runAsUser, and a
    # privileged container of a non-root user gets no capabilities. The unprivileged user
    # the rendered proxies and operator run as (runAsUser 65532) is made in the image.
    assert [a for i, a in instructions if i == "USER"] == []
    runs_text = " ".join(a for i, a in instructions if i == "RUN")
    assert "--uid 65532" in runs_text
    runs = " ".join(a for i, a in instructions if i == "RUN")
    # iproute2: the waiting process reads links and routes with `ip -j`; conntrack: it cuts
    # the connections of removed rules.
    for package in ("nftables", "iptables", "iproute2", "conntrack"):
        assert package in runs.split()
    assert f"{render.KUBERNETES_VERSION}" in render.kubernetes_versions()
    ignored = (ROOT / ".containerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


def test_egressrouter_addresses_of_one_family_become_a_pool() -> None:
    pool = CR.replace(
        "    - ip: 192.168.12.99/24\n      gateway: 192.168.12.1\n",
        "    - ip: 192.168.12.99/24\n      gateway: 192.168.12.1\n"
        "    - ip: 192.168.12.100/24\n      gateway: 192.168.12.1\n",
    )
    spec = manifest.load_egressrouter_text(pool, "r.yaml")
    assert [str(s.interface) for s in spec.sources] == ["192.168.12.99/24", "192.168.12.100/24"]
    other = pool.replace(
        "100/24\n      gateway: 192.168.12.1", "100/24\n      gateway: 192.168.12.2"
    )
    assert error_of(other, manifest.load_egressrouter_text) == (
        "cannot parse r.yaml: spec.addresses[1].gateway '192.168.12.2': differs from the gateway "
        "of the first IPv4 address (192.168.12.1); the IPv4 addresses form one source-address "
        "pool behind one gateway"
    )


def test_render_config_source_list_is_a_pool_in_the_environment() -> None:
    text = BASE.replace(
        "source: 192.168.12.99/24", "source: [192.168.12.99/24, 192.168.12.100/24]"
    ) + "destinations: |\n  80 tcp 203.0.113.25\n"
    spec = manifest.load_config_text(text, "r.yaml")
    assert [str(s.address) for s in spec.sources] == ["192.168.12.99", "192.168.12.100"]


# --------------------------------------------------------------------------- ha: true


def test_ha_renders_a_pair_on_two_nodes_with_a_budget_and_a_role_probe() -> None:
    objects = render.render(load("ha")).objects
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    pod = deployment["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    (main,) = pod["containers"]
    env = {e["name"]: e["value"] for e in main["env"]}
    assert env["EGRESS_ROUTER_HA"] == "vrrp" and env["EGRESS_HA_VRID"] == "99"
    assert main["readinessProbe"]["periodSeconds"] == 1
    assert main["readinessProbe"]["failureThreshold"] == 1
    assert main["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    budget = one(objects, "PodDisruptionBudget")
    assert budget["spec"] == {"maxUnavailable": 1,
                              "selector": deployment["spec"]["selector"]}
    assert render.check(objects)[-1].startswith("Service ports match")


def test_single_replica_render_is_unchanged_by_ha_support() -> None:
    objects = render.render(load("seed")).objects
    assert one(objects, "Deployment")["spec"]["replicas"] == 1
    assert [o for o in objects if o["kind"] == "PodDisruptionBudget"] == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("ha: true\n", "cannot parse r.yaml: vrid: is required with ha: true"),
        ("ha: true\nvrid: 0\n", "cannot parse r.yaml: vrid '0'"),
        ("ha: maybe\nvrid: 3\n", "cannot parse r.yaml: ha 'maybe': must be true or false"),
        ("vrid: 3\n", "cannot parse r.yaml: vrid '3': is set but ha is not true"),
    ],
)
def test_ha_input_errors(extra: str, message: str) -> None:
    assert error_of(BASE + "destinations: '80 tcp 203.0.113.25'\n" + extra).startswith(message)


def test_ha_with_the_cni_attachment_puts_the_pair_in_the_plugins_configuration() -> None:
    objects = render.render(load("ha-cni")).objects
    nad = one(objects, "NetworkAttachmentDefinition")
    conf = json.loads(nad["spec"]["config"])
    assert conf["ha"] == {"mode": "vrrp", "vrid": 5}
    # The plugin's own parser takes it, and ADD's plan adds no reserved address.
    parsed = netconf.parse(conf, "net1")
    assert parsed.ha is not None and parsed.ha.vrid == 5
    assert json.loads(one(objects, "ConfigMap")["data"]["cni.json"]) == conf  # wait reads it
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert "initContainers" not in pod  # the plugin sets the router up
    (main,) = pod["containers"]
    env = {e["name"]: e["value"] for e in main["env"]}
    assert env == {"EGRESS_ROUTER_CNI_CONFIG": "/etc/egress-router/cni.json",
                   "EGRESS_INTERFACE": "net1"}  # the pair comes from the configuration
    assert main["readinessProbe"]["periodSeconds"] == 1
    assert main["readinessProbe"]["failureThreshold"] == 1
    assert {"name": "run", "mountPath": "/run"} in main["volumeMounts"]
    assert one(objects, "PodDisruptionBudget")["spec"]["selector"] == \
        deployment["spec"]["selector"]
    assert render.check(objects)[-1].startswith("Service ports match")


def test_check_refuses_a_cni_pair_whose_configuration_has_no_ha() -> None:
    objects = render.render(load("ha-cni")).objects
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            conf = json.loads(obj["data"]["cni.json"])
            del conf["ha"]
            obj["data"]["cni.json"] = json.dumps(conf)
    with pytest.raises(render.CheckError, match="does not run EGRESS_ROUTER_HA=vrrp"):
        render.check(objects)


@pytest.mark.parametrize(
    ("ha_field", "message"),
    [({"mode": "vrrp", "vrid": 0}, "0 is less than the minimum of 1"),
     ({"mode": "carp", "vrid": 5}, "'vrrp' was expected"),
     ({"mode": "vrrp"}, "'vrid' is a required property")],
)
def test_check_refuses_a_bad_ha_field_in_the_plugins_configuration(
    ha_field: dict[str, Any], message: str
) -> None:
    objects = render.render(load("ha-cni")).objects
    for obj in objects:
        if obj["kind"] == "NetworkAttachmentDefinition":
            conf = json.loads(obj["spec"]["config"])
            conf["ha"] = ha_field
            obj["spec"]["config"] = json.dumps(conf)
    with pytest.raises(render.CheckError, match=message):
        render.check(objects)


def test_check_refuses_two_replicas_without_ha() -> None:
    objects = render.render(load("seed")).objects
    one(objects, "Deployment")["spec"]["replicas"] = 2
    with pytest.raises(render.CheckError, match="does not run EGRESS_ROUTER_HA=vrrp"):
        render.check(objects)


def test_check_refuses_a_pair_that_may_share_a_node() -> None:
    objects = render.render(load("ha")).objects
    del one(objects, "Deployment")["spec"]["template"]["spec"]["affinity"]
    with pytest.raises(render.CheckError, match="may share a node"):
        render.check(objects)


# --------------------------------------------------------------------------- EgressRouter + HA

CR_HA = CR.replace("  namespace: egress\n",
                   "  namespace: egress\n  annotations:\n    egress-router/ha-vrid: \"51\"\n")


def test_the_egressrouter_ha_annotation_renders_a_pair_through_the_plugin() -> None:
    assert CR_HA != CR
    spec = manifest.load_egressrouter_text(CR_HA, "cr.yaml")
    assert spec.ha and spec.vrid == 51 and spec.attachment is manifest.Attachment.CNI
    objects = render.render(spec).objects
    conf = json.loads(one(objects, "NetworkAttachmentDefinition")["spec"]["config"])
    assert conf["ha"] == {"mode": "vrrp", "vrid": 51}
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert one(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert render.check(objects)[-1].startswith("Service ports match")
    # Without the annotation, the import stays the one replica it always was.
    plain = render.render(manifest.load_egressrouter_text(CR, "cr.yaml")).objects
    assert one(plain, "Deployment")["spec"]["replicas"] == 1
    assert "ha" not in json.loads(one(plain, "NetworkAttachmentDefinition")["spec"]["config"])


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        ('egress-router/ha-vrid: "0"',
         "cannot parse r.yaml: metadata.annotations.egress-router/ha-vrid: invalid value "
         "'0'; expected a VRRP router id from 1 to 255"),
        ("egress-router/ha-vrid: 51",
         "cannot parse r.yaml: metadata.annotations.egress-router/ha-vrid '51': must be a "
         "string, not a number (quote it)"),
        ('egress-router/ha_vrid: "51"',
         "cannot parse r.yaml: metadata.annotations.egress-router/ha_vrid: unknown annotation; "
         "did you mean egress-router/ha-vrid? expected egress-router/ha-vrid"),
    ],
    ids=["range", "unquoted", "typo"],
)
def test_a_bad_egressrouter_ha_annotation_is_refused_by_name(
    annotation: str, message: str
) -> None:
    text = CR.replace("  namespace: egress\n", f"  namespace: egress\n  annotations:\n"
                      f"    {annotation}\n")
    assert error_of(text, manifest.load_egressrouter_text).startswith(message)


def test_the_egressrouter_ha_annotation_needs_an_ipv4_address() -> None:
    v6 = CR_HA.replace("192.168.12.99/24", "2001:db8:12::99/64").replace(
        "gateway: 192.168.12.1", "gateway: 2001:db8:12::1")
    for old, new in (("203.0.113.25", "2001:db8:113::25"), ("203.0.113.26", "2001:db8:113::26"),
                     ("203.0.113.27", "2001:db8:113::27")):
        v6 = v6.replace(old, new)
    assert error_of(v6, manifest.load_egressrouter_text) == (
        "cannot parse r.yaml: spec.addresses: has no IPv4 address; egress-router/ha-vrid "
        "elects over IPv4 (VRRPv3): add the IPv4 reserved address or remove the annotation"
    )


def test_a_cni_attachment_with_a_source_pool_passes_the_check() -> None:
    # The schema of the plugin's configuration is the plugin's own vocabulary (core/config/
    # cniconf): a pool of up to MAX_POOL addresses a family. The renderer's copy of the schema
    # allowed two addresses in all, so --check refused a pool the plugin accepts.
    text = (
        "name: egress-1\nattachment: cni\n"
        "source: [192.168.12.99/24, 192.168.12.100/24, 192.168.12.101/24]\n"
        "gateway: 192.168.12.1\ndestinations: ['80 tcp 203.0.113.25']\n"
    )
    objects = render.render(manifest.load_config_text(text, "r.yaml")).objects
    conf = json.loads(one(objects, "NetworkAttachmentDefinition")["spec"]["config"])
    assert len(conf["ip"]["addresses"]) == 3
    assert len(netconf.parse(conf, "net1").sources) == 3
    render.check(objects)


def test_the_plugin_and_the_schema_share_one_vocabulary() -> None:
    assert tuple(netconf.LOG_LEVELS) == cniconf.LOG_LEVEL_NAMES
    props = cniconf.SCHEMA["properties"]
    assert props["cniVersion"]["enum"] == list(netconf.SUPPORTED_VERSIONS)
    assert props["interfaceArgs"]["properties"]["mode"]["enum"] == list(netconf.MACVLAN_MODES)


# --------------------------------------------------------------------------- proxy pods


@pytest.mark.parametrize("name", ["http-proxy", "dns-proxy"])
def test_proxy_pods_validate_and_keep_their_invariants(name: str) -> None:
    objects = render.render(load(name)).objects
    assert [o["kind"] for o in objects] == ["ConfigMap", "Service", "Deployment"]
    render.check(objects)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    init_env = {e["name"]: e["value"] for e in init["env"]}
    assert init_env["EGRESS_ROUTER_MODE"] == name
    assert "EGRESS_DESTINATION_FILE" not in init_env
    # The init container's environment is accepted by the router's own parser as is.
    config.load_config(init_env)
    (main,) = pod["containers"]
    assert main["args"] == [name]
    assert main["securityContext"]["runAsNonRoot"] is True
    assert main["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_dns_proxy_ports_are_the_service_and_low_ports_get_the_sysctl() -> None:
    objects = render.render(load("dns-proxy")).objects
    ports = [(p["port"], p["targetPort"]) for p in one(objects, "Service")["spec"]["ports"]]
    assert ports == [(80, 80), (8443, 8443), (5432, 5432)]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["sysctls"] == [
        {"name": "net.ipv4.ip_unprivileged_port_start", "value": "80"}
    ]


def test_check_refuses_a_proxy_service_without_the_proxy_port() -> None:
    objects = render.render(load("http-proxy")).objects
    one(objects, "Service")["spec"]["ports"][0]["port"] = 3128
    with pytest.raises(render.CheckError, match="are not the http-proxy's ports"):
        render.check(objects)


def test_check_refuses_a_privileged_proxy_container() -> None:
    objects = render.render(load("http-proxy")).objects
    main = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    main["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]
    with pytest.raises(render.CheckError, match="must run as non-root"):
        render.check(objects)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("mode: http-proxy\ndestinations: [intranet]\n",
         "cannot parse r.yaml: destinations[0] 'intranet': 'intranet' is a single-label name"),
        ("mode: dns-proxy\ndestinations: [80 203.0.113.25, 80 203.0.113.26]\n",
         "cannot parse r.yaml: destinations[1] '80 203.0.113.26': port 80 is already forwarded "
         "by destinations[0]"),
        ("mode: dns-proxy\ndestinations: [9090 203.0.113.25]\n",
         "cannot parse r.yaml: destinations[0] '9090 203.0.113.25': port 9090 is the router's "
         "HTTP port (httpPort)"),
        ("mode: http-proxy\nhttpPort: 8080\ndestinations: ['*']\n",
         "cannot parse r.yaml: httpPort '8080': is the HTTP proxy's port 8080"),
        ("mode: http-proxy\nextraPorts: [9000/tcp]\ndestinations: ['*']\n",
         "cannot parse r.yaml: extraPorts"),
        ("mode: socks\ndestinations: ['*']\n", "cannot parse r.yaml: mode"),
    ],
)
def test_proxy_config_errors_name_the_field(extra: str, message: str) -> None:
    assert error_of(BASE + extra).startswith(message)


def _pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    specs = []
    for obj in objects:
        spec = obj.get("spec", {})
        if obj["kind"] == "Pod":
            specs.append(spec)
        elif "template" in spec:
            specs.append(spec["template"]["spec"])
    return specs


@pytest.mark.parametrize("name", ["seed", "cni", "egressrouter", "http-proxy", "dns-proxy",
                                  "ha", "ha-cni", "operator"])
def test_every_rendered_container_says_who_runs_it(name: str) -> None:
    # The image runs as root by default (upstream's manifests set no runAsUser), so every
    # container we render states its user: none may inherit root by accident.
    from egress_router.k8s import operator_manifest  # noqa: PLC0415

    objects = (operator_manifest.objects() if name == "operator"
               else render.render(load(name)).objects)
    specs = _pod_specs(objects)
    assert specs
    for spec in specs:
        pod_user = spec.get("securityContext", {}).get("runAsUser")
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            user = container.get("securityContext", {}).get("runAsUser", pod_user)
            assert isinstance(user, int), (name, container["name"])
            if user == 0:
                assert container["name"] in ("setup", "egress-router", "install-cni",
                                             "egress-router-setup", "wait"), container["name"]
