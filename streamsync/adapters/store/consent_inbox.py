"""The consent inbox: Iterable subscribe/unsubscribe events received (webhook) or exported
(poller), committed before they are acknowledged, then applied to Salesforce by the drain.

A row is keyed by the event's dedupe key, so a repeated delivery (or the same event seen by
both the webhook and the export) is stored once and only counted. Settled rows stay for
`prune_consent_events` to drop, so a late duplicate still finds its key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiosqlite

from .base import StoreBase, clean_error
from .records import IDENTITY_COLUMNS
from .types import Identity
from .workers import check_fence

Via = Literal["webhook", "export"]
INBOX_COLUMNS = (
    "event_key, event_name, email, user_id, created_ms, source, channel_ids, "
    "message_type_ids, list_ids, via, received_at, deliveries, state, attempts, outcome"
)
_INSERT = (
    "INSERT INTO consent_inbox (event_key, event_name, email, user_id, created_ms, source, "
    "channel_ids, message_type_ids, list_ids, via, received_at, next_attempt_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_key) DO NOTHING"
)
_IN_CHUNK = 500


@dataclass(frozen=True, slots=True)
class ConsentEventRow:
    """One stored subscription event (the fields of core/consent_inbound.py `InboundEvent`)."""

    key: str
    event_name: str
    email: str | None
    user_id: str | None
    created_ms: int
    source: str | None
    channel_ids: tuple[int, ...] = ()
    message_type_ids: tuple[int, ...] = ()
    list_ids: tuple[int, ...] = ()
    via: Via = "webhook"
    received_at: float = 0.0
    deliveries: int = 1
    state: str = "pending"
    attempts: int = 0
    outcome: str | None = None


def _join(ids: Sequence[int]) -> str:
    return ",".join(str(int(i)) for i in ids)


def _split(text: str) -> tuple[int, ...]:
    return tuple(int(i) for i in text.split(",") if i)


def split_new(events: Sequence[ConsentEventRow], stored: set[str]
              ) -> tuple[list[ConsentEventRow], list[tuple[str]]]:
    """The events to insert (first of each key not stored yet) and, as statement parameters,
    the keys of the others: each is one more delivery of an event already there."""
    new: dict[str, ConsentEventRow] = {}
    repeats: list[tuple[str]] = []
    for e in events:
        if e.key in stored or e.key in new:
            repeats.append((e.key,))
        else:
            new[e.key] = e
    return list(new.values()), repeats


def _row(row: Sequence[Any]) -> ConsentEventRow:
    return ConsentEventRow(
        str(row[0]), str(row[1]), row[2], row[3], int(row[4]), row[5], _split(row[6]),
        _split(row[7]), _split(row[8]), row[9], float(row[10]), int(row[11]), str(row[12]),
        int(row[13]), row[14])


class ConsentInboxOps(StoreBase):
    """`consent_inbox` (events to apply to Salesforce) and `consent_cursor` (export cursors)."""

    async def _insert(self, conn: aiosqlite.Connection, events: Sequence[ConsentEventRow],
                      via: Via, now: float) -> int:
        """Insert the events not stored yet and count a delivery of the others: a few
        statements for the whole window (an export re-reads its lookback every poll)."""
        keys = list(dict.fromkeys(e.key for e in events))
        stored: set[str] = set()
        for start in range(0, len(keys), _IN_CHUNK):
            chunk = keys[start:start + _IN_CHUNK]
            async with conn.execute(
                    "SELECT event_key FROM consent_inbox WHERE event_key IN "
                    f"({','.join('?' * len(chunk))})", tuple(chunk)) as cursor:
                stored.update(str(r[0]) for r in await cursor.fetchall())
        new, repeats = split_new(events, stored)
        await conn.executemany(_INSERT, [(
            e.key, e.event_name, e.email, e.user_id, e.created_ms, e.source,
            _join(e.channel_ids), _join(e.message_type_ids), _join(e.list_ids), via, now, now)
            for e in new])
        await conn.executemany("UPDATE consent_inbox SET deliveries = deliveries + 1 "
                               "WHERE event_key = ?", repeats)
        return len(new)

    async def add_consent_events(self, events: Sequence[ConsentEventRow], via: Via,
                                 now: float) -> int:
        """Commit events (one transaction); returns how many were new (not duplicates)."""
        if not events:
            return 0
        async with self._tx("add_consent_events") as conn:
            return await self._insert(conn, events, via, now)

    async def add_exported_events(self, events: Sequence[ConsentEventRow], data_type: str,
                                  cursor_ms: int, now: float,
                                  fence: tuple[str, int] | None = None) -> int:
        """Commit one export window's events and move that data type's cursor to `cursor_ms`
        in the same transaction (the cursor never passes an event not stored). With `fence`
        (lease, token): refused (LeadershipLost, nothing committed) unless the token is the
        lease's."""
        async with self._tx("add_exported_events") as conn:
            if fence is not None:
                await check_fence(conn, *fence)
            added = await self._insert(conn, events, "export", now)
            await conn.execute(
                "INSERT INTO consent_cursor (data_type, cursor_ms, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (data_type) DO UPDATE SET cursor_ms = excluded.cursor_ms, "
                "updated_at = excluded.updated_at",
                (data_type, int(cursor_ms), now))
        return added

    async def consent_cursor(self, data_type: str) -> int | None:
        """Where the export of `data_type` was read up to (epoch ms, exclusive), or None."""
        async with self._read("consent_cursor") as conn:
            async with conn.execute("SELECT cursor_ms FROM consent_cursor WHERE data_type = ?",
                                    (data_type,)) as cursor:
                row = await cursor.fetchone()
        return None if row is None else int(row[0])

    async def due_consent_events(self, now: float, limit: int = 1000) -> list[ConsentEventRow]:
        """Pending events whose next attempt is due: webhook deliveries first (a backlog the
        poller found does not hold back fresh ones; the drain's outcome does not depend on the
        order, docs/design.md §7), then the oldest event first."""
        async with self._read("due_consent_events") as conn:
            async with conn.execute(
                f"SELECT {INBOX_COLUMNS} FROM consent_inbox WHERE state = 'pending' "
                "AND next_attempt_at <= ? ORDER BY via = 'export', created_ms, event_key "
                "LIMIT ?",
                (now, max(0, int(limit)))) as cursor:
                rows = await cursor.fetchall()
        return [_row(r) for r in rows]

    async def next_consent_due(self) -> float | None:
        """When the next pending event is due (epoch seconds), or None when none is pending."""
        async with self._read("next_consent_due") as conn:
            async with conn.execute("SELECT min(next_attempt_at) FROM consent_inbox "
                                    "WHERE state = 'pending'") as cursor:
                row = await cursor.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def consent_events(self, keys: Sequence[str]) -> dict[str, ConsentEventRow]:
        """Stored events by key (any state)."""
        found: dict[str, ConsentEventRow] = {}
        async with self._read("consent_events") as conn:
            for start in range(0, len(keys), _IN_CHUNK):
                chunk = keys[start:start + _IN_CHUNK]
                async with conn.execute(
                    f"SELECT {INBOX_COLUMNS} FROM consent_inbox WHERE event_key IN "
                    f"({','.join('?' * len(chunk))})", tuple(chunk)) as cursor:
                    for r in await cursor.fetchall():
                        found[str(r[0])] = _row(r)
        return found

    async def settle_consent_events(self, outcomes: dict[str, tuple[str, str]],
                                    now: float) -> None:
        """Settle events: key → (state 'done' or 'failed', outcome text)."""
        if not outcomes:
            return
        for state, _ in outcomes.values():
            if state not in ("done", "failed"):
                raise ValueError(f"a consent event settles as done or failed, not {state!r}")
        async with self._tx("settle_consent_events") as conn:
            await conn.executemany(
                "UPDATE consent_inbox SET state = ?, outcome = ?, settled_at = ? "
                "WHERE event_key = ? AND state = 'pending'",
                [(state, clean_error(text), now, key)
                 for key, (state, text) in outcomes.items()])

    async def retry_consent_events(self, keys: Sequence[str], error: str, now: float,
                                   delay_s: float) -> None:
        """Leave events pending, due again after `delay_s` (Salesforce failed, not the
        event): attempts are counted for `status`, never turned into a failure."""
        if not keys:
            return
        async with self._tx("retry_consent_events") as conn:
            await conn.executemany(
                "UPDATE consent_inbox SET attempts = attempts + 1, next_attempt_at = ?, "
                "outcome = ? WHERE event_key = ? AND state = 'pending'",
                [(now + max(0.0, delay_s), clean_error(error), key) for key in keys])

    async def consent_inbox_counts(self) -> dict[str, int]:
        """Events by state (pending, done, failed)."""
        async with self._read("consent_inbox_counts") as conn:
            async with conn.execute(
                "SELECT state, count(*) FROM consent_inbox GROUP BY state ORDER BY state"
            ) as cursor:
                return {str(s): int(n) for s, n in await cursor.fetchall()}

    async def prune_consent_events(self, settled_before: float) -> int:
        """Drop events settled before `settled_before` (their keys no longer dedupe)."""
        async with self._tx("prune_consent_events") as conn:
            cursor = await conn.execute(
                "DELETE FROM consent_inbox WHERE state != 'pending' AND settled_at < ?",
                (settled_before,))
            return max(cursor.rowcount, 0)

    async def identities_for_users(self, emails: Sequence[str], user_ids: Sequence[str]
                                   ) -> list[Identity]:
        """Identities whose Iterable email (case-insensitive) or userId is one of these."""
        out: list[Identity] = []
        async with self._read("identities_for_users") as conn:
            for column, values, collate in (("iterable_email", emails, " COLLATE NOCASE"),
                                            ("iterable_user_id", user_ids, "")):
                for start in range(0, len(values), _IN_CHUNK):
                    chunk = values[start:start + _IN_CHUNK]
                    async with conn.execute(
                        f"SELECT {IDENTITY_COLUMNS} FROM identity WHERE {column}{collate} IN "
                        f"({','.join('?' * len(chunk))})", tuple(chunk)) as cursor:
                        out.extend(Identity(*row) for row in await cursor.fetchall())
        return out
