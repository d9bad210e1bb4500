"""The command line: upstream-compatible environment entry point and the people's subcommands."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from egress_router import cli
from support.golden import GOLDEN, SEED_ENV


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the real entry point in a child process with exactly ``env`` (plus PATH)."""
    return subprocess.run(
        [sys.executable, "-m", "egress_router", *args],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unit_test_mode_prints_plan_and_ruleset_without_privilege() -> None:
    done = run([], {**SEED_ENV, "EGRESS_ROUTER_MODE": "unit-test"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == (GOLDEN / "seed.unit-test").read_text()


def test_bad_line_exits_1_with_one_clear_message_and_no_traceback() -> None:
    env = {**SEED_ENV, "EGRESS_ROUTER_MODE": "init",
           "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n8080 tcp 999.999.999.999 80\n"}
    done = run([], env)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        "egress-router: error: cannot parse EGRESS_DESTINATION line 2 "
        "'8080 tcp 999.999.999.999 80': invalid destination address '999.999.999.999'; "
        "expected an IPv4 address such as 203.0.113.25 or an IPv6 address such as "
        "2001:db8::25\n"
    )


def test_unknown_mode_exits_1() -> None:
    done = run([], {**SEED_ENV, "EGRESS_ROUTER_MODE": "daemon"})
    assert done.returncode == 1
    assert "EGRESS_ROUTER_MODE: unknown value 'daemon'" in done.stderr
    assert "Traceback" not in done.stderr


def test_validate_prints_the_normalised_table(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.write_text("80 TCP 203.0.113.25 # web\n8080 tcp 203.0.113.26 80\n203.0.113.27\n")
    result = CliRunner().invoke(cli.cli, ["validate", "--file", str(rules)], env=SEED_ENV)
    assert result.exit_code == 0, result.output
    assert "203.0.113.25:80" in result.output
    assert "203.0.113.26:80" in result.output
    assert "203.0.113.27 (same port)" in result.output
    assert "3 rules, source 192.168.12.99/24" in result.output


def test_validate_grammar_only_without_source(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.write_text("80 tcp 2001:db8:113::25\n")
    result = CliRunner().invoke(cli.cli, ["validate", "-f", str(rules)], env={
        "EGRESS_SOURCE": None, "EGRESS_GATEWAY": None, "EGRESS_DESTINATION": None,
    })
    assert result.exit_code == 0, result.output
    assert "grammar only" in result.output


def test_validate_rejects_with_exit_1(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.write_text("80 tcp 203.0.113.25\n80 tcp 203.0.113.26\n")
    done = run(["validate", "--file", str(rules)], SEED_ENV)
    assert done.returncode == 1
    assert done.stderr == (
        f"egress-router: error: cannot parse {rules} line 2 '80 tcp 203.0.113.26': port 80/tcp "
        "is already redirected on line 1; each local port may have one rule per protocol\n"
    )


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_rules_prints_the_backend_ruleset(backend: str) -> None:
    result = CliRunner().invoke(cli.cli, ["rules", "--backend", backend], env=SEED_ENV)
    assert result.exit_code == 0, result.output
    marker = "table inet egress_router {" if backend == "nftables" else "*nat"
    assert marker in result.output


def test_lab_sweep_is_a_subcommand_and_refuses_an_empty_prefix() -> None:
    nothing = CliRunner().invoke(cli.cli, ["lab", "sweep", "--prefix", "ert-unit-no-such-lab"])
    assert nothing.exit_code == 0, nothing.output
    assert nothing.output == "no leftovers of 'ert-unit-no-such-lab'\n"
    empty = CliRunner().invoke(cli.cli, ["lab", "sweep", "--prefix", ""])
    assert empty.exit_code != 0
    assert "cannot sweep: give a non-empty prefix" in str(empty.exception) + empty.output


def test_help_everywhere() -> None:
    for args in (["--help"], ["validate", "--help"], ["rules", "--help"], ["lab", "--help"],
                 ["lab", "sweep", "--help"]):
        result = CliRunner().invoke(cli.cli, args)
        assert result.exit_code == 0
        assert "Usage:" in result.output


def test_import_contracts_keep_the_layers_and_the_pure_core() -> None:
    root = Path(__file__).parents[3]
    contracts = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert any(c["type"] == "layers" for c in contracts["contracts"])
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint)], capture_output=True, text=True, timeout=120, check=False, cwd=root,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(contracts['contracts'])} kept, 0 broken" in done.stdout
