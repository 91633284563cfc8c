"""Backfill runs and per-window keyset checkpoints, so a killed backfill resumes where it was."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from .base import StoreBase
from .types import BackfillRun, BackfillWindow, Checkpoint

CHECKPOINT_COLUMNS = (
    "run_id, object_name, window_start, window_end, last_id, records_done, done, started_at, "
    "updated_at, finished_at"
)
RUN_COLUMNS = "run_id, started_at, finished_at, options"

WINDOW_INSERT_SQL = """
INSERT INTO backfill_checkpoint (run_id, object_name, window_start, window_end, started_at,
                                 updated_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id, object_name, window_start, window_end) DO NOTHING
"""


def _run(row: Sequence[Any]) -> BackfillRun:
    try:
        options = orjson.loads(row[3]) if row[3] else {}
    except orjson.JSONDecodeError:  # written by hand or by another tool: not ours to refuse
        options = {}
    return BackfillRun(row[0], row[1], row[2], options if isinstance(options, dict) else {})


def _checkpoint(row: Sequence[Any]) -> Checkpoint:
    return Checkpoint(
        run_id=row[0],
        window=BackfillWindow(row[1], row[2], row[3]),
        last_id=row[4],
        records_done=int(row[5]),
        done=bool(row[6]),
        started_at=row[7],
        updated_at=row[8],
        finished_at=row[9],
    )


def _window_key(run_id: str, window: BackfillWindow) -> tuple[str, str, str, str]:
    return (run_id, window.object_name, window.window_start, window.window_end)


class BackfillOps(StoreBase):
    """Backfill run bookkeeping; a window is keyed by (object, start, end) within a run."""

    async def start_run(
        self,
        run_id: str,
        windows: Sequence[BackfillWindow],
        options: Mapping[str, Any],
        now: float,
        objects: Sequence[str] = (),
    ) -> BackfillRun:
        """Create a run, its windows and the objects it loads (`latest_backfill_starts`) in one
        transaction; the run id must be new."""
        encoded = orjson.dumps(dict(options), default=str).decode()
        async with self._tx("start_run") as conn:
            async with conn.execute(
                "SELECT 1 FROM backfill_run WHERE run_id = ?", (run_id,)
            ) as cursor:
                if await cursor.fetchone() is not None:
                    raise ValueError(f"backfill run {run_id!r} already exists")
            await conn.execute(
                "INSERT INTO backfill_run (run_id, started_at, options) VALUES (?, ?, ?)",
                (run_id, now, encoded),
            )
            await conn.executemany(
                WINDOW_INSERT_SQL, [(*_window_key(run_id, w), now, now) for w in windows]
            )
            await conn.executemany(
                "INSERT OR IGNORE INTO backfill_run_object (run_id, object_name) VALUES (?, ?)",
                [(run_id, name) for name in objects],
            )
        return BackfillRun(run_id, now, None, orjson.loads(encoded))

    async def add_windows(self, run_id: str, windows: Sequence[BackfillWindow], now: float) -> None:
        """Add windows to an existing run (windows already there are left as they are)."""
        if not windows:
            return
        async with self._tx("add_windows") as conn:
            await conn.executemany(
                WINDOW_INSERT_SQL, [(*_window_key(run_id, w), now, now) for w in windows]
            )

    async def windows(self, run_id: str) -> list[Checkpoint]:
        """Every window of a run with its progress, in a stable order."""
        async with self._read("windows") as conn:
            async with conn.execute(
                f"SELECT {CHECKPOINT_COLUMNS} FROM backfill_checkpoint WHERE run_id = ? "
                "ORDER BY object_name, window_start, window_end",
                (run_id,),
            ) as cursor:
                rows = await cursor.fetchall()
        return [_checkpoint(row) for row in rows]

    async def save_checkpoint(
        self,
        run_id: str,
        window: BackfillWindow,
        last_id: str | None,
        records_done: int,
        now: float,
    ) -> None:
        """Record that `window` is done up to `last_id` (inclusive), `records_done` in total.

        Creates the window if the run does not have it yet; the run itself must exist.
        """
        async with self._tx("save_checkpoint") as conn:
            await conn.execute(
                """
                INSERT INTO backfill_checkpoint (run_id, object_name, window_start, window_end,
                                                 last_id, records_done, started_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (run_id, object_name, window_start, window_end) DO UPDATE SET
                    last_id = excluded.last_id,
                    records_done = excluded.records_done,
                    updated_at = excluded.updated_at
                """,
                (*_window_key(run_id, window), last_id, int(records_done), now, now),
            )

    async def finish_window(
        self,
        run_id: str,
        window: BackfillWindow,
        now: float,
        records_done: int | None = None,
    ) -> None:
        """Mark a window done (optionally with its final count)."""
        async with self._tx("finish_window") as conn:
            cursor = await conn.execute(
                """
                UPDATE backfill_checkpoint SET done = 1, finished_at = ?, updated_at = ?,
                    records_done = coalesce(?, records_done)
                WHERE run_id = ? AND object_name = ? AND window_start = ? AND window_end = ?
                """,
                (now, now, records_done, *_window_key(run_id, window)),
            )
            if cursor.rowcount == 0:
                raise ValueError(f"backfill run {run_id!r} has no window {window!r}")

    async def finish_run(self, run_id: str, now: float) -> None:
        """Mark the run finished (after its catch-up was enqueued)."""
        async with self._tx("finish_run") as conn:
            cursor = await conn.execute(
                "UPDATE backfill_run SET finished_at = ? WHERE run_id = ?", (now, run_id)
            )
            if cursor.rowcount == 0:
                raise ValueError(f"no backfill run {run_id!r}")

    async def get_run(self, run_id: str) -> BackfillRun | None:
        """One run by id."""
        async with self._read("get_run") as conn:
            async with conn.execute(
                f"SELECT {RUN_COLUMNS} FROM backfill_run WHERE run_id = ?", (run_id,)
            ) as cursor:
                row = await cursor.fetchone()
        return None if row is None else _run(row)

    async def latest_run(self) -> BackfillRun | None:
        """The most recently started run, finished or not."""
        runs = await self.runs(limit=1)
        return runs[0] if runs else None

    async def runs(self, limit: int = 10) -> list[BackfillRun]:
        """The most recently started runs first."""
        async with self._read("runs") as conn:
            async with conn.execute(
                f"SELECT {RUN_COLUMNS} FROM backfill_run ORDER BY started_at DESC, rowid DESC "
                "LIMIT ?",
                (max(0, int(limit)),),
            ) as cursor:
                rows = await cursor.fetchall()
        return [_run(row) for row in rows]

    async def latest_backfill_starts(self) -> dict[str, float]:
        """Per object any backfill run loaded, the start time of the latest such run."""
        async with self._read("latest_backfill_starts") as conn:
            async with conn.execute(
                "SELECT o.object_name, max(r.started_at) FROM backfill_run_object AS o "
                "JOIN backfill_run AS r USING (run_id) GROUP BY o.object_name"
            ) as cursor:
                rows = await cursor.fetchall()
        return {str(row[0]): float(row[1]) for row in rows}
