"""The re-sync of an object whose mapping changed (docs/design.md §9): a backfill-style keyset
pass beside real-time sync, resumable from its store checkpoint.

Phase `sync` reads every record the (new) filter selects, a page ahead, and hands each page to
the shared pipeline, which skips records whose payload hash is unchanged; the payloads carry the
re-sync's clears (targets dropped from the mapping, sent as null). Phase `out_of_scope`, when the
filter or the out-of-scope policy changed and the policy acts, reads the Ids the filter leaves
out and applies `out_of_scope` (flag or delete) to those synced before. Then the description is
recorded as applied and the clears stop.

Pages are written in chunks of one Iterable batch (`iterable.batch_max_users` records), a few
chunks at a time across pages (runtime/resync_window.py), so the re-sync always has a request
ready for the next send slot while the page after is read and mapped; a page is checkpointed
once it and every page before it were written. Real-time changes keep priority: the re-sync's
requests yield (adapters/ratelimit.py `yielding`), taking a send slot of the shared limiter only
when it is due and no real-time batch took it, so a real-time batch waits behind at most the
one re-sync request in its slot, and the re-sync uses every slot real time leaves.

With several workers an object re-syncs in the worker that leads its channel, and the others
leave its queue rows to that worker until it is done (runtime/resync_holds.py), so the
pipeline's one-call-per-record gate covers every write of its records.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from streamsync.adapters.ratelimit import yielding
from streamsync.adapters.salesforce import SalesforceClient
from streamsync.adapters.store import AppliedMapping, QueueInput, ResyncState, StoreAPI
from streamsync.config import Config
from streamsync.core import soql
from streamsync.core.fingerprint import diff
from streamsync.core.ids import row_id
from streamsync.core.mapping import CompiledMapping
from streamsync.errors import RetriableError, Stopped, Superseded, describe_error
from streamsync.logs import get_logger
from streamsync.retry import Policy
from streamsync.runtime.mapping_state import (
    ObjectSync,
    clears_in_force,
    needs_out_of_scope_pass,
    object_syncs,
    schedule_resyncs,
)
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.pipeline import SyncOutcome, SyncPipeline
from streamsync.runtime.resync_holds import Leader, wait_for_other_writers
from streamsync.runtime.resync_window import WriteWindow

log = get_logger(__name__)

SOURCE = "resync"
PAGE_SIZE = 2000
WRITE_WIDTH = 3
"""Chunks of a re-sync written at once: enough that a request is always ready for the next
send slot while others are answered, mapped and saved."""
ORDER_FIELDS = ("SystemModstamp",)
READS = Policy(name="resync_reads", attempts=None, timeout_s=None, wait_initial_s=0.5,
               wait_max_s=30.0)
"""Salesforce reads of a re-sync: retried until they succeed or the service stops."""
OUTAGE_WAIT_MAX_S = 30.0


STORE_RETRY_S = 2.0
LEADER_RECHECK_S = 5.0
"""How often a worker that leads none of the owed re-syncs' channels looks again."""


