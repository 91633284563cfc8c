"""Backfill runs and per-window checkpoints on PostgreSQL (see
streamsync/adapters/store/backfill.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ..backfill import _checkpoint, _run
from ..types import BackfillRun, BackfillWindow, Checkpoint
from .base import Connection, PgBase, rows_affected

CHECKPOINT_COLUMNS = (
    "run_id, object_name, window_start, window_end, last_id, records_done, done, started_at, "
    "updated_at, finished_at"
)
RUN_COLUMNS = "run_id, started_at, finished_at, options"
C = 'COLLATE "C"'

_WINDOWS_INSERT = """
INSERT INTO backfill_checkpoint (run_id, object_name, window_start, window_end, started_at,
                                 updated_at)
SELECT $1, u.o, u.s, u.e, $5, $5 FROM unnest($2::text[], $3::text[], $4::text[]) AS u(o, s, e)
ON CONFLICT (run_id, object_name, window_start, window_end) DO NOTHING
"""


async def _insert_windows(conn: Connection, run_id: str, windows: Sequence[BackfillWindow],
                          now: float) -> None:
    keys = sorted({(w.object_name, w.window_start, w.window_end) for w in windows})
    if keys:
        await conn.execute(_WINDOWS_INSERT, run_id, [k[0] for k in keys], [k[1] for k in keys],
                           [k[2] for k in keys], now)


def _key(run_id: str, window: BackfillWindow) -> tuple[str, str, str, str]:
    return (run_id, window.object_name, window.window_start, window.window_end)


class BackfillOps(PgBase):
    """Backfill run bookkeeping; a window is keyed by (object, start, end) within a run."""

    async def start_run(self, run_id: str, windows: Sequence[BackfillWindow],
                        options: Mapping[str, Any], now: float,
                        objects: Sequence[str] = ()) -> BackfillRun:
        """Create a run, its windows and the objects it loads in one transaction; the run id
        must be new."""
        encoded = orjson.dumps(dict(options), default=str).decode()

        async def body(conn: Connection) -> None:
            status = await conn.execute(
                "INSERT INTO backfill_run (run_id, started_at, options) VALUES ($1, $2, $3) "
                "ON CONFLICT (run_id) DO NOTHING", run_id, now, encoded)
            if rows_affected(status) == 0:
                raise ValueError(f"backfill run {run_id!r} already exists")
            await _insert_windows(conn, run_id, windows, now)
            names = sorted(set(objects))
            if names:
                await conn.execute(
                    "INSERT INTO backfill_run_object (run_id, object_name) "
                    "SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING", run_id, names)

        await self._write("start_run", body)
        return BackfillRun(run_id, now, None, orjson.loads(encoded))

    async def add_windows(self, run_id: str, windows: Sequence[BackfillWindow],
                          now: float) -> None:
        """Add windows to an existing run (windows already there are left as they are)."""
        if not windows:
            return

        async def body(conn: Connection) -> None:
            await _insert_windows(conn, run_id, windows, now)

        await self._write("add_windows", body)

    async def windows(self, run_id: str) -> list[Checkpoint]:
        """Every window of a run with its progress, in a stable order."""
        async with self._read("windows") as conn:
            rows = await conn.fetch(
                f"SELECT {CHECKPOINT_COLUMNS} FROM backfill_checkpoint WHERE run_id = $1 "
                f"ORDER BY object_name {C}, window_start {C}, window_end {C}", run_id)
        return [_checkpoint(tuple(row)) for row in rows]

    async def save_checkpoint(self, run_id: str, window: BackfillWindow, last_id: str | None,
                              records_done: int, now: float) -> None:
        """Record that `window` is done up to `last_id` (inclusive), `records_done` in total;
        creates the window if the run does not have it yet (the run itself must exist)."""

        async def body(conn: Connection) -> None:
            await conn.execute(
                """
                INSERT INTO backfill_checkpoint (run_id, object_name, window_start, window_end,
                                                 last_id, records_done, started_at, updated_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
                ON CONFLICT (run_id, object_name, window_start, window_end) DO UPDATE SET
                    last_id = excluded.last_id,
                    records_done = excluded.records_done,
                    updated_at = excluded.updated_at
                """, *_key(run_id, window), last_id, int(records_done), now)

        await self._write("save_checkpoint", body)

    async def finish_window(self, run_id: str, window: BackfillWindow, now: float,
                            records_done: int | None = None) -> None:
        """Mark a window done (optionally with its final count)."""

        async def body(conn: Connection) -> int:
            return rows_affected(await conn.execute(
                """
                UPDATE backfill_checkpoint SET done = true, finished_at = $1, updated_at = $1,
                    records_done = coalesce($2, records_done)
                WHERE run_id = $3 AND object_name = $4 AND window_start = $5 AND window_end = $6
                """, now, records_done, *_key(run_id, window)))

        if await self._write("finish_window", body) == 0:
            raise ValueError(f"backfill run {run_id!r} has no window {window!r}")

    async def finish_run(self, run_id: str, now: float) -> None:
        """Mark the run finished (after its catch-up was enqueued)."""

        async def body(conn: Connection) -> int:
            return rows_affected(await conn.execute(
                "UPDATE backfill_run SET finished_at = $1 WHERE run_id = $2", now, run_id))

        if await self._write("finish_run", body) == 0:
            raise ValueError(f"no backfill run {run_id!r}")

    async def get_run(self, run_id: str) -> BackfillRun | None:
        """One run by id."""
        async with self._read("get_run") as conn:
            row = await conn.fetchrow(
                f"SELECT {RUN_COLUMNS} FROM backfill_run WHERE run_id = $1", run_id)
        return None if row is None else _run(tuple(row))

    async def latest_run(self) -> BackfillRun | None:
        """The most recently started run, finished or not."""
        runs = await self.runs(limit=1)
        return runs[0] if runs else None

    async def runs(self, limit: int = 10) -> list[BackfillRun]:
        """The most recently started runs first."""
        async with self._read("runs") as conn:
            rows = await conn.fetch(
                f"SELECT {RUN_COLUMNS} FROM backfill_run ORDER BY started_at DESC, seq DESC "
                "LIMIT $1", max(0, int(limit)))
        return [_run(tuple(row)) for row in rows]

    async def latest_backfill_starts(self) -> dict[str, float]:
        """Per object any backfill run loaded, the start time of the latest such run."""
        async with self._read("latest_backfill_starts") as conn:
            rows = await conn.fetch(
                "SELECT o.object_name, max(r.started_at) FROM backfill_run_object AS o "
                "JOIN backfill_run AS r USING (run_id) GROUP BY o.object_name")
        return {str(row[0]): float(row[1]) for row in rows}
