"""Events of `backfill --events` (docs/events.md §7): judged from records' current state, they
enter `event_pending` as ready rows (change type BACKFILL) and seed `event_condition`, in one
transaction, unless the store already knows the moment (a CDC decision, an earlier backfill)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from .base import StoreBase, clean_error
from .events import _COLUMNS, PendingEvent, _pending

BACKFILL_CHANGE: Final = "BACKFILL"
KEYS_PER_QUERY: Final = 400  # 800 parameters, under SQLite's limit


@dataclass(frozen=True, slots=True)
class BackfillEvent:
    """One qualifying (rule, record) as a backfill judged it on a record version.

    `version_ms`: the version's time (SystemModstamp), the seeded condition state's time;
    `values`: the condition fields' values seeded (lower-case names); `payload`: the trackBulk
    item, or None with `dead` (reason, error) when no item can be built (no profile)."""

    event_id: str
    rule: str
    object_name: str
    record_id: str
    version_ms: int
    has_condition: bool
    values: dict[str, Any] = field(default_factory=dict)
    payload: dict[str, Any] | None = None
    dead: tuple[str, str] | None = None


@dataclass
class Admitted:
    """What `add_backfill_events` did, by event id."""

    added: list[str] = field(default_factory=list)  # ready (or dead) rows stored now
    known: list[str] = field(default_factory=list)  # the store knows the moment already
    pending: list[str] = field(default_factory=list)  # a CDC change of it is being decided


def admit(event: BackfillEvent, condition: tuple[bool, int] | None,
          row_states: Iterable[str]) -> str:
    """'added', 'known' or 'pending' for one judged event (docs/events.md §7): with a
    condition, a stored state that holds, or one newer than the version judged, knows it; a
    rule without one knows it from any event row of (rule, record); an undecided CDC row
    leaves it to the real-time decision."""
    states = set(row_states)
    if "new" in states:
        return "pending"
    if event.has_condition:
        if condition is not None and (condition[0] or condition[1] > event.version_ms):
            return "known"
    elif states:
        return "known"
    return "added"


def place(events: Sequence[BackfillEvent], conditions: Mapping[tuple[str, str], tuple[bool, int]],
          rows: Iterable[Sequence[Any]]) -> tuple[Admitted, list[BackfillEvent]]:
    """`admit` for each event, given the stored conditions and the (rule, record id, state,
    event id) of the stored rows of their records; an id stored already is known."""
    states: dict[tuple[str, str], set[str]] = {}
    stored: set[str] = set()
    for rule, record_id, state, event_id in rows:
        states.setdefault((str(rule), str(record_id)), set()).add(str(state))
        stored.add(str(event_id))
    out = Admitted()
    taken: list[BackfillEvent] = []
    for e in events:
        key = (e.rule, e.record_id)
        verdict = "known" if e.event_id in stored else \
            admit(e, conditions.get(key), states.get(key, ()))
        getattr(out, verdict).append(e.event_id)
        if verdict == "added":
            taken.append(e)
    return out, taken


class EventBackfillOps(StoreBase):
    """The backfill's event rows on SQLite."""

    async def add_backfill_events(self, events: Sequence[BackfillEvent], now: float
                                  ) -> Admitted:
        """Store the events the store does not know yet (see `admit`): a ready row (or a dead
        one) each, and for a qualifying record its condition state seeded as held at the
        version judged, all in one transaction."""
        keys = list(dict.fromkeys((e.rule, e.record_id) for e in events))
        async with self._tx("add_backfill_events") as conn:
            conditions: dict[tuple[str, str], tuple[bool, int]] = {}
            rows: list[Sequence[Any]] = []
            for start in range(0, len(keys), KEYS_PER_QUERY):
                chunk = keys[start:start + KEYS_PER_QUERY]
                values = ", ".join("(?, ?)" for _ in chunk)
                params = [part for key in chunk for part in key]
                cursor = await conn.execute(
                    "SELECT rule, record_id, met, commit_ts_ms FROM event_condition "
                    f"WHERE (rule, record_id) IN (VALUES {values})", params)
                for r in await cursor.fetchall():
                    conditions[(r[0], r[1])] = (bool(r[2]), int(r[3]))
                cursor = await conn.execute(
                    "SELECT rule, record_id, state, event_id FROM event_pending "
                    f"WHERE (rule, record_id) IN (VALUES {values})", params)
                rows.extend(await cursor.fetchall())
            out, taken = place(events, conditions, rows)
            await conn.executemany(
                """INSERT OR IGNORE INTO event_pending (event_id, rule, object_name, record_id,
                    change_type, commit_ts_ms, fires, touches, change_values, state, payload,
                    next_attempt_at, enqueued_at, reason, last_error, sent_at)
                VALUES (?, ?, ?, ?, ?, ?, 1, 0, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [(e.event_id, e.rule, e.object_name, e.record_id, BACKFILL_CHANGE, e.version_ms,
                  orjson.dumps(e.values).decode(), "ready" if e.dead is None else "dead",
                  None if e.payload is None else orjson.dumps(e.payload).decode(), now, now,
                  e.dead[0] if e.dead else None, clean_error(e.dead[1]) if e.dead else None,
                  now if e.dead else None) for e in taken])
            await conn.executemany(
                """INSERT INTO event_condition (rule, record_id, met, condition_values,
                    commit_ts_ms, updated_at) VALUES (?, ?, 1, ?, ?, ?)
                ON CONFLICT (rule, record_id) DO UPDATE SET met = 1,
                    condition_values = excluded.condition_values,
                    commit_ts_ms = excluded.commit_ts_ms, updated_at = excluded.updated_at
                WHERE excluded.commit_ts_ms >= event_condition.commit_ts_ms""",
                [(e.rule, e.record_id, orjson.dumps(e.values).decode(), e.version_ms, now)
                 for e in taken if e.dead is None])
        return out

    async def lease_backfill_events(self, limit: int, lease_s: float, now: float
                                    ) -> list[PendingEvent]:
        """Up to `limit` due ready rows of backfills, in arrival order."""
        token = secrets.token_hex(8)
        async with self._tx("lease_backfill_events") as conn:
            cursor = await conn.execute(
                f"""UPDATE event_pending SET lease_token = ?, next_attempt_at = ?
                WHERE rowid IN (SELECT rowid FROM event_pending WHERE state = 'ready'
                                AND change_type = ? AND next_attempt_at <= ?
                                ORDER BY rowid LIMIT ?)
                RETURNING {_COLUMNS}, rowid""", (token, now + lease_s, BACKFILL_CHANGE, now,
                                                  limit))
            rows = sorted(await cursor.fetchall(), key=lambda r: int(r[-1]))
        return [_pending(r, token) for r in rows]

    async def backfill_events_waiting(self, rules: Sequence[str]) -> tuple[int, float | None]:
        """Ready backfill rows of `rules` not sent yet, and when the earliest is due (0 while
        one is leased: it is being sent)."""
        marks = ", ".join("?" for _ in rules)
        async with self._read("backfill_events_waiting") as conn:
            cursor = await conn.execute(
                "SELECT count(*), min(CASE WHEN lease_token IS NULL THEN next_attempt_at ELSE 0 "
                "END) FROM event_pending WHERE state = 'ready' "
                f"AND change_type = ? AND rule IN ({marks})", (BACKFILL_CHANGE, *rules))
            row = await cursor.fetchone()
        if row is None or not row[0]:
            return 0, None
        return int(row[0]), float(row[1])
