"""Planning a backfill: the objects to read, their CreatedDate windows and record counts."""

from __future__ import annotations

from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from streamsync.adapters.store import BackfillWindow
from streamsync.config import Config
from streamsync.core import soql
from streamsync.core.mapping import CompiledMapping
from streamsync.core.sf_time import sf_datetime
from streamsync.errors import BackfillError, QueryError
from streamsync.runtime.backfill.options import READS, Api, BackfillOptions
from streamsync.runtime.backfill.tasks import gather_or_first_error

if TYPE_CHECKING:
    from streamsync.runtime.backfill.read import SalesforceReads


@dataclass(frozen=True, slots=True)
class ObjectPlan:
    """One object to read: its SOQL fields and the filter every query of it carries."""

    object_name: str
    fields: tuple[str, ...]
    where: str | None


def combine(*filters: str | None) -> str | None:
    """The filters ANDed (each validated), None when there is none."""
    parts = [f for f in filters if f]
    if not parts:
        return None
    if len(parts) == 1:
        return soql.parse_filter(parts[0]).text
    return soql.parse_filter(" AND ".join(f"({p})" for p in parts)).text


def iso(moment: datetime) -> str:
    return soql.datetime_literal(moment)


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


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


def window_range(window: BackfillWindow) -> soql.DateWindow | None:
    """The window's [start, end) as datetimes; None for an open window."""
    if not window.window_start and not window.window_end:
        return None
    return (parse_iso(window.window_start), parse_iso(window.window_end))


async def _maybe(wanted: bool, call: Coroutine[Any, Any, datetime | None]) -> datetime | None:
    if wanted:
        return await call
    call.close()
    return None


class Planner:
    """Which objects a backfill reads, with which filters, in which windows, how many."""

    def __init__(self, config: Config, mappings: Mapping[str, CompiledMapping],
                 reads: SalesforceReads) -> None:
        self.config = config
        self.mappings = mappings
        self.reads = reads

    def api(self, options: BackfillOptions) -> Api:
        return options.api or self.config.backfill.api

    def parallel(self, options: BackfillOptions) -> int:
        return options.parallel or self.config.backfill.parallel

    def page_size(self, options: BackfillOptions) -> int:
        return options.page_size or self.config.backfill.page_size

    def plan(self, options: BackfillOptions) -> list[ObjectPlan]:
        """The objects to read, with fields and filters (config filter AND --where). An
        Account without a mapping of its own is read as its fan-out children (Contacts with
        an AccountId), whose mapping reads `Account.*` paths in its own query."""
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
            where = combine(self.config.objects[name].filter, filters[name], options.where)
            plans.append(ObjectPlan(name, tuple(mapping.soql_fields("SystemModstamp")), where))
        if not plans:
            raise BackfillError("nothing to backfill: the selected objects write no users and "
                                "fan out to none that do")
        return plans

    def scope(self, options: BackfillOptions, plans: Sequence[ObjectPlan]) -> dict[str, Any]:
        """What identifies a run: the same scope again is the same backfill."""
        return {
            "objects": [p.object_name for p in plans],
            "where": {p.object_name: p.where for p in plans},
            "since": iso(options.since) if options.since else None,
            "until": iso(options.until) if options.until else None,
            "api": self.api(options),
        }

    async def windows_and_total(self, plans: Sequence[ObjectPlan], options: BackfillOptions
                                ) -> tuple[list[BackfillWindow], int]:
        """Every plan's windows and the records they read, planned at once. A --where naming
        an unknown field, or one Salesforce rejects, is a usage error (BackfillError)."""
        if options.where is not None:
            await self.check_where(plans, options.where)
        try:
            results = await gather_or_first_error(
                [self.total(plans, options), *(self.windows_for(p, options) for p in plans)])
        except QueryError as exc:
            if options.where is None:
                raise
            raise BackfillError(f"--where {options.where!r}: Salesforce rejected the query "
                                f"({exc.error_code}): {exc.sf_message.strip()}") from None
        total = cast(int, results[0])
        windows = [w for per_plan in results[1:] for w in cast(list[BackfillWindow], per_plan)]
        return windows, total

    async def windows_for(self, plan: ObjectPlan, options: BackfillOptions
                          ) -> list[BackfillWindow]:
        """`parallel` CreatedDate windows spanning --since/--until or the object's records."""
        first, last = await gather_or_first_error([
            _maybe(options.since is None, self._first_created(plan, descending=False)),
            _maybe(options.until is None, self._first_created(plan, descending=True))])
        start = options.since or first
        end = options.until or (last + timedelta(seconds=1) if last is not None else None)
        if start is None or end is None or start >= end:
            if options.since is None and options.until is None:
                return [BackfillWindow(plan.object_name)]  # no records: one open window
            start = start or end or datetime.now(UTC)
            end = end if end is not None and end > start else start + timedelta(seconds=1)
        return [BackfillWindow(plan.object_name, iso(a), iso(b))
                for a, b in split_windows(start, end, self.parallel(options))]

    async def _first_created(self, plan: ObjectPlan, descending: bool) -> datetime | None:
        field_name = self.config.backfill.window_field
        query = soql.first_by(plan.object_name, field_name, where=plan.where,
                              descending=descending)
        records = await READS.call(lambda: self.reads.records(query))
        return sf_datetime(records[0].get(field_name)) if records else None

    async def check_where(self, plans: Sequence[ObjectPlan], where: str) -> None:
        """Every field --where reads exists on each object read (by its describe)."""
        fields = sorted(soql.parse_filter(where).fields)
        for plan in plans:
            checker = await self.reads.checker(plan.object_name, fields)
            for path in fields:
                described, why = checker.resolve(plan.object_name, path)
                if why:
                    raise BackfillError(f"--where: {why}")
                if described is not None and described.get("filterable") is False:
                    raise BackfillError(f"--where: {plan.object_name}.{path} is not filterable")

    async def total(self, plans: Sequence[ObjectPlan], options: BackfillOptions) -> int:
        """Records the plans read, by one COUNT() per object (run at once)."""
        counts = await gather_or_first_error([self.count(plan, options) for plan in plans])
        return sum(counts)

    async def count(self, plan: ObjectPlan, options: BackfillOptions) -> int:
        """`SELECT COUNT()` of what the plan reads (the progress total)."""
        query = soql.count(plan.object_name, plan.where, since=options.since,
                           until=options.until, window_field=self.config.backfill.window_field)
        salesforce = self.reads.salesforce
        return await READS.call(lambda: salesforce.count(query))
