"""`Store`: the one durable SQLite store of the sync (queue, replay ids, dead letters, ...)."""

from __future__ import annotations

from .backfill import BackfillOps
from .queue import QueueOps
from .records import RecordOps


class Store(QueueOps, RecordOps, BackfillOps):
    """Async facade over one aiosqlite connection to a WAL database (see `base` for durability).

    Open with ``await Store.open(path)``; every method takes the current time as ``now`` (epoch
    seconds) instead of reading a clock. A second process may open the same file at the same
    time (the ``status`` CLI, a backfill): writers wait for each other up to ``busy_timeout_s``.
    """
