"""The flusher's Salesforce step: re-read leased ids by SOQL, and enqueue the children of
objects with `fan_out` (runtime/flusher.py settles what these return)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from streamsync.adapters.salesforce import SalesforceClient
from streamsync.adapters.store import QueueInput, StoreAPI
from streamsync.config import ObjectConfig
from streamsync.core.ids import parse_id
from streamsync.core.mapping import CompiledMapping
from streamsync.core.soql import select_by_ids_chunked, select_children
from streamsync.errors import RetriableError, Unreachable
from streamsync.logs import get_logger
from streamsync.models import SfId
from streamsync.runtime.wakeup import QueueSignal

log = get_logger("streamsync.runtime.flusher")  # the flusher's log, as before the move

PARENT_IDS_PER_QUERY = 300
"""Parent ids per fan-out query (300 quoted 18-char ids stay far below the URI cap)."""
FANOUT_PAGE = 2000
"""Children per keyset page of a fan-out query."""
SALESFORCE = "salesforce"
"""The destination name of Salesforce's circuit breaker and of its `Unreachable` faults."""


async def read_current(salesforce: SalesforceClient, mappings: Mapping[str, CompiledMapping],
                       object_name: str, obj: ObjectConfig, ids: Sequence[SfId]
                       ) -> tuple[list[dict[str, Any]], list[SfId], list[SfId],
                                  dict[str, dict[str, Any]]]:
    """(live records, deleted or missing ids, ids that exist but fail the filter, the
    deleted rows Salesforce still returns by 18-char Id)."""
    mapping = mappings.get(object_name)
    fields = (mapping.soql_fields("IsDeleted", "SystemModstamp") if mapping is not None
              else ["Id", "IsDeleted"])
    rows = await _query_ids(salesforce, object_name, fields, ids, obj.safe_filter)
    missing = [i for i in ids if i not in rows]
    filtered: list[SfId] = []
    if missing and obj.safe_filter is not None:
        exists = await _query_ids(salesforce, object_name, ["Id", "IsDeleted"], missing, None)
        filtered = [i for i in missing if i in exists and not exists[i].get("IsDeleted")]
        for i in missing:
            row = exists.get(i)
            if row is not None and row.get("IsDeleted"):
                rows[i] = row
        if filtered:
            log.info("flusher.filtered_out", object=object_name, records=len(filtered))
    live = [r for r in rows.values() if not r.get("IsDeleted")]
    deleted = [i for i in ids if i not in filtered
               and (i not in rows or rows[i].get("IsDeleted"))]
    gone = {key: row for key, row in rows.items() if row.get("IsDeleted")}
    return live, deleted, filtered, gone


async def _query_ids(salesforce: SalesforceClient, object_name: str, fields: Sequence[str],
                     ids: Sequence[str], where: Any) -> dict[str, dict[str, Any]]:
    """Current rows by 18-char Id (each row's `Id` set to that form as it enters); the chunk
    queries run concurrently (the Salesforce client bounds its requests in flight)."""
    rows: dict[str, dict[str, Any]] = {}
    if not ids:
        return rows

    async def read(soql: str) -> None:
        async for page in salesforce.query_all(soql):
            for record in page.records:
                record["Id"] = parse_id(record.get("Id"))
                rows[record["Id"]] = record

    uri_prefix = f"{salesforce.data_path}/queryAll?q="
    await asyncio.gather(*(read(soql) for soql in select_by_ids_chunked(
        object_name, fields, ids, uri_prefix, where)))
    return rows


async def fan_out(*, salesforce: SalesforceClient, store: StoreAPI, signal: QueueSignal,
                  clock: Callable[[], float], obj: ObjectConfig, parent_ids: Sequence[str],
                  page: int) -> int:
    """Enqueue every child of these parents, `page` per keyset page; returns how many."""
    queued = 0
    for fan in obj.fan_out:
        for start in range(0, len(parent_ids), PARENT_IDS_PER_QUERY):
            parents = parent_ids[start:start + PARENT_IDS_PER_QUERY]
            after: str | None = None
            while True:
                soql = select_children(fan.object, fan.via, parents, after_id=after,
                                       limit=page)
                try:
                    children = [parse_id(r.get("Id")) async for r in salesforce.records(soql)]
                except RetriableError as exc:
                    raise Unreachable(SALESFORCE, exc) from exc
                if children:
                    queued += await store.enqueue(
                        [QueueInput(fan.object, c) for c in children], clock(), "fanout")
                    signal.notify()
                if len(children) < page:
                    break
                after = children[-1]
    if queued:
        log.info("flusher.fan_out", records=queued)
    return queued
