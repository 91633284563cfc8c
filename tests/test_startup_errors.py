"""Start-up failures that used to end in a traceback: one line naming the setting, exit 2."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_cli import run_cli, write_config

EMULATORS = ("salesforce", "iterable")


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something else is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def emulator(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"streamsync.emulators.{name}", *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          stdin=subprocess.DEVNULL)


def assert_one_line(proc: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])


@pytest.mark.parametrize("name", EMULATORS)
def test_emulator_port_in_use(name: str, busy_port: int) -> None:
    proc = emulator(name, "--port", str(busy_port))
    assert_one_line(proc, f"--port {busy_port}", "in use")
    assert proc.stdout == ""


@pytest.mark.parametrize("name", EMULATORS)
@pytest.mark.parametrize("value", ["70000", "-1"])
def test_emulator_port_out_of_range(name: str, value: str) -> None:
    assert_one_line(emulator(name, "--port", value), "--port", "0 to 65535", value)


@pytest.mark.parametrize("option", ["--seed-accounts", "--seed-contacts", "--seed-leads",
                                    "--seed-users", "--seed-queues"])
def test_salesforce_emulator_negative_seed_count(option: str) -> None:
    assert_one_line(emulator("salesforce", "--port", "0", option, "-5"), option,
                    "cannot be negative")


def test_run_with_the_health_port_in_use(tmp_path: Path, busy_port: int) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace(
        "enabled = false", f'enabled = true\nhost = "127.0.0.1"\nport = {busy_port}'))
    proc = run_cli("run", "--config", str(config), "--log-level", "error")
    assert_one_line(proc, f"health.port = {busy_port}", f"127.0.0.1:{busy_port}", "in use")
