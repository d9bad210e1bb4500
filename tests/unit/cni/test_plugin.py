"""The CNI plugin's commands without privilege: ADD, DEL, CHECK, STATUS, GC, VERSION.

The commands run against a fake kernel that records every side effect, so
the order of operations and the rollback of a failed ADD are asserted
exactly; the console script itself runs for VERSION and for bad
configurations (which fail before any side effect, so need no root).
"""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from egress_router.cni import errors, macvlan, netconf, plugin, result
from egress_router.cni import runtime as cnirun
from egress_router.cni.errors import CniError
from egress_router.core import config, drift, plan, state
from support.cni import CONF, LISTING, MAC, NETNS, healthy

ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "c0ffee",
    "CNI_NETNS": NETNS,
    "CNI_IFNAME": "net1",
    "CNI_PATH": "/opt/cni/bin",
}


# ------------------------------------------------------------------ the fake kernel


@dataclass
class FakeKernel:
    """Records side effects; ``fail`` names a method that raises (to test rollbacks)."""

    namespaces: set[str] = field(default_factory=lambda: {NETNS})
    host: dict[str, macvlan.HostLink] = field(
        default_factory=lambda: {
            "ens3": macvlan.HostLink("ens3", 2, 1500, True),
            "lo": macvlan.HostLink("lo", 1, 65536, True),
        }
    )
    host_macvlan_names: list[str] = field(default_factory=list)
    pod_links: set[str] = field(default_factory=lambda: {"lo", "eth0"})
    default_iface: str | None = "ens3"
    ops: list[str] = field(default_factory=list)
    fail: str | None = None
    observed: state.Snapshot | None = None
    nft_missing: bool = False
    ip_missing: bool = False

    def _maybe_fail(self, name: str) -> None:
        if self.fail == name:
            raise CniError(errors.ROUTER_SETUP_FAILED, f"cannot {name}: injected failure")

    def netns_exists(self, path: str) -> bool:
        return path in self.namespaces

    def default_route_interface(self) -> str | None:
        return self.default_iface

    def host_link(self, name: str) -> macvlan.HostLink | None:
        return self.host.get(name)

    def host_link_names(self) -> list[str]:
        return sorted(self.host)

    def nft_problem(self) -> str | None:
        return "the nft binary is not on the node" if self.nft_missing else None

    def ip_problem(self) -> str | None:
        return "the ip binary is not on the node" if self.ip_missing else None

    def create_macvlan(self, name: str, master: macvlan.HostLink, mode: str, mtu: int) -> None:
        self._maybe_fail("create_macvlan")
        self.ops.append(f"create {name} on {master.name} {mode} {mtu}")
        self.host_macvlan_names.append(name)

    def delete_host_macvlan(self, name: str) -> bool:
        if name in self.host_macvlan_names:
            self.host_macvlan_names.remove(name)
            self.ops.append(f"delete {name} from node")
            return True
        return False

    def host_macvlans(self) -> list[str]:
        return list(self.host_macvlan_names)

    def move_to_netns(self, name: str, path: str) -> None:
        self._maybe_fail("move_to_netns")
        self.host_macvlan_names.remove(name)
        self.ops.append(f"move {name}")

    def probe_pod(self, path: str, ifname: str, pod_interface: str) -> macvlan.PodProbe:
        self.ops.append("probe")
        return macvlan.PodProbe(ifname in self.pod_links, pod_interface in self.pod_links)

    def setup_pod(
        self, path: str, temp: str, cfg: config.Config, *, pod_side: bool = True
    ) -> result.Interface:
        self._maybe_fail("setup_pod")
        side = "" if pod_side else " egress-side-only"
        self.ops.append(f"setup {cfg.egress_interface} pod={cfg.pod_interface}{side}")
        self.pod_links.add(cfg.egress_interface)
        return result.Interface(cfg.egress_interface, MAC, 1500, path)

    def undo_pod(self, path: str, names: Sequence[str], probe: macvlan.PodProbe) -> None:
        self.ops.append(f"undo {','.join(names)}")

    def teardown_pod(self, path: str, ifname: str) -> list[str]:
        self.ops.append(f"teardown {ifname}")
        if ifname in self.pod_links:
            self.pod_links.remove(ifname)
            return [f"macvlan {ifname}"]
        return []

    def inspect_pod(self, path: str) -> state.Snapshot:
        self.ops.append(f"inspect {path}")
        assert self.observed is not None
        return self.observed

    def ruleset_listing(self, cfg: config.Config) -> str:
        return LISTING


