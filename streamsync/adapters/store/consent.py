"""The consent state table: each record's last consent state, shared by both directions."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from .base import StoreBase
from .types import ConsentRow, UnsyncedChange

_UPSERT = """
INSERT INTO consent_state (object_name, record_id, opted_out, changed_at_ms, origin, updated_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (object_name, record_id) DO UPDATE SET
    opted_out = excluded.opted_out, changed_at_ms = excluded.changed_at_ms,
    origin = excluded.origin, updated_at = excluded.updated_at
"""
# Only over an older state; at the same instant over one of the same side, or of the other
# side when it is an opt-out over an opt-in (core/consent.py `supersedes`, kept in SQL so a
# check and its write are one statement).
_SUPERSEDING = _UPSERT + """
WHERE excluded.changed_at_ms > consent_state.changed_at_ms
   OR (excluded.changed_at_ms = consent_state.changed_at_ms
       AND (excluded.origin = consent_state.origin
            OR (excluded.opted_out = 1 AND consent_state.opted_out = 0)))
"""


_UNSYNCED = """
SELECT j.value, coalesce(q.version, 0), q.commit_ts_ms, d.record_id IS NOT NULL
FROM json_each(?) AS j
LEFT JOIN queue AS q ON q.object_name = ? AND q.record_id = j.value
LEFT JOIN dead_letter AS d ON d.object_name = ? AND d.record_id = j.value
WHERE q.record_id IS NOT NULL OR d.record_id IS NOT NULL
"""


def _params(row: ConsentRow, now: float) -> tuple[object, ...]:
    return (row.object_name, row.record_id, int(row.opted_out), row.changed_at_ms, row.origin,
            now)


class ConsentOps(StoreBase):
    """Read and write `consent_state`."""

    async def consent_states(self, object_name: str, record_ids: Sequence[str]
                             ) -> dict[str, ConsentRow]:
        """The stored consent states of these records, by record id."""
        if not record_ids:
            return {}
        # One statement whatever the number of ids (a JSON array, not bound parameters): each
        # statement is a hop to the store's one connection thread, busy under a burst.
        async with self._read("consent_states") as conn, conn.execute(
            "SELECT record_id, opted_out, changed_at_ms, origin FROM consent_state "
            "WHERE object_name = ? AND record_id IN (SELECT value FROM json_each(?))",
            (object_name, orjson.dumps(list(record_ids)).decode()),
        ) as cursor:
            rows = await cursor.fetchall()
        return {record_id: ConsentRow(object_name, record_id, bool(opted), int(at_ms),
                                      str(origin))
                for record_id, opted, at_ms, origin in rows}

    async def save_consent_states(self, rows: Sequence[ConsentRow], now: float) -> None:
        """Store these states as they are (the caller decided they prevail), one transaction."""
        if not rows:
            return
        async with self._tx("save_consent_states") as conn:
            await conn.executemany(_UPSERT, [_params(r, now) for r in rows])

    async def note_consent_states(self, rows: Sequence[ConsentRow], now: float) -> int:
        """Store each state only where it supersedes the stored one (core/consent.py
        `supersedes`: later; at the same instant, of the same side or an opt-out); returns how
        many were stored."""
        if not rows:
            return 0
        async with self._tx("note_consent_states") as conn:
            # One call (rows in order: a later row of a record is judged against the earlier);
            # rowcount is the total of rows inserted or updated.
            cursor = await conn.executemany(_SUPERSEDING, [_params(r, now) for r in rows])
            return max(cursor.rowcount, 0)

    async def unsynced_changes(self, object_name: str, record_ids: Sequence[str]
                               ) -> dict[str, UnsyncedChange]:
        """The queue row (version, earliest commit time) and dead letter of each of these
        records that has either, by record id."""
        if not record_ids:
            return {}
        async with self._read("unsynced_changes") as conn, conn.execute(
            _UNSYNCED, (orjson.dumps(list(dict.fromkeys(record_ids))).decode(), object_name,
                        object_name),
        ) as cursor:
            rows = await cursor.fetchall()
        return {str(rid): UnsyncedChange(int(version), None if ts is None else int(ts),
                                         bool(dead))
                for rid, version, ts, dead in rows}
