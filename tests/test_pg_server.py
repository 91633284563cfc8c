"""The throwaway PostgreSQL server the tests start (streamsync/testing/pg_server.py): it never
runs as root, says where it looked when it finds no binaries, and unpacks a pip wheel's build
(the fallback `make postgres` uses on a machine without PostgreSQL)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import psutil
import pytest

from streamsync.testing import pg_server
from streamsync.testing.pg_server import RUN_AS, PgServer, find_bindir, unpack_wheel


def test_the_server_never_runs_as_root(pg_server: PgServer) -> None:
    pid = pg_server.pid()
    assert pid is not None
    uid = psutil.Process(pid).uids().real
    assert uid != 0
    if os.geteuid() == 0:
        assert psutil.Process(pid).username() == RUN_AS
        assert pg_server.datadir.stat().st_uid == uid


def test_no_binaries_is_an_error_naming_every_place_looked(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMSYNC_PG_BINDIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(pg_server, "DEBIAN_ROOT", tmp_path / "no-debian")
    monkeypatch.setattr(pg_server, "REPO_BINDIR", tmp_path / "no-repo-copy")
    with pytest.raises(RuntimeError) as missing:
        find_bindir()
    message = str(missing.value)
    assert str(tmp_path / "nowhere") in message and "make postgres" in message
    with pytest.raises(RuntimeError, match="no PostgreSQL server binaries"):
        PgServer.start(root=tmp_path / "root")


def test_a_wheel_build_is_unpacked_with_its_libraries_and_executable(tmp_path: Path) -> None:
    wheel = tmp_path / "pgserver-0-cp311-cp311-manylinux2014_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name in ("initdb", "pg_ctl", "postgres"):
            info = zipfile.ZipInfo(f"pgserver/pginstall/bin/{name}")
            info.external_attr = (stat.S_IFREG | 0o755) << 16
            archive.writestr(info, "#!/bin/sh\n")
        archive.writestr("pgserver/pginstall/share/postgres.bki", "data")
        archive.writestr("pgserver/pginstall/include/libpq-fe.h", "not needed")
        archive.writestr("pgserver.libs/libpq-0123abcd.so.5.16", "lib")
        archive.writestr("pgserver/__init__.py", "# not unpacked")
    bindir = unpack_wheel(wheel, tmp_path / "pg")
    assert bindir == tmp_path / "pg" / "bin"
    assert all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))
    assert (tmp_path / "pg" / "lib" / "libpq-0123abcd.so.5.16").is_file()
    assert (tmp_path / "pg" / "share" / "postgres.bki").is_file()
    assert not (tmp_path / "pg" / "include").exists()
    assert not (tmp_path / "pg" / "__init__.py").exists()
    with zipfile.ZipFile(tmp_path / "other.whl", "w") as archive:
        archive.writestr("something/else.py", "")
    with pytest.raises(RuntimeError, match="not a pgserver wheel"):
        unpack_wheel(tmp_path / "other.whl", tmp_path / "pg2")


CHILD = """
import sys, time
from streamsync.testing.pg_server import PgServer
server = PgServer.start()
print(server.root, server.pid(), flush=True)
time.sleep(600)
"""


def test_a_server_whose_owner_is_killed_is_stopped_and_deleted(tmp_path: Path) -> None:
    """A test run killed before its teardown (a timeout, kill -9) leaves no server behind."""
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    try:
        assert child.stdout is not None
        root_text, pid_text = child.stdout.readline().split()
        root, postmaster = Path(root_text), int(pid_text)
        assert psutil.pid_exists(postmaster) and root.exists()
    finally:
        child.kill()
        child.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (root.exists() or psutil.pid_exists(postmaster)):
        time.sleep(0.2)
    assert not root.exists() and not psutil.pid_exists(postmaster)
