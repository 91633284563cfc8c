"""How the service (runtime/app.py `Service`) ends its long-lived tasks and reads their
outcomes: any failure becomes exit code 1, a `service.task_*` log line and a recent error."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from streamsync.adapters.store import StoreAPI
from streamsync.errors import FatalError, StreamsyncError
from streamsync.logs import get_logger
from streamsync.runtime.notify import SystemdNotifier

log = get_logger("streamsync.runtime.app")  # the service's log, as before the move


async def supervise(work: list[asyncio.Task[None]], stop: asyncio.Event, store: StoreAPI, *,
                    notifier: SystemdNotifier, shutdown_s: float,
                    clock: Callable[[], float]) -> int:
    """Wait for stop or for any task to end; drain within the shutdown deadline; then
    every task's outcome is read: a failure (or a task that ended before stop was asked
    for) makes the exit code 1, is logged as `service.task_fatal`/`service.task_crashed`
    and kept in the store's recent errors for `status`."""
    stopper = asyncio.create_task(stop.wait(), name="stop")
    done, _ = await asyncio.wait([*work, stopper], return_when=asyncio.FIRST_COMPLETED)
    ended_early = [t for t in done if t is not stopper and not stop.is_set()]
    stop.set()
    notifier.stopping()
    log.info("service.stopping", deadline_s=shutdown_s)
    pending = [t for t in work if not t.done()]
    if pending:
        _, late = await asyncio.wait(pending, timeout=shutdown_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    stopper.cancel()
    code = 0
    for task in work:
        exc = None if task.cancelled() else task.exception()
        if exc is None and task not in ended_early:
            continue
        code = 1
        await report_failure(store, task.get_name(), exc, clock)
    log.info("service.stopped", exit_code=code)
    return code


async def report_failure(store: StoreAPI, task: str, exc: BaseException | None,
                         clock: Callable[[], float]) -> None:
    """Log why a task ended and remember it in the store (best effort: the store itself
    may be what failed)."""
    if exc is None:
        kind, message = "crashed", "ended before the service was asked to stop"
    else:
        kind = "fatal" if isinstance(exc, FatalError) else "crashed"
        message = f"{type(exc).__name__}: {exc}"
    log.error(f"service.task_{kind}", task=task, error=message)
    with contextlib.suppress(StreamsyncError):
        await store.note_error("service", f"{task} stopped the service: {message}", clock())