def invoke(
    conf: dict[str, Any] | str | bytes,
    fake: FakeKernel,
    **env: str,
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    data = conf if isinstance(conf, bytes) else (
        conf.encode() if isinstance(conf, str) else json.dumps(conf).encode()
    )
    code = plugin.run({**ENV, **env}, data, out, err, fake)
    return code, out.getvalue(), err.getvalue()


def error_of(stdout: str) -> tuple[int, str]:
    obj = json.loads(stdout)
    assert set(obj) <= {"cniVersion", "code", "msg", "details"}
    return obj["code"], obj["msg"]


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
    yield
    logging.getLogger("egress_router").handlers.clear()
    logging.getLogger("egress_router").propagate = True


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CNI_COMMAND": ""}, "cannot run the egress-router CNI plugin: CNI_COMMAND is not set"),
        ({"CNI_COMMAND": "ATTACH"}, "CNI_COMMAND is 'ATTACH'; expected one of ADD, DEL, CHECK"),
        ({"CNI_NETNS": ""}, "cannot run CNI ADD: CNI_NETNS not set; the runtime must set "
         "CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME"),
        ({"CNI_CONTAINERID": "-x"}, "CNI_CONTAINERID '-x' is not a valid container ID"),
        ({"CNI_IFNAME": "a" * 16}, f"cannot use interface name '{'a' * 16}' from CNI_IFNAME"),
    ],
)
def test_bad_environment_is_code_4(env: dict[str, str], message: str) -> None:
    code, out, err = invoke(CONF, FakeKernel(), **env)
    assert code == 1
    assert error_of(out)[0] == errors.INVALID_ENVIRONMENT
    assert message in error_of(out)[1]
    assert "Traceback" not in out + err


def test_undecodable_stdin_is_code_6() -> None:
    for data in (b"\xff\xfe", b"[1, 2]", b""):
        code, out, _ = invoke(data, FakeKernel())
        assert code == 1
        assert error_of(out)[0] == errors.DECODE_FAILURE




# ------------------------------------------------------------------ the commands


def test_version() -> None:
    code, out, _ = invoke({"cniVersion": "0.4.0"}, FakeKernel(), CNI_COMMAND="VERSION")
    assert code == 0
    assert json.loads(out) == {"cniVersion": "0.4.0",
                               "supportedVersions": list(netconf.SUPPORTED_VERSIONS)}


def test_add_creates_moves_then_sets_up_and_prints_the_result() -> None:
    fake = FakeKernel()
    code, out, err = invoke(CONF, fake)
    assert code == 0, out + err
    temp = macvlan.temp_name("c0ffee", "net1")
    assert fake.ops == ["probe", f"create {temp} on ens3 private 1500", f"move {temp}",
                        "setup net1 pod=eth0"]
    assert fake.host_macvlan_names == []
    assert json.loads(out)["interfaces"] == [{"name": "net1", "mac": MAC, "sandbox": NETNS}]


@pytest.mark.parametrize("step", ["create_macvlan", "move_to_netns", "setup_pod"])
def test_failed_add_undoes_everything_it_did(step: str) -> None:
    fake = FakeKernel(fail=step)
    code, out, err = invoke(CONF, fake)
    assert code == 1
    assert error_of(out) == (errors.ROUTER_SETUP_FAILED, f"cannot {step}: injected failure")
    temp = macvlan.temp_name("c0ffee", "net1")
    undone = {
        "create_macvlan": ["probe"],
        "move_to_netns": ["probe", f"create {temp} on ens3 private 1500",
                          f"undo {temp},net1", f"delete {temp} from node"],
        "setup_pod": ["probe", f"create {temp} on ens3 private 1500", f"move {temp}",
                      f"undo {temp},net1"],
    }[step]
    assert fake.ops == undone
    assert fake.host_macvlan_names == []
    assert "Traceback" not in out + err


