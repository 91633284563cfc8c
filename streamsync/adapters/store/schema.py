"""Schema of the store as an ordered list of migrations, applied by `PRAGMA user_version`."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import aiosqlite

from streamsync.errors import FatalError


@dataclass(frozen=True, slots=True)
class Migration:
    """Statements that take the schema from `version - 1` to `version`, run in one transaction."""

    version: int
    description: str
    statements: tuple[str, ...]


_V1 = Migration(
    1,
    "queue, replay ids, dead letters, identities, meta",
    (
        # One row per record still to sync. `version` is bumped by every enqueue of an existing
        # row, so a flusher deletes the row on success only if nothing arrived meanwhile.
        # `next_attempt_at` is "when may this row be leased next": enqueue time for a new row, the
        # backoff deadline after a failure, and the lease expiry while leased, so leasing is one
        # range scan of `queue_due` and an expired lease (crash) makes the row due by itself.
        # `requeued_*` remember the first change that arrived while the row was leased, so that
        # after the older version is acked the latency metric restarts from that change.
        """
        CREATE TABLE queue (
            object_name TEXT NOT NULL,
            record_id TEXT NOT NULL,
            version INTEGER NOT NULL DEFAULT 1,
            change_type TEXT NOT NULL,
            source TEXT NOT NULL
                CHECK (source IN ('cdc', 'reconcile', 'fanout', 'retry', 'catchup')),
            first_enqueued_at REAL NOT NULL,
            last_enqueued_at REAL NOT NULL,
            commit_ts_ms INTEGER,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            lease_owner TEXT,
            lease_token TEXT,
            leased_at REAL,
            lease_expires_at REAL,
            requeued_at REAL,
            requeued_commit_ts_ms INTEGER,
            last_error TEXT,
            PRIMARY KEY (object_name, record_id)
        )
        """,
        "CREATE INDEX queue_due ON queue (next_attempt_at)",
        # replay_id has no declared type (BLOB affinity): an int stays an int, a str a str.
        """
        CREATE TABLE replay (
            channel TEXT PRIMARY KEY,
            replay_id,
            last_commit_ts_ms INTEGER,
            updated_at REAL NOT NULL
        )
        """,
        """
        CREATE TABLE dead_letter (
            object_name TEXT NOT NULL,
            record_id TEXT NOT NULL,
            change_type TEXT NOT NULL,
            reason TEXT NOT NULL,
            last_error TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            first_failed_at REAL NOT NULL,
            last_failed_at REAL NOT NULL,
            PRIMARY KEY (object_name, record_id)
        )
        """,
        "CREATE INDEX dead_letter_reason ON dead_letter (reason, last_failed_at)",
        """
        CREATE TABLE identity (
            object_name TEXT NOT NULL,
            record_id TEXT NOT NULL,
            iterable_email TEXT,
            iterable_user_id TEXT,
            payload_hash TEXT,
            synced_at REAL NOT NULL,
            PRIMARY KEY (object_name, record_id)
        )
        """,
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL)",
    ),
)

_V2 = Migration(
    2,
    "backfill runs and per-window checkpoints",
    (
        """
        CREATE TABLE backfill_run (
            run_id TEXT PRIMARY KEY,
            started_at REAL NOT NULL,
            finished_at REAL,
            options TEXT NOT NULL DEFAULT '{}'
        )
        """,
        "CREATE INDEX backfill_run_started ON backfill_run (started_at)",
        """
        CREATE TABLE backfill_checkpoint (
            run_id TEXT NOT NULL REFERENCES backfill_run (run_id) ON DELETE CASCADE,
            object_name TEXT NOT NULL,
            window_start TEXT NOT NULL,
            window_end TEXT NOT NULL,
            last_id TEXT,
            records_done INTEGER NOT NULL DEFAULT 0,
            done INTEGER NOT NULL DEFAULT 0 CHECK (done IN (0, 1)),
            started_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL,
            PRIMARY KEY (run_id, object_name, window_start, window_end)
        )
        """,
    ),
)

_V3 = Migration(
    3,
    "recent-errors ring; identity lookup by email (case-insensitive, as Iterable stores it)",
    (
        """
        CREATE TABLE error_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            component TEXT NOT NULL,
            message TEXT NOT NULL
        )
        """,
        "CREATE INDEX identity_email ON identity (iterable_email COLLATE NOCASE)",
    ),
)

_V4 = Migration(
    4,
    "outage retries counted apart from a record's attempts",
    (
        # A failure of Salesforce or Iterable themselves (down, 5xx, 429, timeouts) is not the
        # record's fault: it bumps `outage_retries` (which only spaces the retries out) instead
        # of `attempts` (which dead-letters at max_attempts), and the rows it touched become due
        # at once when the outage ends.
        "ALTER TABLE queue ADD COLUMN outage_retries INTEGER NOT NULL DEFAULT 0",
    ),
)

MIGRATIONS: tuple[Migration, ...] = (_V1, _V2, _V3, _V4)
LATEST_VERSION = MIGRATIONS[-1].version


async def schema_version(conn: aiosqlite.Connection) -> int:
    """The `user_version` of the open database (0 for a new file)."""
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


async def migrate(conn: aiosqlite.Connection, target: int = LATEST_VERSION) -> int:
    """Apply every migration above the current version up to `target`; returns the new version.

    Each step runs in its own BEGIN IMMEDIATE transaction that re-reads `user_version` first, so
    two processes opening the same file at once apply each step exactly once. The connection
    must be in autocommit mode (isolation_level=None).
    """
    if not 0 <= target <= LATEST_VERSION:
        raise ValueError(f"unknown schema version {target} (latest is {LATEST_VERSION})")
    current = await schema_version(conn)
    if current > LATEST_VERSION:
        raise FatalError(
            f"store schema version {current} is newer than this streamsync understands "
            f"({LATEST_VERSION}); upgrade streamsync or point queue_path at another file"
        )
    for step in MIGRATIONS:
        if step.version > target:
            break
        if step.version <= current:
            continue
        await conn.execute("BEGIN IMMEDIATE")
        try:
            current = await schema_version(conn)
            if step.version == current + 1:
                for statement in step.statements:
                    await conn.execute(statement)
                await conn.execute(f"PRAGMA user_version = {step.version:d}")
            await conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
            raise
        current = await schema_version(conn)
    return current
