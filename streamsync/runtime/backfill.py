"""Backfill: keyset-paged full records in parallel CreatedDate windows, through the pipeline."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal, Protocol, TypeVar, cast

import orjson

from streamsync.adapters.salesforce import QueryError, SalesforceClient
from streamsync.adapters.store import BackfillRun, BackfillWindow, Checkpoint, QueueInput, Store
from streamsync.config import Config
from streamsync.core import soql
from streamsync.core.describe_check import DescribeChecker
from streamsync.core.ids import to_18
from streamsync.core.mapping import CompiledMapping, normalize_email
from streamsync.errors import AuthError, FatalError, RecordError, RetriableError, StreamsyncError
from streamsync.logs import get_logger
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.progress import NullProgress, Progress, format_duration

log = get_logger(__name__)

SOURCE = "backfill"
SF_API = "salesforce"
TOKEN_ENDPOINT = "oauth2/token"
Api = Literal["rest", "bulk"]
BULK_CHUNK = 50_000
"""Records per Bulk API 2.0 query job: each job is one keyset chunk, so a resume restarts from
the last checkpointed Id, not from the start of the window."""
RETRY_PAGE_ATTEMPTS = 6
READ_ATTEMPTS = 8
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
_SYNTHETIC_FIELD = frozenset({"name", "type", "filterable"})
CATCH_UP_MARGIN_S = 15.0
"""The catch-up looks this far before the run's start. SystemModstamp is Salesforce's clock
when a save ran, whole seconds; a save becomes visible to queries only at its commit, after its
triggers (Apex allows 10 s of CPU per synchronous save), and this host's clock may differ from
Salesforce's by a second or two. A change stamped earlier than this margin before the start
was committed, and so read by the backfill's pages, before the run began."""
SEEN_GUARD_S = 2.0
"""A record read with a SystemModstamp at least this long before its page's query counts as
read in its latest state: a later save gets a later stamp (whole seconds, plus clock skew)."""
MAX_SEEN = 500_000
"""Records remembered for the catch-up (about 150 bytes each); beyond, they are re-queued."""


class BackfillError(FatalError):
    """The backfill cannot start or go on as asked (unknown object, ambiguous resume...)."""


class WritesFailed(StreamsyncError):
    """Iterable took none of a call's records (unreachable, down, key refused): the run stops
    with its checkpoints before that call, so it is not marked finished and `--resume` sends
    the call again. `advice` says what to do."""

    def __init__(self, message: str, advice: str) -> None:
        super().__init__(message)
        self.advice = advice


def key_refused(exc: AuthError) -> WritesFailed:
    """The run cannot write: Iterable refused the API key."""
    return WritesFailed(
        f"Iterable refused the API key: {exc}",
        "set STREAMSYNC_ITERABLE_API_KEY to a server-side API key of the project, then run "
        "again (with --resume if the backfill had started)")


def unreachable(exc: RetriableError, base_url: str, what: str) -> WritesFailed:
    """The run cannot write: Iterable does not answer (or only with errors)."""
    return WritesFailed(
        f"{what}: {exc}",
        f"check that Iterable answers at {base_url} (iterable.base_url), then run again (with "
        "--resume if the backfill had started: it sends the pages after the last checkpoint)")


class SyncResult(Protocol):
    """What `SyncPipeline.sync_records` returns (runtime/pipeline.py `SyncOutcome`)."""

    synced: list[str]
    skipped: list[str]
    dead: dict[str, tuple[str, str]]
    retry: dict[str, RetriableError]
    requests: int
    rate_limited: int


class RecordSink(Protocol):
    """The map → skip-unchanged → batch → write stage (runtime/pipeline.py `SyncPipeline`)."""

    async def sync_records(
        self, object_name: str, records: Sequence[dict[str, Any]], *, source: str,
        force: bool = False,
    ) -> SyncResult: ...


T = TypeVar("T")
PageHook = Callable[[BackfillWindow, int], Awaitable[None]]
"""Called after each page of a window is written and checkpointed (window, pages so far)."""


@dataclass(frozen=True, slots=True)
class BackfillOptions:
    """One backfill invocation. `objects` empty means every configured object; an Account that
    only fans out is backfilled as its fan-out children (see `Backfill.plan`)."""

    objects: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    where: str | None = None
    resume: bool = False
    restart: bool = False
    dry_run: Path | None = None
    parallel: int | None = None
    api: Api | None = None
    page_size: int | None = None
    prefetch_pages: int = 1
    write_depth: int = 1
    catch_up: bool = True

    def __post_init__(self) -> None:
        if self.resume and self.restart:
            raise BackfillError("--resume and --restart exclude each other")
        for name in ("since", "until"):
            moment = getattr(self, name)
            if moment is not None and moment.utcoffset() is None:
                raise BackfillError(f"--{name} needs a timezone (e.g. 2024-01-01T00:00:00Z)")
        if self.since and self.until and self.since >= self.until:
            raise BackfillError("--since must be before --until")
        if self.parallel is not None and not 1 <= self.parallel <= 25:
            raise BackfillError("--parallel must be within 1..25 (Salesforce allows 25 "
                                "long-running requests at once)")
        if self.page_size is not None and not 200 <= self.page_size <= soql.PAGE_LIMIT:
            raise BackfillError(f"page size must be within 200..{soql.PAGE_LIMIT}")
        if not 1 <= self.prefetch_pages <= 4:
            raise BackfillError("prefetch_pages must be within 1..4")
        if not 1 <= self.write_depth <= 4:
            raise BackfillError("write_depth must be within 1..4")
        if self.where is not None:
            try:
                soql.parse_filter(self.where)
            except soql.SoqlError as exc:
                raise BackfillError(f"--where: {exc}") from None


