"""The backfill run: plan, start or resume, run the windows, catch up, summarise."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from streamsync.adapters.salesforce import SalesforceClient
from streamsync.adapters.store import BackfillRun, Checkpoint, ParticipantState, StoreAPI
from streamsync.config import Config
from streamsync.core.mapping import CompiledMapping
from streamsync.errors import BackfillError
from streamsync.logs import get_logger
from streamsync.runtime.backfill.catchup import CatchUp
from streamsync.runtime.backfill.joint import Participation, is_live
from streamsync.runtime.backfill.options import BackfillOptions
from streamsync.runtime.backfill.plan import ObjectPlan, Planner
from streamsync.runtime.backfill.read import SalesforceReads, page_reader
from streamsync.runtime.backfill.summary import BackfillSummary, Totals
from streamsync.runtime.backfill.tasks import all_or_first_error
from streamsync.runtime.backfill.window import (
    Checkpoints,
    PageHook,
    WindowRunner,
    WindowSettings,
)
from streamsync.runtime.backfill.write import RecordSink, WriteEngine
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.progress import NullProgress, Progress
from streamsync.runtime.reconcile import Reconciler

log = get_logger(__name__)

RunStart = Literal["new", "resumed", "joined"]
SF_API = "salesforce"
TOKEN_ENDPOINT = "oauth2/token"


async def _nothing() -> int:
    return 0


class Backfill:
    """Reads every record of the selected objects and writes them through the pipeline.

    Planning is `Planner` (plan.py), reading `RestReader`/`BulkReader` (read.py), writing
    `WriteEngine` (write.py) driven per window by `WindowRunner` (window.py). At the end every
    record modified since the run started is enqueued for the real-time flusher (`CatchUp`,
    a reconciliation), so a stale page is never the last write.
    """

    def __init__(
        self,
        *,
        config: Config,
        store: StoreAPI,
        salesforce: SalesforceClient,
        pipeline: RecordSink | None,
        metrics: Metrics,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.time,
        mappings: Mapping[str, CompiledMapping],
        on_page: PageHook | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.salesforce = salesforce
        self.pipeline = pipeline
        self.metrics = metrics
        self.progress: Progress = progress if progress is not None else NullProgress()
        self.clock = clock
        self.mappings = mappings
        self.on_page = on_page
        self.reads = SalesforceReads(salesforce, clock=clock)
        self.planner = Planner(config, mappings, self.reads)
        reconciler = Reconciler(config=config, store=store, salesforce=salesforce,
                                metrics=metrics, clock=clock)
        self.catch_up = CatchUp(config=config, reconciler=reconciler, progress=self.progress)

    def _sf_calls(self) -> int:
        """Salesforce API calls so far (token requests do not count against the allocation)."""
        counter = self.salesforce.counter
        return counter.total(SF_API) - counter.total(SF_API, endpoint=TOKEN_ENDPOINT)

    def _windows(self, options: BackfillOptions, writer: WriteEngine,
                 checkpoints: Checkpoints | None = None) -> WindowRunner:
        page_size = self.planner.page_size(options)
        batch = self.config.iterable.batch_max_users
        settings = WindowSettings(options.prefetch_pages, options.write_depth,
                                  max(batch, page_size // batch * batch))
        reader = page_reader(self.planner.api(options), self.reads,
                             window_field=self.config.backfill.window_field,
                             page_size=page_size)
        return WindowRunner(store=self.store, reader=reader, writer=writer, settings=settings,
                            progress=self.progress, on_read=self.catch_up.remember,
                            on_page=self.on_page, clock=self.clock, checkpoints=checkpoints)

    def _writer(self, totals: Totals, **kwargs: Any) -> WriteEngine:
        return WriteEngine(config=self.config, store=self.store, pipeline=self.pipeline,
                           metrics=self.metrics, mappings=self.mappings, totals=totals,
                           clock=self.clock, **kwargs)

    async def run(self, options: BackfillOptions) -> BackfillSummary:
        """Plan, start, resume or join a run, read and write its windows with any other
        processes working on it (joint.py), catch up, summarise."""
        started = self.clock()
        sf_calls_before = self._sf_calls()
        self.catch_up.start(None)
        plans = self.planner.plan(options)
        if options.dry_run is not None:
            return await self._dry_run(options, plans, started, sf_calls_before)
        scope = self.planner.scope(options, plans)
        run, how, total = await self._select_run(options, plans, scope)
        if run is None:
            previous = await self._matching_run(scope)
            assert previous is not None
            summary = BackfillSummary(previous.run_id, "already_finished",
                                      tuple(scope["objects"]))
            self.progress.finish(summary)
            return summary
        self.catch_up.start(run.started_at if options.catch_up else None)
        checkpoints = await self.store.windows(run.run_id)
        pending = [cp for cp in checkpoints if not cp.done]
        done_before = sum(cp.records_done for cp in checkpoints)
        if how != "new":
            self.progress.resuming(run.run_id, len(checkpoints) - len(pending), len(checkpoints),
                                   done_before)
        totals = Totals()
        writer = self._writer(totals, dead_letters_exist=bool(
            await self.store.dead_letter_counts()))
        part = Participation(self.store, run.run_id, lease_s=self.config.backfill.lease_s,
                             totals=totals, sf_calls=lambda: self._sf_calls() - sf_calls_before)
        self.progress.start(total, min(done_before, total))
        log.info("backfill.started", run_id=run.run_id, objects=scope["objects"],
                 windows=len(checkpoints), pending=len(pending), how=how, total=total,
                 api=self.planner.api(options), participant=part.me.participant_id)
        await part.join()
        heartbeat = asyncio.create_task(part.heartbeat())
        try:
            runner = self._windows(options, writer, part)
            by_name = {p.object_name: p for p in plans}
            await part.work(lambda cp: runner.run(run.run_id, cp, by_name[cp.window.object_name]),
                            self.planner.parallel(options))
            await part.close(
                lambda: self.catch_up.run(scope, plans, since_s=run.started_at)
                if options.catch_up else _nothing(), self.clock)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await part.leave()
        whole = await part.whole_run()
        summary = BackfillSummary(
            run.run_id, "finished", tuple(scope["objects"]),
            records_read=totals.read, records_written=totals.written,
            records_skipped=totals.skipped, dead_by_reason=dict(totals.dead),
            retry_queued=totals.retry_queued, catchup_queued=part.catchup_queued,
            pages=totals.pages, windows=len(checkpoints),
            windows_resumed=part.windows_resumed,
            sf_api_calls=self._sf_calls() - sf_calls_before,
            iterable_requests=totals.requests, iterable_429s=totals.rate_limited,
            duration_s=self.clock() - started, participants=int(whole["participants"]),
            run_totals=dict(whole),
        )
        log.info("backfill.finished", **{k: v for k, v in summary.to_dict().items()
                                         if k not in ("objects", "dry_run_file", "run")})
        self.progress.finish(summary)
        return summary

    async def _matching_run(self, scope: Mapping[str, Any]) -> BackfillRun | None:
        for run in await self.store.runs(limit=50):
            if dict(run.options).get("scope") == orjson.loads(orjson.dumps(dict(scope))):
                return run
        return None

    async def _live(self, run: BackfillRun) -> list[ParticipantState]:
        lease_s = self.config.backfill.lease_s
        return [p for p in await self.store.run_participants(run.run_id)
                if is_live(p, lease_s)]

    async def _select_run(self, options: BackfillOptions, plans: Sequence[ObjectPlan],
                          scope: dict[str, Any]) -> tuple[BackfillRun | None, RunStart, int]:
        """(run to work on, how: new/resumed/joined, records it reads); (None, "new", 0) when
        the same backfill already finished. A run of the same scope in progress is joined; a
        stopped one needs --resume. A new run's windows and COUNT()s are planned at once."""
        previous = await self._matching_run(scope)
        if options.restart:
            live = [] if previous is None or previous.finished else await self._live(previous)
            if live:
                who = live[0].participant
                raise BackfillError(
                    f"backfill {previous.run_id if previous else ''} of the same scope is "
                    f"running (pid {who.pid} on {who.host}): stop it before --restart, or run "
                    "without --restart to join it")
            previous = None
        if previous is not None and not previous.finished:
            live = await self._live(previous)
            if not (live or options.resume or options.join):
                progress = await self.store.windows(previous.run_id)
                done = sum(1 for w in progress if w.done)
                raise BackfillError(
                    f"backfill {previous.run_id} of the same scope stopped before finishing "
                    f"({done} of {len(progress)} windows done): use --resume to continue it "
                    "or --restart to start over")
            return (previous, "joined" if live else "resumed",
                    await self.planner.total(plans, options))
        if options.join:
            raise BackfillError("--join: no backfill of the same scope is in progress (start "
                                "one without --join)")
        if previous is not None:
            return None, "new", 0
        run_id = "bf-" + datetime.fromtimestamp(self.clock(), UTC).strftime("%Y%m%dT%H%M%S") \
            + "-" + uuid.uuid4().hex[:6]
        windows, total = await self.planner.windows_and_total(plans, options)
        options_doc = {"scope": scope, "parallel": self.planner.parallel(options),
                       "page_size": self.planner.page_size(options)}
        if options.restart:
            run = await self.store.start_run(run_id, windows, options_doc, self.clock(),
                                             objects=scope["objects"])
            return run, "new", total
        run, created = await self.store.start_or_find_run(
            run_id, windows, options_doc, self.clock(), objects=scope["objects"])
        return run, "new" if created else "joined", total

    async def _run_windows(self, run_id: str | None, pending: Sequence[Checkpoint],
                           plans: Sequence[ObjectPlan], options: BackfillOptions,
                           writer: WriteEngine) -> None:
        gate = asyncio.Semaphore(self.planner.parallel(options))
        runner = self._windows(options, writer)
        by_name = {p.object_name: p for p in plans}

        async def one(cp: Checkpoint) -> None:
            async with gate:
                await runner.run(run_id, cp, by_name[cp.window.object_name])

        await all_or_first_error([one(cp) for cp in pending])

    async def _dry_run(self, options: BackfillOptions, plans: Sequence[ObjectPlan],
                       started: float, sf_calls_before: int) -> BackfillSummary:
        assert options.dry_run is not None
        path = options.dry_run
        windows, total = await self.planner.windows_and_total(plans, options)
        self.progress.start(total)
        checkpoints = [Checkpoint("dry-run", window, None, 0, False, started, started, None)
                       for window in windows]
        try:
            out = await asyncio.to_thread(path.open, "wb")
        except OSError as exc:
            raise BackfillError(f"--dry-run: cannot write {path}: {exc.strerror}") from None
        totals = Totals()
        with out:
            await self._run_windows(None, checkpoints, plans, options,
                                    self._writer(totals, dry_out=out))
        summary = BackfillSummary(
            None, "dry_run", tuple(p.object_name for p in plans), records_read=totals.read,
            dead_by_reason=dict(totals.dead), pages=totals.pages, windows=len(checkpoints),
            sf_api_calls=self._sf_calls() - sf_calls_before,
            duration_s=self.clock() - started, dry_run_file=str(path))
        self.progress.finish(summary)
        return summary
