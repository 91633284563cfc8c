"""Per-channel CometD replay ids and the last commit time seen (the reconcile point)."""

from __future__ import annotations

from .base import StoreBase
from .types import ReplayState

REPLAY_UPSERT_SQL = """
INSERT INTO replay (channel, replay_id, last_commit_ts_ms, updated_at) VALUES (?, ?, ?, ?)
ON CONFLICT (channel) DO UPDATE SET
    replay_id = coalesce(excluded.replay_id, replay_id),
    last_commit_ts_ms = coalesce(excluded.last_commit_ts_ms, last_commit_ts_ms),
    updated_at = excluded.updated_at
"""


def check_replay_id(replay_id: object) -> None:
    """Replay ids are opaque: an int (CometD) or a str (bytes encoded by the caller), or None."""
    if isinstance(replay_id, bool) or not isinstance(replay_id, int | str | None):
        raise ValueError(f"replay id must be an int, a str or None, not {type(replay_id).__name__}")


class ReplayOps(StoreBase):
    """Reads and explicit writes of replay state; `record_event` writes it with the ids."""

    async def get_replay(self, channel: str) -> ReplayState | None:
        """Where `channel` resumes, or None if nothing was ever recorded for it."""
        async with self._read("get_replay") as conn:
            async with conn.execute(
                "SELECT channel, replay_id, last_commit_ts_ms, updated_at FROM replay "
                "WHERE channel = ?",
                (channel,),
            ) as cursor:
                row = await cursor.fetchone()
        return None if row is None else ReplayState(row[0], row[1], row[2], row[3])

    async def replays(self) -> list[ReplayState]:
        """Every channel's replay state, by channel name (for `status`)."""
        async with self._read("replays") as conn:
            async with conn.execute(
                "SELECT channel, replay_id, last_commit_ts_ms, updated_at FROM replay "
                "ORDER BY channel"
            ) as cursor:
                rows = await cursor.fetchall()
        return [ReplayState(row[0], row[1], row[2], row[3]) for row in rows]

    async def set_replay(
        self,
        channel: str,
        replay_id: str | int | None,
        now: float,
        commit_ts_ms: int | None = None,
    ) -> None:
        """Set where `channel` resumes (the `replay` command); None forgets the replay id.

        The last commit time is replaced only when `commit_ts_ms` is given.
        """
        check_replay_id(replay_id)
        async with self._tx("set_replay") as conn:
            await conn.execute(
                """
                INSERT INTO replay (channel, replay_id, last_commit_ts_ms, updated_at)
                VALUES (?, ?, ?, ?)
                ON CONFLICT (channel) DO UPDATE SET
                    replay_id = excluded.replay_id,
                    last_commit_ts_ms = coalesce(excluded.last_commit_ts_ms, last_commit_ts_ms),
                    updated_at = excluded.updated_at
                """,
                (channel, replay_id, commit_ts_ms, now),
            )
