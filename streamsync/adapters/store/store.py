"""`Store`: the one durable SQLite store of the sync (queue, replay ids, dead letters, ...)."""

from __future__ import annotations

from .backfill import BackfillOps
from .backfill_lease import BackfillLeaseOps
from .budget import BudgetOps
from .consent import ConsentOps
from .consent_inbox import ConsentInboxOps
from .event_backfill import EventBackfillOps
from .events import EventOps
from .interface import collect_status
from .lists import ListOps
from .mapping_state import MappingStateOps
from .queue import QueueOps
from .records import RecordOps
from .schedule import ScheduleOps
from .types import StoreStatus
from .workers import WorkerOps


class Store(QueueOps, RecordOps, BackfillOps, ScheduleOps, ConsentOps, ListOps,
            ConsentInboxOps, WorkerOps, MappingStateOps, EventOps, BudgetOps,
            BackfillLeaseOps, EventBackfillOps):
    """The `StoreAPI` on one aiosqlite connection to a WAL database (see `base` for
    durability).

    Open with ``await Store.open(path)``; every method takes the current time as ``now`` (epoch
    seconds) instead of reading a clock. A second process may open the same file at the same
    time (the ``status`` CLI, a backfill): writers wait for each other up to ``busy_timeout_s``.
    """

    async def status(self, now: float, errors: int = 10) -> StoreStatus:
        """The operator's view for `streamsync status`: queue, replay ids, DLQ, errors, backfill."""
        return await collect_status(self, now, errors)
