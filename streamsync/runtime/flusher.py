"""Real-time flush: lease queued ids, re-read them by SOQL, sync through the pipeline, settle."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from streamsync.adapters.salesforce import SalesforceClient
from streamsync.adapters.store import (
    RETRIES_EXHAUSTED,
    Backoff,
    Failure,
    Lease,
    StoreAPI,
)
from streamsync.config import CAMPAIGN_MEMBER, Config
from streamsync.core.ids import id_or_none
from streamsync.errors import FatalError, RetriableError, Unreachable, describe_error
from streamsync.logs import get_logger
from streamsync.runtime.breaker import Breakers, CircuitBreaker, Signals
from streamsync.runtime.conversions import ConvertedLeads
from streamsync.runtime.flush_loop import run_loops
from streamsync.runtime.flush_read import FANOUT_PAGE, SALESFORCE, fan_out, read_current
from streamsync.runtime.lists.sync import ListSync
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.pipeline import SyncOutcome, SyncPipeline
from streamsync.runtime.resync_holds import Leader, ResyncHolds
from streamsync.runtime.wakeup import Coalescer, QueueSignal, Turn

log = get_logger(__name__)

PROBE_IDS = 50
"""Records leased by the one probe batch of a destination that is down."""
ITERABLE = "iterable"
STORE = "store"


@dataclass
class FlushResult:
    """What one `flush_once` did with the rows it leased."""

    leased: int = 0
    synced: int = 0
    skipped: int = 0
    dead: int = 0
    retried: int = 0
    released: int = 0
    fanned_out: int = 0
    paused: bool = False
    """Nothing was leased because Salesforce or Iterable is down (no probe due yet)."""

    @property
    def idle(self) -> bool:
        return self.leased == 0


def backoff_from(config: Config) -> Backoff:
    """The queue's retry backoff from [queue]."""
    q = config.queue
    return Backoff(base_s=q.backoff_base_s, max_delay_s=q.backoff_max_s,
                   max_attempts=q.max_attempts)


def breakers_from(config: Config, clock: Callable[[], float]) -> Breakers:
    """One circuit breaker each for Salesforce and Iterable, from [flush] and [queue]."""
    flush = config.flush
    base_s = min(config.queue.backoff_base_s, flush.outage_probe_max_s)

    def breaker(name: str) -> CircuitBreaker:
        return CircuitBreaker(name, failures_to_open=flush.outage_after_failures, base_s=base_s,
                              max_s=flush.outage_probe_max_s, clock=clock)

    return Breakers({SALESFORCE: breaker("Salesforce"), ITERABLE: breaker("Iterable")})


def _key(lease: Lease) -> tuple[str, str]:
    """A lease's key in `pending`: its id in the 18-character form the outcomes use, parsed
    once as it leaves the store (an invalid id stays as stored, to be dead-lettered)."""
    return lease.object_name, id_or_none(lease.record_id) or lease.record_id


def _take(pending: dict[tuple[str, str], Lease], object_name: str,
          ids: Sequence[str]) -> list[Lease]:
    """The pending leases of `ids`, removed from `pending`."""
    found = [pending.pop((object_name, record_id), None) for record_id in ids]
    return [lease for lease in found if lease is not None]


