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

_PENDING_VALID = (
    "json_valid(value) AND json_type(value) = 'object' AND json_type(value, '$.since_ms') "
    "IS NOT NULL AND json_type(value, '$.trigger') IS NOT NULL"
)

_V5 = Migration(
    5,
    "owed reconciliations, channel anchors and the objects of a backfill run as typed tables "
    "(were JSON or text in meta and in backfill_run.options)",
    (
        # One row per object owing a reconciliation from `since_ms` (NULL: every record);
        # `seq` grows with every merge, so a worker that finished clears only what it ran.
        """
        CREATE TABLE reconcile_pending (
            object_name TEXT PRIMARY KEY,
            since_ms INTEGER,
            trigger TEXT NOT NULL,
            seq INTEGER NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
        # Version 4 kept these as `reconcile_pending:<object>` meta rows of JSON; one that did
        # not parse still owed a full reconciliation ('unreadable_marker').
        f"""
        INSERT INTO reconcile_pending (object_name, since_ms, trigger, seq, updated_at)
        SELECT substr(key, 19),
               CASE WHEN {_PENDING_VALID} AND json_type(value, '$.since_ms') = 'integer'
                    THEN json_extract(value, '$.since_ms') END,
               CASE WHEN {_PENDING_VALID} THEN CAST(json_extract(value, '$.trigger') AS TEXT)
                    ELSE 'unreadable_marker' END,
               CASE WHEN {_PENDING_VALID} AND json_type(value, '$.seq') = 'integer'
                    THEN json_extract(value, '$.seq') ELSE 0 END,
               updated_at
        FROM meta WHERE substr(key, 1, 18) = 'reconcile_pending:' AND value != ''
        """,
        "DELETE FROM meta WHERE substr(key, 1, 18) = 'reconcile_pending:'",
        # Per CDC channel: 'anchored' (a replay id is stored), 'unanchored' since `since_ms`
        # (subscribed with -1, nothing stored: NULL means since an unknown time), or
        # 'earliest' (first subscribed from the oldest retained event). No row: never
        # subscribed.
        """
        CREATE TABLE channel_anchor (
            channel TEXT PRIMARY KEY,
            state TEXT NOT NULL CHECK (state IN ('anchored', 'unanchored', 'earliest')),
            since_ms INTEGER,
            updated_at REAL NOT NULL
        )
        """,
        # Version 4 kept these as `unanchored_since:<channel>` meta rows: '' (anchored),
        # 'earliest', or epoch milliseconds.
        """
        INSERT INTO channel_anchor (channel, state, since_ms, updated_at)
        SELECT substr(key, 18),
               CASE WHEN value = '' THEN 'anchored' WHEN value = 'earliest' THEN 'earliest'
                    ELSE 'unanchored' END,
               CASE WHEN value != '' AND value NOT GLOB '*[^0-9]*' THEN CAST(value AS INTEGER)
                    END,
               updated_at
        FROM meta WHERE substr(key, 1, 17) = 'unanchored_since:'
        """,
        "DELETE FROM meta WHERE substr(key, 1, 17) = 'unanchored_since:'",
        """
        CREATE TABLE backfill_run_object (
            run_id TEXT NOT NULL REFERENCES backfill_run (run_id) ON DELETE CASCADE,
            object_name TEXT NOT NULL,
            PRIMARY KEY (run_id, object_name)
        )
        """,
        "CREATE INDEX backfill_run_object_name ON backfill_run_object (object_name)",
        """
        INSERT OR IGNORE INTO backfill_run_object (run_id, object_name)
        SELECT backfill_run.run_id, objects.value
        FROM backfill_run, json_each(backfill_run.options, '$.scope.objects') AS objects
        WHERE json_valid(backfill_run.options)
          AND json_type(backfill_run.options, '$.scope.objects') = 'array'
          AND objects.type = 'text'
        """,
    ),
)

_V6 = Migration(
    6,
    "consent state per record (docs/design.md §7)",
    (
        # The consent state a record was last brought to by either direction: opted out or not,
        # when that was stated on its side (epoch ms) and which side stated it. Both directions
        # compare a new state with it (core/consent.py `prevails`), which is also how the echo
        # of our own write in the other system ends.
        """
        CREATE TABLE consent_state (
            object_name TEXT NOT NULL,
            record_id TEXT NOT NULL,
            opted_out INTEGER NOT NULL CHECK (opted_out IN (0, 1)),
            changed_at_ms INTEGER NOT NULL,
            origin TEXT NOT NULL CHECK (origin IN ('salesforce', 'iterable')),
            updated_at REAL NOT NULL,
            PRIMARY KEY (object_name, record_id)
        )
        """,
    ),
)

_V7 = Migration(
    7,
    "Campaign members as Iterable list subscribers; the lists backfill's checkpoints",
    (
        # One row per (CampaignMember, list, email) that may be subscribed in Iterable: 'adding'
        # is written before lists/subscribe is sent, 'in' once Iterable confirmed it, 'out'
        # before lists/unsubscribe is sent (deleted once confirmed). CDC for a deleted member
        # carries only its id: these rows say which list and email to unsubscribe.
        """
        CREATE TABLE list_member (
            member_id TEXT NOT NULL,
            list_id INTEGER NOT NULL,
            email TEXT NOT NULL,
            campaign_id TEXT NOT NULL,
            person_id TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('adding', 'in', 'out')),
            seen_at REAL NOT NULL,
            PRIMARY KEY (member_id, list_id, email)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX list_member_by_list ON list_member (list_id, email)",
        # Per mapped Campaign: where `backfill --lists` is (members read up to `after_id`, then
        # removals, then done) and when its run started (rows not seen since are stale).
        """
        CREATE TABLE list_backfill (
            campaign_id TEXT PRIMARY KEY,
            list_id INTEGER NOT NULL,
            started_at REAL NOT NULL,
            phase TEXT NOT NULL CHECK (phase IN ('members', 'removals', 'done')),
            after_id TEXT,
            subscribed INTEGER NOT NULL DEFAULT 0,
            unsubscribed INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        )
        """,
    ),
)

