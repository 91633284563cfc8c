"""`streamsync run` under a stand-in for systemd: READY=1 once subscribed, WATCHDOG=1 pings,
STOPPING=1 on SIGTERM, exit 0 (Type=notify, WatchdogSec=)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from tests.e2e.process import ServiceProcess, service_config_data, service_env, toml_dumps


def _datagrams(sock: socket.socket, until_s: float) -> list[str]:
    out: list[str] = []
    sock.settimeout(0.05)
    deadline = time.monotonic() + until_s
    while time.monotonic() < deadline:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return out


@pytest.mark.slow
@pytest.mark.salesforce(long_poll_s=1.0)
async def test_notify_protocol_of_a_real_service_process(
    sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
) -> None:
    notify_path = str(tmp_path / "notify.sock")
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(notify_path)
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(service_config_data(sf_emulator, iterable_emulator, tmp_path)))
    env = service_env(sf_emulator, iterable_emulator)
    env.update({"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000"})
    service = ServiceProcess(config, env, tmp_path / "run.log")
    await service.start()
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("READY=1" in m for m in seen):
            seen += await asyncio.to_thread(_datagrams, systemd, 0.5)
        assert any(m.startswith("READY=1") for m in seen), service.log_text()[-2000:]
        assert service.saw("service.ready")
        pings = await asyncio.to_thread(_datagrams, systemd, 1.0)
        assert pings.count("WATCHDOG=1") >= 3  # every 0.2 s: half of WatchdogSec
        code, took_s = await service.terminate(20.0)
        tail = await asyncio.to_thread(_datagrams, systemd, 0.2)
    finally:
        await service.ensure_dead()
        systemd.close()
    assert code == 0 and took_s < 20.0
    assert "STOPPING=1" in pings + tail
