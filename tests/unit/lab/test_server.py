"""The lab's destination server as a program: its click commands (no socket is opened here)."""

from __future__ import annotations

from click.testing import CliRunner

from egress_router.lab import server


def test_serve_refuses_a_bad_endpoint_with_exit_2_before_binding_anything() -> None:
    done = CliRunner().invoke(server.main, ["serve", "tcp:10.128.0.2:80", "bogus"])
    assert done.exit_code == 2
    assert "cannot parse endpoint 'bogus'" in done.output


def test_every_command_has_help() -> None:
    for args in (["--help"], ["serve", "--help"], ["dial", "--help"], ["stream", "--help"]):
        done = CliRunner().invoke(server.main, args)
        assert done.exit_code == 0, done.output
        assert "Usage:" in done.output
