"""The consent inbox and the export cursors on PostgreSQL (see
streamsync/adapters/store/consent_inbox.py)."""

from __future__ import annotations

from collections.abc import Sequence

from ..base import clean_error
from ..consent_inbox import INBOX_COLUMNS, ConsentEventRow, Via, _join, _row, split_new
from ..records import IDENTITY_COLUMNS
from ..types import Identity
from .base import Connection, PgBase, rows_affected
from .workers import check_fence

_INSERT = (
    "INSERT INTO consent_inbox (event_key, event_name, email, user_id, created_ms, source, "
    "channel_ids, message_type_ids, list_ids, via, received_at, next_attempt_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) "
    "ON CONFLICT (event_key) DO NOTHING"
)


async def _insert(conn: Connection, events: Sequence[ConsentEventRow], via: Via,
                  now: float) -> int:
    """Insert the events not stored yet and count a delivery of the others (a few statements
    for a whole export window)."""
    keys = list(dict.fromkeys(e.key for e in events))
    stored = {str(r[0]) for r in await conn.fetch(
        "SELECT event_key FROM consent_inbox WHERE event_key = ANY($1::text[])", keys)}
    new, repeats = split_new(events, stored)
    await conn.executemany(_INSERT, [(
        e.key, e.event_name, e.email, e.user_id, e.created_ms, e.source, _join(e.channel_ids),
        _join(e.message_type_ids), _join(e.list_ids), via, now) for e in new])
    await conn.executemany("UPDATE consent_inbox SET deliveries = deliveries + 1 "
                           "WHERE event_key = $1", repeats)
    return len(new)


class ConsentInboxOps(PgBase):
    """`consent_inbox` (events to apply to Salesforce) and `consent_cursor` (export cursors)."""

    async def add_consent_events(self, events: Sequence[ConsentEventRow], via: Via,
                                 now: float) -> int:
        """Commit events (one transaction); returns how many were new (not duplicates)."""
        if not events:
            return 0

        async def body(conn: Connection) -> int:
            return await _insert(conn, events, via, now)

        return await self._write("add_consent_events", body)

    async def add_exported_events(self, events: Sequence[ConsentEventRow], data_type: str,
                                  cursor_ms: int, now: float,
                                  fence: tuple[str, int] | None = None) -> int:
        """Commit one export window's events and move that data type's cursor in the same
        transaction; with `fence` (lease, token) only while the token is the lease's."""

        async def body(conn: Connection) -> int:
            if fence is not None:
                await check_fence(conn, *fence)
            added = await _insert(conn, events, "export", now)
            await conn.execute(
                "INSERT INTO consent_cursor (data_type, cursor_ms, updated_at) "
                "VALUES ($1, $2, $3) ON CONFLICT (data_type) DO UPDATE SET "
                "cursor_ms = excluded.cursor_ms, updated_at = excluded.updated_at",
                data_type, int(cursor_ms), now)
            return added

        return await self._write("add_exported_events", body)

    async def consent_cursor(self, data_type: str) -> int | None:
        """Where the export of `data_type` was read up to (epoch ms, exclusive), or None."""
        async with self._read("consent_cursor") as conn:
            value = await conn.fetchval(
                "SELECT cursor_ms FROM consent_cursor WHERE data_type = $1", data_type)
        return None if value is None else int(value)

    async def due_consent_events(self, now: float, limit: int = 1000) -> list[ConsentEventRow]:
        """Pending events whose next attempt is due: webhook deliveries first, then the
        oldest event first."""
        async with self._read("due_consent_events") as conn:
            rows = await conn.fetch(
                f"SELECT {INBOX_COLUMNS} FROM consent_inbox WHERE state = 'pending' "
                "AND next_attempt_at <= $1 ORDER BY via = 'export', created_ms, "
                'event_key COLLATE "C" LIMIT $2',
                now, max(0, int(limit)))
        return [_row(tuple(r)) for r in rows]

    async def next_consent_due(self) -> float | None:
        """When the next pending event is due (epoch seconds), or None."""
        async with self._read("next_consent_due") as conn:
            value = await conn.fetchval(
                "SELECT min(next_attempt_at) FROM consent_inbox WHERE state = 'pending'")
        return None if value is None else float(value)

    async def consent_events(self, keys: Sequence[str]) -> dict[str, ConsentEventRow]:
        """Stored events by key (any state)."""
        if not keys:
            return {}
        async with self._read("consent_events") as conn:
            rows = await conn.fetch(
                f"SELECT {INBOX_COLUMNS} FROM consent_inbox WHERE event_key = ANY($1::text[])",
                list(dict.fromkeys(keys)))
        return {str(r[0]): _row(tuple(r)) for r in rows}

    async def settle_consent_events(self, outcomes: dict[str, tuple[str, str]],
                                    now: float) -> None:
        """Settle events: key → (state 'done' or 'failed', outcome text)."""
        if not outcomes:
            return
        for state, _ in outcomes.values():
            if state not in ("done", "failed"):
                raise ValueError(f"a consent event settles as done or failed, not {state!r}")

        async def body(conn: Connection) -> None:
            for key in sorted(outcomes):
                state, text = outcomes[key]
                await conn.execute(
                    "UPDATE consent_inbox SET state = $1, outcome = $2, settled_at = $3 "
                    "WHERE event_key = $4 AND state = 'pending'",
                    state, clean_error(text), now, key)

        await self._write("settle_consent_events", body)

    async def retry_consent_events(self, keys: Sequence[str], error: str, now: float,
                                   delay_s: float) -> None:
        """Leave events pending, due again after `delay_s`; attempts are counted."""
        if not keys:
            return

        async def body(conn: Connection) -> None:
            await conn.execute(
                "UPDATE consent_inbox SET attempts = attempts + 1, next_attempt_at = $1, "
                "outcome = $2 WHERE event_key = ANY($3::text[]) AND state = 'pending'",
                now + max(0.0, delay_s), clean_error(error), sorted(set(keys)))

        await self._write("retry_consent_events", body)

    async def consent_inbox_counts(self) -> dict[str, int]:
        """Events by state (pending, done, failed)."""
        async with self._read("consent_inbox_counts") as conn:
            rows = await conn.fetch(
                "SELECT state, count(*) FROM consent_inbox GROUP BY state "
                'ORDER BY state COLLATE "C"')
        return {str(r[0]): int(r[1]) for r in rows}

    async def prune_consent_events(self, settled_before: float) -> int:
        """Drop events settled before `settled_before` (their keys no longer dedupe)."""

        async def body(conn: Connection) -> int:
            return rows_affected(await conn.execute(
                "DELETE FROM consent_inbox WHERE state != 'pending' AND settled_at < $1",
                settled_before))

        return await self._write("prune_consent_events", body)

    async def identities_for_users(self, emails: Sequence[str], user_ids: Sequence[str]
                                   ) -> list[Identity]:
        """Identities whose Iterable email (case-insensitive) or userId is one of these (an
        identity matching both is listed twice, as on SQLite)."""
        out: list[Identity] = []
        async with self._read("identities_for_users") as conn:
            if emails:
                rows = await conn.fetch(
                    f"SELECT {IDENTITY_COLUMNS} FROM identity WHERE lower(iterable_email) = "
                    "ANY($1::text[])", sorted({e.lower() for e in emails}))
                out.extend(Identity(*row) for row in rows)
            if user_ids:
                rows = await conn.fetch(
                    f"SELECT {IDENTITY_COLUMNS} FROM identity WHERE iterable_user_id = "
                    "ANY($1::text[])", sorted(set(user_ids)))
                out.extend(Identity(*row) for row in rows)
        return out
