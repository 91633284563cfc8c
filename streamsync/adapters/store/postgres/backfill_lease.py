"""Joint backfills on PostgreSQL (see streamsync/adapters/store/backfill_lease.py for the
semantics). A window is claimed with `FOR UPDATE SKIP LOCKED`, so processes claiming at once
get different windows; lease times are the database server's clock; a new run of a scope is
created under a transaction-level advisory lock, so two processes starting the same backfill
at once create it once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from streamsync.errors import WindowTaken

from ..backfill import _checkpoint, _run
from ..backfill_lease import Participant, ParticipantState, WindowClaim, _totals
from ..types import BackfillRun, BackfillWindow
from .backfill import CHECKPOINT_COLUMNS, RUN_COLUMNS, _insert_windows, _key
from .base import Connection, PgBase, rows_affected
from .budget import store_now

C = 'COLLATE "C"'
PARTICIPANT_COLUMNS: Final = (
    "participant_id, pid, host, joined_at, heartbeat_at, left_at, totals")
RUN_LOCK: Final = "backfill_run:start"


async def _save_totals(conn: Connection, run_id: str, participant_id: str,
                       totals: Mapping[str, Any] | None, now: float) -> None:
    if totals is None:
        await conn.execute(
            "UPDATE backfill_participant SET heartbeat_at = $1 WHERE run_id = $2 AND "
            "participant_id = $3", now, run_id, participant_id)
    else:
        await conn.execute(
            "UPDATE backfill_participant SET heartbeat_at = $1, totals = $2 WHERE run_id = $3 "
            "AND participant_id = $4", now, orjson.dumps(dict(totals)).decode(), run_id,
            participant_id)


class BackfillLeaseOps(PgBase):
    """`backfill_participant` and the lease columns of `backfill_checkpoint`/`backfill_run`."""

    async def start_or_find_run(
        self, run_id: str, windows: Sequence[BackfillWindow], options: Mapping[str, Any],
        now: float, objects: Sequence[str] = (),
    ) -> tuple[BackfillRun, bool]:
        encoded = orjson.dumps(dict(options), default=str).decode()
        scope = orjson.loads(encoded).get("scope")

        async def body(conn: Connection) -> tuple[BackfillRun, bool]:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                               RUN_LOCK)
            for row in await conn.fetch(
                    f"SELECT {RUN_COLUMNS} FROM backfill_run WHERE finished_at IS NULL "
                    "ORDER BY started_at DESC, seq DESC"):
                run = _run(tuple(row))
                if dict(run.options).get("scope") == scope:
                    return run, False
            await conn.execute(
                "INSERT INTO backfill_run (run_id, started_at, options) VALUES ($1, $2, $3)",
                run_id, now, encoded)
            await _insert_windows(conn, run_id, windows, now)
            names = sorted(set(objects))
            if names:
                await conn.execute(
                    "INSERT INTO backfill_run_object (run_id, object_name) "
                    "SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING", run_id, names)
            return BackfillRun(run_id, now, None, orjson.loads(encoded)), True

        return await self._write("start_or_find_run", body)

    async def join_run(self, run_id: str, me: Participant) -> None:
        async def body(conn: Connection) -> None:
            now = await store_now(conn)
            await conn.execute(
                "INSERT INTO backfill_participant (run_id, participant_id, pid, host, joined_at,"
                " heartbeat_at) VALUES ($1, $2, $3, $4, $5, $5)",
                run_id, me.participant_id, me.pid, me.host, now)

        await self._write("join_run", body)

    async def run_participants(self, run_id: str) -> list[ParticipantState]:
        async with self._read("run_participants") as conn:
            now = await store_now(conn)
            rows = await conn.fetch(
                f"SELECT {PARTICIPANT_COLUMNS} FROM backfill_participant WHERE run_id = $1 "
                f"ORDER BY joined_at, participant_id {C}", run_id)
        return [ParticipantState(Participant(str(r[0]), int(r[1]), str(r[2])), float(r[3]),
                                 max(0.0, now - float(r[4])), r[5] is not None, _totals(r[6]))
                for r in rows]

    async def claim_window(self, run_id: str, participant_id: str,
                           lease_s: float) -> WindowClaim:
        async def body(conn: Connection) -> WindowClaim:
            now = await store_now(conn)
            row = await conn.fetchrow(
                f"SELECT {CHECKPOINT_COLUMNS}, lease_owner FROM backfill_checkpoint "
                "WHERE run_id = $1 AND NOT done AND (lease_owner IS NULL OR "
                f"lease_expires_at < $2) ORDER BY object_name {C}, window_start {C}, "
                f"window_end {C} LIMIT 1 FOR UPDATE SKIP LOCKED", run_id, now)
            unfinished = int(await conn.fetchval(
                "SELECT count(*) FROM backfill_checkpoint WHERE run_id = $1 AND NOT done",
                run_id))
            if row is None:
                return WindowClaim(None, unfinished)
            checkpoint = _checkpoint(tuple(row)[:-1])
            await conn.execute(
                "UPDATE backfill_checkpoint SET lease_owner = $1, lease_expires_at = $2 "
                "WHERE run_id = $3 AND object_name = $4 AND window_start = $5 AND "
                "window_end = $6", participant_id, now + lease_s,
                *_key(run_id, checkpoint.window))
            previous = row["lease_owner"]
            return WindowClaim(checkpoint, unfinished,
                               previous is not None and previous != participant_id)

        return await self._write("claim_window", body)

    async def renew_leases(self, run_id: str, participant_id: str, lease_s: float,
                           totals: Mapping[str, Any] | None = None) -> int:
        async def body(conn: Connection) -> int:
            now = await store_now(conn)
            status = await conn.execute(
                "UPDATE backfill_checkpoint SET lease_expires_at = $1 WHERE run_id = $2 AND "
                "lease_owner = $3 AND NOT done", now + lease_s, run_id, participant_id)
            await conn.execute(
                "UPDATE backfill_run SET close_expires_at = $1 WHERE run_id = $2 AND "
                "close_owner = $3 AND finished_at IS NULL", now + lease_s, run_id,
                participant_id)
            await _save_totals(conn, run_id, participant_id, totals, now)
            return rows_affected(status)

        return await self._write("renew_leases", body)

    async def save_leased_checkpoint(
        self, run_id: str, window: BackfillWindow, participant_id: str, last_id: str | None,
        records_done: int, lease_s: float, totals: Mapping[str, Any] | None = None,
        *, done: bool = False,
    ) -> None:
        async def body(conn: Connection) -> None:
            now = await store_now(conn)
            status = await conn.execute(
                "UPDATE backfill_checkpoint SET last_id = coalesce($1, last_id), "
                "records_done = $2, updated_at = $3::double precision, lease_expires_at = $4, "
                "done = $5::boolean, "
                "finished_at = CASE WHEN $5::boolean THEN $3::double precision END, "
                "lease_owner = CASE WHEN $5::boolean THEN NULL ELSE lease_owner END "
                "WHERE run_id = $6 AND object_name = $7 AND window_start = $8 AND "
                "window_end = $9 AND lease_owner = $10 AND NOT done",
                last_id, int(records_done), now, now + lease_s, done, *_key(run_id, window),
                participant_id)
            if rows_affected(status) == 0:
                raise WindowTaken(
                    f"backfill run {run_id}: window {window.object_name} "
                    f"{window.window_start}..{window.window_end} is no longer leased to this "
                    "process (its lease expired and another process took it over)")
            await _save_totals(conn, run_id, participant_id, totals, now)

        await self._write("save_leased_checkpoint", body)

    async def release_participant(self, run_id: str, participant_id: str,
                                  totals: Mapping[str, Any] | None = None) -> None:
        async def body(conn: Connection) -> None:
            now = await store_now(conn)
            await conn.execute(
                "UPDATE backfill_checkpoint SET lease_owner = NULL, lease_expires_at = NULL "
                "WHERE run_id = $1 AND lease_owner = $2", run_id, participant_id)
            await conn.execute(
                "UPDATE backfill_run SET close_owner = NULL, close_expires_at = NULL "
                "WHERE run_id = $1 AND close_owner = $2", run_id, participant_id)
            await _save_totals(conn, run_id, participant_id, totals, now)
            await conn.execute(
                "UPDATE backfill_participant SET left_at = coalesce(left_at, $1) "
                "WHERE run_id = $2 AND participant_id = $3", now, run_id, participant_id)

        await self._write("release_participant", body)

    async def claim_run_close(self, run_id: str, participant_id: str, lease_s: float) -> bool:
        async def body(conn: Connection) -> bool:
            now = await store_now(conn)
            status = await conn.execute(
                "UPDATE backfill_run SET close_owner = $1, close_expires_at = $2 "
                "WHERE run_id = $3 AND finished_at IS NULL AND (close_owner IS NULL OR "
                "close_owner = $1 OR close_expires_at < $4)",
                participant_id, now + lease_s, run_id, now)
            return rows_affected(status) == 1

        return await self._write("claim_run_close", body)

    async def finish_run_as(self, run_id: str, participant_id: str,
                            totals: Mapping[str, Any], now: float) -> None:
        async def body(conn: Connection) -> None:
            status = await conn.execute(
                "UPDATE backfill_run SET finished_at = $1, close_owner = NULL, "
                "close_expires_at = NULL WHERE run_id = $2", now, run_id)
            if rows_affected(status) == 0:
                raise ValueError(f"no backfill run {run_id!r}")
            await _save_totals(conn, run_id, participant_id, totals, await store_now(conn))

        await self._write("finish_run_as", body)
