"""Reading Salesforce for a backfill: retried calls, describes, and the two page readers.

`RestReader` (keyset pages through the query API) and `BulkReader` (Bulk API 2.0 jobs, one
keyset chunk each) share one interface: `pages(plan, window, after)` yields `Page`s in Id
order, each ending at a valid keyset checkpoint.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from streamsync.adapters.salesforce import SalesforceClient
from streamsync.adapters.store import BackfillWindow
from streamsync.core import soql
from streamsync.core.describe_check import DescribeChecker
from streamsync.core.ids import to_18
from streamsync.errors import RetriableError
from streamsync.logs import get_logger
from streamsync.runtime.backfill.options import Api
from streamsync.runtime.backfill.plan import ObjectPlan, window_range

log = get_logger(__name__)

T = TypeVar("T")
BULK_CHUNK = 50_000
"""Records per Bulk API 2.0 query job: each job is one keyset chunk, so a resume restarts from
the last checkpointed Id, not from the start of the window."""
READ_ATTEMPTS = 8
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
_SYNTHETIC_FIELD = frozenset({"name", "type", "filterable"})
Sleep = Callable[[float], Awaitable[None]]


def backoff_s(attempt: int, retry_after_s: float | None = None) -> float:
    """Full-jitter exponential backoff, never shorter than a Retry-After."""
    delay = random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))
    if retry_after_s is not None and retry_after_s > delay:
        delay = retry_after_s
    return delay


@dataclass(slots=True)
class Page:
    records: list[dict[str, Any]]
    last_id: str
    read_at: float
    """This host's clock just before the query that returned the page was sent."""


def strip_attributes(records: Sequence[dict[str, Any]]) -> None:
    """Drop the REST `attributes` ({type, url}) of records and their parents: nothing reads
    them, and they are a third of a page's memory."""
    for record in records:
        record.pop("attributes", None)
        for value in record.values():
            if isinstance(value, dict):
                strip_attributes((value,))


class SalesforceReads:
    """Salesforce calls retried after a RetriableError (up to READ_ATTEMPTS), and the
    describes a run needs, each fetched once."""

    def __init__(self, salesforce: SalesforceClient, *, sleep: Sleep = asyncio.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self.salesforce = salesforce
        self.clock = clock
        self._sleep = sleep
        self._describes: dict[str, dict[str, Any]] = {}
        self._field_types: dict[str, dict[str, str]] = {}

    async def records(self, query: str, include_deleted: bool = False) -> list[dict[str, Any]]:
        """Every record of `query` (one call per result page)."""
        out: list[dict[str, Any]] = []
        async for page in self.salesforce.query(query, include_deleted=include_deleted):
            out.extend(page.records)
        return out

    async def with_retries(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` again after a RetriableError, with backoff, up to READ_ATTEMPTS times."""
        attempt = 0
        while True:
            try:
                return await call()
            except RetriableError as exc:
                attempt += 1
                await self.retrying(what, attempt, exc)

    async def retrying(self, what: str, attempt: int, exc: RetriableError) -> None:
        """Wait before attempt `attempt + 1`, or raise `exc` when attempts are used up."""
        if attempt >= READ_ATTEMPTS:
            raise exc
        delay = backoff_s(attempt, exc.retry_after_s)
        log.warning("backfill.read_retry", what=what, attempt=attempt, delay_s=round(delay, 3),
                    error=type(exc).__name__, detail=str(exc))
        await self._sleep(delay)

    async def checker(self, object_name: str, paths: Sequence[str]) -> DescribeChecker:
        """A DescribeChecker holding the describes `paths` of `object_name` go through."""
        wanted = {object_name, "User"}
        checker = DescribeChecker(self._describes)
        for _ in range(soql.MAX_RELATIONSHIP_DEPTH + 2):
            for name in sorted(wanted - set(self._describes)):
                self._describes[name] = await self.with_retries(
                    "describe", functools.partial(self.salesforce.describe, name))
            checker = DescribeChecker(self._describes)
            for path in paths:
                checker.resolve(object_name, path)
            if not checker.absent - set(self._describes):
                break
            wanted |= checker.absent
        return checker

    async def field_types(self, plan: ObjectPlan) -> dict[str, str]:
        """Describe type of each selected column (Bulk CSV cells are typed from these)."""
        cached = self._field_types.get(plan.object_name)
        if cached is not None:
            return cached
        checker = await self.checker(plan.object_name, plan.fields)
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


class PageReader(Protocol):
    """Pages of a window's records after `after` (exclusive), in Id order."""

    def pages(self, plan: ObjectPlan, window: BackfillWindow, after: str | None
              ) -> AsyncIterator[Page]: ...


class RestReader:
    """Keyset pages (`WHERE Id > :last [AND window] ORDER BY Id LIMIT page_size`)."""

    def __init__(self, reads: SalesforceReads, *, window_field: str, page_size: int) -> None:
        self.reads = reads
        self.window_field = window_field
        self.page_size = page_size

    async def pages(self, plan: ObjectPlan, window: BackfillWindow, after: str | None
                    ) -> AsyncIterator[Page]:
        limit = self.page_size
        rng = window_range(window)
        while True:
            query = soql.keyset_page(plan.object_name, plan.fields, after, where=plan.where,
                                     window=rng, window_field=self.window_field, limit=limit)
            read_at = self.reads.clock()
            records = await self.reads.with_retries(
                "query", functools.partial(self.reads.records, query))
            if records:
                after = to_18(str(records[-1]["Id"]))
                yield Page(records, after, read_at)
            if len(records) < limit:
                return


class BulkReader:
    """Bulk API 2.0 query jobs of BULK_CHUNK records each, cut into pages of `page_size`.
    A failed job is started again behind the pages it already yielded."""

    def __init__(self, reads: SalesforceReads, *, window_field: str, page_size: int) -> None:
        self.reads = reads
        self.window_field = window_field
        self.page_size = page_size

    async def pages(self, plan: ObjectPlan, window: BackfillWindow, after: str | None
                    ) -> AsyncIterator[Page]:
        limit = self.page_size
        rng = window_range(window)
        types = await self.reads.field_types(plan)
        attempt = 0
        while True:
            query = soql.keyset_page(plan.object_name, plan.fields, after, where=plan.where,
                                     window=rng, window_field=self.window_field,
                                     limit=BULK_CHUNK)
            rows = 0
            batch: list[dict[str, Any]] = []
            read_at = self.reads.clock()
            try:
                async for row in self.reads.salesforce.bulk_query(query, field_types=types):
                    rows += 1
                    batch.append(row)
                    if len(batch) >= limit:
                        after = to_18(str(batch[-1]["Id"]))
                        yield Page(batch, after, read_at)
                        batch = []
            except RetriableError as exc:
                # Pages already yielded moved `after`: the new job starts behind them.
                attempt += 1
                await self.reads.retrying("bulk_query", attempt, exc)
                continue
            attempt = 0
            if batch:
                after = to_18(str(batch[-1]["Id"]))
                yield Page(batch, after, read_at)
            if rows < BULK_CHUNK:
                return


def page_reader(api: Api, reads: SalesforceReads, *, window_field: str, page_size: int
                ) -> PageReader:
    """The reader of `api`."""
    kind = BulkReader if api == "bulk" else RestReader
    return kind(reads, window_field=window_field, page_size=page_size)