def test_add_refuses_before_any_side_effect() -> None:
    cases: list[tuple[FakeKernel, dict[str, Any], int, str]] = [
        (FakeKernel(namespaces=set()), CONF, errors.CONTAINER_UNKNOWN,
         f"network namespace '{NETNS}' does not exist"),
        (FakeKernel(), {**CONF, "interfaceArgs": {"master": "ens9"}}, errors.MASTER_NOT_FOUND,
         "master interface 'ens9' (from interfaceArgs.master) does not exist on this node; "
         "bring it up on the node, or set interfaceArgs.master to one of: ens3"),
        (FakeKernel(default_iface=None), {**CONF, "interfaceArgs": {}}, errors.MASTER_NOT_FOUND,
         "the node has no default route; set interfaceArgs.master"),
        (FakeKernel(pod_links={"lo", "eth0", "net1"}), CONF, errors.INTERFACE_EXISTS,
         "an interface named 'net1' already exists"),
        (FakeKernel(nft_missing=True), CONF, errors.ROUTER_SETUP_FAILED,
         "the nft binary is not on the node"),
    ]
    for fake, conf, want_code, fragment in cases:
        code, out, _ = invoke(conf, fake)
        assert code == 1
        got_code, msg = error_of(out)
        assert got_code == want_code, msg
        assert fragment in msg
        assert not [op for op in fake.ops if op != "probe"]


def test_add_before_the_pod_network_sets_up_the_egress_side_only() -> None:
    fake = FakeKernel(pod_links={"lo"})  # the runtime runs our ADD before the pod network's
    code, out, err = invoke(CONF, fake)
    assert code == 0, out
    assert json.loads(out)["interfaces"][0]["name"] == "net1"
    assert [op for op in fake.ops if op.startswith("setup")] == [
        "setup net1 pod=eth0 egress-side-only"
    ]
    assert (
        f"podInterface 'eth0' is not in {NETNS} yet (the runtime ran this network's "
        "ADD before the pod network's): setting up the egress side only" in err
    )


def test_add_removes_its_own_leftover_from_an_interrupted_add() -> None:
    temp = macvlan.temp_name("c0ffee", "net1")
    fake = FakeKernel(host_macvlan_names=[temp])
    assert invoke(CONF, fake)[0] == 0
    assert fake.ops[:2] == ["probe", f"delete {temp} from node"]


def test_del_is_idempotent_and_tolerates_what_add_refused() -> None:
    fake = FakeKernel(pod_links={"lo", "eth0", "net1"})
    for _ in range(2):
        code, out, _ = invoke(CONF, fake, CNI_COMMAND="DEL")
        assert (code, out) == (0, "")
    assert fake.ops == ["teardown net1", "teardown net1"]
    assert "net1" not in fake.pod_links
    bad = {**CONF, "ip": {"addresses": ["nope"]}}
    code, out, _ = invoke(bad, FakeKernel(), CNI_COMMAND="DEL")
    assert (code, out) == (0, "")
    gone = FakeKernel(namespaces=set())
    assert invoke(CONF, gone, CNI_COMMAND="DEL", CNI_NETNS=NETNS)[:2] == (0, "")
    assert invoke(CONF, gone, CNI_COMMAND="DEL", CNI_NETNS="")[:2] == (0, "")
    assert gone.ops == []


