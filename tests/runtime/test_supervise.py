"""Service supervision: whatever ends a task, its outcome is read after the drain, and any
failure becomes exit code 1, a `service.task_*` log line and an entry in the recent errors."""

from __future__ import annotations

import asyncio
import time

from streamsync.adapters.store import Store
from streamsync.config import Config
from streamsync.errors import AuthError
from streamsync.runtime.app import Service


async def _idle(stop: asyncio.Event) -> None:
    await stop.wait()


async def _fails_after_setting_stop(stop: asyncio.Event) -> None:
    """What a flusher loop (runtime/flush_loop.py `_loop`) does on a FatalError: set `stop`,
    wind down a little, re-raise."""
    await asyncio.sleep(0.01)
    stop.set()
    await asyncio.sleep(0.05)
    raise AuthError("iterable bulkUpdate: the API key was refused (HTTP 401 BadApiKey)")


async def _returns_early(stop: asyncio.Event) -> None:
    await asyncio.sleep(0.01)


def _tasks(stop: asyncio.Event, *bodies: object) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(body(stop), name=f"t{n}")  # type: ignore[operator]
            for n, body in enumerate(bodies)]


async def test_a_failure_that_sets_stop_first_is_still_exit_1(config: Config,
                                                              store: Store) -> None:
    service = Service(config, shutdown_s=5.0)
    stop = asyncio.Event()
    code = await service._supervise(_tasks(stop, _idle, _fails_after_setting_stop), stop, store)
    assert code == 1
    [error] = await store.recent_errors()
    assert error.component == "service"
    assert "t1" in error.message and "API key was refused" in error.message


async def test_a_task_ending_on_its_own_is_exit_1(config: Config, store: Store) -> None:
    service = Service(config, shutdown_s=5.0)
    stop = asyncio.Event()
    code = await service._supervise(_tasks(stop, _idle, _returns_early), stop, store)
    assert code == 1
    [error] = await store.recent_errors()
    assert "t1" in error.message and "ended before" in error.message


async def test_a_requested_stop_is_exit_0(config: Config, store: Store) -> None:
    service = Service(config, shutdown_s=5.0)
    stop = asyncio.Event()
    tasks = _tasks(stop, _idle, _idle)
    asyncio.get_running_loop().call_later(0.02, stop.set)
    started = time.monotonic()
    assert await service._supervise(tasks, stop, store) == 0
    assert time.monotonic() - started < 5.0
    assert await store.recent_errors() == []
