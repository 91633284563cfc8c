"""Joint backfills: several processes work on one run. Windows are claimed under a lease on the
store's clock (exclusive across processes; an expired one is taken over from the window's
checkpoint), checkpoints are fenced by the lease, one participant closes the run, and each
participant's counts are saved with its checkpoints so the summary covers the whole run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite
import orjson

from streamsync.errors import WindowTaken

from .backfill import CHECKPOINT_COLUMNS, RUN_COLUMNS, WINDOW_INSERT_SQL, _checkpoint, _run
from .base import StoreBase
from .budget import store_now
from .types import BackfillRun, BackfillWindow, Checkpoint

PARTICIPANT_COLUMNS = "participant_id, pid, host, joined_at, heartbeat_at, left_at, totals"


@dataclass(frozen=True, slots=True)
class Participant:
    """A process working on a backfill run."""

    participant_id: str
    pid: int
    host: str


@dataclass(frozen=True, slots=True)
class ParticipantState:
    """A participant as the store knows it: heartbeat age on the store's clock, whether it left
    (finished or stopped cleanly), and its counts so far."""

    participant: Participant
    joined_at: float
    heartbeat_age_s: float
    left: bool
    totals: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class WindowClaim:
    """A claimed window (None when none is free) and the run's windows not done yet."""

    checkpoint: Checkpoint | None
    unfinished: int
    taken_over: bool = False


def _key(run_id: str, window: BackfillWindow) -> tuple[str, str, str, str]:
    return (run_id, window.object_name, window.window_start, window.window_end)