@dataclass
class BackfillSummary:
    """What a backfill did; `lines()` is the human summary, `to_dict()` the JSON one."""

    run_id: str | None
    status: Literal["finished", "already_finished", "dry_run"]
    objects: tuple[str, ...] = ()
    records_read: int = 0
    records_written: int = 0
    records_skipped: int = 0
    dead_by_reason: dict[str, int] = field(default_factory=dict)
    retry_queued: int = 0
    catchup_queued: int = 0
    pages: int = 0
    windows: int = 0
    windows_resumed: int = 0
    sf_api_calls: int = 0
    iterable_requests: int = 0
    iterable_429s: int = 0
    duration_s: float = 0.0
    dry_run_file: str | None = None

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead_by_reason.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "status": self.status, "objects": list(self.objects),
            "records_read": self.records_read, "records_written": self.records_written,
            "records_skipped": self.records_skipped, "dead_lettered": self.dead_lettered,
            "dead_by_reason": dict(self.dead_by_reason), "retry_queued": self.retry_queued,
            "catchup_queued": self.catchup_queued, "pages": self.pages, "windows": self.windows,
            "windows_resumed": self.windows_resumed, "sf_api_calls": self.sf_api_calls,
            "iterable_requests": self.iterable_requests, "iterable_429s": self.iterable_429s,
            "duration_s": round(self.duration_s, 3), "dry_run_file": self.dry_run_file,
        }

    def lines(self) -> list[str]:
        if self.status == "already_finished":
            return [f"backfill {self.run_id} already finished; nothing to do "
                    "(use --restart to run it again)"]
        rate = self.records_read / self.duration_s if self.duration_s > 0 else 0.0
        head = ("dry run" if self.status == "dry_run" else f"backfill {self.run_id} finished")
        out = [
            f"{head} in {format_duration(self.duration_s)} ({', '.join(self.objects)})",
            f"  records read          {self.records_read:,} ({rate:,.0f}/s)",
        ]
        if self.status == "dry_run":
            out.append(f"  payloads written to   {self.dry_run_file}")
        else:
            out += [
                f"  written to Iterable   {self.records_written:,}",
                f"  skipped (unchanged)   {self.records_skipped:,}",
            ]
        reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(self.dead_by_reason.items()))
        label = "would be dead-lettered" if self.status == "dry_run" else "dead-lettered"
        out.append(f"  {label:<21} {self.dead_lettered:,}" + (f" ({reasons})" if reasons else ""))
        if self.status != "dry_run":
            out += [
                f"  queued for retry      {self.retry_queued:,}",
                f"  catch-up queued       {self.catchup_queued:,}",
                f"  Iterable requests     {self.iterable_requests:,} "
                f"({self.iterable_429s:,} rate-limited)",
            ]
        out += [
            f"  Salesforce API calls  {self.sf_api_calls:,}",
            f"  windows               {self.windows} ({self.windows_resumed} resumed)",
        ]
        return out


@dataclass(frozen=True, slots=True)
class ObjectPlan:
    """One object to read: its SOQL fields and the filter every query of it carries."""

    object_name: str
    fields: tuple[str, ...]
    where: str | None


@dataclass(slots=True)
class _Page:
    records: list[dict[str, Any]]
    last_id: str
    read_at: float
    """This host's clock just before the query that returned the page was sent."""


@dataclass(slots=True)
class _Totals:
    read: int = 0
    written: int = 0
    skipped: int = 0
    dead: Counter[str] = field(default_factory=Counter)
    retry_queued: int = 0
    pages: int = 0
    requests: int = 0
    rate_limited: int = 0


def _combine(*filters: str | None) -> str | None:
    parts = [f for f in filters if f]
    if not parts:
        return None
    if len(parts) == 1:
        return soql.parse_filter(parts[0]).text
    return soql.parse_filter(" AND ".join(f"({p})" for p in parts)).text


def _iso(moment: datetime) -> str:
    return soql.datetime_literal(moment)


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _sf_datetime(value: Any) -> datetime | None:
    """A Salesforce dateTime (`2024-01-02T03:04:05.000+0000`) as an aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    if len(text) >= 5 and text[-5] in "+-" and text[-3] != ":":
        text = text[:-2] + ":" + text[-2:]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=UTC)


def split_windows(start: datetime, end: datetime, parts: int) -> list[tuple[datetime, datetime]]:
    """`[start, end)` cut into at most `parts` half-open ranges on whole seconds."""
    start = start.replace(microsecond=0)
    if end.microsecond:
        end = end.replace(microsecond=0) + timedelta(seconds=1)
    span_s = int((end - start).total_seconds())
    if span_s <= 0:
        return [(start, start + timedelta(seconds=1))]
    parts = max(1, min(parts, span_s))
    edges = [start + timedelta(seconds=span_s * i // parts) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:], strict=False) if a < b]


def _strip_attributes(records: Sequence[dict[str, Any]]) -> None:
    """Drop the REST `attributes` ({type, url}) of records and their parents: nothing reads
    them, and they are a third of a page's memory."""
    for record in records:
        record.pop("attributes", None)
        for value in record.values():
            if isinstance(value, dict):
                _strip_attributes((value,))