class Flusher:
    """Leases batches from the queue and syncs the current Salesforce state of each record.

    Records are re-read with one queryAll per chunk of ids (chunked by encoded URI length), so
    deleted rows come back with IsDeleted and rows gone for good are missing; both follow the
    object's delete policy. With a configured filter the ids are read with the filter; an id the
    filtered read misses is read again without it, and a record that exists but no longer
    matches the filter is acknowledged as skipped, not deleted: the filter decides what gets
    synced, not what gets removed from Iterable.

    Objects with `fan_out` (Account → Contact) enqueue their children (source `fanout`, keyset
    paged, any number); an object that writes no users is acknowledged once that is done.

    An outage is waited out, never charged to the records: records whose Salesforce read failed,
    or whose Iterable calls failed (5xx, 429, timeouts, connection errors), go back without an
    attempt (`Store.wait_out`), and that destination's circuit breaker hears of it (Salesforce
    per flush, Iterable per call, from the writer). While a breaker is open nothing is leased
    or read and Iterable calls already under way fail at once; one small probe batch tries
    again, and when an answer closes the breaker every record waiting is due at once.
    """

    def __init__(self, *, config: Config, store: StoreAPI, salesforce: SalesforceClient,
                 pipeline: SyncPipeline, metrics: Metrics, owner: str,
                 clock: Callable[[], float] = time.time, backoff: Backoff | None = None,
                 shutdown_grace_s: float = 10.0, fanout_page: int = FANOUT_PAGE,
                 signal: QueueSignal | None = None, lists: ListSync | None = None,
                 leads: Leader | None = None) -> None:
        self.config = config
        self.lists = lists
        """CampaignMember ids become list subscriptions (runtime/lists/sync.py) when given."""
        self.objects = [*config.objects, *((CAMPAIGN_MEMBER,) if lists is not None else ())]
        """The objects whose queue rows this flusher leases."""
        self.store = store
        self.salesforce = salesforce
        self.pipeline = pipeline
        self.metrics = metrics
        self.owner = owner
        self.clock = clock
        self.backoff = backoff or backoff_from(config)
        self.shutdown_grace_s = shutdown_grace_s
        self.fanout_page = fanout_page
        self.signal = signal or QueueSignal()
        self.coalescer = Coalescer(config.flush.linger_ms / 1000.0)
        self.breakers = breakers_from(config, clock)
        self._recoveries = 0
        # Iterable's breaker hears of every Iterable call the pipeline's writer makes.
        pipeline.writer.breaker = self.breakers.by_name[ITERABLE]
        self.converted_leads = ConvertedLeads(config=config, store=store, salesforce=salesforce,
                                              clock=clock)
        self.holds = ResyncHolds(store, leads, lambda: self.config) if leads else None
        """With several workers (`leads`), the rows of an object another worker re-syncs are
        left to that worker (runtime/resync_holds.py)."""

    async def leasable(self) -> list[str]:
        """The objects whose queue rows this flusher leases now."""
        held = await self.holds.held_elsewhere() if self.holds is not None else None
        return [name for name in self.objects if name not in held] if held else self.objects

    def outage(self) -> str:
        """Which destination is down and since when (empty while both answer)."""
        return self.breakers.outage()

    # -- one step ----------------------------------------------------------------------------

    async def flush_once(self, turn: Turn | None = None) -> FlushResult:
        """Lease one batch, read, sync and settle it. A failing object's rows are retried later
        (an attempt each, so a record that trips a bug ends in the dead-letter table; an outage
        costs none); on cancellation or a FatalError the unsettled leases are released, then it
        re-raises. While a destination is down it leases nothing (`paused`) until a probe is
        due, and then only a probe batch. `turn` (from the loop's Coalescer) hears how many
        rows the lease found."""
        probing = self.breakers.admit()
        if probing is None:
            return FlushResult(paused=True)
        signals = Signals()
        try:
            result = await self._flush(signals, PROBE_IDS if probing else None, turn)
        finally:
            self.breakers.report(signals, probing)
            for name, breaker in self.breakers.by_name.items():
                self.metrics.destination_down.labels(name).set(int(breaker.is_open))
        recoveries = self.breakers.recoveries()
        if recoveries != self._recoveries:
            self._recoveries = recoveries
            resumed = await asyncio.shield(self.store.resume_waiting(self.clock()))
            self.signal.notify()
            log.info("flusher.outage_over", records_due_now=resumed)
        return result

    async def _flush(self, signals: Signals, limit: int | None, turn: Turn | None
                     ) -> FlushResult:
        batch_ids = self.config.flush.batch_ids
        leases = await self.store.lease(
            self.owner, min(limit or batch_ids, batch_ids),
            self.config.queue.lease_s, self.clock(), objects=await self.leasable(),
            max_attempts=self.backoff.max_attempts)
        if turn is not None:
            self.coalescer.leased(turn, len(leases), full=len(leases) >= batch_ids)
        result = FlushResult(leased=len(leases))
        if not leases:
            return result
        pending = {_key(lease): lease for lease in leases}
        try:
            by_object: dict[str, list[Lease]] = defaultdict(list)
            for lease in leases:
                by_object[lease.object_name].append(lease)
            for object_name, group in by_object.items():
                try:
                    await self._flush_object(object_name, group, pending, result, signals)
                except Unreachable as exc:
                    signals.fail(exc.destination, str(exc.error))
                    await self._wait_out(group, exc.error, exc.destination, pending, result)
                except RetriableError as exc:  # a busy store: no fault of the records either
                    await self._wait_out(group, exc, STORE, pending, result)
                except FatalError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a bad batch costs an attempt
                    log.error("flusher.batch_failed", object=object_name, **describe_error(exc))
                    await self._retry(group, RetriableError(f"{type(exc).__name__}: {exc}"),
                                      pending, result)
        except (asyncio.CancelledError, FatalError):
            result.released += await asyncio.shield(self.store.release(list(pending.values())))
            raise
        if pending:  # a bug, not a fault: never leave a leased row unsettled
            await self._retry(list(pending.values()), RetriableError("left unsettled"),
                              pending, result)
        return result

    async def _flush_object(self, object_name: str, leases: Sequence[Lease],
                            pending: dict[tuple[str, str], Lease], result: FlushResult,
                            signals: Signals) -> None:
        if object_name == CAMPAIGN_MEMBER and self.lists is not None:
            outcome = await self.lists.flush([lease.record_id for lease in leases], signals)
            await self._settle(object_name, outcome, pending, result)
            return
        obj = self.config.objects[object_name]
        parsed = [(lease, id_or_none(lease.record_id)) for lease in leases]
        ids = [sf_id for _, sf_id in parsed if sf_id is not None]
        bad = [lease for lease, sf_id in parsed if sf_id is None]
        if bad:
            await self._settle(object_name, SyncOutcome(dead={
                lease.record_id: ("invalid_id", "not a Salesforce record id") for lease in bad}),
                pending, result)
        try:
            live, deleted, filtered, gone = await read_current(
                self.salesforce, self.pipeline.mappings, object_name, obj, ids)
            # Before the pipeline reads identities: a Contact's first sync moves its Lead's
            # profile (this looks the converted Leads up in Salesforce).
            await self.converted_leads.adopt(object_name, [*(r["Id"] for r in live), *deleted])
        except RetriableError as exc:
            raise Unreachable(SALESFORCE, exc) from exc
        if ids:
            signals.ok(SALESFORCE)
        outcome = SyncOutcome()
        if live and obj.writes_users:
            outcome = await self.pipeline.sync_records(object_name, live, source="flush")
            if self.lists is not None:
                await self.lists.follow_people(object_name, live, self.signal)
        elif live:
            outcome.skipped.extend(r["Id"] for r in live)
        if obj.fan_out and live:
            result.fanned_out += await fan_out(
                salesforce=self.salesforce, store=self.store, signal=self.signal,
                clock=self.clock, obj=obj, parent_ids=[r["Id"] for r in live],
                page=self.fanout_page)
        if deleted:
            _merge(outcome, await self.pipeline.sync_deleted(object_name, deleted,
                                                             source="flush", current=gone))
        outcome.skipped.extend(filtered)
        await self._settle(object_name, outcome, pending, result)

    # -- settling ----------------------------------------------------------------------------

    async def _settle(self, object_name: str, outcome: SyncOutcome,
                      pending: dict[tuple[str, str], Lease], result: FlushResult) -> None:
        def take(ids: Sequence[str]) -> list[Lease]:
            return _take(pending, object_name, ids)

        now = self.clock()
        synced = take(outcome.synced)
        done = synced + take(outcome.skipped)
        if done and (await asyncio.shield(self.store.ack(done))).kept:
            self.signal.notify()  # changed while leased: due again at once
        for lease in synced:
            if lease.commit_ts_ms is not None:
                self.metrics.observe_commit_to_iterable(
                    max(0.0, now - lease.commit_ts_ms / 1000.0), now)
        failures = []
        for record_id, (reason, detail) in outcome.dead.items():
            for lease in take([record_id]):
                failures.append(Failure(lease, reason, detail))
                self.metrics.dead_lettered.labels(reason).inc()
        if failures and (await asyncio.shield(
                self.store.dead_letter_each(failures, now))).kept_newer:
            self.signal.notify()
        result.synced += len(synced)
        result.skipped += len(done) - len(synced)
        result.dead += len(failures)
        by_error: dict[int, tuple[RetriableError, list[str]]] = {}
        for record_id, error in outcome.retry.items():
            by_error.setdefault(id(error), (error, []))[1].append(record_id)
        for error, ids in by_error.values():  # every one is a failure of Iterable's
            await self._wait_out(take(ids), error, ITERABLE, pending, result)

    async def _retry(self, leases: Sequence[Lease], error: RetriableError,
                     pending: dict[tuple[str, str], Lease], result: FlushResult) -> None:
        for lease in leases:
            pending.pop(_key(lease), None)
        if not leases:
            return
        fields = describe_error(error)
        log.warning("flusher.retry_later", records=len(leases), **fields)
        now = self.clock()
        settled = await asyncio.shield(self.store.retry_later(
            leases, str(error), now, self.backoff, error.retry_after_s))
        await asyncio.shield(self.store.note_error(
            "flusher", f"{leases[0].object_name}: {fields['error']}: {fields['message']}", now))
        result.retried += settled.retried
        result.dead += settled.dead_lettered
        if settled.kept_newer:
            self.signal.notify()
        if settled.dead_lettered:
            self.metrics.dead_lettered.labels(RETRIES_EXHAUSTED).inc(settled.dead_lettered)

    async def _wait_out(self, leases: Sequence[Lease], error: RetriableError, destination: str,
                        pending: dict[tuple[str, str], Lease], result: FlushResult) -> None:
        """Back to the queue without an attempt: due at the destination breaker's next probe
        while it is open, else after a backoff by the rows' outage retries."""
        for lease in leases:
            pending.pop(_key(lease), None)
        if not leases:
            return
        fields = describe_error(error)
        log.warning("flusher.wait_out", destination=destination, records=len(leases), **fields)
        now = self.clock()
        breaker = self.breakers.by_name.get(destination)
        until = max(now, breaker.probe_at) if breaker is not None and breaker.is_open else None
        settled = await asyncio.shield(self.store.wait_out(
            leases, str(error), now, self.backoff, error.retry_after_s, until))
        await asyncio.shield(self.store.note_error(
            "flusher", f"{leases[0].object_name}: {fields['error']}: {fields['message']}", now))
        result.retried += settled.retried

    # -- the loops (runtime/flush_loop.py) ---------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """`flush.concurrency` loops until `stop`; then in-flight batches get `shutdown_grace_s`
        to finish before they are cancelled and their leases released. A FatalError in any
        loop stops them all and is raised here."""
        await run_loops(self, stop)


def _merge(into: SyncOutcome, other: SyncOutcome) -> None:
    into.synced.extend(other.synced)
    into.skipped.extend(other.skipped)
    into.dead.update(other.dead)
    into.retry.update(other.retry)
    into.requests += other.requests
    into.rate_limited += other.rate_limited
