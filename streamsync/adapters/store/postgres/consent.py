"""The consent state table on PostgreSQL (see streamsync/adapters/store/consent.py)."""

from __future__ import annotations

from collections.abc import Sequence

from ..types import ConsentRow, UnsyncedChange
from .base import Connection, PgBase, rows_affected

_UPSERT = """
INSERT INTO consent_state AS c (object_name, record_id, opted_out, changed_at_ms, origin,
                                updated_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (object_name, record_id) DO UPDATE SET
    opted_out = excluded.opted_out, changed_at_ms = excluded.changed_at_ms,
    origin = excluded.origin, updated_at = excluded.updated_at
"""
# core/consent.py `supersedes`, kept in SQL so a check and its write are one statement.
_SUPERSEDING = _UPSERT + """
WHERE excluded.changed_at_ms > c.changed_at_ms
   OR (excluded.changed_at_ms = c.changed_at_ms
       AND (excluded.origin = c.origin OR (excluded.opted_out AND NOT c.opted_out)))
"""


_UNSYNCED = """
SELECT i.id, coalesce(q.version, 0), q.commit_ts_ms, d.record_id IS NOT NULL
FROM unnest($2::text[]) AS i(id)
LEFT JOIN queue AS q ON q.object_name = $1 AND q.record_id = i.id
LEFT JOIN dead_letter AS d ON d.object_name = $1 AND d.record_id = i.id
WHERE q.record_id IS NOT NULL OR d.record_id IS NOT NULL
"""


def _params(row: ConsentRow, now: float) -> tuple[object, ...]:
    return (row.object_name, row.record_id, bool(row.opted_out), row.changed_at_ms, row.origin,
            now)


class ConsentOps(PgBase):
    """Read and write `consent_state`."""

    async def consent_states(self, object_name: str, record_ids: Sequence[str]
                             ) -> dict[str, ConsentRow]:
        """The stored consent states of these records, by record id."""
        if not record_ids:
            return {}
        async with self._read("consent_states") as conn:
            rows = await conn.fetch(
                "SELECT record_id, opted_out, changed_at_ms, origin FROM consent_state "
                "WHERE object_name = $1 AND record_id = ANY($2::text[])",
                object_name, list(dict.fromkeys(record_ids)))
        return {str(r[0]): ConsentRow(object_name, str(r[0]), bool(r[1]), int(r[2]), str(r[3]))
                for r in rows}

    async def save_consent_states(self, rows: Sequence[ConsentRow], now: float) -> None:
        """Store these states as they are (the caller decided they prevail), one transaction."""
        if not rows:
            return

        async def body(conn: Connection) -> None:
            for row in rows:  # in the given order: the last state of a record wins
                await conn.execute(_UPSERT, *_params(row, now))

        await self._write("save_consent_states", body)

    async def note_consent_states(self, rows: Sequence[ConsentRow], now: float) -> int:
        """Store each state only where it supersedes the stored one; returns how many were
        stored."""
        if not rows:
            return 0

        async def body(conn: Connection) -> int:
            stored = 0
            for row in rows:
                stored += rows_affected(await conn.execute(_SUPERSEDING, *_params(row, now)))
            return stored

        return await self._write("note_consent_states", body)

    async def unsynced_changes(self, object_name: str, record_ids: Sequence[str]
                               ) -> dict[str, UnsyncedChange]:
        """The queue row (version, earliest commit time) and dead letter of each of these
        records that has either, by record id."""
        if not record_ids:
            return {}
        async with self._read("unsynced_changes") as conn:
            rows = await conn.fetch(_UNSYNCED, object_name, list(dict.fromkeys(record_ids)))
        return {str(r[0]): UnsyncedChange(int(r[1]), None if r[2] is None else int(r[2]),
                                          bool(r[3]))
                for r in rows}
