"""When reconciliations run: durable owed markers, background workers, and the reconciliation a
channel's first subscription owes after a backfill (docs/design.md invariant 6)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from streamsync.adapters.store import PendingReconcile, StoreAPI
from streamsync.config import Config
from streamsync.errors import FatalError, describe_error
from streamsync.logs import get_logger
from streamsync.retry import Policy
from streamsync.runtime.reconcile import Reconciler

log = get_logger(__name__)


@dataclass
class ReconcileStats:
    """Counters of the reconciliations scheduled and run (for tests, `status` and logs)."""

    reconciles_scheduled: int = 0
    reconciles_done: int = 0
    reconcile_failures: int = 0


class ReconcileScheduler:
    """Owes reconciliations durably (`owe`: a `reconcile_pending` row written before whatever
    made it owed moves on, so a crash cannot lose it) and runs them in the background
    (`start`), at most `max_concurrent` at once; a worker clears its row when done, and runs
    again when a newer one was merged meanwhile. Rows a crash left are resumed by
    `resume_pending`."""

    def __init__(
        self,
        *,
        config: Config,
        store: StoreAPI,
        reconciler: Reconciler,
        clock: Callable[[], float] = time.time,
        max_concurrent: int = 2,
        retry_base_s: float = 0.5,
        retry_max_s: float = 30.0,
        stats: ReconcileStats | None = None,
        channels: list[str] | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent_reconciles must be at least 1")
        if retry_base_s <= 0 or retry_max_s < retry_base_s:
            raise ValueError("Ingest needs 0 < retry_base_s <= retry_max_s")
        self._config = config
        self._store = store
        self.reconciler = reconciler
        self._clock = clock
        self._gate = asyncio.Semaphore(max_concurrent)
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self.stats = stats if stats is not None else ReconcileStats()
        # Under leadership only the objects of the channels this worker leads: their
        # reconciliations run in the leader, once (runtime/subscriptions.py).
        self._objects = list(config.cdc_objects()) if channels is None else list(dict.fromkeys(
            name for channel in channels for name in reconciler.objects_for_channel(channel)))

    def objects_for_channel(self, channel: str) -> list[str]:
        return self.reconciler.objects_for_channel(channel)

    async def owe(self, object_name: str, since_ms: int | None, trigger: str) -> None:
        """Durably owe a reconciliation of `object_name` (merged with one already owed)."""
        await self._store.set_reconcile_pending(object_name, since_ms, trigger, self._clock())
        self.stats.reconciles_scheduled += 1
        log.info("ingest.reconcile_scheduled", object=object_name, trigger=trigger,
                 since_ms=str(since_ms))

    async def owe_and_start(self, objects: Iterable[str], since_ms: int | None,
                            trigger: str) -> None:
        """`owe` then `start` each object."""
        for name in objects:
            await self.owe(name, since_ms, trigger)
            self.start(name)

    def start(self, object_name: str) -> None:
        """Run what `object_name` owes in the background (a running worker picks it up)."""
        task = self._workers.get(object_name)
        if task is not None and not task.done():
            return  # the running worker re-reads the row when it finishes
        self._workers[object_name] = asyncio.create_task(
            self._worker(object_name), name=f"reconcile.{object_name}")

    async def pending(self) -> dict[str, PendingReconcile]:
        """Reconciliations owed per configured object, as stored."""
        owed = await self._store.reconciles_pending()
        return {name: owed[name] for name in self._objects if name in owed}

    async def resume_pending(self) -> int:
        """Start the reconciliations a previous run left owed; returns how many."""
        pending = await self.pending()
        for name, owed in pending.items():
            log.info("ingest.reconcile_resumed", object=name, trigger=owed.trigger,
                     since_ms=str(owed.since_ms))
            self.start(name)
        return len(pending)

    async def drain(self) -> None:
        """Wait until every running worker has finished."""
        while True:
            running = [task for task in self._workers.values() if not task.done()]
            if not running:
                return
            await asyncio.gather(*running, return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel the workers (what they owe stays stored for the next start)."""
        workers = [task for task in self._workers.values() if not task.done()]
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    async def owe_after_backfill(self, channel: str) -> list[str]:
        """A channel's first subscription: owe, per object of `channel` a backfill loaded, a
        reconciliation from the start of the latest such backfill (the reconciler subtracts
        `ingest.reconcile_overlap_s`); returns the objects no backfill loaded."""
        objects = self.objects_for_channel(channel)
        starts = await self.backfill_starts(objects)
        for name in objects:
            started_s = starts.get(name)
            if started_s is None:
                continue
            log.info("ingest.first_subscription_after_backfill", channel=channel, object=name,
                     backfill_started_ms=int(started_s * 1000))
            await self.owe_and_start([name], int(started_s * 1000), "first_subscription")
        return [name for name in objects if name not in starts]

    async def backfill_starts(self, objects: Iterable[str]) -> dict[str, float]:
        """Per object, the start time of the latest backfill run that loaded it (directly, or
        as the fan-out source of an object it read)."""
        loaded = await self._store.latest_backfill_starts()
        out: dict[str, float] = {}
        for name in objects:
            if name not in self._config.objects:
                continue
            covering = [name, *(f.object for f in self._config.objects[name].fan_out)]
            starts = [loaded[n] for n in covering if n in loaded]
            if starts:
                out[name] = max(starts)
        return out

    async def _worker(self, object_name: str) -> None:
        """Run the owed reconciliation until its row is cleared; a row changed meanwhile (a
        newer gap) means another pass. Transient failures are retried without end (the row
        stays owed); a fatal one is noted and left for the next start."""
        policy = Policy(name="reconcile", attempts=None, timeout_s=None,
                        wait_initial_s=self._retry_base_s * 4, wait_max_s=self._retry_max_s * 4,
                        on_retry=lambda error: self._retrying(object_name, error))

        async def reconcile_owed() -> PendingReconcile | None:
            owed = await self._store.reconcile_pending(object_name)  # again on every try
            if owed is not None:
                async with self._gate:
                    await self.reconciler.reconcile(object_name, owed.since_ms,
                                                    trigger=owed.trigger)
            return owed

        while True:
            try:
                pending = await policy.call(reconcile_owed)
            except (FatalError, ValueError) as exc:
                self.stats.reconcile_failures += 1
                log.error("ingest.reconcile_failed", object=object_name, **describe_error(exc),
                          detail="the pending marker stays; the next start retries it")
                await self._store.note_error(
                    "reconcile", f"reconciliation of {object_name} failed: {exc}", self._clock())
                return
            if pending is None:
                return
            self.stats.reconciles_done += 1
            if await self._store.clear_reconcile_pending(object_name, pending):
                return

    def _retrying(self, object_name: str, error: Exception) -> None:
        self.stats.reconcile_failures += 1
        log.warning("ingest.reconcile_retry", object=object_name, **describe_error(error))
