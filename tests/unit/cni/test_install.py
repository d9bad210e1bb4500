"""`egress-router install-cni`: the atomic copy into a node's CNI bin directory, kept current."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from egress_router.cni import install


def make_source(tmp_path: Path, content: bytes = b"#!/bin/sh\necho v1\n") -> Path:
    source = tmp_path / "image" / "egress-router-cni"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(content)
    return source


def host_dir(tmp_path: Path) -> Path:
    path = tmp_path / "host" / "opt" / "cni" / "bin"
    path.mkdir(parents=True)
    return path


def test_install_copies_executable_under_the_name(tmp_path: Path) -> None:
    source = make_source(tmp_path)
    dest = host_dir(tmp_path)
    done = install.install(source, dest, "egress-router")
    target = dest / "egress-router"
    assert done.changed and done.previous is None
    assert target.read_bytes() == source.read_bytes()
    assert done.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert target.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in dest.iterdir()) == ["egress-router"]  # no temp file left
    assert subprocess.run([str(target)], check=False, capture_output=True, text=True).stdout \
        == "v1\n"


def test_install_again_changes_nothing(tmp_path: Path) -> None:
    source = make_source(tmp_path)
    dest = host_dir(tmp_path)
    install.install(source, dest, "egress-router")
    inode = (dest / "egress-router").stat().st_ino
    again = install.install(source, dest, "egress-router")
    assert not again.changed
    assert (dest / "egress-router").stat().st_ino == inode  # not even rewritten


def test_upgrade_replaces_by_rename_so_a_running_copy_keeps_its_file(tmp_path: Path) -> None:
    dest = host_dir(tmp_path)
    install.install(make_source(tmp_path), dest, "egress-router")
    target = dest / "egress-router"
    with target.open("rb") as running:  # what a runtime executing the old file holds
        old_inode = os.fstat(running.fileno()).st_ino
        done = install.install(make_source(tmp_path, b"#!/bin/sh\necho v2\n"), dest,
                               "egress-router")
        assert running.read() == b"#!/bin/sh\necho v1\n"
    assert done.changed and done.previous is not None
    assert target.stat().st_ino != old_inode
    assert target.read_bytes() == b"#!/bin/sh\necho v2\n"


def test_a_tampered_copy_and_a_wrong_mode_are_repaired(tmp_path: Path) -> None:
    source = make_source(tmp_path)
    dest = host_dir(tmp_path)
    install.install(source, dest, "egress-router")
    target = dest / "egress-router"
    target.write_bytes(b"truncated")
    assert install.install(source, dest, "egress-router").changed
    assert target.read_bytes() == source.read_bytes()
    target.chmod(0o644)
    assert install.install(source, dest, "egress-router").changed
    assert target.stat().st_mode & 0o777 == 0o755


def test_leftover_temp_files_of_an_interrupted_install_are_removed(tmp_path: Path) -> None:
    dest = host_dir(tmp_path)
    (dest / ".egress-router.tmp-12345").write_bytes(b"half")
    (dest / "bridge").write_bytes(b"someone else's")
    install.install(make_source(tmp_path), dest, "egress-router")
    assert sorted(p.name for p in dest.iterdir()) == ["bridge", "egress-router"]


def test_a_failed_copy_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = host_dir(tmp_path)
    install.install(make_source(tmp_path), dest, "egress-router")

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(install.os, "replace", refuse)
    with pytest.raises(install.InstallError, match="No space left on device; check that"):
        install.install(make_source(tmp_path, b"v2"), dest, "egress-router")
    assert sorted(p.name for p in dest.iterdir()) == ["egress-router"]
    assert (dest / "egress-router").read_bytes() == b"#!/bin/sh\necho v1\n"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", ".hidden"])
def test_the_name_must_be_a_file_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(install.InstallError, match="expected a file name"):
        install.install(make_source(tmp_path), host_dir(tmp_path), name)


def test_missing_source_and_missing_directory_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(install.InstallError, match=r"does not exist or is not a file; pass "
                       "--source the plugin executable"):
        install.install(tmp_path / "nope", host_dir(tmp_path), "egress-router")
    with pytest.raises(install.InstallError, match="is not a directory; mount the host's CNI"):
        install.install(make_source(tmp_path), tmp_path / "missing", "egress-router")


def test_keep_installed_repairs_until_stopped(tmp_path: Path) -> None:
    source = make_source(tmp_path)
    dest = host_dir(tmp_path)
    target = dest / "egress-router"
    rounds: list[bool] = []

    def wait(seconds: float) -> bool:
        assert seconds == 5
        if not rounds:
            target.unlink()  # someone deletes it between two checks
        rounds.append(target.exists())
        return len(rounds) > 2

    install.keep_installed(source, dest, "egress-router", 5, wait)
    assert rounds == [False, True, True]
    assert target.read_bytes() == source.read_bytes()


def test_cli_installs_and_exits_0_or_1(tmp_path: Path) -> None:
    source = make_source(tmp_path)
    dest = host_dir(tmp_path)
    argv = [sys.executable, "-m", "egress_router", "install-cni", "--source", str(source),
            "--dest-dir", str(dest), "--name", "egress-router"]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "installed" in done.stderr and (dest / "egress-router").exists()
    again = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "is current" in again.stderr
    bad = subprocess.run([*argv[:5], str(tmp_path / "nope"), *argv[6:]],
                         check=False, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "cannot install the CNI plugin" in bad.stderr


def test_cli_keeps_running_until_sigterm(tmp_path: Path) -> None:
    source = make_source(tmp_path)
    dest = host_dir(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "egress_router", "install-cni", "--source", str(source),
         "--dest-dir", str(dest), "--interval", "0.1"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        found = threading.Event()
        for _ in range(100):
            if (dest / "egress-router").exists():
                found.set()
                break
            threading.Event().wait(0.1)
        assert found.is_set()
        (dest / "egress-router").unlink()
        for _ in range(100):
            if (dest / "egress-router").exists():
                break
            threading.Event().wait(0.1)
        assert (dest / "egress-router").exists()  # repaired by the periodic re-check
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
