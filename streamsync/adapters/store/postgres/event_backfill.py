"""The events of `backfill --events` on PostgreSQL: the same semantics as
streamsync/adapters/store/event_backfill.py (docs/events.md §7)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import orjson

from ..base import clean_error
from ..event_backfill import BACKFILL_CHANGE, Admitted, BackfillEvent, place
from ..events import PendingEvent
from .base import Connection, PgBase
from .events import _COLUMNS, _pending


class EventBackfillOps(PgBase):
    """The backfill's event rows on PostgreSQL."""

    async def add_backfill_events(self, events: Sequence[BackfillEvent], now: float
                                  ) -> Admitted:
        """See the SQLite `add_backfill_events`; the stored condition rows of the events are
        locked until the transaction ends, so a decision of the same records waits."""
        keys = list(dict.fromkeys((e.rule, e.record_id) for e in events))
        rules, records = [k[0] for k in keys], [k[1] for k in keys]

        async def body(conn: Connection) -> Admitted:
            found = await conn.fetch(
                "SELECT c.rule, c.record_id, c.met, c.commit_ts_ms FROM event_condition c "
                "JOIN unnest($1::text[], $2::text[]) AS u(r, d) "
                "ON c.rule = u.r AND c.record_id = u.d ORDER BY c.rule, c.record_id "
                "FOR UPDATE OF c", rules, records)
            conditions = {(r[0], r[1]): (bool(r[2]), int(r[3])) for r in found}
            rows = await conn.fetch(
                "SELECT e.rule, e.record_id, e.state, e.event_id FROM event_pending e "
                "JOIN unnest($1::text[], $2::text[]) AS u(r, d) "
                "ON e.rule = u.r AND e.record_id = u.d", rules, records)
            out, taken = place(events, conditions, [tuple(r) for r in rows])
            if taken:
                await conn.execute(
                    """INSERT INTO event_pending (event_id, rule, object_name, record_id,
                        change_type, commit_ts_ms, fires, touches, change_values, state,
                        payload, next_attempt_at, enqueued_at, reason, last_error, sent_at, seq)
                    SELECT u.i, u.r, u.o, u.d, $13, u.t, true, false, u.v, u.s, u.p, $14::float8,
                        $14::float8, u.why, u.err, u.at, nextval('event_pending_seq')
                    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                                $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                                $11::float8[], $12::int[])
                        AS u(i, r, o, d, t, v, s, p, why, err, at, n)
                    ORDER BY u.n
                    ON CONFLICT (event_id) DO NOTHING""",
                    [e.event_id for e in taken], [e.rule for e in taken],
                    [e.object_name for e in taken], [e.record_id for e in taken],
                    [e.version_ms for e in taken],
                    [orjson.dumps(e.values).decode() for e in taken],
                    ["ready" if e.dead is None else "dead" for e in taken],
                    [None if e.payload is None else orjson.dumps(e.payload).decode()
                     for e in taken],
                    [e.dead[0] if e.dead else None for e in taken],
                    [clean_error(e.dead[1]) if e.dead else None for e in taken],
                    [now if e.dead else None for e in taken], list(range(len(taken))),
                    BACKFILL_CHANGE, now)
            seeded = sorted((e for e in taken if e.dead is None),
                            key=lambda e: (e.rule, e.record_id))
            if seeded:
                await conn.execute(
                    """INSERT INTO event_condition AS c (rule, record_id, met, condition_values,
                        commit_ts_ms, updated_at)
                    SELECT u.r, u.d, true, u.v, u.t, $5::float8
                    FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
                        AS u(r, d, v, t)
                    ON CONFLICT (rule, record_id) DO UPDATE SET met = true,
                        condition_values = excluded.condition_values,
                        commit_ts_ms = excluded.commit_ts_ms, updated_at = excluded.updated_at
                    WHERE excluded.commit_ts_ms >= c.commit_ts_ms""",
                    [e.rule for e in seeded], [e.record_id for e in seeded],
                    [orjson.dumps(e.values).decode() for e in seeded],
                    [e.version_ms for e in seeded], now)
            return out

        return await self._write("add_backfill_events", body)

    async def lease_backfill_events(self, limit: int, lease_s: float, now: float
                                    ) -> list[PendingEvent]:
        """See the SQLite `lease_backfill_events`."""
        token = secrets.token_hex(8)
        returning = ", ".join("e." + c.strip() for c in _COLUMNS.split(","))

        async def body(conn: Connection) -> list[Any]:
            return list(await conn.fetch(
                f"""UPDATE event_pending AS e SET lease_token = $1, next_attempt_at = $2
                FROM (SELECT event_id FROM event_pending WHERE state = 'ready'
                      AND change_type = $3 AND next_attempt_at <= $4 ORDER BY seq LIMIT $5
                      FOR UPDATE SKIP LOCKED) AS due
                WHERE e.event_id = due.event_id
                RETURNING {returning}, e.seq""", token, now + lease_s, BACKFILL_CHANGE, now,
                limit))

        rows = await self._write("lease_backfill_events", body)
        return [_pending(r, token) for r in sorted(rows, key=lambda r: int(r[-1]))]

    async def backfill_events_waiting(self, rules: Sequence[str]) -> tuple[int, float | None]:
        """See the SQLite `backfill_events_waiting`."""
        async with self._read("backfill_events_waiting") as conn:
            row = await conn.fetchrow(
                "SELECT count(*), min(CASE WHEN lease_token IS NULL THEN next_attempt_at ELSE 0 "
                "END) FROM event_pending WHERE state = 'ready' "
                "AND change_type = $1 AND rule = ANY($2::text[])", BACKFILL_CHANGE, list(rules))
        if row is None or not row[0]:
            return 0, None
        return int(row[0]), float(row[1])