def _walk(record: Mapping[str, Any], keys: Sequence[str]) -> Any:
    node: Any = record
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


class _Grouper:
    """Cuts a window's Id-ordered record stream into pipeline calls of `users` likely writes.

    Records carried over to the next call keep their place, so every call is a prefix of the
    rest of the window and its last Id is a valid keyset checkpoint. Each record is checked
    once, however many pages it waits for."""

    def __init__(self, users: int, sendable: Callable[[Mapping[str, Any]], bool]) -> None:
        self.users = users
        self.sendable = sendable
        self.buffer: list[dict[str, Any]] = []
        self._scanned = 0
        self._found = 0

    def add(self, records: Sequence[dict[str, Any]]) -> None:
        self.buffer.extend(records)

    def take(self, final: bool) -> list[dict[str, Any]] | None:
        """The next call's records: `users` likely writes, or everything left when `final`."""
        buffer = self.buffer
        while self._found < self.users and self._scanned < len(buffer):
            if self.sendable(buffer[self._scanned]):
                self._found += 1
            self._scanned += 1
        if self._found >= self.users:
            cut = self._scanned
        elif final and buffer:
            cut = len(buffer)
        else:
            return None
        group = buffer[:cut]
        del buffer[:cut]
        self._scanned = self._found = 0
        return group


def _window_range(window: BackfillWindow) -> soql.DateWindow | None:
    if not window.window_start and not window.window_end:
        return None
    return (_parse_iso(window.window_start), _parse_iso(window.window_end))


def _backoff_s(attempt: int, retry_after_s: float | None = None) -> float:
    delay = random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))
    if retry_after_s is not None and retry_after_s > delay:
        delay = retry_after_s
    return delay


async def _gather_or_first_error(jobs: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Every job's result, in order; on the first failure cancel the others (so none is left
    talking to a closed session) and raise that error itself, not an ExceptionGroup."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(job) for job in jobs]
    except BaseExceptionGroup as group_error:
        first = group_error.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [task.result() for task in tasks]


