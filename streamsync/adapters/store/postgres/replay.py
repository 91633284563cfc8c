"""Per-channel CometD replay ids on PostgreSQL (see streamsync/adapters/store/replay.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..replay import check_replay_id
from ..types import ReplayState
from .base import Connection, PgBase

COLUMNS = "channel, replay_id_int, replay_id_text, last_commit_ts_ms, updated_at"

# keep=True (record_event): a None replay id or commit time leaves the stored one as it is.
# keep=False (set_replay): the replay id is replaced, None forgets it.
_UPSERT = """
INSERT INTO replay AS p (channel, replay_id_int, replay_id_text, last_commit_ts_ms, updated_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (channel) DO UPDATE SET
    replay_id_int = CASE WHEN $6 AND excluded.replay_id_int IS NULL
                              AND excluded.replay_id_text IS NULL
                         THEN p.replay_id_int ELSE excluded.replay_id_int END,
    replay_id_text = CASE WHEN $6 AND excluded.replay_id_int IS NULL
                               AND excluded.replay_id_text IS NULL
                          THEN p.replay_id_text ELSE excluded.replay_id_text END,
    last_commit_ts_ms = coalesce(excluded.last_commit_ts_ms, p.last_commit_ts_ms),
    updated_at = excluded.updated_at
"""


def split_replay_id(replay_id: str | int | None) -> tuple[int | None, str | None]:
    """The (int, text) columns of an opaque replay id."""
    if isinstance(replay_id, int):
        return replay_id, None
    return None, replay_id


async def upsert_replay(conn: Connection, channel: str, replay_id: str | int | None,
                        commit_ts_ms: int | None, now: float, *, keep: bool) -> None:
    """Write a channel's replay state inside the caller's transaction."""
    as_int, as_text = split_replay_id(replay_id)
    await conn.execute(_UPSERT, channel, as_int, as_text, commit_ts_ms, now, keep)


def _state(row: Sequence[Any]) -> ReplayState:
    replay_id = row[1] if row[1] is not None else row[2]
    return ReplayState(row[0], replay_id, row[3], row[4])


class ReplayOps(PgBase):
    """Reads and explicit writes of replay state; `record_event` writes it with the ids."""

    async def get_replay(self, channel: str) -> ReplayState | None:
        """Where `channel` resumes, or None if nothing was ever recorded for it."""
        async with self._read("get_replay") as conn:
            row = await conn.fetchrow(f"SELECT {COLUMNS} FROM replay WHERE channel = $1", channel)
        return None if row is None else _state(tuple(row))

    async def replays(self) -> list[ReplayState]:
        """Every channel's replay state, by channel name (for `status`)."""
        async with self._read("replays") as conn:
            rows = await conn.fetch(f"SELECT {COLUMNS} FROM replay ORDER BY channel")
        return [_state(tuple(row)) for row in rows]

    async def set_replay(self, channel: str, replay_id: str | int | None, now: float,
                         commit_ts_ms: int | None = None) -> None:
        """Set where `channel` resumes (the `replay` command); None forgets the replay id."""
        check_replay_id(replay_id)

        async def body(conn: Connection) -> None:
            await upsert_replay(conn, channel, replay_id, commit_ts_ms, now, keep=False)

        await self._write("set_replay", body)
