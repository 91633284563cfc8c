"""Custom events: candidates stored with their CDC change, decided, sent and settled
(docs/events.md §4). A row's `state` moves new → ready → sent (or dead); a `new` row that
does not fire is deleted once its condition state is saved."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite
import orjson

from streamsync.models import EventCandidate

from .base import StoreBase, clean_error

INSERT_EVENT_SQL = """
INSERT OR IGNORE INTO event_pending (event_id, rule, object_name, record_id, change_type,
    commit_ts_ms, fires, touches, change_values, state, next_attempt_at, enqueued_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'new', ?, ?)
"""
CONDITION_KEYS_PER_QUERY = 400  # 800 parameters, under SQLite's limit
_COLUMNS = ("event_id, rule, object_name, record_id, change_type, commit_ts_ms, fires, touches, "
            "change_values, payload, attempts, enqueued_at")

# A picked row waits while an earlier undecided row of its record (attempts = 0: its
# condition state not saved yet) is not among the picked ones (leased by another loop). The
# oldest rows come from the state index in rowid order, and each picked row's earlier rows
# from the record index: a lease costs the same with 100,000 rows waiting as with 2,000
# (schema.py _V16; a join against all of them cost 0.2 s a lease there).
LEASE_NEW_SQL = f"""
WITH picked AS (
    SELECT rowid AS r, record_id FROM event_pending INDEXED BY event_pending_by_state
    WHERE state = 'new' AND next_attempt_at <= ?1 ORDER BY rowid LIMIT ?2)
UPDATE event_pending SET lease_token = ?3, next_attempt_at = ?4
WHERE rowid IN (
    SELECT p.r FROM picked AS p WHERE NOT EXISTS (
        SELECT 1 FROM event_pending AS x INDEXED BY event_pending_by_record
        WHERE x.record_id = p.record_id AND x.rowid < p.r AND x.state = 'new'
          AND x.attempts = 0 AND x.rowid NOT IN (SELECT r FROM picked)))
RETURNING {_COLUMNS}, rowid
"""
LEASE_READY_SQL = f"""
UPDATE event_pending SET lease_token = ?1, next_attempt_at = ?2
WHERE rowid IN (SELECT rowid FROM event_pending INDEXED BY event_pending_by_state
                WHERE state = 'ready' AND next_attempt_at <= ?3 ORDER BY rowid LIMIT ?4)
RETURNING {_COLUMNS}, rowid
"""

# A batch's rows by their ids (a JSON array), each found by the primary key: one statement a
# batch, a third cheaper than one statement a row (executemany).
SETTLE_SENT_SQL = """
UPDATE event_pending SET state = 'sent', sent_at = ?1, lease_token = NULL, last_error = NULL
WHERE event_id IN (SELECT value FROM json_each(?2)) AND lease_token = ?3
"""
DELETE_SKIPPED_SQL = """
DELETE FROM event_pending WHERE event_id IN (SELECT value FROM json_each(?1)) AND lease_token = ?2
"""


def event_rows(events: Sequence[EventCandidate], now: float) -> list[tuple[object, ...]]:
    """Rows for INSERT_EVENT_SQL (a replayed change finds its id stored: ignored)."""
    return [(e.event_id, e.rule, e.object_name, e.record_id, e.change_type, e.commit_ts_ms,
             int(e.fires), int(e.touches_condition), orjson.dumps(e.values).decode(), now, now)
            for e in events]


async def insert_events(conn: aiosqlite.Connection, events: Sequence[EventCandidate],
                        now: float) -> None:
    """Store candidates inside the caller's transaction."""
    if events:
        await conn.executemany(INSERT_EVENT_SQL, event_rows(events, now))


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """A leased event row: the candidate, and once decided the trackBulk item to send."""

    candidate: EventCandidate
    payload: dict[str, Any] | None
    attempts: int
    enqueued_at: float
    token: str


@dataclass(frozen=True, slots=True)
class StoredCondition:
    met: bool
    values: dict[str, Any]
    commit_ts_ms: int