_V8 = Migration(
    8,
    "consent inbox (Iterable subscribe/unsubscribe events to apply to Salesforce), the export "
    "cursors of the poller, identity lookup by Iterable userId",
    (
        # One row per event, keyed by its dedupe key (core/consent_inbound.py `event_key`): a
        # repeated delivery only bumps `deliveries`. Group ids are comma-separated integers.
        # 'pending' rows are applied by the drain ('done' or 'failed' with the outcome); a
        # Salesforce failure moves `next_attempt_at` on and counts `attempts`.
        """
        CREATE TABLE consent_inbox (
            event_key TEXT PRIMARY KEY,
            event_name TEXT NOT NULL
                CHECK (event_name IN ('emailSubscribe', 'emailUnSubscribe')),
            email TEXT,
            user_id TEXT,
            created_ms INTEGER NOT NULL,
            source TEXT,
            channel_ids TEXT NOT NULL DEFAULT '',
            message_type_ids TEXT NOT NULL DEFAULT '',
            list_ids TEXT NOT NULL DEFAULT '',
            via TEXT NOT NULL CHECK (via IN ('webhook', 'export')),
            received_at REAL NOT NULL,
            deliveries INTEGER NOT NULL DEFAULT 1,
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            outcome TEXT,
            settled_at REAL
        )
        """,
        "CREATE INDEX consent_inbox_due ON consent_inbox (state, next_attempt_at)",
        "CREATE INDEX consent_inbox_settled ON consent_inbox (settled_at)",
        # Per export data type: read up to `cursor_ms` (exclusive), moved in the transaction
        # that stored the window's events.
        """
        CREATE TABLE consent_cursor (
            data_type TEXT PRIMARY KEY,
            cursor_ms INTEGER NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
        # An event of a userID-based project names the user by userId only.
        "CREATE INDEX identity_user_id ON identity (iterable_user_id)",
    ),
)

_V9 = Migration(
    9,
    "worker registry and one leadership lease per CDC channel, with a fencing token",
    (
        # One row per `streamsync run` process that ever joined this store; `heartbeat_at` is
        # refreshed every `workers.heartbeat_s`, `stopped_at` set on a clean stop.
        """
        CREATE TABLE worker (
            worker_id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL,
            stopped_at REAL
        )
        """,
        # Who subscribes to a channel: `holder` until `expires_at` (NULL holder: released).
        # `token` grows by one on every acquisition, never on a renewal; the replay-id and
        # anchor writes of the leader name it and are refused once it moved on (fencing).
        # `failovers` counts acquisitions from a holder whose lease ran out unreleased.
        """
        CREATE TABLE channel_lease (
            channel TEXT PRIMARY KEY,
            holder TEXT,
            token INTEGER NOT NULL CHECK (token >= 1),
            acquired_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            failovers INTEGER NOT NULL DEFAULT 0
        )
        """,
    ),
)

_V10 = Migration(
    10,
    "the mapping applied per object and the re-syncs a changed mapping owes",
    (
        # What the sync of an object sends (streamsync/core/fingerprint.py: canonical JSON
        # description and its sha256), as last finished applying; `streamsync plan` diffs it.
        """
        CREATE TABLE mapping_applied (
            object_name TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            description TEXT NOT NULL,
            applied_at REAL NOT NULL
        )
        """,
        # A re-sync towards `fingerprint`: keyset position (`last_id`) within its `phase`,
        # the targets it clears (JSON list) and its counts; deleted once applied.
        """
        CREATE TABLE resync (
            object_name TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            description TEXT NOT NULL,
            clears TEXT NOT NULL DEFAULT '[]',
            phase TEXT NOT NULL CHECK (phase IN ('sync', 'out_of_scope')),
            last_id TEXT,
            records_read INTEGER NOT NULL DEFAULT 0,
            records_written INTEGER NOT NULL DEFAULT 0,
            records_out_of_scope INTEGER NOT NULL DEFAULT 0,
            started_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
    ),
)

_V11 = Migration(
    11,
    "list_member rows by the Lead or Contact they subscribe (an email change re-syncs them)",
    ("CREATE INDEX list_member_by_person ON list_member (person_id)",),
)

_V12 = Migration(
    12,
    "custom events: candidates of CDC changes (new, ready, sent, dead) and the last known "
    "condition of each (rule, record)",
    (
        # One row per (rule, record, transaction): `event_id` is the id sent to Iterable, so a
        # replayed change finds its row and is ignored. Sent rows stay until pruned.
        """
        CREATE TABLE event_pending (
            event_id TEXT PRIMARY KEY,
            rule TEXT NOT NULL,
            object_name TEXT NOT NULL,
            record_id TEXT NOT NULL,
            change_type TEXT NOT NULL,
            commit_ts_ms INTEGER NOT NULL,
            fires INTEGER NOT NULL CHECK (fires IN (0, 1)),
            touches INTEGER NOT NULL CHECK (touches IN (0, 1)),
            change_values TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('new', 'ready', 'sent', 'dead')),
            payload TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            lease_token TEXT,
            last_error TEXT,
            reason TEXT,
            enqueued_at REAL NOT NULL,
            sent_at REAL
        )
        """,
        "CREATE INDEX event_pending_due ON event_pending (state, next_attempt_at)",
        "CREATE INDEX event_pending_sent ON event_pending (sent_at) WHERE state = 'sent'",
        """
        CREATE TABLE event_condition (
            rule TEXT NOT NULL,
            record_id TEXT NOT NULL,
            met INTEGER NOT NULL CHECK (met IN (0, 1)),
            condition_values TEXT NOT NULL,
            commit_ts_ms INTEGER NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (rule, record_id)
        )
        """,
    ),
)

_V13 = Migration(
    13,
    "the shared Iterable rate budget: a slot schedule per budget and lane, and its drawers",
    (
        # Per budget (Iterable project and endpoint family): lane 'all' is the schedule of the
        # whole budget (`tat`: store-clock time of its next free send slot), lanes 'service' and
        # 'backfill' advance at each kind's guaranteed share (adapters/store/budget_plan.py).
        """
        CREATE TABLE rate_budget (
            budget_key TEXT NOT NULL,
            lane TEXT NOT NULL CHECK (lane IN ('all', 'service', 'backfill')),
            tat REAL NOT NULL,
            rate_per_s REAL NOT NULL CHECK (rate_per_s > 0),
            updated_at REAL NOT NULL,
            PRIMARY KEY (budget_key, lane)
        )
        """,
        # One row per process drawing from a budget (for `status`): slots booked in the current
        # rate window and the rate of the previous one.
        """
        CREATE TABLE rate_budget_drawer (
            budget_key TEXT NOT NULL,
            drawer_id TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('service', 'backfill')),
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            joined_at REAL NOT NULL,
            last_claim_at REAL NOT NULL,
            slots_total INTEGER NOT NULL DEFAULT 0,
            window_start REAL NOT NULL,
            window_slots INTEGER NOT NULL DEFAULT 0,
            last_rate_per_s REAL NOT NULL DEFAULT 0,
            PRIMARY KEY (budget_key, drawer_id)
        )
        """,
    ),
)

_V14 = Migration(
    14,
    "joint backfills: window leases, the run's closing lease, and each participant's counts",
    (
        # A window is worked on by the process holding its lease (store clock); a lease that
        # expired (its process died) may be taken over from the window's checkpoint.
        "ALTER TABLE backfill_checkpoint ADD COLUMN lease_owner TEXT",
        "ALTER TABLE backfill_checkpoint ADD COLUMN lease_expires_at REAL",
        # The one participant running the catch-up and marking the run finished.
        "ALTER TABLE backfill_run ADD COLUMN close_owner TEXT",
        "ALTER TABLE backfill_run ADD COLUMN close_expires_at REAL",
        # Every process that worked on a run, its heartbeat and its counts (JSON object),
        # saved with each of its checkpoints, so the run's summary covers every participant.
        """
        CREATE TABLE backfill_participant (
            run_id TEXT NOT NULL REFERENCES backfill_run (run_id) ON DELETE CASCADE,
            participant_id TEXT NOT NULL,
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            joined_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL,
            left_at REAL,
            totals TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (run_id, participant_id)
        )
        """,
    ),
)

_V15 = Migration(
    15,
    "the shared rate budget: where each drawer's booked slots end (its rate for status)",
    ("ALTER TABLE rate_budget_drawer ADD COLUMN booked_until REAL NOT NULL DEFAULT 0",),
)

_V16 = Migration(
    16,
    "custom events: leases walk a state's rows in arrival order and find a record's other rows "
    "by index, not by sorting or scanning the whole backlog",
    (
        # By state, in rowid order: a lease takes the oldest rows of a state and stops (the
        # (state, next_attempt_at) index made it sort every due row of a 100,000-row backlog).
        "CREATE INDEX event_pending_by_state ON event_pending (state)",
        # A record's rows: whether an earlier undecided row of it lies outside a lease.
        "CREATE INDEX event_pending_by_record ON event_pending (record_id)",
    ),
)

MIGRATIONS: tuple[Migration, ...] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8, _V9, _V10, _V11, _V12,
                                     _V13, _V14, _V15, _V16)
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