def test_check_passes_and_reports_drift() -> None:
    prev = result.build(netconf.parse(CONF), result.Interface("net1", MAC, 1500, NETNS))
    fake = FakeKernel(observed=healthy())
    fake.host["ens3"] = macvlan.HostLink("ens3", 2, 1500, True)
    conf = {**CONF, "prevResult": prev}
    assert invoke(conf, fake, CNI_COMMAND="CHECK")[:2] == (0, "")
    fake.observed = dataclasses.replace(healthy(), table=None)
    code, out, _ = invoke(conf, fake, CNI_COMMAND="CHECK")
    assert code == 1
    obj = json.loads(out)
    assert obj["code"] == errors.CHECK_FAILED
    assert "details" not in obj  # libcni prints msg and details: no repetition
    assert obj["msg"] == (
        f"egress router net1 in {NETNS} differs from its configuration: nftables table "
        "inet egress_router is missing; run DEL and ADD again (restart the pod) to repair"
    )
    code, out, _ = invoke({**CONF, "cniVersion": "0.3.1", "prevResult": prev}, fake,
                          CNI_COMMAND="CHECK")
    assert error_of(out)[0] == errors.INCOMPATIBLE_VERSION


def test_check_names_a_deleted_return_path_rule() -> None:
    prev = result.build(netconf.parse(CONF), result.Interface("net1", MAC, 1500, NETNS))
    good = healthy()
    fake = FakeKernel(observed=dataclasses.replace(good, rules=good.rules[1:]))
    code, out, _ = invoke({**CONF, "prevResult": prev}, fake, CNI_COMMAND="CHECK")
    assert code == 1
    obj = json.loads(out)
    assert "details" not in obj  # one difference: msg says it all
    assert (
        ": IPv4 policy rules for replies to the pod network differ: missing ip rule add priority "
        "25970 iif net1 lookup main suppress_prefixlength 0; run DEL and ADD again"
    ) in obj["msg"]


def test_status_and_gc() -> None:
    new = {**CONF, "cniVersion": "1.1.0"}
    assert invoke(new, FakeKernel(), CNI_COMMAND="STATUS")[:2] == (0, "")
    _, out, _ = invoke(new, FakeKernel(nft_missing=True), CNI_COMMAND="STATUS")
    assert error_of(out)[0] == errors.PLUGIN_NOT_AVAILABLE
    _, out, _ = invoke(new, FakeKernel(ip_missing=True), CNI_COMMAND="STATUS")
    assert error_of(out) == (errors.PLUGIN_NOT_AVAILABLE,
                             "cannot serve CHECK: the ip binary is not on the node")
    _, out, _ = invoke(CONF, FakeKernel(), CNI_COMMAND="STATUS")
    assert error_of(out) == (errors.INCOMPATIBLE_VERSION,
                             "cannot run STATUS with cniVersion 1.0.0: it needs 1.1.0 or "
                             "later; raise cniVersion in the configuration")
    stale, live = macvlan.temp_name("old", "net1"), macvlan.temp_name("live", "net1")
    fake = FakeKernel(host_macvlan_names=[stale, live, "macvlan-user"])
    gc = {**new, "cni.dev/valid-attachments": [{"containerID": "live", "ifname": "net1"}]}
    assert invoke(gc, fake, CNI_COMMAND="GC")[:2] == (0, "")
    assert fake.host_macvlan_names == [live, "macvlan-user"]
    # No valid attachments: the runtime leaves the list out, and everything of ours is stale.
    assert invoke(new, fake, CNI_COMMAND="GC")[:2] == (0, "")
    assert fake.host_macvlan_names == ["macvlan-user"]


def test_check_details_hold_only_what_msg_leaves_out(monkeypatch: pytest.MonkeyPatch) -> None:
    prev = result.build(netconf.parse(CONF), result.Interface("net1", MAC, 1500, NETNS))
    many = [f"drift {i}" for i in range(drift.MAX_REPORTED + 3)]
    fake = FakeKernel(observed=healthy())
    monkeypatch.setattr(drift, "reasons", lambda problems: many)
    code, out, _ = invoke({**CONF, "prevResult": prev}, fake, CNI_COMMAND="CHECK")
    assert code == 1
    obj = json.loads(out)
    shown = many[: drift.MAX_REPORTED]
    assert obj["msg"].endswith(
        f"{'; '.join(shown)}; and 3 more (in details); run DEL and ADD again (restart the pod) "
        "to repair"
    )
    assert obj["details"] == "\n".join(many[drift.MAX_REPORTED:])
    assert not any(line in obj["msg"] for line in obj["details"].splitlines())


