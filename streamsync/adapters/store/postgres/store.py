"""`PostgresStore`: the store on a shared PostgreSQL database (docs/design.md §1.6)."""

from __future__ import annotations

import sqlite3

from ..interface import collect_status
from ..types import StoreStatus
from .backfill import BackfillOps
from .backfill_lease import BackfillLeaseOps
from .base import Connection
from .budget import BudgetOps
from .consent import ConsentOps
from .consent_inbox import ConsentInboxOps
from .copy import copy_store
from .event_backfill import EventBackfillOps
from .events import EventOps
from .lists import ListOps
from .mapping_state import MappingStateOps
from .queue import QueueOps
from .records import RecordOps
from .schedule import ScheduleOps
from .workers import WorkerOps


class PostgresStore(QueueOps, RecordOps, BackfillOps, ScheduleOps, ConsentOps, ListOps,
                    ConsentInboxOps, MappingStateOps, WorkerOps, EventOps, BudgetOps,
                    BackfillLeaseOps, EventBackfillOps):
    """The `StoreAPI` on PostgreSQL, with the SQLite store's semantics; several processes (on
    several machines) may use one database at once: leases are exclusive across them.

    Open with ``await PostgresStore.open(url, password=...)``.
    """

    async def status(self, now: float, errors: int = 10) -> StoreStatus:
        """The operator's view for `streamsync status`."""
        return await collect_status(self, now, errors)

    async def import_sqlite(self, source: sqlite3.Connection) -> dict[str, int]:
        """Copy a SQLite store's snapshot (`copy.open_snapshot`) into this empty store, all or
        nothing; returns rows per table (`streamsync store migrate`)."""

        async def body(conn: Connection) -> dict[str, int]:
            return await copy_store(source, conn)

        return await self._write("import_sqlite", body)
