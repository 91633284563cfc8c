"""Dead letters, identities, the recent-errors ring and meta values on PostgreSQL (the same
semantics as streamsync/adapters/store/records.py). Text is ordered byte-wise (`COLLATE "C"`),
as SQLite orders it, whatever the database's default collation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..base import clean_error
from ..records import DEAD_LETTER_COLUMNS, ERROR_RING_SIZE, IDENTITY_COLUMNS
from ..types import DeadLetter, ErrorEntry, Identity, IdentityHandover, IdentityUpdate, QueueInput
from .base import Connection, PgBase, rows_affected
from .queue import UPSERT_CONFLICT, UPSERT_INTO, upsert_queue

C = 'COLLATE "C"'


def _reason_filter(reason: str | None, first: int = 1) -> tuple[str, tuple[str, ...]]:
    return (f"WHERE reason = ${first}", (reason,)) if reason is not None else ("", ())


def _dead(row: Sequence[object]) -> DeadLetter:
    return DeadLetter(*row)  # type: ignore[arg-type]


def _identity(row: Sequence[object]) -> Identity:
    return Identity(*row)  # type: ignore[arg-type]


class RecordOps(PgBase):
    """Dead-letter table, identity table, error ring and meta key/values."""

    async def dead_letters(self, reason: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """The most recently failed dead letters, optionally of one reason."""
        where, params = _reason_filter(reason, 2)
        async with self._read("dead_letters") as conn:
            rows = await conn.fetch(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letter {where} ORDER BY last_failed_at "
                f"DESC, object_name {C}, record_id {C} LIMIT $1", max(0, int(limit)), *params)
        return [_dead(tuple(row)) for row in rows]

    async def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters by reason."""
        async with self._read("dead_letter_counts") as conn:
            rows = await conn.fetch(
                f"SELECT reason, count(*) FROM dead_letter GROUP BY reason ORDER BY reason {C}")
        return {str(row[0]): int(row[1]) for row in rows}

    async def retry_dead_letters(self, reason: str | None, now: float) -> int:
        """Move dead letters (all, or one reason) back to the queue as source 'retry'."""
        where, params = _reason_filter(reason, 2)
        # the same upsert as enqueue: an id still queued is coalesced
        upsert = (f"{UPSERT_INTO} SELECT object_name, record_id, 1, change_type, 'retry', "
                  "$1::float8, $1::float8, NULL, $1::float8 FROM dead_letter "
                  f"{where} ORDER BY object_name, record_id {UPSERT_CONFLICT}")

        async def body(conn: Connection) -> int:
            await conn.execute(upsert, now, *params)
            return rows_affected(await conn.execute(
                f"DELETE FROM dead_letter {_reason_filter(reason)[0]}", *params))

        return await self._write("retry_dead_letters", body)

    async def add_dead_letters(self, object_name: str, dead: Mapping[str, tuple[str, str]],
                               now: float, change_type: str = "UPDATE") -> int:
        """Record `record id -> (reason, detail)` without a lease, one transaction; a record
        already there keeps its first failure time and counts one more attempt."""
        if not dead:
            return 0
        ids = sorted(dead)

        async def body(conn: Connection) -> None:
            await conn.execute(
                """
                INSERT INTO dead_letter AS d (object_name, record_id, change_type, reason,
                    last_error, attempts, first_failed_at, last_failed_at)
                SELECT $1, u.r, $2, u.reason, u.err, 1, $6, $6
                FROM unnest($3::text[], $4::text[], $5::text[]) AS u(r, reason, err)
                ON CONFLICT (object_name, record_id) DO UPDATE SET
                    change_type = excluded.change_type, reason = excluded.reason,
                    last_error = excluded.last_error, attempts = d.attempts + 1,
                    last_failed_at = excluded.last_failed_at
                """,
                object_name, change_type, ids, [dead[i][0] for i in ids],
                [clean_error(dead[i][1]) for i in ids], now)

        await self._write("add_dead_letters", body)
        return len(ids)

    async def clear_dead_letters(self, object_name: str, record_ids: Sequence[str]) -> int:
        """Drop the dead letters of records that have now synced, without a lease."""
        if not record_ids:
            return 0

        async def body(conn: Connection) -> int:
            return rows_affected(await conn.execute(
                "DELETE FROM dead_letter WHERE object_name = $1 AND record_id = ANY($2::text[])",
                object_name, sorted(set(record_ids))))

        return await self._write("clear_dead_letters", body)

    async def purge_dead_letters(self, reason: str | None) -> int:
        """Delete dead letters (all, or one reason) for good."""
        where, params = _reason_filter(reason)

        async def body(conn: Connection) -> int:
            return rows_affected(await conn.execute(f"DELETE FROM dead_letter {where}", *params))

        return await self._write("purge_dead_letters", body)

    async def identities(self, object_name: str, ids: Sequence[str]) -> dict[str, Identity]:
        """Stored identities of these records of `object_name`, by record id."""
        if not ids:
            return {}
        async with self._read("identities") as conn:
            rows = await conn.fetch(
                f"SELECT {IDENTITY_COLUMNS} FROM identity "
                "WHERE object_name = $1 AND record_id = ANY($2::text[])",
                object_name, list(dict.fromkeys(ids)))
        return {row[1]: _identity(tuple(row)) for row in rows}

    async def save_identities(self, rows: Sequence[IdentityUpdate], now: float) -> None:
        """Record what was just sent to Iterable (after it confirmed); the last row of a
        record given twice wins."""
        latest = {(row.object_name, row.record_id): row for row in rows}
        if not latest:
            return
        ordered = [latest[key] for key in sorted(latest)]

        async def body(conn: Connection) -> None:
            await conn.execute(
                """
                INSERT INTO identity (object_name, record_id, iterable_email, iterable_user_id,
                                      payload_hash, synced_at)
                SELECT u.o, u.r, u.e, u.i, u.h, $6
                FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
                     AS u(o, r, e, i, h)
                ON CONFLICT (object_name, record_id) DO UPDATE SET
                    iterable_email = excluded.iterable_email,
                    iterable_user_id = excluded.iterable_user_id,
                    payload_hash = excluded.payload_hash,
                    synced_at = excluded.synced_at
                """,
                [r.object_name for r in ordered], [r.record_id for r in ordered],
                [r.iterable_email for r in ordered], [r.iterable_user_id for r in ordered],
                [r.payload_hash for r in ordered], now)

        await self._write("save_identities", body)

    async def forget_identity(self, object_name: str, ids: Sequence[str]) -> int:
        """Drop identities (after the Iterable user was deleted); returns rows removed."""
        if not ids:
            return 0

        async def body(conn: Connection) -> int:
            return rows_affected(await conn.execute(
                "DELETE FROM identity WHERE object_name = $1 AND record_id = ANY($2::text[])",
                object_name, sorted(set(ids))))

        return await self._write("forget_identity", body)

    async def hand_over_identities(self, moves: Sequence[IdentityHandover], now: float, *,
                                   enqueue: bool = True) -> list[IdentityHandover]:
        """Per move, in one transaction: a target holding no identity takes the source's
        (without a payload hash) and is enqueued unless `enqueue` is False; the source's
        identity is dropped either way (see the SQLite `hand_over_identities`)."""
        if not moves:
            return []

        async def body(conn: Connection) -> list[IdentityHandover]:
            taken: list[IdentityHandover] = []
            for move in moves:
                status = await conn.execute(
                    f"INSERT INTO identity ({IDENTITY_COLUMNS}) "
                    "SELECT $1, $2, iterable_email, iterable_user_id, NULL, $3 FROM identity "
                    "WHERE object_name = $4 AND record_id = $5 "
                    "ON CONFLICT (object_name, record_id) DO NOTHING",
                    move.target_object, move.target_id, now, move.source_object, move.source_id)
                if rows_affected(status) > 0:
                    taken.append(move)
                    if enqueue:
                        await upsert_queue(
                            conn, [QueueInput(move.target_object, move.target_id, "UPDATE")],
                            "fanout", None, now)
                await conn.execute(
                    "DELETE FROM identity WHERE object_name = $1 AND record_id = $2",
                    move.source_object, move.source_id)
            return taken

        return await self._write("hand_over_identities", body)

    async def find_by_email(self, email: str) -> list[Identity]:
        """Identities holding this Iterable email (case-insensitive, as Iterable compares)."""
        async with self._read("find_by_email") as conn:
            rows = await conn.fetch(
                f"SELECT {IDENTITY_COLUMNS} FROM identity WHERE lower(iterable_email) = lower($1)"
                f" ORDER BY object_name {C}, record_id {C}", email)
        return [_identity(tuple(row)) for row in rows]

    async def note_error(self, component: str, message: str, now: float) -> None:
        """Remember an error for `status` (secrets masked); the ring keeps the newest 200."""

        async def body(conn: Connection) -> None:
            await conn.execute("INSERT INTO error_log (at, component, message) VALUES ($1, $2, $3)",
                               now, component, clean_error(message))
            await conn.execute(
                "DELETE FROM error_log WHERE id <= (SELECT max(id) FROM error_log) - $1",
                ERROR_RING_SIZE)

        await self._write("note_error", body)

    async def recent_errors(self, limit: int = 20) -> list[ErrorEntry]:
        """The newest errors first."""
        async with self._read("recent_errors") as conn:
            rows = await conn.fetch(
                "SELECT at, component, message FROM error_log ORDER BY id DESC LIMIT $1",
                max(0, int(limit)))
        return [ErrorEntry(float(row[0]), str(row[1]), str(row[2])) for row in rows]

    async def get_meta(self, key: str) -> str | None:
        """A small stored value."""
        async with self._read("get_meta") as conn:
            value = await conn.fetchval("SELECT value FROM meta WHERE key = $1", key)
        return None if value is None else str(value)

    async def set_meta(self, key: str, value: str, now: float) -> None:
        """Store a small value under `key`."""

        async def body(conn: Connection) -> None:
            await conn.execute(
                "INSERT INTO meta (key, value, updated_at) VALUES ($1, $2, $3) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at", key, value, now)

        await self._write("set_meta", body)
