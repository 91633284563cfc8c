"""Reading Salesforce for a backfill: retried calls, describes, and the two page readers.

`RestReader` (keyset pages through the query API) and `BulkReader` (Bulk API 2.0 jobs, one
keyset chunk each) share one interface: `pages(plan, window, after)` yields `Page`s in Id
order, each ending at a valid keyset checkpoint.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from streamsync.adapters.salesforce import SalesforceClient
from streamsync.adapters.store import BackfillWindow
from streamsync.core import soql
from streamsync.core.describe_check import DescribeChecker
from streamsync.core.ids import parse_id
from streamsync.models import SfId
from streamsync.runtime.backfill.options import READS, Api
from streamsync.runtime.backfill.plan import ObjectPlan, window_range

BULK_CHUNK = 50_000
"""Records per Bulk API 2.0 query job: each job is one keyset chunk, so a resume restarts from
the last checkpointed Id, not from the start of the window."""
_SYNTHETIC_FIELD = frozenset({"name", "type", "filterable"})


@dataclass(slots=True)
class Page:
    records: list[dict[str, Any]]
    last_id: SfId
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
    """Salesforce calls retried after a RetriableError (`READS`), and the describes a run
    needs, each fetched once."""

    def __init__(self, salesforce: SalesforceClient, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.salesforce = salesforce
        self.clock = clock
        self._describes: dict[str, dict[str, Any]] = {}
        self._field_types: dict[str, dict[str, str]] = {}

    async def records(self, query: str, include_deleted: bool = False) -> list[dict[str, Any]]:
        """Every record of `query` (one call per result page)."""
        out: list[dict[str, Any]] = []
        async for page in self.salesforce.query(query, include_deleted=include_deleted):
            out.extend(page.records)
        return out

    async def checker(self, object_name: str, paths: Sequence[str]) -> DescribeChecker:
        """A DescribeChecker holding the describes `paths` of `object_name` go through."""
        wanted = {object_name, "User"}
        checker = DescribeChecker(self._describes)
        for _ in range(soql.MAX_RELATIONSHIP_DEPTH + 2):
            for name in sorted(wanted - set(self._describes)):
                self._describes[name] = await READS.call(
                    functools.partial(self.salesforce.describe, name))
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


def entered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SOQL rows as they enter the backfill: each `Id` in its 18-character form, checked once
    here (RecordError for a row without one), so the window, the writer and the checkpoints
    use it as it is."""
    for row in rows:
        row["Id"] = parse_id(row.get("Id"))
    return rows


class PageReader(Protocol):
    """Pages of a window's records after `after` (exclusive), in Id order."""

    def pages(self, plan: ObjectPlan, window: BackfillWindow, after: str | None
              ) -> AsyncIterator[Page]: ...


@dataclass(frozen=True, slots=True)
class _Reader:
    reads: SalesforceReads
    window_field: str
    page_size: int


class RestReader(_Reader):
    """Keyset pages (`WHERE Id > :last [AND window] ORDER BY Id LIMIT page_size`)."""

    async def pages(self, plan: ObjectPlan, window: BackfillWindow, after: str | None
                    ) -> AsyncIterator[Page]:
        limit = self.page_size
        rng = window_range(window)
        while True:
            query = soql.keyset_page(plan.object_name, plan.fields, after, where=plan.where,
                                     window=rng, window_field=self.window_field, limit=limit)
            read_at = self.reads.clock()
            records = entered(await READS.call(functools.partial(self.reads.records, query)))
            if records:
                after = records[-1]["Id"]
                yield Page(records, records[-1]["Id"], read_at)
            if len(records) < limit:
                return


class BulkReader(_Reader):
    """Bulk API 2.0 query jobs of BULK_CHUNK records each, cut into pages of `page_size`.
    A failed job is started again behind the pages it already yielded (each job has the
    `READS` attempts)."""

    async def pages(self, plan: ObjectPlan, window: BackfillWindow, after: str | None
                    ) -> AsyncIterator[Page]:
        limit = self.page_size
        rng = window_range(window)
        types = await self.reads.field_types(plan)
        while True:
            rows = 0
            async for attempt in READS.attempts_of():
                with attempt:
                    # Pages already yielded moved `after`: a new job starts behind them.
                    query = soql.keyset_page(plan.object_name, plan.fields, after,
                                             where=plan.where, window=rng,
                                             window_field=self.window_field, limit=BULK_CHUNK)
                    rows = 0
                    batch: list[dict[str, Any]] = []
                    read_at = self.reads.clock()
                    async for row in self.reads.salesforce.bulk_query(query, field_types=types):
                        rows += 1
                        batch.append(entered([row])[0])
                        if len(batch) >= limit:
                            after = batch[-1]["Id"]
                            yield Page(batch, batch[-1]["Id"], read_at)
                            batch = []
                    if batch:
                        after = batch[-1]["Id"]
                        yield Page(batch, batch[-1]["Id"], read_at)
            if rows < BULK_CHUNK:
                return


def page_reader(api: Api, reads: SalesforceReads, *, window_field: str, page_size: int
                ) -> PageReader:
    """The reader of `api`."""
    kind = BulkReader if api == "bulk" else RestReader
    return kind(reads, window_field, page_size)
