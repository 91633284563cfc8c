"""Custom events on PostgreSQL: the same semantics as streamsync/adapters/store/events.py
(docs/events.md §4); leases take rows `FOR UPDATE SKIP LOCKED`."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from streamsync.models import EventCandidate

from ..base import clean_error
from ..events import PendingEvent, StoredCondition
from .base import Connection, PgBase, rows_affected

INSERT_EVENTS_SQL = """
INSERT INTO event_pending (event_id, rule, object_name, record_id, change_type, commit_ts_ms,
    fires, touches, change_values, state, next_attempt_at, enqueued_at, seq)
SELECT u.i, u.r, u.o, u.d, u.c, u.t, u.f, u.h, u.v, 'new', $10::float8, $10::float8,
       nextval('event_pending_seq')
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],
            $7::boolean[], $8::boolean[], $9::text[])
     WITH ORDINALITY AS u(i, r, o, d, c, t, f, h, v, n)
ORDER BY u.n
ON CONFLICT (event_id) DO NOTHING
"""
# A picked row waits while an earlier undecided row of its record (attempts = 0: its
# condition state not saved yet) is not among the picked ones; a row locked by another
# worker's lease being taken right now is skipped by the pick but seen here as 'new'. The
# oldest rows come from the state index in seq order, each picked row's earlier undecided
# rows from the partial record index (one look-up a picked row: a subquery with LIMIT, which
# the planner keeps per row), and the rows are updated by their address (ctid, stable while
# locked): a lease costs the batch, not the backlog (schema.py _V16; the earlier statement
# sorted every due row by seq, and hashed the whole table to join the picked rows and the
# undecided rows of their records).
LEASE_NEW_SQL = """
WITH picked AS (
    SELECT ctid AS t, event_id, record_id, seq FROM event_pending
    WHERE state = 'new' AND next_attempt_at <= $3 ORDER BY state, seq LIMIT $4
    FOR UPDATE SKIP LOCKED)
UPDATE event_pending AS e SET lease_token = $1, next_attempt_at = $2
WHERE e.ctid = ANY(ARRAY(
    SELECT p.t FROM picked AS p WHERE (
        SELECT 1 FROM event_pending AS x
        WHERE x.record_id = p.record_id AND x.seq < p.seq AND x.state = 'new'
          AND x.attempts = 0 AND x.event_id NOT IN (SELECT event_id FROM picked)
        LIMIT 1) IS NULL))
RETURNING {returning}, e.seq
"""
LEASE_READY_SQL = """
WITH due AS (
    SELECT ctid FROM event_pending WHERE state = 'ready' AND next_attempt_at <= $3
    ORDER BY state, seq LIMIT $4 FOR UPDATE SKIP LOCKED)
UPDATE event_pending AS e SET lease_token = $1, next_attempt_at = $2
WHERE e.ctid = ANY(ARRAY(SELECT ctid FROM due))
RETURNING {returning}, e.seq
"""
_COLUMNS = ("event_id, rule, object_name, record_id, change_type, commit_ts_ms, fires, touches, "
            "change_values, payload, attempts, enqueued_at")


async def insert_events(conn: Connection, events: Sequence[EventCandidate], now: float) -> None:
    """Store candidates inside the caller's transaction (a stored id is ignored)."""
    if not events:
        return
    await conn.execute(
        INSERT_EVENTS_SQL, [e.event_id for e in events], [e.rule for e in events],
        [e.object_name for e in events], [e.record_id for e in events],
        [e.change_type for e in events], [e.commit_ts_ms for e in events],
        [e.fires for e in events], [e.touches_condition for e in events],
        [orjson.dumps(e.values).decode() for e in events], now)


def _pending(row: Any, token: str) -> PendingEvent:
    return PendingEvent(
        EventCandidate(row[0], row[1], row[2], row[3], row[4], int(row[5]), bool(row[6]),
                       orjson.loads(row[8]), bool(row[7])),
        orjson.loads(row[9]) if row[9] is not None else None, int(row[10]), float(row[11]),
        token)