def _totals(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


async def _save_totals(conn: aiosqlite.Connection, run_id: str, participant_id: str,
                       totals: Mapping[str, Any] | None, now: float) -> None:
    if totals is None:
        await conn.execute(
            "UPDATE backfill_participant SET heartbeat_at = ? WHERE run_id = ? AND "
            "participant_id = ?", (now, run_id, participant_id))
    else:
        await conn.execute(
            "UPDATE backfill_participant SET heartbeat_at = ?, totals = ? WHERE run_id = ? AND "
            "participant_id = ?",
            (now, orjson.dumps(dict(totals)).decode(), run_id, participant_id))


class BackfillLeaseOps(StoreBase):
    """`backfill_participant`, and the lease columns of `backfill_checkpoint`/`backfill_run`."""

    async def start_or_find_run(
        self, run_id: str, windows: Sequence[BackfillWindow], options: Mapping[str, Any],
        now: float, objects: Sequence[str] = (),
    ) -> tuple[BackfillRun, bool]:
        """In one transaction: the unfinished run whose `options["scope"]` equals this one's
        (False), or a new run `run_id` with its windows (True). Two processes starting the same
        backfill at once therefore work on one run."""
        encoded = orjson.dumps(dict(options), default=str).decode()
        scope = orjson.loads(encoded).get("scope")
        async with self._tx("start_or_find_run") as conn:
            async with conn.execute(
                f"SELECT {RUN_COLUMNS} FROM backfill_run WHERE finished_at IS NULL "
                "ORDER BY started_at DESC, rowid DESC"
            ) as cursor:
                for row in await cursor.fetchall():
                    run = _run(row)
                    if dict(run.options).get("scope") == scope:
                        return run, False
            await conn.execute(
                "INSERT INTO backfill_run (run_id, started_at, options) VALUES (?, ?, ?)",
                (run_id, now, encoded))
            await conn.executemany(
                WINDOW_INSERT_SQL, [(*_key(run_id, w), now, now) for w in windows])
            await conn.executemany(
                "INSERT OR IGNORE INTO backfill_run_object (run_id, object_name) VALUES (?, ?)",
                [(run_id, name) for name in objects])
        return BackfillRun(run_id, now, None, orjson.loads(encoded)), True

    async def join_run(self, run_id: str, me: Participant) -> None:
        """Register this process as a participant of `run_id` (heartbeat now)."""
        async with self._tx("join_run") as conn:
            now = await store_now(conn)
            await conn.execute(
                "INSERT INTO backfill_participant (run_id, participant_id, pid, host, joined_at,"
                " heartbeat_at) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, me.participant_id, me.pid, me.host, now, now))

    async def run_participants(self, run_id: str) -> list[ParticipantState]:
        """Every process that worked on `run_id`, in the order they joined."""
        async with self._read("run_participants") as conn:
            now = await store_now(conn)
            async with conn.execute(
                f"SELECT {PARTICIPANT_COLUMNS} FROM backfill_participant WHERE run_id = ? "
                "ORDER BY joined_at, participant_id", (run_id,)
            ) as cursor:
                rows = await cursor.fetchall()
        return [ParticipantState(Participant(str(r[0]), int(r[1]), str(r[2])), float(r[3]),
                                 max(0.0, now - float(r[4])), r[5] is not None, _totals(r[6]))
                for r in rows]

    async def claim_window(self, run_id: str, participant_id: str,
                           lease_s: float) -> WindowClaim:
        """Lease the first window of the run that is not done and not leased (or whose lease
        expired) to `participant_id` for `lease_s` seconds of the store's clock."""
        async with self._tx("claim_window") as conn:
            now = await store_now(conn)
            async with conn.execute(
                f"SELECT {CHECKPOINT_COLUMNS}, lease_owner FROM backfill_checkpoint "
                "WHERE run_id = ? AND done = 0 AND (lease_owner IS NULL OR lease_expires_at < ?)"
                " ORDER BY object_name, window_start, window_end LIMIT 1", (run_id, now)
            ) as cursor:
                row = await cursor.fetchone()
            async with conn.execute(
                "SELECT count(*) FROM backfill_checkpoint WHERE run_id = ? AND done = 0",
                (run_id,)
            ) as cursor:
                counted = await cursor.fetchone()
            unfinished = int(counted[0]) if counted is not None else 0
            if row is None:
                return WindowClaim(None, unfinished)
            checkpoint = _checkpoint(row)
            await conn.execute(
                "UPDATE backfill_checkpoint SET lease_owner = ?, lease_expires_at = ? "
                "WHERE run_id = ? AND object_name = ? AND window_start = ? AND window_end = ?",
                (participant_id, now + lease_s, *_key(run_id, checkpoint.window)))
        taken_over = row[-1] is not None and row[-1] != participant_id
        return WindowClaim(checkpoint, unfinished, taken_over)

    async def renew_leases(self, run_id: str, participant_id: str, lease_s: float,
                           totals: Mapping[str, Any] | None = None) -> int:
        """Extend every window lease (and the closing lease) `participant_id` holds, beat its
        heart and save its counts; returns how many windows it still holds."""
        async with self._tx("renew_leases") as conn:
            now = await store_now(conn)
            cursor = await conn.execute(
                "UPDATE backfill_checkpoint SET lease_expires_at = ? WHERE run_id = ? AND "
                "lease_owner = ? AND done = 0", (now + lease_s, run_id, participant_id))
            held = cursor.rowcount
            await conn.execute(
                "UPDATE backfill_run SET close_expires_at = ? WHERE run_id = ? AND "
                "close_owner = ? AND finished_at IS NULL", (now + lease_s, run_id, participant_id))
            await _save_totals(conn, run_id, participant_id, totals, now)
        return held

    async def save_leased_checkpoint(
        self, run_id: str, window: BackfillWindow, participant_id: str, last_id: str | None,
        records_done: int, lease_s: float, totals: Mapping[str, Any] | None = None,
        *, done: bool = False,
    ) -> None:
        """`save_checkpoint` (or `finish_window` when `done`) fenced by the lease: only its
        holder may move the window on (WindowTaken otherwise); renews the lease and saves the
        holder's counts in the same transaction."""
        async with self._tx("save_leased_checkpoint") as conn:
            now = await store_now(conn)
            cursor = await conn.execute(
                "UPDATE backfill_checkpoint SET last_id = coalesce(?, last_id), records_done = ?,"
                " updated_at = ?, lease_expires_at = ?, done = ?, finished_at = ?, "
                "lease_owner = CASE WHEN ? THEN NULL ELSE lease_owner END "
                "WHERE run_id = ? AND object_name = ? AND window_start = ? AND window_end = ? "
                "AND lease_owner = ? AND done = 0",
                (last_id, int(records_done), now, now + lease_s, int(done),
                 now if done else None, int(done), *_key(run_id, window), participant_id))
            if cursor.rowcount == 0:
                raise WindowTaken(
                    f"backfill run {run_id}: window {window.object_name} "
                    f"{window.window_start}..{window.window_end} is no longer leased to this "
                    "process (its lease expired and another process took it over)")
            await _save_totals(conn, run_id, participant_id, totals, now)

    async def release_participant(self, run_id: str, participant_id: str,
                                  totals: Mapping[str, Any] | None = None) -> None:
        """`participant_id` leaves: its windows and closing lease are free at once."""
        async with self._tx("release_participant") as conn:
            now = await store_now(conn)
            await conn.execute(
                "UPDATE backfill_checkpoint SET lease_owner = NULL, lease_expires_at = NULL "
                "WHERE run_id = ? AND lease_owner = ?", (run_id, participant_id))
            await conn.execute(
                "UPDATE backfill_run SET close_owner = NULL, close_expires_at = NULL "
                "WHERE run_id = ? AND close_owner = ?", (run_id, participant_id))
            await _save_totals(conn, run_id, participant_id, totals, now)
            await conn.execute(
                "UPDATE backfill_participant SET left_at = coalesce(left_at, ?) "
                "WHERE run_id = ? AND participant_id = ?", (now, run_id, participant_id))

    async def claim_run_close(self, run_id: str, participant_id: str, lease_s: float) -> bool:
        """Become the participant that closes the run (catch-up, then `finish_run_as`), unless
        another one holds that lease; False also when the run is finished."""
        async with self._tx("claim_run_close") as conn:
            now = await store_now(conn)
            cursor = await conn.execute(
                "UPDATE backfill_run SET close_owner = ?, close_expires_at = ? WHERE run_id = ? "
                "AND finished_at IS NULL AND (close_owner IS NULL OR close_owner = ? OR "
                "close_expires_at < ?)", (participant_id, now + lease_s, run_id, participant_id,
                                          now))
            return cursor.rowcount == 1

    async def finish_run_as(self, run_id: str, participant_id: str,
                            totals: Mapping[str, Any], now: float) -> None:
        """Mark the run finished and save the closer's counts in one transaction."""
        async with self._tx("finish_run_as") as conn:
            cursor = await conn.execute(
                "UPDATE backfill_run SET finished_at = ?, close_owner = NULL, "
                "close_expires_at = NULL WHERE run_id = ?", (now, run_id))
            if cursor.rowcount == 0:
                raise ValueError(f"no backfill run {run_id!r}")
            await _save_totals(conn, run_id, participant_id, totals, await store_now(conn))
