"""The loops that run `Flusher.flush_once` (runtime/flusher.py): back to back under load,
otherwise on a wake-up or the queue's next due time (runtime/wakeup.py), never a fixed poll."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from streamsync.errors import FatalError, RetriableError, describe_error
from streamsync.logs import get_logger

if TYPE_CHECKING:
    from streamsync.runtime.flusher import Flusher

log = get_logger("streamsync.runtime.flusher")  # the flusher's log, as before the move

PAUSED_POLL_S = 0.05
"""Shortest wait of a paused flusher loop (while another loop's probe is in flight)."""
OTHER_PROCESS_RECHECK_S = 1.0
"""Longest sleep of an idle flusher loop: rows enqueued by another process (a backfill's
catch-up, `dlq replay`) send no wake-up, so they are leased within this (or at their due time)."""


async def run_loops(flusher: Flusher, stop: asyncio.Event) -> None:
    """`flush.concurrency` loops until `stop`; then in-flight batches get `shutdown_grace_s`
    to finish before they are cancelled and their leases released. A FatalError in any
    loop stops them all and is raised here."""
    loops = [asyncio.create_task(_loop(flusher, stop, n), name=f"flusher-{flusher.owner}-{n}")
             for n in range(flusher.config.flush.concurrency)]
    stopped = asyncio.create_task(stop.wait())
    stopped.add_done_callback(lambda _: _wake_all(flusher))
    try:
        await asyncio.wait([stopped, *loops], return_when=asyncio.FIRST_COMPLETED)
        await asyncio.wait(loops, timeout=flusher.shutdown_grace_s)
    finally:
        stopped.cancel()
        late = [task for task in loops if not task.done()]
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    log.info("flusher.stopped", owner=flusher.owner, cancelled=len(late))
    for task in loops:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


def _wake_all(flusher: Flusher) -> None:
    flusher.signal.notify()
    flusher.coalescer.wake()


async def _loop(flusher: Flusher, stop: asyncio.Event, n: int) -> None:
    """Flush back to back while batches come out full; otherwise wait for a wake-up (an
    enqueue in this process) or the next due time in the store, never a fixed poll. A
    small flush waits its turn in the Coalescer, so a trickle still fills batches."""
    coalescer = flusher.coalescer
    failures = 0
    full = False
    while not stop.is_set():
        seen = flusher.signal.generation
        turn = coalescer.under_load() if full else await coalescer.turn(stop)
        try:
            if stop.is_set():
                return
            result = await flusher.flush_once(turn)
            failures = 0
        except FatalError:
            stop.set()
            raise
        except Exception as exc:  # noqa: BLE001 - a loop never dies on a bad batch
            failures += 1
            full = False
            delay = flusher.backoff.delay_s(failures, getattr(exc, "retry_after_s", None))
            log.warning("flusher.error", loop=n, delay_s=round(delay, 3),
                        **describe_error(exc))
            await _wait(stop, max(delay, 0.05))
            continue
        finally:
            coalescer.done(turn)
        full = result.leased >= flusher.config.flush.batch_ids
        if result.paused:
            await _wait(stop, _paused_s(flusher))
        elif not full:
            await _await_work(flusher, seen)


async def _await_work(flusher: Flusher, seen: int) -> None:
    """Until an enqueue in this process (a notice newer than `seen`) or the queue's next
    due time, at most OTHER_PROCESS_RECHECK_S."""
    wait_s = OTHER_PROCESS_RECHECK_S
    try:
        due = await flusher.store.next_due(await flusher.leasable())
    except RetriableError as exc:  # a busy store: look again soon
        log.warning("flusher.next_due_failed", error=type(exc).__name__)
        due = None
        wait_s = PAUSED_POLL_S
    if due is not None:
        wait_s = min(wait_s, max(0.0, due - flusher.clock()))
    await flusher.signal.wait(seen, wait_s)


def _paused_s(flusher: Flusher) -> float:
    """While paused by an outage: until a probe is due (checked at least every second)."""
    linger_s = flusher.config.flush.linger_ms / 1000.0
    return max(min(linger_s, 1.0), min(flusher.breakers.wait_s(), 1.0), PAUSED_POLL_S)


async def _wait(stop: asyncio.Event, timeout_s: float) -> None:
    """Sleep up to `timeout_s`, waking as soon as `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout_s)