class Resyncer:
    """Runs the re-syncs the store owes, one object at a time, until stopped."""

    def __init__(self, *, config: Config, store: StoreAPI, salesforce: SalesforceClient,
                 pipeline: SyncPipeline, mappings: Mapping[str, CompiledMapping],
                 syncs: Mapping[str, ObjectSync], metrics: Metrics,
                 clock: Callable[[], float] = time.time, page_size: int = PAGE_SIZE,
                 leads: Leader | None = None, write_width: int = WRITE_WIDTH) -> None:
        self.config = config
        self.leads = leads  # with several workers, an object re-syncs where its channel is led
        self.store = store
        self.salesforce = salesforce
        self.pipeline = pipeline
        self.mappings = dict(mappings)
        self.syncs = dict(syncs)
        self.metrics = metrics
        self.clock = clock
        self.page_size = page_size
        self.write_width = write_width
        self.wake = asyncio.Event()

    def apply(self, config: Config, mappings: Mapping[str, CompiledMapping],
              syncs: Mapping[str, ObjectSync]) -> None:
        """A reloaded config: a re-sync under way towards another fingerprint stops at its
        next page, and the owed ones are looked at again."""
        self.config = config
        self.mappings = dict(mappings)
        self.syncs = dict(syncs)
        self.wake.set()

    def activate(self, owed: Mapping[str, ResyncState],
                 applied: Mapping[str, AppliedMapping]) -> None:
        """Make the pipeline send the clears: an owed re-sync's, else those of the description
        applied (targets once dropped stay cleared: a record deleted or out of reach while
        its object re-synced gets them when it comes back)."""
        clears = clears_in_force(self.syncs, owed, applied)
        for name, base in self.mappings.items():
            kept = clears.get(name)
            self.pipeline.mappings[name] = base.with_clears(kept) if kept else base

    async def run(self, stop: asyncio.Event) -> None:
        """Work through the owed re-syncs; wait for a reload when there are none. A store that
        cannot be reached (a PostgreSQL restart) is waited out: the re-sync resumes from its
        last checkpoint. Its Iterable requests yield to real time's."""
        with contextlib.suppress(Stopped), yielding():
            while not stop.is_set():
                try:
                    await self._pass(stop)
                except RetriableError as exc:
                    log.warning("resync.store_unreachable", **describe_error(exc))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), STORE_RETRY_S)

    async def _pass(self, stop: asyncio.Event) -> None:
        """Run the re-syncs this worker owes now, then wait for a reason to look again."""
        self.wake.clear()
        owed = [s for name, s in (await self.store.resyncs()).items()
                if name in self.syncs and s.fingerprint == self.syncs[name].fingerprint]
        self._show(owed)
        mine = self._led(owed)
        for state in mine:
            try:
                await self._one(state, stop)
            except Superseded:
                log.info("resync.superseded", object=state.object_name)
            if stop.is_set():
                return
        if len(mine) < len(owed):  # others' (or nobody's yet): look again soon
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_wait_any(stop, self.wake), LEADER_RECHECK_S)
        elif not owed:
            await _wait_any(stop, self.wake)

    # -- one object ------------------------------------------------------------------------

    async def _one(self, state: ResyncState, stop: asyncio.Event) -> None:
        name = state.object_name
        log.info("resync.started", object=name, phase=state.phase, after=state.last_id,
                 clears=list(state.clears))
        self.metrics.resync_running.labels(name).set(1)
        # Writes mapped before a reload could land after this pass wrote the same records.
        await _until(self.pipeline.generations.settled(), stop)
        if self.leads is not None and self.store.shared:  # several workers
            await _until(wait_for_other_writers(self.store, name, self.leads.worker_id), stop)
        if state.phase == "sync":
            await self._sync_phase(state, stop)
            state = await self._next_phase(state)
        if await self._wants_out_of_scope(state):
            await self._out_of_scope_phase(state, stop)
        await self.store.set_applied_mapping(
            name, state.fingerprint, {**state.description, "cleared": list(state.clears)},
            self.clock())
        done = (await self.store.applied_mappings()).get(name)
        self.metrics.resync_running.labels(name).set(0)
        log.info("resync.done", object=name, fingerprint=state.fingerprint[:12],
                 applied=done is not None and done.fingerprint == state.fingerprint)

    async def _next_phase(self, state: ResyncState) -> ResyncState:
        await self._checkpoint(state, "out_of_scope", None, 0, 0, 0)
        current = (await self.store.resyncs()).get(state.object_name)
        if current is None or current.fingerprint != state.fingerprint:
            raise Superseded
        return current

    async def _wants_out_of_scope(self, state: ResyncState) -> bool:
        obj = self.config.objects[state.object_name]
        if obj.filter is None:
            return False
        applied = (await self.store.applied_mappings()).get(state.object_name)
        change = diff(applied.description if applied else None, state.description)
        return needs_out_of_scope_pass(change, obj.out_of_scope)

    async def _sync_phase(self, state: ResyncState, stop: asyncio.Event) -> None:
        name = state.object_name
        mapping = self.pipeline.mappings[name]
        fields = mapping.soql_fields(*ORDER_FIELDS)
        where = self.config.objects[name].safe_filter
        size = self.config.iterable.batch_max_users
        window = WriteWindow(self.write_width)
        try:
            async for records, read_at in keyset_pages(
                    self.salesforce, name, fields, where, state.last_id,
                    page_size=self.page_size, clock=self.clock, stop=stop):
                self._check_current(state, stop)
                chunks = [functools.partial(self._write, name, records[i:i + size], read_at,
                                            stop) for i in range(0, len(records), size)]
                await window.add(str(records[-1]["Id"]), len(records), chunks)
                for page in window.done():
                    await self._checkpoint(state, "sync", page.last_id, page.read,
                                           page.written, 0)
            for page in await window.drain():
                await self._checkpoint(state, "sync", page.last_id, page.read, page.written, 0)
        finally:
            await window.close()

    async def _out_of_scope_phase(self, state: ResyncState, stop: asyncio.Event) -> None:
        name = state.object_name
        obj = self.config.objects[name]
        assert obj.filter is not None
        outside = soql.parse_filter(f"NOT ({obj.filter})")
        async for records, _ in keyset_pages(self.salesforce, name, ["Id"], outside,
                                             state.last_id, page_size=self.page_size,
                                             clock=self.clock, stop=stop):
            self._check_current(state, stop)
            ids = [str(r["Id"]) for r in records]
            known = await self.store.identities(name, ids)
            acted = 0
            if known:
                outcome = await self._settle(name, functools.partial(
                    self.pipeline.sync_deleted, name, list(known), source=SOURCE,
                    out_of_scope=True), stop)
                acted = len(outcome.synced)
            await self._checkpoint(state, "out_of_scope", ids[-1], len(ids), 0, acted)
        log.info("resync.out_of_scope_done", object=name, policy=obj.out_of_scope)

    def _check_current(self, state: ResyncState, stop: asyncio.Event) -> None:
        if stop.is_set():
            raise Stopped("stopped between two pages of a re-sync")
        sync = self.syncs.get(state.object_name)
        if sync is None or sync.fingerprint != state.fingerprint:
            raise Superseded

    async def _checkpoint(self, state: ResyncState, phase: str, last_id: str | None,
                          read: int, written: int, out_of_scope: int) -> None:
        kept = await self.store.save_resync_progress(
            state.object_name, state.fingerprint, phase="sync" if phase == "sync"
            else "out_of_scope", last_id=last_id, read=read, written=written,
            out_of_scope=out_of_scope, now=self.clock())
        if not kept:
            raise Superseded
        labels = self.metrics.resync_records
        labels.labels(state.object_name, "read").inc(read)
        labels.labels(state.object_name, "written").inc(written)
        labels.labels(state.object_name, "out_of_scope").inc(out_of_scope)

    # -- reads and writes ------------------------------------------------------------------

    async def _write(self, name: str, records: list[dict[str, Any]], read_at: float,
                     stop: asyncio.Event) -> int:
        """Sync one page; returns the records written (the rest were unchanged, dead, or
        written by real time since the page was read: a newer state)."""
        outcome = await self._settle(
            name, lambda: self.pipeline.sync_records(name, records, source=SOURCE,
                                                     read_at=read_at), stop, records=records)
        return len(outcome.synced)

    async def _settle(self, name: str, call: Callable[[], Any], stop: asyncio.Event, *,
                      records: list[dict[str, Any]] | None = None) -> SyncOutcome:
        """Run a pipeline call; while Iterable takes nothing of it (down), wait and repeat;
        records still failing after others were taken go to the real-time queue (source
        `retry`); dead ones to the dead-letter table."""
        wait_s = 0.5
        while True:
            outcome: SyncOutcome = await call()
            if outcome.dead:
                await self.store.add_dead_letters(name, dict(outcome.dead), self.clock())
            if outcome.synced:
                await self.store.clear_dead_letters(name, list(outcome.synced))
            if not outcome.retry:
                return outcome
            took = outcome.synced or outcome.skipped or outcome.dead
            if took:
                items = [QueueInput(name, i) for i in outcome.retry]
                await self.store.enqueue(items, self.clock(), source="retry")
                return outcome
            error = next(iter(outcome.retry.values()))
            log.warning("resync.waiting_for_iterable", object=name, wait_s=round(wait_s, 1),
                        **describe_error(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait_s)
            if stop.is_set():
                raise Stopped("stopped while a re-sync waited for Iterable")
            wait_s = min(OUTAGE_WAIT_MAX_S, wait_s * 2)
            if records is not None:
                retry = set(outcome.retry)
                records[:] = [r for r in records if r["Id"] in retry]

    def _led(self, owed: Sequence[ResyncState]) -> list[ResyncState]:
        """The owed re-syncs this worker runs: those of objects whose channel it leads."""
        if self.leads is None:
            return list(owed)
        led = set(self.leads.channels())
        return [s for s in owed if self.config.channel(s.object_name) in led]

    def _show(self, owed: Sequence[ResyncState]) -> None:
        """Every object's gauge, and its counters at zero before its first re-sync."""
        for name in self.syncs:
            for kind in ("read", "written", "out_of_scope"):
                self.metrics.resync_records.labels(name, kind)
            self.metrics.resync_running.labels(name).set(
                int(any(s.object_name == name for s in owed)))


async def keyset_pages(salesforce: SalesforceClient, name: str, fields: Sequence[str],
                       where: soql.SafeFilter | None, after: str | None, *, page_size: int,
                       clock: Callable[[], float], stop: asyncio.Event
                       ) -> AsyncIterator[tuple[list[dict[str, Any]], float]]:
    """Keyset pages in Id order, each with the time its query was sent; the next page is
    read while the caller writes this one."""

    async def read(after_id: str | None) -> tuple[list[dict[str, Any]], float]:
        query = soql.keyset_page(name, fields, after_id, where=where, limit=page_size)
        read_at = clock()

        async def once() -> list[dict[str, Any]]:
            rows = [r async for r in salesforce.records(query)]
            for row in rows:
                row.pop("attributes", None)
                row["Id"] = row_id(row)
            return [r for r in rows if r["Id"] is not None]

        return await READS.call(once, stop), read_at

    ahead = asyncio.ensure_future(read(after))
    try:
        while True:
            records, read_at = await ahead
            if len(records) == page_size:
                ahead = asyncio.ensure_future(read(str(records[-1]["Id"])))
            if records:
                yield records, read_at
            if len(records) < page_size:
                return
    finally:
        if not ahead.done():
            ahead.cancel()
            with contextlib.suppress(asyncio.CancelledError, Stopped, RetriableError):
                await ahead


async def _until(waiting: Awaitable[None], stop: asyncio.Event) -> None:
    """Await `waiting`, or raise Stopped when `stop` is set first."""
    task = asyncio.ensure_future(waiting)
    halt = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, halt], return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        halt.cancel()
    if stop.is_set():
        raise Stopped("stopped while waiting for writes mapped before a reload")


async def _wait_any(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def open_resyncer(config: Config, *, store: StoreAPI, salesforce: SalesforceClient,
                        pipeline: SyncPipeline, mappings: Mapping[str, CompiledMapping],
                        metrics: Metrics, clock: Callable[[], float] = time.time,
                        leads: Leader | None = None) -> Resyncer:
    """Compare the config with what the store applied, owe the re-syncs that follows, and a
    Resyncer to run them (the pipeline sends their clears from now on)."""
    syncs = object_syncs(config, mappings)
    owed = await schedule_resyncs(store, syncs, clock())
    pipeline.mappings = dict(mappings)
    resyncer = Resyncer(config=config, store=store, salesforce=salesforce, pipeline=pipeline,
                        mappings=mappings, syncs=syncs, metrics=metrics, clock=clock,
                        leads=leads)
    resyncer.activate(owed, await store.applied_mappings())
    return resyncer
