"""Lease-free dead-letter writes for the backfill, which reads records without queue leases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from streamsync.adapters.store import Store
from streamsync.adapters.store.base import clean_error

IN_CHUNK = 500
"""Ids per `IN (...)` delete: well under SQLite's bound-parameter limit."""

INSERT_SQL = """
INSERT INTO dead_letter (object_name, record_id, change_type, reason, last_error, attempts,
                         first_failed_at, last_failed_at)
VALUES (?, ?, ?, ?, ?, 1, ?, ?)
ON CONFLICT (object_name, record_id) DO UPDATE SET
    change_type = excluded.change_type, reason = excluded.reason,
    last_error = excluded.last_error, attempts = dead_letter.attempts + 1,
    last_failed_at = excluded.last_failed_at
"""


async def add_dead_letters(
    store: Store,
    object_name: str,
    dead: Mapping[str, tuple[str, str]],
    now: float,
    change_type: str = "UPDATE",
) -> int:
    """Record `record id -> (reason, detail)` in the dead-letter table, one transaction.

    The real-time path dead-letters leased queue rows (`Store.dead_letter_each`); a backfill
    page has no queue rows, so its poison records go straight to the table. A record already
    there keeps its first failure time and counts one more attempt.
    """
    if not dead:
        return 0
    rows = [
        (object_name, record_id, change_type, reason, clean_error(detail), now, now)
        for record_id, (reason, detail) in dead.items()
    ]
    async with store._tx("add_dead_letters") as conn:
        await conn.executemany(INSERT_SQL, rows)
    return len(rows)


async def clear_dead_letters(store: Store, object_name: str, record_ids: Sequence[str]) -> int:
    """Drop dead letters of records that have now synced (the table lists only records still
    bad, as `Store.ack` keeps it for the real-time path)."""
    if not record_ids:
        return 0
    removed = 0
    async with store._tx("clear_dead_letters") as conn:
        for start in range(0, len(record_ids), IN_CHUNK):
            chunk = record_ids[start : start + IN_CHUNK]
            cursor = await conn.execute(
                f"DELETE FROM dead_letter WHERE object_name = ? AND record_id IN "
                f"({','.join('?' * len(chunk))})",
                (object_name, *chunk),
            )
            removed += max(cursor.rowcount, 0)
    return removed