class EventOps(PgBase):
    """Operations on event_pending and event_condition; times are passed in."""

    async def lease_events(self, state: str, limit: int, lease_s: float, now: float
                           ) -> list[PendingEvent]:
        """Up to `limit` due rows in `state` ('new' or 'ready'), in arrival order.

        A 'new' row is leased only when no earlier undecided row of its record lies outside
        this lease (leased by another worker, or locked by its lease right now): each
        record's candidates are decided in commit order by one worker at a time, however
        many workers share the store (docs/events.md §4)."""
        token = secrets.token_hex(8)
        returning = ', '.join('e.' + c.strip() for c in _COLUMNS.split(','))

        if state not in ("new", "ready"):
            raise ValueError(f"rows in state {state!r} are not leased")
        sql = (LEASE_NEW_SQL if state == "new" else LEASE_READY_SQL).format(returning=returning)

        async def body(conn: Connection) -> list[Any]:
            return list(await conn.fetch(sql, token, now + lease_s, now, limit))

        rows = await self._write("lease_events", body)
        return [_pending(r, token) for r in sorted(rows, key=lambda r: int(r[-1]))]

    async def conditions(self, keys: Sequence[tuple[str, str]]
                         ) -> dict[tuple[str, str], StoredCondition]:
        """The stored condition state of (rule, record id) pairs."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        async with self._read("conditions") as conn:
            rows = await conn.fetch(
                "SELECT c.rule, c.record_id, c.met, c.condition_values, c.commit_ts_ms "
                "FROM event_condition c JOIN unnest($1::text[], $2::text[]) AS u(r, d) "
                "ON c.rule = u.r AND c.record_id = u.d",
                [k[0] for k in unique], [k[1] for k in unique])
        return {(r[0], r[1]): StoredCondition(bool(r[2]), orjson.loads(r[3]), int(r[4]))
                for r in rows}

    async def settle_decisions(
        self, token: str, *, ready: Mapping[str, dict[str, Any]], skipped: Sequence[str],
        dead: Mapping[str, tuple[str, str]], later: Mapping[str, tuple[str, float]],
        states: Mapping[tuple[str, str], StoredCondition], now: float,
        held: Mapping[str, str] | None = None, held_until: float = 0.0,
    ) -> None:
        """See the SQLite `settle_decisions`."""
        held = held or {}

        async def body(conn: Connection) -> None:
            keys = sorted(states)
            if keys:
                await conn.execute(
                    """INSERT INTO event_condition AS c (rule, record_id, met, condition_values,
                        commit_ts_ms, updated_at)
                    SELECT u.r, u.d, u.m, u.v, u.t, $6::float8
                    FROM unnest($1::text[], $2::text[], $3::boolean[], $4::text[], $5::bigint[])
                        AS u(r, d, m, v, t)
                    ON CONFLICT (rule, record_id) DO UPDATE SET met = excluded.met,
                        condition_values = excluded.condition_values,
                        commit_ts_ms = excluded.commit_ts_ms, updated_at = excluded.updated_at
                    WHERE excluded.commit_ts_ms >= c.commit_ts_ms""",
                    [k[0] for k in keys], [k[1] for k in keys], [states[k].met for k in keys],
                    [orjson.dumps(states[k].values).decode() for k in keys],
                    [states[k].commit_ts_ms for k in keys], now)
            ids = sorted(ready)
            await conn.execute(
                "UPDATE event_pending AS e SET state = 'ready', payload = u.p, "
                "next_attempt_at = CASE WHEN u.k IS NULL THEN $4::float8 ELSE $5::float8 END, "
                "lease_token = u.k FROM unnest($1::text[], $2::text[], $3::text[]) "
                "AS u(i, p, k) WHERE e.event_id = u.i AND e.lease_token = $6",
                ids, [orjson.dumps(ready[i]).decode() for i in ids],
                [held.get(i) for i in ids], now, held_until, token)
            await conn.execute("DELETE FROM event_pending WHERE event_id = ANY($1::text[]) "
                               "AND lease_token = $2", sorted(skipped), token)
            await _dead(conn, token, dead, now)
            await _later(conn, token, later, now, attempt=True)

        await self._write("settle_decisions", body)

    async def settle_sent(
        self, token: str, *, sent: Sequence[str], dead: Mapping[str, tuple[str, str]],
        later: Mapping[str, tuple[str, float]], waiting: Mapping[str, tuple[str, float]],
        now: float,
    ) -> None:
        """See the SQLite `settle_sent`."""

        async def body(conn: Connection) -> None:
            await conn.execute(
                "UPDATE event_pending SET state = 'sent', sent_at = $2, lease_token = NULL, "
                "last_error = NULL WHERE event_id = ANY($1::text[]) AND lease_token = $3",
                sorted(sent), now, token)
            await _dead(conn, token, dead, now)
            await _later(conn, token, later, now, attempt=True)
            await _later(conn, token, waiting, now, attempt=False)

        await self._write("settle_sent", body)

    async def release_events(self, token: str, now: float) -> None:
        """Make every row still leased with `token` due again."""

        async def body(conn: Connection) -> None:
            await conn.execute("UPDATE event_pending SET lease_token = NULL, "
                               "next_attempt_at = $1 WHERE lease_token = $2", now, token)

        await self._write("release_events", body)

    async def event_counts(self) -> dict[str, int]:
        """Rows per state (new, ready, sent, dead)."""
        async with self._read("event_counts") as conn:
            rows = await conn.fetch("SELECT state, count(*) FROM event_pending GROUP BY state")
        return {str(r[0]): int(r[1]) for r in rows}

    async def next_event_due(self, state: str) -> float | None:
        """When the earliest row in `state` ('new' or 'ready') is due (None: none)."""
        async with self._read("next_event_due") as conn:
            due = await conn.fetchval("SELECT min(next_attempt_at) FROM event_pending "
                                      "WHERE state = $1", state)
        return None if due is None else float(due)

    async def dead_events(self, limit: int = 100) -> list[tuple[str, str, str]]:
        """(event id, reason, last error) of dead events, newest first."""
        async with self._read("dead_events") as conn:
            rows = await conn.fetch(
                "SELECT event_id, reason, coalesce(last_error, '') FROM event_pending "
                "WHERE state = 'dead' ORDER BY sent_at DESC LIMIT $1", limit)
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    async def prune_sent_events(self, before: float) -> int:
        """Forget sent rows older than `before`."""

        async def body(conn: Connection) -> int:
            return rows_affected(await conn.execute(
                "DELETE FROM event_pending WHERE state = 'sent' AND sent_at < $1", before))

        return await self._write("prune_sent_events", body)


async def _dead(conn: Connection, token: str, dead: Mapping[str, tuple[str, str]],
                now: float) -> None:
    ids = sorted(dead)
    await conn.execute(
        "UPDATE event_pending AS e SET state = 'dead', reason = u.r, last_error = u.m, "
        "sent_at = $4, lease_token = NULL FROM unnest($1::text[], $2::text[], $3::text[]) "
        "AS u(i, r, m) WHERE e.event_id = u.i AND e.lease_token = $5",
        ids, [dead[i][0] for i in ids], [clean_error(dead[i][1]) for i in ids], now, token)


async def _later(conn: Connection, token: str, later: Mapping[str, tuple[str, float]],
                 now: float, *, attempt: bool) -> None:
    ids = sorted(later)
    await conn.execute(
        f"UPDATE event_pending AS e SET attempts = e.attempts + {1 if attempt else 0}, "
        "next_attempt_at = $4 + u.d, last_error = u.m, lease_token = NULL "
        "FROM unnest($1::text[], $2::text[], $3::float8[]) AS u(i, m, d) "
        "WHERE e.event_id = u.i AND e.lease_token = $5",
        ids, [clean_error(later[i][0]) for i in ids], [later[i][1] for i in ids], now, token)
