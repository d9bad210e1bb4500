"""Property tests of the CNI configuration: any input is a NetConf or a CniError.

The network configuration comes from a NetworkAttachmentDefinition anyone with
the right RBAC may write, and the plugin runs as root on the node: every field,
nested or not, with any JSON value and any Unicode, must end in a validated
`NetConf` or a CNI error object, never in a traceback (code 100 on stdout).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from egress_router.cni import netconf
from egress_router.cni.errors import CniError
from egress_router.core import config, ruleset
from support.cni import CONF

ANY_CHAR = st.characters(exclude_categories=())
NEAR = st.sampled_from(list(
    "\u0661\u00b2\uff11\u2028\u00a0\u200b\x00\x0b\r\n\t \"'\\;#%/:,.+*_-\u212a09"
))
TEXT = st.one_of(st.text(ANY_CHAR, max_size=30), st.text(NEAR, max_size=10))
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
# Every path of the upstream configuration, and the optional fields of ours.
PATHS = [
    ("cniVersion",), ("name",), ("type",), ("ip",), ("ip", "addresses"), ("ip", "addresses", 0),
    ("ip", "gateway"), ("ip", "destinations"), ("ip", "destinations", 0),
    ("ip", "destinations", 1), ("interfaceType",), ("interfaceArgs",),
    ("interfaceArgs", "master"), ("interfaceArgs", "mode"), ("interfaceArgs", "mtu"),
    ("podInterface",), ("httpPort",), ("log_level",), ("log_file",), ("announceCount",),
    ("announceInterval",), ("dns",), ("prevResult",), ("podIP",),
]


def _mutate(text: str) -> st.SearchStrategy[str]:
    @st.composite
    def build(draw: st.DrawFn) -> str:
        at = draw(st.integers(0, len(text)))
        char = draw(st.one_of(NEAR, ANY_CHAR))
        return text[:at] + char + text[at + draw(st.integers(0, 1)):]

    return build()


def _holder(obj: Any, path: tuple[str | int, ...]) -> Any:
    """The dict or list that holds ``path``'s last key (None when the path is gone)."""
    for key in path[:-1]:
        try:
            obj = obj[key]
        except (KeyError, IndexError, TypeError):
            return None
        if not isinstance(obj, dict | list):
            return None
    return obj


@st.composite
def configurations(draw: st.DrawFn) -> dict[str, Any]:
    """Upstream's configuration with one or two fields replaced by anything."""
    obj = copy.deepcopy(CONF)
    obj["podInterface"] = "eth0"
    obj["httpPort"] = 9090
    for path in draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=2, unique=True)):
        holder = _holder(obj, path)
        last = path[-1]
        if isinstance(holder, list) and not (isinstance(last, int) and last < len(holder)):
            continue
        if holder is None:
            continue
        current = holder.get(last) if isinstance(holder, dict) else holder[last]
        if isinstance(current, str) and draw(st.booleans()):
            holder[last] = draw(_mutate(current))
        else:
            holder[last] = draw(JSON)
    return obj


def test_the_unmutated_configuration_is_valid() -> None:
    obj = {**copy.deepcopy(CONF), "podInterface": "eth0", "httpPort": 9090}
    assert netconf.parse(obj, "net1").name == "egress"


@settings(max_examples=500, deadline=None)
@given(configurations(), st.sampled_from(["net1", "macvlan0"]))
def test_any_network_configuration_is_a_netconf_or_a_cni_error(
    obj: dict[str, Any], ifname: str
) -> None:
    try:
        conf = netconf.parse(obj, ifname)
    except CniError as err:
        event(f"code {err.code}")
        assert err.msg.startswith("cannot ")
        assert err.to_json("1.0.0")["code"] == err.code
        return
    event("valid")
    cfg = conf.router_config(ifname)
    for name in (cfg.pod_interface, cfg.egress_interface):
        assert config.IFNAME.fullmatch(name)
    ruleset.render_nftables(cfg)  # carries every string verbatim, or the test fails here
    if conf.macvlan.master is not None:
        assert config.IFNAME.fullmatch(conf.macvlan.master)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS",
                     "CNI_PATH"]),
    st.one_of(TEXT, st.sampled_from(["ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"])),
))
def test_any_cni_environment_is_an_environment_or_a_cni_error(env: dict[str, str]) -> None:
    try:
        parsed = netconf.parse_environment(env)
    except CniError as err:
        assert err.msg.startswith("cannot ")
        return
    if parsed.ifname:
        assert config.IFNAME.fullmatch(parsed.ifname)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=60), JSON.map(lambda v: json.dumps(v).encode())))
def test_any_bytes_on_stdin_decode_to_an_object_or_a_cni_error(data: bytes) -> None:
    try:
        obj = netconf.decode(data)
    except CniError as err:
        assert err.msg.startswith("cannot decode")
        return
    assert isinstance(obj, dict)