async def _all_or_first_error(jobs: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run every job; on the first failure cancel the others and raise that error itself
    (not an ExceptionGroup), so callers see e.g. the RetriableError that stopped a window."""
    await _gather_or_first_error(jobs)


class Backfill:
    """Reads every record of the selected objects and writes them through the pipeline.

    Per window: a reader task fetches keyset pages (`WHERE Id > :last [AND window] ORDER BY Id
    LIMIT 2000`) ahead, `prefetch_pages` at most, while the writer feeds earlier records to
    `pipeline.sync_records(...)` with up to `write_depth` calls in flight (so a request always
    waits at the rate limiter), and memory stays bounded (per window: `prefetch_pages` pages,
    `write_depth` calls, and less than one call's worth carried over).
    Each pipeline call carries whole Iterable batches: records a page cannot fill a batch with
    wait for the next page, so requests go out full. After each call is confirmed the window's
    checkpoint (last Id written, count) is saved in Id order, so a killed run resumes and
    re-sends at most the calls that were in flight (`write_depth` per running window). At the
    end every record modified since the run started is enqueued for the real-time flusher
    (catch-up), so a stale page is never the last write.

    Accounts: the Contact mapping reads `Account.*` paths in its own query, so an Account
    without a mapping of its own is backfilled as its fan-out children (Contacts with an
    AccountId): no separate Account read, no Id lists, half the Salesforce calls.
    """

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        salesforce: SalesforceClient,
        pipeline: RecordSink | None,
        metrics: Metrics,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.time,
        mappings: Mapping[str, CompiledMapping],
        on_page: PageHook | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
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
        self._sleep = sleep
        self._totals = _Totals()
        self._dry_out: IO[bytes] | None = None
        self._dead_letters_exist = True
        self._field_types: dict[str, dict[str, str]] = {}
        self._describes: dict[str, dict[str, Any]] = {}
        self._catch_up_from: float | None = None
        # (object, Id) -> SystemModstamp of records read in their latest state, for the catch-up
        self._seen: dict[tuple[str, str], float] = {}

    def _sf_calls(self) -> int:
        """Salesforce API calls so far (token requests do not count against the allocation)."""
        counter = self.salesforce.counter
        return counter.total(SF_API) - counter.total(SF_API, endpoint=TOKEN_ENDPOINT)

    # ------------------------------------------------------------------ planning

    def plan(self, options: BackfillOptions) -> list[ObjectPlan]:
        """The objects to read, with fields and filters (config filter AND --where)."""
        requested = list(options.objects) or list(self.config.objects)
        for name in requested:
            if name not in self.config.objects:
                known = ", ".join(self.config.objects)
                raise BackfillError(f"object {name!r} is not configured (configured: {known})")
        filters: dict[str, str | None] = {}
        order: list[str] = []
        for name in requested:
            obj = self.config.objects[name]
            if obj.writes_users:
                if name not in order:
                    order.append(name)
                filters[name] = None
            for fan in obj.fan_out:
                child = self.config.objects[fan.object]
                if not child.writes_users:
                    continue
                if fan.object not in order:
                    order.append(fan.object)
                    filters[fan.object] = f"{fan.via} != null"
        plans = []
        for name in order:
            mapping = self.mappings.get(name)
            if mapping is None:
                raise BackfillError(f"object {name!r} has no compiled mapping")
            where = _combine(self.config.objects[name].filter, filters[name], options.where)
            plans.append(ObjectPlan(name, tuple(mapping.soql_fields("SystemModstamp")), where))
        if not plans:
            raise BackfillError("nothing to backfill: the selected objects write no users and "
                                "fan out to none that do")
        return plans

    def _api(self, options: BackfillOptions) -> Api:
        return options.api or self.config.backfill.api

    def _parallel(self, options: BackfillOptions) -> int:
        return options.parallel or self.config.backfill.parallel

    def _page_size(self, options: BackfillOptions) -> int:
        return options.page_size or self.config.backfill.page_size

    def scope(self, options: BackfillOptions, plans: Sequence[ObjectPlan]) -> dict[str, Any]:
        """What identifies a run: the same scope again is the same backfill."""
        return {
            "objects": [p.object_name for p in plans],
            "where": {p.object_name: p.where for p in plans},
            "since": _iso(options.since) if options.since else None,
            "until": _iso(options.until) if options.until else None,
            "api": self._api(options),
        }

    async def _first_created(self, plan: ObjectPlan, descending: bool) -> datetime | None:
        field_name = self.config.backfill.window_field
        query = soql.first_by(plan.object_name, field_name, where=plan.where,
                              descending=descending)
        records = await self._with_retries("query", lambda: self._records(query))
        return _sf_datetime(records[0].get(field_name)) if records else None

    async def _records(self, query: str, include_deleted: bool = False
                       ) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        async for page in self.salesforce.query(query, include_deleted=include_deleted):
            records.extend(page.records)
        return records

    async def _with_retries(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` again after a RetriableError, with backoff, up to READ_ATTEMPTS times."""
        attempt = 0
        while True:
            try:
                return await call()
            except RetriableError as exc:
                attempt += 1
                await self._retrying(what, attempt, exc)

    async def windows_for(self, plan: ObjectPlan, options: BackfillOptions
                          ) -> list[BackfillWindow]:
        """`parallel` CreatedDate windows spanning --since/--until or the object's records."""
        first, last = await _gather_or_first_error([
            self._maybe(options.since is None, self._first_created(plan, descending=False)),
            self._maybe(options.until is None, self._first_created(plan, descending=True))])
        start = options.since or first
        end = options.until or (last + timedelta(seconds=1) if last is not None else None)
        if start is None or end is None or start >= end:
            if options.since is None and options.until is None:
                return [BackfillWindow(plan.object_name)]  # no records: one open window
            start = start or end or datetime.now(UTC)
            end = end if end is not None and end > start else start + timedelta(seconds=1)
        return [BackfillWindow(plan.object_name, _iso(a), _iso(b))
                for a, b in split_windows(start, end, self._parallel(options))]

    async def _plan_windows(self, plans: Sequence[ObjectPlan], options: BackfillOptions
                            ) -> tuple[list[BackfillWindow], int]:
        """Every plan's windows and the records they read, planned at once. A --where naming
        an unknown field, or one Salesforce rejects, is a usage error (BackfillError)."""
        if options.where is not None:
            await self.check_where(plans, options.where)
        try:
            results = await _gather_or_first_error(
                [self.total(plans, options), *(self.windows_for(p, options) for p in plans)])
        except QueryError as exc:
            if options.where is None:
                raise
            raise BackfillError(f"--where {options.where!r}: Salesforce rejected the query "
                                f"({exc.error_code}): {exc.sf_message.strip()}") from None
        total = cast(int, results[0])
        windows = [w for per_plan in results[1:] for w in cast(list[BackfillWindow], per_plan)]
        return windows, total

    async def check_where(self, plans: Sequence[ObjectPlan], where: str) -> None:
        """Every field --where reads exists on each object read (by its describe)."""
        fields = sorted(soql.parse_filter(where).fields)
        for plan in plans:
            checker = await self._checker(plan.object_name, fields)
            for path in fields:
                described, why = checker.resolve(plan.object_name, path)
                if why:
                    raise BackfillError(f"--where: {why}")
                if described is not None and described.get("filterable") is False:
                    raise BackfillError(f"--where: {plan.object_name}.{path} is not filterable")

    async def _checker(self, object_name: str, paths: Sequence[str]) -> DescribeChecker:
        """A DescribeChecker holding the describes `paths` of `object_name` go through."""
        wanted = {object_name, "User"}
        checker = DescribeChecker(self._describes)
        for _ in range(soql.MAX_RELATIONSHIP_DEPTH + 2):
            for name in sorted(wanted - set(self._describes)):
                self._describes[name] = await self._with_retries(
                    "describe", functools.partial(self.salesforce.describe, name))
            checker = DescribeChecker(self._describes)
            for path in paths:
                checker.resolve(object_name, path)
            if not checker.absent - set(self._describes):
                break
            wanted |= checker.absent
        return checker

    @staticmethod
    async def _maybe(wanted: bool, call: Coroutine[Any, Any, datetime | None]
                     ) -> datetime | None:
        if wanted:
            return await call
        call.close()
        return None

    async def total(self, plans: Sequence[ObjectPlan], options: BackfillOptions) -> int:
        """Records the plans read, by one COUNT() per object (run at once)."""
        counts = await _gather_or_first_error([self.count(plan, options) for plan in plans])
        return sum(counts)

    async def count(self, plan: ObjectPlan, options: BackfillOptions) -> int:
        """`SELECT COUNT()` of what the plan reads (the progress total)."""
        query = soql.count(plan.object_name, plan.where, since=options.since,
                           until=options.until, window_field=self.config.backfill.window_field)
        return await self._with_retries("count", lambda: self.salesforce.count(query))

    # ------------------------------------------------------------------ the run

    async def run(self, options: BackfillOptions) -> BackfillSummary:
        """Plan, start or resume a run, read and write every window, catch up, summarise."""
        started = self.clock()
        sf_calls_before = self._sf_calls()
        self._totals = _Totals()
        self._catch_up_from = None
        plans = self.plan(options)
        if options.dry_run is not None:
            return await self._dry_run(options, plans, started, sf_calls_before)
        scope = self.scope(options, plans)
        run, resumed, total = await self._select_run(options, plans, scope)
        if run is None:
            previous = await self._matching_run(scope)
            assert previous is not None
            summary = BackfillSummary(previous.run_id, "already_finished",
                                      tuple(scope["objects"]))
            self.progress.message(summary.lines()[0])
            return summary
        self._seen = {}
        self._catch_up_from = run.started_at - CATCH_UP_MARGIN_S if options.catch_up else None
        checkpoints = await self.store.windows(run.run_id)
        pending = [cp for cp in checkpoints if not cp.done]
        resumed_windows = sum(1 for cp in pending if cp.last_id is not None)
        done_before = sum(cp.records_done for cp in checkpoints)
        if resumed:
            self.progress.message(
                f"resuming {run.run_id}: {len(checkpoints) - len(pending)} of {len(checkpoints)} "
                f"windows done, {done_before:,} records already written")
        self._dead_letters_exist = bool(await self.store.dead_letter_counts())
        self.progress.start(total, min(done_before, total))
        log.info("backfill.started", run_id=run.run_id, objects=scope["objects"],
                 windows=len(checkpoints), pending=len(pending), resumed=resumed, total=total,
                 api=self._api(options))
        by_name = {p.object_name: p for p in plans}
        await self._run_windows(run.run_id, pending, by_name, options)
        catchup = 0
        if options.catch_up:
            catchup = await self.catch_up(scope, plans, since_s=run.started_at)
        await self.store.finish_run(run.run_id, self.clock())
        totals = self._totals
        summary = BackfillSummary(
            run.run_id, "finished", tuple(scope["objects"]),
            records_read=totals.read, records_written=totals.written,
            records_skipped=totals.skipped, dead_by_reason=dict(totals.dead),
            retry_queued=totals.retry_queued, catchup_queued=catchup, pages=totals.pages,
            windows=len(checkpoints), windows_resumed=resumed_windows,
            sf_api_calls=self._sf_calls() - sf_calls_before,
            iterable_requests=totals.requests, iterable_429s=totals.rate_limited,
            duration_s=self.clock() - started,
        )
        log.info("backfill.finished", **{k: v for k, v in summary.to_dict().items()
                                         if k not in ("objects", "dry_run_file")})
        self.progress.finish(summary.lines())
        return summary

    async def _matching_run(self, scope: Mapping[str, Any]) -> BackfillRun | None:
        for run in await self.store.runs(limit=50):
            if dict(run.options).get("scope") == orjson.loads(orjson.dumps(dict(scope))):
                return run
        return None

    async def _select_run(self, options: BackfillOptions, plans: Sequence[ObjectPlan],
                          scope: dict[str, Any]) -> tuple[BackfillRun | None, bool, int]:
        """(run to work on, resumed?, records it reads); (None, False, 0) when the same
        backfill already finished. A new run's windows and COUNT()s are planned at once."""
        previous = None if options.restart else await self._matching_run(scope)
        if previous is not None and not previous.finished:
            if not options.resume:
                progress = await self.store.windows(previous.run_id)
                done = sum(1 for w in progress if w.done)
                raise BackfillError(
                    f"backfill {previous.run_id} of the same scope stopped before finishing "
                    f"({done} of {len(progress)} windows done): use --resume to continue it "
                    "or --restart to start over")
            return previous, True, await self.total(plans, options)
        if previous is not None:
            return None, False, 0
        run_id = "bf-" + datetime.fromtimestamp(self.clock(), UTC).strftime("%Y%m%dT%H%M%S") \
            + "-" + uuid.uuid4().hex[:6]
        windows, total = await self._plan_windows(plans, options)
        options_doc = {"scope": scope, "parallel": self._parallel(options),
                       "page_size": self._page_size(options)}
        run = await self.store.start_run(run_id, windows, options_doc, self.clock())
        return run, False, total

    async def _run_windows(self, run_id: str, pending: Sequence[Checkpoint],
                           plans: Mapping[str, ObjectPlan], options: BackfillOptions) -> None:
        gate = asyncio.Semaphore(self._parallel(options))

        async def one(cp: Checkpoint) -> None:
            async with gate:
                await self._run_window(run_id, cp, plans[cp.window.object_name], options)

        await _all_or_first_error([one(cp) for cp in pending])

    # ------------------------------------------------------------------ one window

    async def _run_window(self, run_id: str | None, cp: Checkpoint, plan: ObjectPlan,
                          options: BackfillOptions) -> None:
        window = cp.window
        pages: asyncio.Queue[_Page | BaseException | None] = asyncio.Queue()
        room = asyncio.Semaphore(options.prefetch_pages)
        reader = asyncio.create_task(
            self._read_window(plan, window, cp.last_id, options, pages, room))
        done = cp.records_done
        page_no = 0
        grouper = _Grouper(self._group_users(options), self._sendable_check(plan.object_name))
        # calls in flight, oldest first: (task, last Id, records); checkpoints follow this order
        inflight: collections.deque[tuple[asyncio.Task[None], str, int]] = collections.deque()
        ended = False
        log.info("backfill.window_started", run_id=run_id, object=plan.object_name,
                 start=window.window_start, end=window.window_end, after_id=cp.last_id)

        async def settle_oldest() -> None:
            nonlocal done, page_no
            task, last_id, count = inflight[0]
            await task
            inflight.popleft()
            done += count
            page_no += 1
            if run_id is not None:
                await self.store.save_checkpoint(run_id, window, last_id, done, self.clock())
            self.progress.advance(count)
            if self.on_page is not None:
                await self.on_page(window, page_no)

        try:
            while not ended:
                item = await pages.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    ended = True
                else:
                    grouper.add(item.records)
                    del item
                    room.release()
                while (group := grouper.take(final=ended)) is not None:
                    task = asyncio.create_task(self._write_page(plan.object_name, group))
                    inflight.append((task, to_18(str(group[-1]["Id"])), len(group)))
                    del group
                    while len(inflight) >= options.write_depth:
                        await settle_oldest()
            while inflight:
                await settle_oldest()
            if run_id is not None:
                await self.store.finish_window(run_id, window, self.clock(), done)
        finally:
            for task, _last, _count in inflight:
                task.cancel()
            for task, _last, _count in inflight:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        log.info("backfill.window_finished", run_id=run_id, object=plan.object_name,
                 start=window.window_start, end=window.window_end, records=done)

    def _group_users(self, options: BackfillOptions) -> int:
        """Users per pipeline call: whole Iterable batches, about one page's worth."""
        batch = self.config.iterable.batch_max_users
        return max(batch, self._page_size(options) // batch * batch)

    def _sendable_check(self, object_name: str) -> Callable[[Mapping[str, Any]], bool]:
        """A cheap guess whether a record becomes an Iterable write (its identity is there and
        valid, it is not a converted Lead that defers to its Contact), used only to fill
        batches: the pipeline still decides, so a wrong guess costs a partial batch."""
        mapping = self.mappings[object_name]
        needs_email = mapping.identity != "userId"
        needs_user_id = mapping.identity in ("userId", "both")
        email_keys = mapping.email_source.keys
        user_id_keys = mapping.user_id_source.keys
        defers = object_name == "Lead" and self.config.converted_precedence() == "contact"

        def check(record: Mapping[str, Any]) -> bool:
            if defers and record.get("IsConverted") and record.get("ConvertedContactId"):
                return False
            if needs_user_id and _walk(record, user_id_keys) in (None, ""):
                return False
            if needs_email:
                try:
                    normalize_email(_walk(record, email_keys))
                except RecordError:
                    return False
            return True

        return check

    async def _read_window(self, plan: ObjectPlan, window: BackfillWindow, after: str | None,
                           options: BackfillOptions,
                           out: asyncio.Queue[_Page | BaseException | None],
                           room: asyncio.Semaphore) -> None:
        """Put the window's pages into `out`, then None (or the error that stopped it).

        A page is only fetched once `room` has a place (the writer frees one per page written),
        so at most `prefetch_pages` pages wait for the writer.
        """
        reader = self._bulk_pages if self._api(options) == "bulk" else self._rest_pages
        pages = reader(plan, window, after, options)
        try:
            while True:
                await room.acquire()
                try:
                    page = await anext(pages)
                except StopAsyncIteration:
                    break
                _strip_attributes(page.records)
                self._totals.read += len(page.records)
                self._remember(plan.object_name, page)
                out.put_nowait(page)
                del page
            out.put_nowait(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the writer, which raises it in the run
            out.put_nowait(exc)
        finally:
            await pages.aclose()

    async def _retrying(self, what: str, attempt: int, exc: RetriableError) -> None:
        if attempt >= READ_ATTEMPTS:
            raise exc
        delay = _backoff_s(attempt, exc.retry_after_s)
        log.warning("backfill.read_retry", what=what, attempt=attempt, delay_s=round(delay, 3),
                    error=type(exc).__name__, detail=str(exc))
        await self._sleep(delay)

    async def _rest_pages(self, plan: ObjectPlan, window: BackfillWindow, after: str | None,
                          options: BackfillOptions) -> AsyncGenerator[_Page, None]:
        limit = self._page_size(options)
        rng = _window_range(window)
        while True:
            query = soql.keyset_page(plan.object_name, plan.fields, after, where=plan.where,
                                     window=rng, window_field=self.config.backfill.window_field,
                                     limit=limit)
            read_at = self.clock()
            records = await self._with_retries("query", functools.partial(self._records, query))
            if records:
                after = to_18(str(records[-1]["Id"]))
                yield _Page(records, after, read_at)
            if len(records) < limit:
                return

    async def _bulk_pages(self, plan: ObjectPlan, window: BackfillWindow, after: str | None,
                          options: BackfillOptions) -> AsyncGenerator[_Page, None]:
        limit = self._page_size(options)
        rng = _window_range(window)
        types = await self.field_types(plan)
        attempt = 0
        while True:
            query = soql.keyset_page(plan.object_name, plan.fields, after, where=plan.where,
                                     window=rng, window_field=self.config.backfill.window_field,
                                     limit=BULK_CHUNK)
            rows = 0
            batch: list[dict[str, Any]] = []
            read_at = self.clock()
            try:
                async for row in self.salesforce.bulk_query(query, field_types=types):
                    rows += 1
                    batch.append(row)
                    if len(batch) >= limit:
                        after = to_18(str(batch[-1]["Id"]))
                        yield _Page(batch, after, read_at)
                        batch = []
            except RetriableError as exc:
                # Pages already yielded moved `after`: the new job starts behind them.
                attempt += 1
                await self._retrying("bulk_query", attempt, exc)
                continue
            attempt = 0
            if batch:
                after = to_18(str(batch[-1]["Id"]))
                yield _Page(batch, after, read_at)
            if rows < BULK_CHUNK:
                return

    async def field_types(self, plan: ObjectPlan) -> dict[str, str]:
        """Describe type of each selected column (Bulk CSV cells are typed from these)."""
        cached = self._field_types.get(plan.object_name)
        if cached is not None:
            return cached
        checker = await self._checker(plan.object_name, plan.fields)
        types: dict[str, str] = {}
        for path in plan.fields:
            described, why = checker.resolve(plan.object_name, path)
            if described is None or why:
                continue
            sf_type = str(described.get("type") or "")
            if set(described) == _SYNTHETIC_FIELD:
                # Polymorphic Name field (Owner.IsActive on Lead): type it as the User's.
                user, _ = checker.resolve("User", path.rsplit(".", 1)[-1])
                sf_type = str(user.get("type") or sf_type) if user else sf_type
            types[path] = sf_type
        self._field_types[plan.object_name] = types
        return types

    # ------------------------------------------------------------------ writing a page

    async def _write_page(self, object_name: str, records: list[dict[str, Any]]) -> None:
        totals = self._totals
        totals.pages += 1
        if self._dry_out is not None:
            self._dry_run_page(object_name, records)
            return
        if self.pipeline is None:
            raise BackfillError("a backfill that writes to Iterable needs a pipeline")
        pending = records
        attempt = 0
        synced: list[str] = []
        dead: dict[str, tuple[str, str]] = {}
        while pending:
            try:
                outcome = await self.pipeline.sync_records(object_name, pending, source=SOURCE)
            except AuthError as exc:
                raise key_refused(exc) from exc
            except RetriableError as exc:
                attempt += 1
                if attempt >= RETRY_PAGE_ATTEMPTS:
                    raise self._unreachable(exc) from exc
                await self._page_backoff(object_name, attempt, exc)
                continue
            totals.requests += outcome.requests
            totals.rate_limited += outcome.rate_limited
            totals.written += len(outcome.synced)
            totals.skipped += len(outcome.skipped)
            synced.extend(outcome.synced)
            dead.update(outcome.dead)
            if not outcome.retry:
                break
            retry_ids = set(outcome.retry)
            pending = [r for r in pending if to_18(str(r.get("Id"))) in retry_ids]
            first = next(iter(outcome.retry.values()))
            attempt += 1
            if attempt >= RETRY_PAGE_ATTEMPTS or not pending:
                if pending and not synced:
                    # Not one record of the call reached Iterable: it is down or unreachable,
                    # not a record's problem. Stop before the checkpoint moves past the call.
                    raise self._unreachable(first)
                await self._queue_for_retry(object_name, pending, str(first))
                break
            await self._page_backoff(object_name, attempt, first)
        if dead:
            now = self.clock()
            await self.store.add_dead_letters(object_name, dead, now)
            self._dead_letters_exist = True
            for reason, _detail in dead.values():
                totals.dead[reason] += 1
                self.metrics.dead_lettered.labels(reason=reason).inc()
        if synced and self._dead_letters_exist:
            await self.store.clear_dead_letters(object_name, synced)

    def _unreachable(self, exc: RetriableError) -> WritesFailed:
        return unreachable(exc, self.config.iterable.base_url,
                           f"Iterable took none of a page's records in {RETRY_PAGE_ATTEMPTS} "
                           "attempts")

    async def _page_backoff(self, object_name: str, attempt: int, exc: RetriableError) -> None:
        delay = _backoff_s(attempt, exc.retry_after_s)
        log.warning("backfill.write_retry", object=object_name, attempt=attempt,
                    delay_s=round(delay, 3), error=type(exc).__name__, detail=str(exc))
        await self._sleep(delay)

    async def _queue_for_retry(self, object_name: str, records: Sequence[dict[str, Any]],
                               error: str) -> None:
        """Records still failing transiently go to the real-time queue (the flusher retries
        them with its backoff), so the window's checkpoint can move on."""
        items = [QueueInput(object_name, to_18(str(r["Id"]))) for r in records]
        await self.store.enqueue(items, self.clock(), source="retry")
        self._totals.retry_queued += len(items)
        log.warning("backfill.queued_for_retry", object=object_name, records=len(items),
                    error=error)

    # ------------------------------------------------------------------ dry run

    async def _dry_run(self, options: BackfillOptions, plans: Sequence[ObjectPlan],
                       started: float, sf_calls_before: int) -> BackfillSummary:
        assert options.dry_run is not None
        path = options.dry_run
        windows, total = await self._plan_windows(plans, options)
        self.progress.start(total)
        checkpoints = [Checkpoint("dry-run", window, None, 0, False, started, started, None)
                       for window in windows]
        by_name = {p.object_name: p for p in plans}
        try:
            out = await asyncio.to_thread(path.open, "wb")
        except OSError as exc:
            raise BackfillError(f"--dry-run: cannot write {path}: {exc.strerror}") from None
        try:
            with out:
                self._dry_out = out
                gate = asyncio.Semaphore(self._parallel(options))

                async def one(cp: Checkpoint) -> None:
                    async with gate:
                        await self._run_window(None, cp, by_name[cp.window.object_name], options)

                await _all_or_first_error([one(cp) for cp in checkpoints])
        finally:
            self._dry_out = None
        totals = self._totals
        summary = BackfillSummary(
            None, "dry_run", tuple(p.object_name for p in plans), records_read=totals.read,
            dead_by_reason=dict(totals.dead), pages=totals.pages, windows=len(checkpoints),
            sf_api_calls=self._sf_calls() - sf_calls_before,
            duration_s=self.clock() - started, dry_run_file=str(path))
        self.progress.finish(summary.lines())
        return summary

    def _dry_run_page(self, object_name: str, records: Sequence[dict[str, Any]]) -> None:
        assert self._dry_out is not None
        mapping = self.mappings[object_name]
        lines = []
        for record in records:
            mapped = mapping.map_or_error(record)
            record_id = to_18(str(record.get("Id")))
            if isinstance(mapped, RecordError):
                self._totals.dead[mapped.reason] += 1
                lines.append(orjson.dumps({"object": object_name, "id": record_id, "error": {
                    "reason": mapped.reason, "detail": mapped.detail}}))
            else:
                lines.append(orjson.dumps({"object": object_name, "id": record_id,
                                           "payload": mapped.payload}))
        if lines:
            self._dry_out.write(b"\n".join(lines) + b"\n")

    # ------------------------------------------------------------------ catch-up

    def _remember(self, object_name: str, page: _Page) -> None:
        """Note the records of a page the catch-up need not queue: those changed within its
        look-back (so it finds them) but read in their latest state (stamped well before the
        page's query). Older ones it does not find; others it queues."""
        since = self._catch_up_from
        if since is None:
            return
        latest = page.read_at - SEEN_GUARD_S
        for record in page.records:
            stamp = _sf_datetime(record.get("SystemModstamp"))
            if stamp is None or not since <= stamp.timestamp() <= latest:
                continue
            if len(self._seen) >= MAX_SEEN:
                log.info("backfill.catch_up_memory_full", remembered=MAX_SEEN)
                self._catch_up_from = None
                return
            self._seen[(object_name, to_18(str(record["Id"])))] = stamp.timestamp()

    async def catch_up(self, scope: Mapping[str, Any], plans: Sequence[ObjectPlan], *,
                       since_s: float) -> int:
        """Enqueue (source 'catchup') the records of the run's objects that may have changed
        after the backfill read them, deleted ones included (queryAll), so the real-time flusher
        writes their latest state last: every record whose SystemModstamp is at or after the
        run start minus CATCH_UP_MARGIN_S, except those a page read with that same
        SystemModstamp (already written, skipped or dead-lettered in that state). Objects that
        only fan out (Account) are enqueued too: the flusher fans their changes out to Contacts.

        No filter is applied (as in reconcile): a record that left the filter or --where while
        the backfill ran may have been written by a page, and the flusher, which re-reads the
        record and applies the filter and delete policy, must have the last word."""
        since = datetime.fromtimestamp(since_s - CATCH_UP_MARGIN_S, UTC)
        targets = [p.object_name for p in plans]
        targets += [name for name in scope.get("objects", []) if name not in targets]
        for name, obj in self.config.objects.items():
            if name not in targets and any(f.object in targets for f in obj.fan_out):
                targets.append(name)
        counts = await _gather_or_first_error(
            [self._catch_up_object(name, since, since_s) for name in targets])
        during = sum(c[0] for c in counts)
        before = sum(c[1] for c in counts)
        if during or before:
            text = f"catch-up: {during:,} records modified during the backfill"
            if before:
                text += (f" and {before:,} modified in the {CATCH_UP_MARGIN_S:g} s before it "
                         "(not read by it)")
            self.progress.message(text + " queued for the real-time service")
        log.info("backfill.catch_up", records=during + before, modified_during=during,
                 modified_before=before, since=_iso(since))
        return during + before

    async def _catch_up_object(self, name: str, since: datetime, started_s: float
                               ) -> tuple[int, int]:
        """(records queued that were modified since `started_s`, records queued before it)."""
        during = before = 0
        after: str | None = None
        while True:
            query = soql.modified_since(name, since, fields=("Id", "IsDeleted", "SystemModstamp"),
                                        after_id=after)
            rows = await self._with_retries(
                "catch_up", functools.partial(self._records, query, include_deleted=True))
            items = []
            for row in rows:
                record_id = to_18(str(row["Id"]))
                stamp = _sf_datetime(row.get("SystemModstamp"))
                moment = stamp.timestamp() if stamp is not None else started_s
                deleted = bool(row.get("IsDeleted"))
                if not deleted and self._seen.get((name, record_id)) == moment:
                    continue
                items.append(QueueInput(name, record_id, "DELETE" if deleted else "UPDATE"))
                if moment >= int(started_s):  # stamps may be whole seconds
                    during += 1
                else:
                    before += 1
            if items:
                await self.store.enqueue(items, self.clock(), source="catchup")
            if rows:
                after = to_18(str(rows[-1]["Id"]))
            if len(rows) < soql.PAGE_LIMIT:
                return during, before
