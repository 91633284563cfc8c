"""The PostgreSQL schema as versioned migrations, recorded in `schema_version`.

Version numbers follow the SQLite schema (streamsync/adapters/store/schema.py): a PostgreSQL
store starts at version 5, the SQLite schema of that version created in one step (no PostgreSQL
store existed before it, so the earlier steps, which move data between SQLite layouts, have
nothing to do). A later version adds the same tables to both backends under the same number.

`migrate` runs in one transaction under a transaction-level advisory lock, so processes that
start together apply each step exactly once, and a step that fails leaves nothing behind
(PostgreSQL's DDL is transactional).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, TypeAlias

import asyncpg
import asyncpg.pool

from streamsync.errors import FatalError

# pg_advisory_xact_lock key of schema migrations: any constant unique to streamsync.
MIGRATION_LOCK = 0x5354_5253_594E_4331  # "STRSYNC1"

AnyConnection: TypeAlias = "asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]"
TIME = "double precision"  # epoch seconds, as the SQLite store keeps them (REAL)


@dataclass(frozen=True, slots=True)
class PgMigration:
    """Statements that take the schema to `version`, run in the migrating transaction."""

    version: int
    description: str
    statements: tuple[str, ...]


_V5 = PgMigration(
    5,
    "queue, replay ids, dead letters, identities, meta, backfill runs and checkpoints, the "
    "recent-errors ring, owed reconciliations and channel anchors (SQLite schema version 5)",
    (
        # Columns and their meaning: streamsync/adapters/store/schema.py.
        f"""
        CREATE TABLE queue (
            object_name text NOT NULL,
            record_id text NOT NULL,
            version bigint NOT NULL DEFAULT 1,
            change_type text NOT NULL,
            source text NOT NULL
                CHECK (source IN ('cdc', 'reconcile', 'fanout', 'retry', 'catchup')),
            first_enqueued_at {TIME} NOT NULL,
            last_enqueued_at {TIME} NOT NULL,
            commit_ts_ms bigint,
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at {TIME} NOT NULL,
            lease_owner text,
            lease_token text,
            leased_at {TIME},
            lease_expires_at {TIME},
            requeued_at {TIME},
            requeued_commit_ts_ms bigint,
            last_error text,
            outage_retries integer NOT NULL DEFAULT 0,
            PRIMARY KEY (object_name, record_id)
        )
        """,
        "CREATE INDEX queue_due ON queue (next_attempt_at)",
        # A replay id is opaque: an int (CometD) or a str; exactly one column holds it.
        f"""
        CREATE TABLE replay (
            channel text PRIMARY KEY,
            replay_id_int bigint,
            replay_id_text text,
            last_commit_ts_ms bigint,
            updated_at {TIME} NOT NULL,
            CHECK (replay_id_int IS NULL OR replay_id_text IS NULL)
        )
        """,
        f"""
        CREATE TABLE dead_letter (
            object_name text NOT NULL,
            record_id text NOT NULL,
            change_type text NOT NULL,
            reason text NOT NULL,
            last_error text NOT NULL,
            attempts integer NOT NULL,
            first_failed_at {TIME} NOT NULL,
            last_failed_at {TIME} NOT NULL,
            PRIMARY KEY (object_name, record_id)
        )
        """,
        "CREATE INDEX dead_letter_reason ON dead_letter (reason, last_failed_at)",
        f"""
        CREATE TABLE identity (
            object_name text NOT NULL,
            record_id text NOT NULL,
            iterable_email text,
            iterable_user_id text,
            payload_hash text,
            synced_at {TIME} NOT NULL,
            PRIMARY KEY (object_name, record_id)
        )
        """,
        "CREATE INDEX identity_email ON identity (lower(iterable_email))",
        f"CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL, "
        f"updated_at {TIME} NOT NULL)",
        # `seq` orders runs started in the same instant as SQLite's rowid does.
        f"""
        CREATE TABLE backfill_run (
            run_id text PRIMARY KEY,
            seq bigint GENERATED ALWAYS AS IDENTITY,
            started_at {TIME} NOT NULL,
            finished_at {TIME},
            options text NOT NULL DEFAULT '{{}}'
        )
        """,
        "CREATE INDEX backfill_run_started ON backfill_run (started_at)",
        f"""
        CREATE TABLE backfill_checkpoint (
            run_id text NOT NULL REFERENCES backfill_run (run_id) ON DELETE CASCADE,
            object_name text NOT NULL,
            window_start text NOT NULL,
            window_end text NOT NULL,
            last_id text,
            records_done bigint NOT NULL DEFAULT 0,
            done boolean NOT NULL DEFAULT false,
            started_at {TIME} NOT NULL,
            updated_at {TIME} NOT NULL,
            finished_at {TIME},
            PRIMARY KEY (run_id, object_name, window_start, window_end)
        )
        """,
        f"""
        CREATE TABLE error_log (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at {TIME} NOT NULL,
            component text NOT NULL,
            message text NOT NULL
        )
        """,
        f"""
        CREATE TABLE reconcile_pending (
            object_name text PRIMARY KEY,
            since_ms bigint,
            trigger text NOT NULL,
            seq bigint NOT NULL,
            updated_at {TIME} NOT NULL
        )
        """,
        f"""
        CREATE TABLE channel_anchor (
            channel text PRIMARY KEY,
            state text NOT NULL CHECK (state IN ('anchored', 'unanchored', 'earliest')),
            since_ms bigint,
            updated_at {TIME} NOT NULL
        )
        """,
        """
        CREATE TABLE backfill_run_object (
            run_id text NOT NULL REFERENCES backfill_run (run_id) ON DELETE CASCADE,
            object_name text NOT NULL,
            PRIMARY KEY (run_id, object_name)
        )
        """,
        "CREATE INDEX backfill_run_object_name ON backfill_run_object (object_name)",
    ),
)

_V6 = PgMigration(
    6,
    "consent state per record (docs/design.md §7)",
    (
        f"""
        CREATE TABLE consent_state (
            object_name text NOT NULL,
            record_id text NOT NULL,
            opted_out boolean NOT NULL,
            changed_at_ms bigint NOT NULL,
            origin text NOT NULL CHECK (origin IN ('salesforce', 'iterable')),
            updated_at {TIME} NOT NULL,
            PRIMARY KEY (object_name, record_id)
        )
        """,
    ),
)

_V7 = PgMigration(
    7,
    "Campaign members as Iterable list subscribers; the lists backfill's checkpoints",
    (
        f"""
        CREATE TABLE list_member (
            member_id text NOT NULL,
            list_id bigint NOT NULL,
            email text NOT NULL,
            campaign_id text NOT NULL,
            person_id text NOT NULL,
            state text NOT NULL CHECK (state IN ('adding', 'in', 'out')),
            seen_at {TIME} NOT NULL,
            PRIMARY KEY (member_id, list_id, email)
        )
        """,
        "CREATE INDEX list_member_by_list ON list_member (list_id, email)",
        f"""
        CREATE TABLE list_backfill (
            campaign_id text PRIMARY KEY,
            list_id bigint NOT NULL,
            started_at {TIME} NOT NULL,
            phase text NOT NULL CHECK (phase IN ('members', 'removals', 'done')),
            after_id text,
            subscribed bigint NOT NULL DEFAULT 0,
            unsubscribed bigint NOT NULL DEFAULT 0,
            updated_at {TIME} NOT NULL
        )
        """,
    ),
)

_V8 = PgMigration(
    8,
    "consent inbox, the export cursors of the poller, identity lookup by Iterable userId",
    (
        f"""
        CREATE TABLE consent_inbox (
            event_key text PRIMARY KEY,
            event_name text NOT NULL
                CHECK (event_name IN ('emailSubscribe', 'emailUnSubscribe')),
            email text,
            user_id text,
            created_ms bigint NOT NULL,
            source text,
            channel_ids text NOT NULL DEFAULT '',
            message_type_ids text NOT NULL DEFAULT '',
            list_ids text NOT NULL DEFAULT '',
            via text NOT NULL CHECK (via IN ('webhook', 'export')),
            received_at {TIME} NOT NULL,
            deliveries integer NOT NULL DEFAULT 1,
            state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at {TIME} NOT NULL,
            outcome text,
            settled_at {TIME}
        )
        """,
        "CREATE INDEX consent_inbox_due ON consent_inbox (state, next_attempt_at)",
        "CREATE INDEX consent_inbox_settled ON consent_inbox (settled_at)",
        f"""
        CREATE TABLE consent_cursor (
            data_type text PRIMARY KEY,
            cursor_ms bigint NOT NULL,
            updated_at {TIME} NOT NULL
        )
        """,
        "CREATE INDEX identity_user_id ON identity (iterable_user_id)",
    ),
)

_V10 = PgMigration(
    10,
    "the mapping applied per object and the re-syncs a changed mapping owes",
    (
        f"""
        CREATE TABLE mapping_applied (
            object_name text PRIMARY KEY,
            fingerprint text NOT NULL,
            description text NOT NULL,
            applied_at {TIME} NOT NULL
        )
        """,
        f"""
        CREATE TABLE resync (
            object_name text PRIMARY KEY,
            fingerprint text NOT NULL,
            description text NOT NULL,
            clears text NOT NULL DEFAULT '[]',
            phase text NOT NULL CHECK (phase IN ('sync', 'out_of_scope')),
            last_id text,
            records_read bigint NOT NULL DEFAULT 0,
            records_written bigint NOT NULL DEFAULT 0,
            records_out_of_scope bigint NOT NULL DEFAULT 0,
            started_at {TIME} NOT NULL,
            updated_at {TIME} NOT NULL
        )
        """,
    ),
)

_V9 = PgMigration(
    9,
    "worker registry and one leadership lease per CDC channel, with a fencing token "
    "(SQLite schema version 9)",
    (
        f"""
        CREATE TABLE worker (
            worker_id text PRIMARY KEY,
            host text NOT NULL,
            pid integer NOT NULL,
            started_at {TIME} NOT NULL,
            heartbeat_at {TIME} NOT NULL,
            stopped_at {TIME}
        )
        """,
        f"""
        CREATE TABLE channel_lease (
            channel text PRIMARY KEY,
            holder text,
            token bigint NOT NULL CHECK (token >= 1),
            acquired_at {TIME} NOT NULL,
            expires_at {TIME} NOT NULL,
            failovers integer NOT NULL DEFAULT 0
        )
        """,
    ),
)

_V11 = PgMigration(
    11,
    "list_member rows by the Lead or Contact they subscribe (SQLite schema version 11)",
    ("CREATE INDEX list_member_by_person ON list_member (person_id)",),
)

_V12 = PgMigration(
    12,
    "custom events: candidates of CDC changes and the last known condition of each (rule, "
    "record) (SQLite schema version 12)",
    (
        # Columns and their meaning: streamsync/adapters/store/schema.py; `seq` is the
        # arrival order (SQLite's rowid).
        "CREATE SEQUENCE event_pending_seq",
        f"""
        CREATE TABLE event_pending (
            event_id text PRIMARY KEY,
            seq bigint NOT NULL,
            rule text NOT NULL,
            object_name text NOT NULL,
            record_id text NOT NULL,
            change_type text NOT NULL,
            commit_ts_ms bigint NOT NULL,
            fires boolean NOT NULL,
            touches boolean NOT NULL,
            change_values text NOT NULL,
            state text NOT NULL CHECK (state IN ('new', 'ready', 'sent', 'dead')),
            payload text,
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at {TIME} NOT NULL,
            lease_token text,
            last_error text,
            reason text,
            enqueued_at {TIME} NOT NULL,
            sent_at {TIME}
        )
        """,
        "CREATE INDEX event_pending_due ON event_pending (state, next_attempt_at, seq)",
        "CREATE INDEX event_pending_sent ON event_pending (sent_at) WHERE state = 'sent'",
        f"""
        CREATE TABLE event_condition (
            rule text NOT NULL,
            record_id text NOT NULL,
            met boolean NOT NULL,
            condition_values text NOT NULL,
            commit_ts_ms bigint NOT NULL,
            updated_at {TIME} NOT NULL,
            PRIMARY KEY (rule, record_id)
        )
        """,
    ),
)

_V13 = PgMigration(
    13,
    "the shared Iterable rate budget: a slot schedule per budget and lane, and its drawers",
    (
        # Columns and their meaning: streamsync/adapters/store/schema.py (version 13).
        f"""
        CREATE TABLE rate_budget (
            budget_key text NOT NULL,
            lane text NOT NULL CHECK (lane IN ('all', 'service', 'backfill')),
            tat {TIME} NOT NULL,
            rate_per_s double precision NOT NULL CHECK (rate_per_s > 0),
            updated_at {TIME} NOT NULL,
            PRIMARY KEY (budget_key, lane)
        )
        """,
        f"""
        CREATE TABLE rate_budget_drawer (
            budget_key text NOT NULL,
            drawer_id text NOT NULL,
            kind text NOT NULL CHECK (kind IN ('service', 'backfill')),
            pid integer NOT NULL,
            host text NOT NULL,
            joined_at {TIME} NOT NULL,
            last_claim_at {TIME} NOT NULL,
            slots_total bigint NOT NULL DEFAULT 0,
            window_start {TIME} NOT NULL,
            window_slots bigint NOT NULL DEFAULT 0,
            last_rate_per_s double precision NOT NULL DEFAULT 0,
            PRIMARY KEY (budget_key, drawer_id)
        )
        """,
    ),
)

_V14 = PgMigration(
    14,
    "joint backfills: window leases, the run's closing lease, and each participant's counts",
    (
        # Columns and their meaning: streamsync/adapters/store/schema.py (version 14).
        "ALTER TABLE backfill_checkpoint ADD COLUMN lease_owner text",
        f"ALTER TABLE backfill_checkpoint ADD COLUMN lease_expires_at {TIME}",
        "ALTER TABLE backfill_run ADD COLUMN close_owner text",
        f"ALTER TABLE backfill_run ADD COLUMN close_expires_at {TIME}",
        f"""
        CREATE TABLE backfill_participant (
            run_id text NOT NULL REFERENCES backfill_run (run_id) ON DELETE CASCADE,
            participant_id text NOT NULL,
            pid integer NOT NULL,
            host text NOT NULL,
            joined_at {TIME} NOT NULL,
            heartbeat_at {TIME} NOT NULL,
            left_at {TIME},
            totals text NOT NULL DEFAULT '{{}}',
            PRIMARY KEY (run_id, participant_id)
        )
        """,
    ),
)

_V15 = PgMigration(
    15,
    "the shared rate budget: where each drawer's booked slots end (its rate for status)",
    (f"ALTER TABLE rate_budget_drawer ADD COLUMN booked_until {TIME} NOT NULL DEFAULT 0",),
)

_V16 = PgMigration(
    16,
    "custom events: leases walk a state's rows in arrival order and find a record's undecided "
    "rows by index, not by sorting or scanning the whole backlog (SQLite schema version 16)",
    (
        # By state in arrival order: a lease takes the oldest rows of a state and stops (the
        # (state, next_attempt_at, seq) index leaves every due row to sort by seq).
        "CREATE INDEX event_pending_by_state ON event_pending (state, seq)",
        # A record's undecided rows: whether an earlier one lies outside a lease of new rows.
        "CREATE INDEX event_pending_undecided ON event_pending (record_id, seq) "
        "WHERE state = 'new' AND attempts = 0",
    ),
)

MIGRATIONS: tuple[PgMigration, ...] = (_V5, _V6, _V7, _V8, _V9, _V10, _V11, _V12, _V13,
                                        _V14, _V15, _V16)
LATEST_VERSION = MIGRATIONS[-1].version

_VERSION_TABLE = f"""
CREATE TABLE IF NOT EXISTS schema_version (
    version integer PRIMARY KEY,
    description text NOT NULL,
    applied_at {TIME} NOT NULL
)
"""


async def schema_version(conn: AnyConnection) -> int:
    """The newest applied version (0 for an empty database)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))


async def migrate(conn: AnyConnection, target: int = LATEST_VERSION) -> int:
    """Apply every migration not applied yet up to `target`; returns the version.

    A step is applied when its version is missing from `schema_version`, not only when it is
    above the newest one: the PostgreSQL schema skips the numbers of SQLite steps it does not
    need yet, and one added later under such a number still runs on an existing database."""
    if target not in (0, *(m.version for m in MIGRATIONS)):
        raise ValueError(f"unknown schema version {target} (latest is {LATEST_VERSION})")
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(_VERSION_TABLE)
        current = await schema_version(conn)
        if current > LATEST_VERSION:
            raise FatalError(
                f"store schema version {current} is newer than this streamsync understands "
                f"({LATEST_VERSION}); upgrade streamsync or point [store] url at another "
                "database"
            )
        applied = {int(row[0]) for row in await conn.fetch("SELECT version FROM schema_version")}
        for step in MIGRATIONS:
            if step.version not in applied and step.version <= target:
                for statement in step.statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_version (version, description, applied_at) "
                    "VALUES ($1, $2, $3)", step.version, step.description, time.time())
                current = max(current, step.version)
    return current
