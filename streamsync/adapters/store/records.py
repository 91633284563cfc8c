"""Dead letters, the identity table, the recent-errors ring and small meta values."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .base import StoreBase, clean_error
from .queue import UPSERT_SQL
from .types import DeadLetter, ErrorEntry, Identity, IdentityHandover, IdentityUpdate

ERROR_RING_SIZE = 200
IN_CHUNK = 500
"""Ids per `IN (...)` lookup: well under SQLite's bound-parameter limit."""

DEAD_LETTER_COLUMNS = (
    "object_name, record_id, change_type, reason, last_error, attempts, first_failed_at, "
    "last_failed_at"
)
IDENTITY_COLUMNS = (
    "object_name, record_id, iterable_email, iterable_user_id, payload_hash, synced_at"
)


def _chunks(ids: Sequence[str], size: int = IN_CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _reason_filter(reason: str | None) -> tuple[str, tuple[str, ...]]:
    return ("WHERE reason = ?", (reason,)) if reason is not None else ("", ())


_IN_CHUNK = 500  # ids per `IN (...)`: well under SQLite's bound-parameter limit
_ADD_DEAD_SQL = """
INSERT INTO dead_letter (object_name, record_id, change_type, reason, last_error, attempts,
                         first_failed_at, last_failed_at)
VALUES (?, ?, ?, ?, ?, 1, ?, ?)
ON CONFLICT (object_name, record_id) DO UPDATE SET
    change_type = excluded.change_type, reason = excluded.reason,
    last_error = excluded.last_error, attempts = dead_letter.attempts + 1,
    last_failed_at = excluded.last_failed_at
"""


class RecordOps(StoreBase):
    """Dead-letter table, identity table, error ring and meta key/values."""

    async def dead_letters(self, reason: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """The most recently failed dead letters, optionally of one reason."""
        where, params = _reason_filter(reason)
        async with self._read("dead_letters") as conn:
            async with conn.execute(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letter {where} "
                "ORDER BY last_failed_at DESC, object_name, record_id LIMIT ?",
                (*params, max(0, int(limit))),
            ) as cursor:
                rows = await cursor.fetchall()
        return [DeadLetter(*row) for row in rows]

    async def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters by reason."""
        async with self._read("dead_letter_counts") as conn:
            async with conn.execute(
                "SELECT reason, count(*) FROM dead_letter GROUP BY reason ORDER BY reason"
            ) as cursor:
                return {str(reason): int(count) for reason, count in await cursor.fetchall()}

    async def retry_dead_letters(self, reason: str | None, now: float) -> int:
        """Move dead letters (all, or one reason) back to the queue as source 'retry'."""
        where, params = _reason_filter(reason)
        # INSERT ... SELECT feeds the same upsert as enqueue: an id still queued is coalesced.
        upsert = UPSERT_SQL.replace(
            "VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?5)",
            "SELECT object_name, record_id, change_type, 'retry', ?1, ?1, NULL, ?1 "
            f"FROM dead_letter WHERE {'reason = ?2' if reason is not None else 'true'}",
        )
        async with self._tx("retry_dead_letters") as conn:
            await conn.execute(upsert, (now, *params))
            cursor = await conn.execute(f"DELETE FROM dead_letter {where}", params)
            return max(cursor.rowcount, 0)

    async def add_dead_letters(self, object_name: str, dead: Mapping[str, tuple[str, str]],
                               now: float, change_type: str = "UPDATE") -> int:
        """Record `record id -> (reason, detail)` without a lease, one transaction.

        The real-time path dead-letters leased queue rows (`dead_letter_each`); a backfill page
        has no queue rows, so its poison records go straight to the table. A record already
        there keeps its first failure time and counts one more attempt.
        """
        if not dead:
            return 0
        rows = [(object_name, record_id, change_type, reason, clean_error(detail), now, now)
                for record_id, (reason, detail) in dead.items()]
        async with self._tx("add_dead_letters") as conn:
            await conn.executemany(_ADD_DEAD_SQL, rows)
        return len(rows)

    async def clear_dead_letters(self, object_name: str, record_ids: Sequence[str]) -> int:
        """Drop the dead letters of records that have now synced, without a lease."""
        if not record_ids:
            return 0
        removed = 0
        async with self._tx("clear_dead_letters") as conn:
            for start in range(0, len(record_ids), _IN_CHUNK):
                chunk = record_ids[start:start + _IN_CHUNK]
                cursor = await conn.execute(
                    "DELETE FROM dead_letter WHERE object_name = ? AND record_id IN "
                    f"({','.join('?' * len(chunk))})", (object_name, *chunk))
                removed += max(cursor.rowcount, 0)
        return removed

    async def purge_dead_letters(self, reason: str | None) -> int:
        """Delete dead letters (all, or one reason) for good."""
        where, params = _reason_filter(reason)
        async with self._tx("purge_dead_letters") as conn:
            cursor = await conn.execute(f"DELETE FROM dead_letter {where}", params)
            return max(cursor.rowcount, 0)

    async def identities(self, object_name: str, ids: Sequence[str]) -> dict[str, Identity]:
        """Stored identities of these records of `object_name`, by record id."""
        found: dict[str, Identity] = {}
        if not ids:
            return found
        async with self._read("identities") as conn:
            for chunk in _chunks(list(dict.fromkeys(ids))):
                marks = ", ".join("?" for _ in chunk)
                async with conn.execute(
                    f"SELECT {IDENTITY_COLUMNS} FROM identity "
                    f"WHERE object_name = ? AND record_id IN ({marks})",
                    (object_name, *chunk),
                ) as cursor:
                    for row in await cursor.fetchall():
                        found[row[1]] = Identity(*row)
        return found

    async def save_identities(self, rows: Sequence[IdentityUpdate], now: float) -> None:
        """Record what was just sent to Iterable (after it confirmed)."""
        if not rows:
            return
        async with self._tx("save_identities") as conn:
            await conn.executemany(
                """
                INSERT INTO identity (object_name, record_id, iterable_email, iterable_user_id,
                                      payload_hash, synced_at)
                VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (object_name, record_id) DO UPDATE SET
                    iterable_email = excluded.iterable_email,
                    iterable_user_id = excluded.iterable_user_id,
                    payload_hash = excluded.payload_hash,
                    synced_at = excluded.synced_at
                """,
                [
                    (
                        row.object_name,
                        row.record_id,
                        row.iterable_email,
                        row.iterable_user_id,
                        row.payload_hash,
                        now,
                    )
                    for row in rows
                ],
            )

    async def forget_identity(self, object_name: str, ids: Sequence[str]) -> int:
        """Drop identities (after the Iterable user was deleted); returns rows removed."""
        if not ids:
            return 0
        async with self._tx("forget_identity") as conn:
            cursor = await conn.executemany(
                "DELETE FROM identity WHERE object_name = ? AND record_id = ?",
                [(object_name, record_id) for record_id in ids],
            )
            return max(cursor.rowcount, 0)

    async def hand_over_identities(
        self, moves: Sequence[IdentityHandover], now: float, *, enqueue: bool = True
    ) -> list[IdentityHandover]:
        """Per move, in one transaction: a target holding no identity takes the source's
        Iterable email and userId with no payload hash (so its next sync writes instead of
        skipping as unchanged) and is enqueued (source 'fanout', UPDATE) so that sync happens,
        unless `enqueue` is False (the caller is syncing the targets right now); the source's
        identity is dropped either way. Returns the moves whose target took one."""
        taken: list[IdentityHandover] = []
        if not moves:
            return taken
        async with self._tx("hand_over_identities") as conn:
            for move in moves:
                cursor = await conn.execute(
                    f"INSERT INTO identity ({IDENTITY_COLUMNS}) "
                    "SELECT ?, ?, iterable_email, iterable_user_id, NULL, ? FROM identity "
                    "WHERE object_name = ? AND record_id = ? "
                    "ON CONFLICT (object_name, record_id) DO NOTHING",
                    (move.target_object, move.target_id, now, move.source_object,
                     move.source_id),
                )
                if cursor.rowcount > 0:
                    taken.append(move)
                if cursor.rowcount > 0 and enqueue:
                    await conn.execute(
                        UPSERT_SQL,
                        (move.target_object, move.target_id, "UPDATE", "fanout", now, None),
                    )
                await conn.execute(
                    "DELETE FROM identity WHERE object_name = ? AND record_id = ?",
                    (move.source_object, move.source_id),
                )
        return taken

    async def find_by_email(self, email: str) -> list[Identity]:
        """Identities holding this Iterable email (case-insensitive, as Iterable compares)."""
        async with self._read("find_by_email") as conn:
            async with conn.execute(
                f"SELECT {IDENTITY_COLUMNS} FROM identity "
                "WHERE iterable_email = ? COLLATE NOCASE ORDER BY object_name, record_id",
                (email,),
            ) as cursor:
                rows = await cursor.fetchall()
        return [Identity(*row) for row in rows]

    async def note_error(self, component: str, message: str, now: float) -> None:
        """Remember an error for `status` (secrets masked); the ring keeps the newest 200."""
        async with self._tx("note_error") as conn:
            await conn.execute(
                "INSERT INTO error_log (at, component, message) VALUES (?, ?, ?)",
                (now, component, clean_error(message)),
            )
            await conn.execute(
                "DELETE FROM error_log WHERE id <= (SELECT max(id) FROM error_log) - ?",
                (ERROR_RING_SIZE,),
            )

    async def recent_errors(self, limit: int = 20) -> list[ErrorEntry]:
        """The newest errors first."""
        async with self._read("recent_errors") as conn:
            async with conn.execute(
                "SELECT at, component, message FROM error_log ORDER BY id DESC LIMIT ?",
                (max(0, int(limit)),),
            ) as cursor:
                rows = await cursor.fetchall()
        return [ErrorEntry(float(row[0]), str(row[1]), str(row[2])) for row in rows]

    async def get_meta(self, key: str) -> str | None:
        """A small stored value (e.g. the store's creation time, a client id)."""
        async with self._read("get_meta") as conn:
            async with conn.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cursor:
                row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str, now: float) -> None:
        """Store a small value under `key`."""
        async with self._tx("set_meta") as conn:
            await conn.execute(
                "INSERT INTO meta (key, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at",
                (key, value, now),
            )