def _pending(row: Sequence[Any], token: str) -> PendingEvent:
    return PendingEvent(
        EventCandidate(row[0], row[1], row[2], row[3], row[4], int(row[5]), bool(row[6]),
                       orjson.loads(row[8]), bool(row[7])),
        orjson.loads(row[9]) if row[9] is not None else None, int(row[10]), float(row[11]),
        token)


class EventOps(StoreBase):
    """Operations on event_pending and event_condition; times are passed in."""

    async def lease_events(self, state: str, limit: int, lease_s: float, now: float
                           ) -> list[PendingEvent]:
        """Up to `limit` due rows in `state` ('new' or 'ready'), in arrival order.

        A 'new' row is leased only when no earlier undecided row of its record is leased
        already (by another decide loop): each record's candidates are decided in commit
        order however many decide loops run (docs/events.md §4)."""
        token = secrets.token_hex(8)
        async with self._tx("lease_events") as conn:
            if state == "new":
                cursor = await conn.execute(LEASE_NEW_SQL, (now, limit, token, now + lease_s))
            elif state == "ready":
                cursor = await conn.execute(LEASE_READY_SQL, (token, now + lease_s, now, limit))
            else:
                raise ValueError(f"rows in state {state!r} are not leased")
            rows = sorted(await cursor.fetchall(), key=lambda r: int(r[-1]))
        return [_pending(r, token) for r in rows]

    async def conditions(self, keys: Sequence[tuple[str, str]]
                         ) -> dict[tuple[str, str], StoredCondition]:
        """The stored condition state of (rule, record id) pairs."""
        out: dict[tuple[str, str], StoredCondition] = {}
        unique = list(dict.fromkeys(keys))
        async with self._read("conditions") as conn:
            for start in range(0, len(unique), CONDITION_KEYS_PER_QUERY):
                chunk = unique[start:start + CONDITION_KEYS_PER_QUERY]
                cursor = await conn.execute(
                    "SELECT rule, record_id, met, condition_values, commit_ts_ms "
                    "FROM event_condition WHERE (rule, record_id) IN (VALUES "
                    + ", ".join("(?, ?)" for _ in chunk) + ")",
                    [part for key in chunk for part in key])
                for row in await cursor.fetchall():
                    out[(row[0], row[1])] = StoredCondition(bool(row[2]), orjson.loads(row[3]),
                                                            int(row[4]))
        return out

    async def settle_decisions(
        self, token: str, *, ready: Mapping[str, dict[str, Any]], skipped: Sequence[str],
        dead: Mapping[str, tuple[str, str]], later: Mapping[str, tuple[str, float]],
        states: Mapping[tuple[str, str], StoredCondition], now: float,
        held: Mapping[str, str] | None = None, held_until: float = 0.0,
    ) -> None:
        """One transaction: condition states saved, rows made ready (with their item), deleted
        (not firing), dead (reason, error) or due again later (error, delay). A ready row
        named in `held` stays leased, to the token given, until `held_until`: the decide step
        hands it to a send loop in memory, with no lease of ready rows to read it back."""
        held = held or {}
        async with self._tx("settle_decisions") as conn:
            await conn.executemany(
                """INSERT INTO event_condition (rule, record_id, met, condition_values,
                    commit_ts_ms, updated_at) VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (rule, record_id) DO UPDATE SET met = excluded.met,
                    condition_values = excluded.condition_values,
                    commit_ts_ms = excluded.commit_ts_ms, updated_at = excluded.updated_at
                WHERE excluded.commit_ts_ms >= event_condition.commit_ts_ms""",
                [(rule, rid, int(s.met), orjson.dumps(s.values).decode(), s.commit_ts_ms, now)
                 for (rule, rid), s in states.items()])
            await conn.executemany(
                "UPDATE event_pending SET state = 'ready', payload = ?, next_attempt_at = ?, "
                "lease_token = ? WHERE event_id = ? AND lease_token = ?",
                [(orjson.dumps(item).decode(), held_until if eid in held else now,
                  held.get(eid), eid, token) for eid, item in ready.items()])
            if skipped:
                await conn.execute(DELETE_SKIPPED_SQL,
                                   (orjson.dumps(list(skipped)).decode(), token))
            await self._dead(conn, token, dead, now)
            await self._later(conn, token, later, now)

    async def settle_sent(
        self, token: str, *, sent: Sequence[str], dead: Mapping[str, tuple[str, str]],
        later: Mapping[str, tuple[str, float]], waiting: Mapping[str, tuple[str, float]],
        now: float,
    ) -> None:
        """After a trackBulk call: sent rows kept as `sent` (a replayed change finds them),
        refused ones dead, retried ones due later (`later` costs an attempt, `waiting` - an
        outage of Iterable - does not)."""
        async with self._tx("settle_sent") as conn:
            if sent:  # one statement for the batch: a third less than one per row
                await conn.execute(SETTLE_SENT_SQL,
                                   (now, orjson.dumps(list(sent)).decode(), token))
            await self._dead(conn, token, dead, now)
            await self._later(conn, token, later, now)
            await conn.executemany(
                "UPDATE event_pending SET next_attempt_at = ?, last_error = ?, "
                "lease_token = NULL WHERE event_id = ? AND lease_token = ?",
                [(now + delay, clean_error(err), eid, token)
                 for eid, (err, delay) in waiting.items()])

    async def _dead(self, conn: aiosqlite.Connection, token: str,
                    dead: Mapping[str, tuple[str, str]], now: float) -> None:
        await conn.executemany(
            "UPDATE event_pending SET state = 'dead', reason = ?, last_error = ?, sent_at = ?, "
            "lease_token = NULL WHERE event_id = ? AND lease_token = ?",
            [(reason, clean_error(err), now, eid, token) for eid, (reason, err) in dead.items()])

    async def _later(self, conn: aiosqlite.Connection, token: str,
                     later: Mapping[str, tuple[str, float]], now: float) -> None:
        await conn.executemany(
            "UPDATE event_pending SET attempts = attempts + 1, next_attempt_at = ?, "
            "last_error = ?, lease_token = NULL WHERE event_id = ? AND lease_token = ?",
            [(now + delay, clean_error(err), eid, token) for eid, (err, delay) in later.items()])

    async def release_events(self, token: str, now: float) -> None:
        """Make every row still leased with `token` due again (shutdown, a failed step)."""
        async with self._tx("release_events") as conn:
            await conn.execute("UPDATE event_pending SET lease_token = NULL, next_attempt_at = ? "
                               "WHERE lease_token = ?", (now, token))

    async def event_counts(self) -> dict[str, int]:
        """Rows per state (new, ready, sent, dead)."""
        async with self._read("event_counts") as conn:
            cursor = await conn.execute(
                "SELECT state, count(*) FROM event_pending GROUP BY state")
            return {str(s): int(n) for s, n in await cursor.fetchall()}

    async def next_event_due(self, state: str) -> float | None:
        """When the earliest row in `state` ('new' or 'ready') is due (None: none)."""
        async with self._read("next_event_due") as conn:
            cursor = await conn.execute("SELECT min(next_attempt_at) FROM event_pending "
                                        "WHERE state = ?", (state,))
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def dead_events(self, limit: int = 100) -> list[tuple[str, str, str]]:
        """(event id, reason, last error) of dead events, newest first."""
        async with self._read("dead_events") as conn:
            cursor = await conn.execute(
                "SELECT event_id, reason, coalesce(last_error, '') FROM event_pending "
                "WHERE state = 'dead' ORDER BY sent_at DESC LIMIT ?", (limit,))
            return [(str(a), str(b), str(c)) for a, b, c in await cursor.fetchall()]

    async def prune_sent_events(self, before: float) -> int:
        """Forget sent rows older than `before` (replays older than the CDC retention cannot
        come back)."""
        async with self._tx("prune_sent_events") as conn:
            cursor = await conn.execute(
                "DELETE FROM event_pending WHERE state = 'sent' AND sent_at < ?", (before,))
        return max(cursor.rowcount, 0)