def test_real_kernel_finds_ip_and_nft_on_path_and_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STATUS and CHECK look for ip(8) as ADD looks for nft: on the PATH the plugin runs with."""
    kernel = macvlan.RealKernel()
    monkeypatch.setenv("PATH", str(tmp_path))  # neither is there
    assert kernel.ip_problem() == (
        "the ip binary is not on the node (CHECK reads the pod through `ip -j`); install "
        "iproute2 (apt install iproute2)"
    )
    assert kernel.nft_problem() is not None
    # The control: an executable named ip on that PATH is found.
    fake_ip = tmp_path / "ip"
    fake_ip.write_text("#!/bin/sh\n")
    fake_ip.chmod(0o755)
    assert kernel.ip_problem() is None


def test_check_without_ip_says_what_to_install() -> None:
    prev = result.build(netconf.parse(CONF), result.Interface("net1", MAC, 1500, NETNS))
    fake = FakeKernel(observed=healthy(), ip_missing=True)
    code, out, _ = invoke({**CONF, "prevResult": prev}, fake, CNI_COMMAND="CHECK")
    assert code == 1
    assert error_of(out) == (errors.PLUGIN_NOT_AVAILABLE,
                             "cannot check net1: the ip binary is not on the node")


def test_status_with_a_missing_master_says_so() -> None:
    new = {**CONF, "cniVersion": "1.1.0", "interfaceArgs": {"master": "ens9"}}
    _, out, _ = invoke(new, FakeKernel(), CNI_COMMAND="STATUS")
    assert error_of(out) == (
        errors.PLUGIN_NOT_AVAILABLE,
        "cannot serve ADD: master interface 'ens9' (from interfaceArgs.master) does not exist "
        "on this node; bring it up on the node, or set interfaceArgs.master to one of: ens3",
    )


def test_a_bug_is_code_100_without_a_traceback_on_stdout() -> None:
    class Broken(FakeKernel):
        def probe_pod(self, path: str, ifname: str, pod_interface: str) -> macvlan.PodProbe:
            raise KeyError("index")

    code, out, err = invoke({**CONF, "log_level": "debug"}, Broken())
    assert code == 1
    assert error_of(out) == (
        errors.INTERNAL,
        "cannot complete CNI ADD: unexpected KeyError: 'index'; run with \"log_level\": "
        "\"debug\" and report the log",
    )
    assert "Traceback" not in out
    assert "Traceback" in err  # the debug log keeps it for the bug report


def test_log_file_receives_the_log(tmp_path: Path) -> None:
    log_file = tmp_path / "egress.log"
    invoke({**CONF, "log_file": str(log_file), "interfaceArgs": {"master": "ens9"}},
           FakeKernel())
    text = log_file.read_text()
    assert "ERROR [ADD c0ffee net1] cannot create the macvlan: master interface 'ens9'" in text


def test_console_script_version_and_bad_config_need_no_privilege() -> None:
    version = cnirun.invoke("egress-router-cni", "VERSION", {"cniVersion": "1.0.0"})
    assert version.ok
    assert version.json == {"cniVersion": "1.0.0",
                            "supportedVersions": list(netconf.SUPPORTED_VERSIONS)}
    bad = {**CONF, "ip": {**CONF["ip"], "destinations": ["80 tcp 203.0.113.25",
                                                         "80 tcp 203.0.113.26"]}}
    outcome = cnirun.invoke("egress-router-cni", "ADD", bad, netns=NETNS, ifname="net1")
    assert outcome.returncode == 1
    assert outcome.code == errors.INVALID_CONFIG
    assert outcome.json is not None
    assert outcome.json["msg"] == (
        "cannot parse ip.destinations line 2 '80 tcp 203.0.113.26': port 80/tcp is already "
        "redirected on line 1; each local port may have one rule per protocol"
    )
    assert "Traceback" not in outcome.stderr


def test_a_pool_in_ip_addresses_is_reported_once_per_address_routes_once() -> None:
    conf = netconf.parse({**CONF, "ip": {**CONF["ip"], "addresses": [
        "192.168.12.99/24", "192.168.12.100/24"]}}, "net1")
    assert [str(s.interface) for s in conf.sources] == ["192.168.12.99/24", "192.168.12.100/24"]
    built = result.build(conf, result.Interface("net1", MAC, 1500, NETNS))
    assert [ip["address"] for ip in built["ips"]] == ["192.168.12.99/24", "192.168.12.100/24"]
    assert built["routes"] == [
        {"dst": "192.168.12.1/32"}, {"dst": "0.0.0.0/0", "gw": "192.168.12.1"}
    ]


def test_the_one_file_executable_runs_the_nft_it_carries(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    environ = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/opt/lib"}
    plugin._use_bundle(environ)
    assert environ == {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/opt/lib"}  # not frozen
    monkeypatch.setattr(plugin.sys, "frozen", True, raising=False)
    monkeypatch.setattr(plugin.sys, "_MEIPASS", str(tmp_path), raising=False)
    plugin._use_bundle(environ)
    assert environ["PATH"] == f"{tmp_path}/bin:/usr/bin:/bin"
    assert environ["LD_LIBRARY_PATH"] == f"{tmp_path}:/opt/lib"
    plugin._use_bundle(environ)  # idempotent
    assert environ["PATH"] == f"{tmp_path}/bin:/usr/bin:/bin"
    assert environ["LD_LIBRARY_PATH"] == f"{tmp_path}:/opt/lib"


def test_a_read_only_proc_sys_fails_add_before_the_macvlan_is_created() -> None:
    class ReadOnly(FakeKernel):
        def probe_pod(self, path: str, ifname: str, pod_interface: str) -> macvlan.PodProbe:
            self.ops.append("probe")
            return macvlan.PodProbe(False, True, unwritable=(
                ("net/ipv4/ip_forward", "is not writable (read-only /proc/sys?)"),))

    fake = ReadOnly()
    code, out, _ = invoke(CONF, fake)
    assert code == 1
    assert error_of(out) == (
        errors.ROUTER_SETUP_FAILED,
        f"cannot set up the egress router in {NETNS}: sysctl net.ipv4.ip_forward is not "
        "writable (read-only /proc/sys?); the container runtime must leave /proc/sys "
        "writable; nothing was changed",
    )
    assert fake.ops == ["probe"]  # no macvlan created, nothing to undo
    # The control: the same ADD with a writable /proc/sys creates the macvlan.
    fake = FakeKernel()
    assert invoke(CONF, fake)[0] == 0
    assert any(op.startswith("create ") for op in fake.ops)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("podInterface", 'eth0";accept', "cannot use interface name 'eth0\";accept' from "
         "podInterface: it contains '\"' (U+0022), which the ruleset and ip(8) cannot carry "
         "verbatim; rename the interface to ASCII letters, digits, '_', '-' and '.' (not "
         "first), at most 15"),
        ("podInterface", "eth0\n", "cannot use interface name 'eth0\\n' from podInterface: it "
         "contains U+000A (a control or invisible character), which the kernel refuses in an "
         "interface name; expected ASCII letters, digits, '_', '-' and '.' (not first), at "
         "most 15"),
        ("name", "egress net", "cannot parse name: invalid network name 'egress net'; the CNI "
         "specification allows only ASCII letters, digits, '_', '-' and '.'"),
        ("httpPort", "\u0669\u0660\u0669\u0660", "cannot parse httpPort: invalid value "
         "'\u0669\u0660\u0669\u0660'; expected a port from 1 to 65535, or 0 to turn the HTTP "
         "server (/healthz, /readyz, /metrics) off"),
    ],
)
def test_hostile_cni_fields_are_refused_by_name(field: str, value: str, message: str) -> None:
    fake = FakeKernel()
    code, out, _ = invoke({**CONF, field: value}, fake)
    assert (code, error_of(out)) == (1, (errors.INVALID_CONFIG, message))
    assert fake.ops == []


@pytest.mark.parametrize(
    ("mtu", "shown"), [("\u0661\u0665\u0660\u0660", "'\u0661\u0665\u0660\u0660'"),
                       ("1_500", "'1_500'"), (True, "True"), (1500.0, "1500.0")]
)
def test_the_mtu_is_ascii_digits_or_an_integer(mtu: object, shown: str) -> None:
    conf = {**CONF, "interfaceArgs": {"master": "ens3", "mtu": mtu}}
    _, out, _ = invoke(conf, FakeKernel())
    assert error_of(out) == (
        errors.INVALID_CONFIG,
        f"cannot parse interfaceArgs.mtu: invalid MTU {shown}; expected a number from 68 to "
        "65535 (or leave it out to use the master's MTU)",
    )


# ------------------------------------------------------------------ an HA replica ("ha")

HA_CONF: dict[str, Any] = {**CONF, "ha": {"mode": "vrrp", "vrid": 51}}
ADVERT = state.Address(3, ipaddress.ip_interface("169.254.7.8/16"), 253)  # RT_SCOPE_LINK


@dataclass
class RecordingKernel(FakeKernel):
    configs: list[config.Config] = field(default_factory=list)

    def setup_pod(
        self, path: str, temp: str, cfg: config.Config, *, pod_side: bool = True
    ) -> result.Interface:
        self.configs.append(cfg)
        return super().setup_pod(path, temp, cfg, pod_side=pod_side)


def test_ha_add_sets_up_everything_but_the_reserved_address() -> None:
    fake = RecordingKernel()
    code, out, err = invoke(HA_CONF, fake)
    assert code == 0, out + err
    (cfg,) = fake.configs
    assert cfg.ha is not None and cfg.ha.vrid == 51
    steps = plan.plan_interfaces(cfg)
    assert not [s for s in steps if isinstance(s, plan.SetAddress)]
    assert [s for s in steps if isinstance(s, plan.SetRoute)]  # the routes are ADD's
    reply = json.loads(out)
    assert reply["ips"] == []  # the address moves with the role; the cached result cannot
    assert {"dst": "0.0.0.0/0", "gw": "192.168.12.1"} in reply["routes"]
    assert "the address is left to the wait container's keepalived" in err


def _standby() -> state.Snapshot:
    """The HA pod with keepalived a standby: the advert source, not the reserved address."""
    snap = healthy()
    reserved = ipaddress.ip_interface("192.168.12.99/24")
    return dataclasses.replace(
        snap,
        addresses=(*tuple(a for a in snap.addresses if a.interface != reserved), ADVERT),
        routes=tuple(r for r in snap.routes
                     if r.dst != ipaddress.ip_network("192.168.12.0/24")),
    )


def test_ha_check_passes_on_the_standby_and_the_active() -> None:
    prev = result.build(netconf.parse(HA_CONF), result.Interface("net1", MAC, 1500, NETNS))
    active = dataclasses.replace(healthy(), addresses=(*healthy().addresses, ADVERT))
    for snapshot in (_standby(), active):
        fake = FakeKernel(observed=snapshot)
        assert invoke({**HA_CONF, "prevResult": prev}, fake, CNI_COMMAND="CHECK")[:2] == (0, "")
    # The control: without ha, the standby's missing address is drift.
    plain = result.build(netconf.parse(CONF), result.Interface("net1", MAC, 1500, NETNS))
    code, out, _ = invoke({**CONF, "prevResult": plain}, FakeKernel(observed=_standby()),
                          CNI_COMMAND="CHECK")
    assert code == 1 and "192.168.12.99/24" in error_of(out)[1]
    # And the rest of the data path is still checked on an HA replica.
    fake = FakeKernel(observed=dataclasses.replace(_standby(), table=None))
    code, out, _ = invoke({**HA_CONF, "prevResult": prev}, fake, CNI_COMMAND="CHECK")
    assert code == 1 and "nftables table inet egress_router is missing" in error_of(out)[1]
