"""Reproducible installs: uv.lock pins every dependency by hash from PyPI, the supported Pythons
agree across pyproject.toml, uv.lock and the Makefile, and the Makefile finds each interpreter
(and says loudly when one is missing)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPI = "https://pypi.org/simple"


def _toml(name: str) -> dict[str, Any]:
    with (ROOT / name).open("rb") as f:
        return tomllib.load(f)


def _makefile_var(name: str) -> str:
    found = re.search(rf"^{name} := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert found, f"{name} not set in the Makefile"
    return found.group(1)


def _normalise(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def test_supported_pythons_agree() -> None:
    project = _toml("pyproject.toml")["project"]
    oldest, newest = _makefile_var("OLDEST_PYTHON"), _makefile_var("NEWEST_PYTHON")
    assert project["requires-python"] == f">={oldest}"
    assert _toml("uv.lock")["requires-python"] == f">={oldest}"
    listed = sorted(
        _minor(c.rsplit(" :: ", 1)[1])
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    )
    first, last = _minor(oldest), _minor(newest)
    assert listed == [(3, minor) for minor in range(first[1], last[1] + 1)]


def test_lock_pins_every_dependency_from_pypi_by_hash() -> None:
    project = _toml("pyproject.toml")["project"]
    lock = _toml("uv.lock")
    packages = {p["name"]: p for p in lock["package"]}
    ours = packages.pop(project["name"])
    assert ours["source"] == {"editable": "."}
    declared = {_normalise(r) for r in project["dependencies"]}
    declared |= {_normalise(r) for r in project["optional-dependencies"]["dev"]}
    locked = {d["name"] for d in ours["dependencies"]}
    locked |= {d["name"] for d in ours["optional-dependencies"]["dev"]}
    assert declared == locked, "pyproject.toml changed without `make lock`"
    for name, package in packages.items():
        assert package["source"] == {"registry": PYPI}, name
        files = package.get("wheels", []) + ([package["sdist"]] if "sdist" in package else [])
        assert files, name
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", f["hash"]) for f in files), name


def test_uv_itself_is_pinned_by_hash() -> None:
    lines = (ROOT / "requirements" / "uv.txt").read_text().splitlines()
    pins = [line for line in lines if line.startswith("uv==")]
    assert len(pins) == 1 and pins[0].endswith("\\")
    assert sum(line.strip().startswith("--hash=sha256:") for line in lines) >= 1


def _fake_python(path: Path, prints: str | None) -> None:
    """A stand-in interpreter: prints its X.Y, or fails like a pyenv shim of an unselected one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = f"echo {prints}" if prints else "echo 'pyenv: not selected' >&2; exit 127"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _pythons(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is needed: the Makefile is what CI runs", pytrace=False)
    path = f"{tmp_path / 'bin'}:/usr/bin:/bin"
    clean = {"PATH": path, "HOME": str(tmp_path), "PYENV_ROOT": str(tmp_path / "pyenv"), **env}
    return subprocess.run([make, "-s", "--no-print-directory", "-C", str(ROOT), "pythons"],
                          env=clean, capture_output=True, text=True, timeout=60, check=False)


def test_make_finds_a_working_interpreter_past_a_broken_shim(tmp_path: Path) -> None:
    oldest, newest = _makefile_var("OLDEST_PYTHON"), _makefile_var("NEWEST_PYTHON")
    _fake_python(tmp_path / "bin" / f"python{oldest}", oldest)
    _fake_python(tmp_path / "bin" / f"python{newest}", None)
    for patch in ("0", "9", "10"):
        _fake_python(tmp_path / "pyenv" / "versions" / f"{newest}.{patch}" / "bin" / "python",
                     newest)
    done = _pythons(tmp_path, CI="true")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Python {oldest}: {tmp_path / 'bin'}/python{oldest} (.venv)" in done.stdout
    found = tmp_path / "pyenv" / "versions" / f"{newest}.10" / "bin" / "python"
    assert f"Python {newest}: {found} (.venv-{newest})" in done.stdout


def test_a_missing_python_is_loud_and_fails_under_ci(tmp_path: Path) -> None:
    oldest, newest = _makefile_var("OLDEST_PYTHON"), _makefile_var("NEWEST_PYTHON")
    _fake_python(tmp_path / "bin" / f"python{oldest}", oldest)
    _fake_python(tmp_path / "bin" / f"python{newest}", None)
    _fake_python(tmp_path / "pyenv" / "versions" / f"{newest}.0" / "bin" / "python", "3.12")
    local = _pythons(tmp_path)
    assert local.returncode == 0, local.stdout + local.stderr
    assert f"!!! Python {newest} not found" in local.stdout
    ci = _pythons(tmp_path, CI="true")
    assert ci.returncode != 0
    assert f"!!! Python {newest} not found" in ci.stdout and "failing" in ci.stdout


@pytest.mark.parametrize("target", ["demo", "test"])
def test_demo_and_test_install_from_the_lock(target: str) -> None:
    make = shutil.which("make")
    assert make is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE") and k != "MFLAGS"}
    plan = subprocess.run([make, "-n", "-B", "--no-print-directory", "-C", str(ROOT), target],
                          env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    installs = [line for line in plan.splitlines() if re.search(r"pip install|uv sync", line)]
    assert installs, plan
    for line in installs:
        assert "uv sync --locked --extra dev" in line or (
            "pip install -q --require-hashes --no-deps -r requirements/uv.txt" in line), line
