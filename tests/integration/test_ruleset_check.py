"""Every valid configuration renders a ruleset the kernel accepts, in both backends.

Hypothesis builds configurations the parser accepts (interface names of every
allowed shape, either family or both, port rules, fallbacks, DNS names with one
or several addresses, the HTTP port); each rendering is handed to the kernel's
own checkers, ``nft -c`` and ``iptables-restore --test`` / ``ip6tables-restore
--test``, inside a network namespace this test creates (never the root one), so
that a string the ruleset cannot carry verbatim, or a rendering nft misreads,
fails here rather than in a pod.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from egress_router.core import config, iptables_rules, ruleset
from egress_router.lab import world as labmod
from egress_router.router import resolve

pytestmark = pytest.mark.privileged

TIMEOUT = 20.0


@pytest.fixture
def netns() -> Iterator[str]:
    # "ert" + 5 hex digits, like the labs: the conftest sweep removes a leftover, and the
    # owner record (as a lab writes it) keeps parallel test runs' sweeps off it meanwhile.
    prefix = f"ert{secrets.token_hex(3)[:5]}"
    state = labmod.STATE_ROOT / prefix
    state.mkdir(parents=True, exist_ok=True)
    (state / labmod.OWNER_FILE).write_text(labmod.process_record(os.getpid()), encoding="utf-8")
    name = f"{prefix}-rules"
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=TIMEOUT)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=TIMEOUT)
        shutil.rmtree(state, ignore_errors=True)


def run_in(ns: str, argv: list[str], payload: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], input=payload,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)


def _destination(family: int) -> st.SearchStrategy[config.IPAddress]:
    return st.ip_addresses(v=family).filter(
        lambda a: config.destination_problem(a) is None  # type: ignore[arg-type]
    )


NAMES = st.from_regex(config.IFNAME, fullmatch=True)
PORTS = st.integers(1, 65535)
PROTOS = st.sampled_from(list(config.Proto))


@st.composite
def configurations(draw: st.DrawFn) -> config.Config:
    families = draw(st.sampled_from([(4,), (6,), (4, 6)]))
    pod = draw(NAMES)
    egress = draw(NAMES.filter(lambda n: n != pod))
    sources = {4: "192.168.12.99/24", 6: "2001:db8:12::99/64"}
    gateways = {4: "192.168.12.1", 6: "2001:db8:12::1"}
    lines: list[str] = []
    seen: set[tuple[int, str, int]] = set()
    for _ in range(draw(st.integers(1, 25))):
        family = draw(st.sampled_from(families))
        port, proto = draw(PORTS), draw(PROTOS)
        if (family, proto.value, port) in seen:
            continue
        seen.add((family, proto.value, port))
        address = draw(_destination(family))
        remote = draw(st.one_of(st.just(""), PORTS.map(str)))
        lines.append(f"{port} {proto.value} {address} {remote}".rstrip())
    named = draw(st.lists(st.tuples(PORTS, PROTOS), max_size=3, unique=True))
    for index, (port, proto) in enumerate(named):
        if any((f, proto.value, port) in seen for f in (4, 6)):
            continue
        seen |= {(4, proto.value, port), (6, proto.value, port)}
        lines.append(f"{port} {proto.value} svc{index}.example.com")
    fallback_family = draw(st.sampled_from([None, *families]))
    if fallback_family is not None:
        lines.append(str(draw(_destination(fallback_family))))
    http_port = draw(st.sampled_from(["0", "9090", "1"]))
    env = {
        config.ENV_SOURCE: ",".join(sources[f] for f in families),
        config.ENV_GATEWAY: ",".join(gateways[f] for f in families),
        config.ENV_DESTINATION: "\n".join(lines),
        config.ENV_POD_INTERFACE: pod,
        config.ENV_INTERFACE: egress,
        config.ENV_HTTP_PORT: http_port,
    }
    try:
        cfg = config.load_config(env)
    except config.ConfigError as err:
        # Only what the strategy cannot know in advance: a rule on the HTTP port, or an
        # address that is the router's own (a random one rarely is).
        expected = ("HTTP port", "egress subnet", "the gateway", "own source")
        assert any(why in err.cause for why in expected), err
        reject()
    # DNS names as the reconciler resolves them: one address, or several (spread maps).
    answers = {
        host: tuple(draw(st.lists(_destination(draw(st.sampled_from(families))), min_size=1,
                                  max_size=3, unique=True)))
        for host in cfg.destinations.hosts()
    }
    return resolve.resolve_config(cfg, answers)


def test_every_valid_configuration_passes_the_kernels_own_checks(netns: str) -> None:
    checked: list[int] = []

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(configurations())
    def check(cfg: config.Config) -> None:
        text = ruleset.render_nftables(cfg)
        done = run_in(netns, ["nft", "-c", "-f", "-"], text)
        assert done.returncode == 0, f"nft -c refused:\n{done.stderr}\n{text}"
        for family in cfg.families():
            payload = iptables_rules.render_iptables(cfg, family)
            tool = "ip6tables-restore" if family == 6 else "iptables-restore"
            done = run_in(netns, [tool, "--test", "--noflush"], payload)
            assert done.returncode == 0, f"{tool} --test refused:\n{done.stderr}\n{payload}"
        checked.append(len(cfg.destinations.rules))

    check()
    assert len(checked) >= 20 and max(checked) > 1
    # The namespace is still empty: --test and -c commit nothing.
    listing = run_in(netns, ["nft", "list", "ruleset"], "")
    assert listing.returncode == 0 and "egress_router" not in listing.stdout


def test_the_checkers_refuse_a_broken_ruleset_but_not_an_injected_one(netns: str) -> None:
    cfg = config.load_config({config.ENV_SOURCE: "192.168.12.99", config.ENV_GATEWAY:
                              "192.168.12.1", config.ENV_DESTINATION: "80 tcp 203.0.113.25"})
    text = ruleset.render_nftables(cfg)
    # The control of the test above: a pod interface named 'eth0"' breaks the syntax, and the
    # checkers say so.
    assert run_in(netns, ["nft", "-c", "-f", "-"], text.replace('"eth0"', '"eth0""')
                  ).returncode != 0
    payload = iptables_rules.render_iptables(cfg, 4)
    assert "--dport 80 " in payload
    assert run_in(netns, ["iptables-restore", "--test", "--noflush"],
                  payload.replace("--dport 80 ", "--dport 99999 ", 1)).returncode != 0
    # iptables-restore takes an unbalanced quote in a name with a mere warning.
    assert "! -i eth0 -j RETURN" in payload
    quoted = run_in(netns, ["iptables-restore", "--test", "--noflush"],
                    payload.replace("! -i eth0 -j RETURN", '! -i "eth0 -j RETURN', 1))
    assert quoted.returncode == 0 and "weird character in interface" in quoted.stderr
    # Why the checkers are not enough: the name 'eth0" accept ; iifname "eth0' is
    # well-formed nft and opens the forward chain to everything from the pod side. Only the
    # validation (config.interface_name_problem, ruleset.check_verbatim) keeps it out.
    name = 'eth0" accept ; iifname "eth0'
    injected = text.replace('iifname "eth0" oifname', f'iifname "{name}" oifname')
    assert run_in(netns, ["nft", "-c", "-f", "-"], injected).returncode == 0
    with pytest.raises(config.ConfigError, match="invalid interface name"):
        config.load_config({config.ENV_SOURCE: "192.168.12.99", config.ENV_GATEWAY:
                            "192.168.12.1", config.ENV_DESTINATION: "80 tcp 203.0.113.25",
                            config.ENV_POD_INTERFACE: name})
