"""A store file deleted or replaced under a running service is noticed: /readyz turns 503 with
the reason, and one ERROR line says what happened."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
import pytest

from streamsync.adapters.store import Store
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.runtime.app import Service
from tests.conftest import MakeConfig


async def test_file_problem_names_a_deleted_or_replaced_file(tmp_path: Path) -> None:
    db = tmp_path / "streamsync.db"
    async with await Store.open(db) as store:
        assert store.file_problem() is None
        db.rename(tmp_path / "moved.db")
        db.write_bytes(b"")
        assert "was replaced while in use" in (store.file_problem() or "")
        db.unlink()
        assert "was deleted while in use" in (store.file_problem() or "")
        os.rename(tmp_path / "moved.db", db)  # put back: the same file again
        assert store.file_problem() is None


@pytest.mark.salesforce(long_poll_s=0.5)
async def test_a_store_deleted_while_running_turns_readiness_off(
    sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
    make_config: MakeConfig, caplog: pytest.LogCaptureFixture,
) -> None:
    config = make_config(sf_emulator, iterable_emulator, tmp_path,
                         health={"enabled": True, "port": 0},
                         ingest={"watchdog_s": 5.0, "long_poll_timeout_s": 3.0})
    service = Service(config, metrics_refresh_s=0.05, shutdown_s=5.0)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    http = aiohttp.ClientSession()

    async def readyz() -> tuple[int, str]:
        assert service.health is not None
        async with http.get(f"http://127.0.0.1:{service.health.port}/readyz") as r:
            return r.status, await r.text()

    async def until(status: int) -> str:
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            if service.health is not None and service.health.port is not None:
                got, body = await readyz()
                if got == status:
                    return body
            await asyncio.sleep(0.05)
        raise AssertionError(f"/readyz never answered {status}")

    try:
        with caplog.at_level("INFO"):
            await until(200)
            os.unlink(config.queue.path)
            body = await until(503)
        assert "was deleted while in use" in body
        lost = [r for r in caplog.records if "store.file_lost" in r.getMessage()]
        assert len(lost) == 1 and lost[0].levelname == "ERROR"
    finally:
        await http.close()
        stop.set()
        code = await asyncio.wait_for(task, 15)
    assert code == 0
