"""Reconciliation: re-queue every record of an object modified since a safe point.

Keeps docs/design.md invariant 6 (gap-free); SF guidance: docs/salesforce.md §2.5.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from streamsync.adapters.salesforce import SalesforceClient
from streamsync.adapters.store import QueueInput, StoreAPI
from streamsync.config import Config
from streamsync.core.events import channel_for
from streamsync.core.ids import row_id
from streamsync.core.soql import PAGE_LIMIT, keyset_page, modified_since
from streamsync.logs import get_logger
from streamsync.models import ChangeType
from streamsync.retry import NO_RETRY, Policy
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.wakeup import QueueSignal

log = get_logger(__name__)

RECONCILE_FIELDS = ("Id", "IsDeleted")
ALL_CHANGE_EVENTS = "/data/ChangeEvents"
RowFilter = Callable[[Mapping[str, Any]], bool]


class Reconciler:
    """Finds records by `SystemModstamp` through queryAll (deleted rows included) and queues them.

    The query reads `Id` and `IsDeleted` only, keyset-paged by Id (one page of ids held at a time,
    whatever the object's size); each page is enqueued in one transaction with source
    `reconcile`. The object's configured filter is deliberately NOT applied: CDC delivers every
    change whatever the filter, and a record that just left the filter (a converted Lead, a
    changed field) or whose filter reads a parent that is gone must still reach the flusher,
    which applies the filter and the delete policy when it re-reads the record.
    """

    def __init__(
        self,
        *,
        config: Config,
        store: StoreAPI,
        salesforce: SalesforceClient,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        page_size: int = PAGE_LIMIT,
        signal: QueueSignal | None = None,
    ) -> None:
        if not 1 <= page_size <= PAGE_LIMIT:
            raise ValueError(f"page_size must be within 1..{PAGE_LIMIT}, got {page_size}")
        self._config = config
        self._store = store
        self._salesforce = salesforce
        self._metrics = metrics
        self._clock = clock
        self._page_size = page_size
        self._signal = signal  # told of every page enqueued (wakes this process's flusher)
        self.margin_ms = int(config.ingest.reconcile_overlap_s * 1000)

    def objects_for_channel(self, channel: str) -> list[str]:
        """Configured objects delivered on `channel`; every object when none is bound to it
        (a multi-entity channel such as /data/ChangeEvents or a custom channel); none for the
        channel of an object only event rules listen to (events come from CDC alone,
        docs/events.md §3)."""
        objects = self._config.cdc_objects()
        bound = [name for name in objects if self._config.channel(name) == channel]
        if not bound and channel in {channel_for(n) for n in self._config.event_objects()}:
            return []
        return bound or list(objects)

    async def reconcile(
        self,
        object_name: str,
        since_ms: int | None,
        *,
        trigger: str,
        until_ms: int | None = None,
        margin_s: float | None = None,
        source: str = "reconcile",
        extra_fields: Sequence[str] = (),
        select: RowFilter | None = None,
        retry: Policy = NO_RETRY,
    ) -> int:
        """Re-queue every record (incl. deleted, via queryAll) with SystemModstamp >= since minus
        the safety margin (`margin_s`, by default `ingest.reconcile_overlap_s`), and before
        `until_ms` when given; `since_ms` None means every record of the object. Returns the
        number of ids queued (with `source`).

        `extra_fields` are read too; `select(row)` False leaves a row out (the backfill's
        catch-up skips records it read in their latest state); each page's query is retried under
        `retry` (the catch-up retries a page rather than the whole reconciliation)."""
        if object_name not in self._config.cdc_objects():
            raise ValueError(f"cannot reconcile {object_name!r}: not a configured object")
        margin_ms = self.margin_ms if margin_s is None else int(margin_s * 1000)
        since = None if since_ms is None else _utc(max(since_ms - margin_ms, 0))
        # SOQL datetimes have whole seconds: round the end up so no record is cut off.
        until = None if until_ms is None else _utc(-(-until_ms // 1000) * 1000)
        if since is not None and until is not None and until <= since:
            raise ValueError(f"reconcile window is empty: until {until} <= since {since}")
        fields = tuple(dict.fromkeys((*RECONCILE_FIELDS, *extra_fields)))
        started = self._clock()
        log.info(
            "reconcile.start",
            object=object_name,
            trigger=trigger,
            since=since.isoformat() if since else "beginning",
            until=until.isoformat() if until else "now",
        )
        queued = 0
        pages = 0
        after_id: str | None = None
        while True:
            if since is None:
                soql = keyset_page(object_name, fields, after_id, limit=self._page_size)
            else:
                soql = modified_since(object_name, since, until=until, fields=fields,
                                      after_id=after_id, limit=self._page_size)
            rows = await retry.call(functools.partial(self._rows, soql))
            pages += 1
            kept = rows if select is None else [row for row in rows if select(row)]
            items = _inputs(object_name, kept)
            if items:
                await self._store.enqueue(items, self._clock(), source)
                if self._signal is not None:
                    self._signal.notify()
                queued += len(items)
            last_id = _last_id(rows)
            if len(rows) < self._page_size or last_id is None:
                break
            after_id = last_id
        self._metrics.reconciliations.labels(trigger).inc()
        log.info(
            "reconcile.done",
            object=object_name,
            trigger=trigger,
            queued=queued,
            queries=pages,
            duration_s=round(self._clock() - started, 3),
        )
        return queued

    async def _rows(self, soql: str) -> list[dict[str, Any]]:
        """A page's rows, each valid `Id` in its 18-character form from here on (an invalid
        one is left as read: it is queued, and the flusher dead-letters it)."""
        rows: list[dict[str, Any]] = []
        async for page in self._salesforce.query(soql, include_deleted=True):
            rows.extend(page.records)
        for row in rows:
            sf_id = row_id(row)
            if sf_id is not None:
                row["Id"] = sf_id
        return rows

    async def reconcile_from_timestamp(
        self, target: str, since_ms: int, *, trigger: str = "replay_timestamp"
    ) -> dict[str, int]:
        """Reconcile the object named by `target` (an object name or a CDC channel) from
        `since_ms` (epoch ms; streamsync/cli/timestamps.py parses a typed time); returns ids
        queued per object."""
        if since_ms > int(self._clock() * 1000):
            raise ValueError(f"since {since_ms} ms is in the future")
        synced = self._config.cdc_objects()
        channels = {self._config.channel(name) for name in synced}
        if target in synced:
            objects = [target]
        elif target in channels or target == ALL_CHANGE_EVENTS or target.endswith("__chn"):
            objects = self.objects_for_channel(target)
        else:
            raise ValueError(
                f"{target!r} is neither a configured object ({', '.join(synced)}) "
                f"nor a channel ({', '.join(sorted(channels))}, {ALL_CHANGE_EVENTS} or a custom "
                "/data/..__chn channel)"
            )
        return {name: await self.reconcile(name, since_ms, trigger=trigger) for name in objects}


def _inputs(object_name: str, records: Sequence[Mapping[str, Any]]) -> list[QueueInput]:
    out: list[QueueInput] = []
    for record in records:
        sf_id = record.get("Id")
        if not isinstance(sf_id, str) or not sf_id:
            continue
        change = ChangeType.DELETE if record.get("IsDeleted") is True else ChangeType.UPDATE
        out.append(QueueInput(object_name, sf_id, change))
    return out


def _last_id(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The Id the next keyset page starts after (None when no row has one)."""
    for row in reversed(rows):
        sf_id = row.get("Id")
        if isinstance(sf_id, str) and sf_id:
            return sf_id
    return None


def _utc(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)
