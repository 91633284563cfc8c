"""The PostgreSQL store's own concerns: rollback of a failed event, migrations under concurrency,
leases exclusive across processes (`FOR UPDATE SKIP LOCKED`), merged reconciliations from two
processes, and driver errors translated at the edge (docs/design.md §1.6, §6)."""

from __future__ import annotations

import asyncio

import asyncpg
import orjson
import pytest

from streamsync.adapters.store import QueueInput
from streamsync.adapters.store.postgres import (
    LATEST_VERSION,
    PostgresStore,
    redacted_url,
    schema_version,
    translate,
)
from streamsync.adapters.store.postgres import schema as pg_schema
from streamsync.adapters.store.postgres.queue import UPSERT_SQL
from streamsync.adapters.store.postgres.schedule import PENDING_LOCK
from streamsync.adapters.store.postgres.schema import MIGRATIONS, PgMigration
from streamsync.errors import FatalError, StreamsyncError, TransientError
from streamsync.testing.pg_server import PgServer, free_port
from tests.store_backends import peek

T0 = 1_700_000_000.0
CHANNEL = "/data/LeadChangeEvent"


def lead(n: int) -> QueueInput:
    return QueueInput("Lead", f"00Q{n:015d}")


async def _queued(store: PostgresStore) -> set[str]:
    return {str(row[0]) for row in await peek(store, "SELECT record_id FROM queue")}


async def test_failure_mid_event_rolls_back_ids_and_replay_id(pg_url: str) -> None:
    async with await PostgresStore.open(pg_url) as store:
        await store.record_event(CHANNEL, 10, [lead(1)], 1_000, T0)
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("""
                CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION 'injected failure'; END $$;
                CREATE TRIGGER poison BEFORE INSERT ON queue FOR EACH ROW
                    WHEN (NEW.record_id = 'poison') EXECUTE FUNCTION poison();
                CREATE TRIGGER stuck BEFORE UPDATE ON replay FOR EACH ROW
                    WHEN (NEW.replay_id_int = 12) EXECUTE FUNCTION poison();
            """)
        finally:
            await conn.close()
        # ids first, the failing one last (key order): the others were written, then undone
        items = [lead(2), lead(3), QueueInput("Lead", "poison")]
        with pytest.raises(StreamsyncError, match="injected failure"):
            await store.record_event(CHANNEL, 11, items, 2_000, T0 + 1)
        with pytest.raises(FatalError, match="injected failure"):  # the replay write fails
            await store.record_event(CHANNEL, 12, [lead(4), lead(5)], 3_000, T0 + 2)
        assert await _queued(store) == {lead(1).record_id}
        replay = await store.get_replay(CHANNEL)
        assert replay is not None and (replay.replay_id, replay.last_commit_ts_ms) == (10, 1_000)
        await store.record_event(CHANNEL, "opaque-13", [lead(6)], 4_000, T0 + 3)
        assert await _queued(store) == {lead(1).record_id, lead(6).record_id}


async def test_migrations_are_versioned_and_a_newer_schema_is_refused(pg_url: str) -> None:
    await (await PostgresStore.open(pg_url)).close()
    await (await PostgresStore.open(pg_url)).close()  # reopening applies nothing twice
    conn = await asyncpg.connect(pg_url)
    try:
        assert await schema_version(conn) == LATEST_VERSION
        rows = await conn.fetch("SELECT version FROM schema_version ORDER BY version")
        assert [row[0] for row in rows] == [m.version for m in MIGRATIONS]
        # A version the database lacks (one added to the list later, below the newest) is
        # applied at the next start even though a newer one is there.
        gap = MIGRATIONS[1]
        await conn.execute("DROP TABLE consent_state")
        await conn.execute("DELETE FROM schema_version WHERE version = $1", gap.version)
    finally:
        await conn.close()
    async with await PostgresStore.open(pg_url) as store:
        assert await store.consent_states("Lead", ["00Q1"]) == {}
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("INSERT INTO schema_version VALUES ($1, 'from the future', 0)",
                           LATEST_VERSION + 1)
    finally:
        await conn.close()
    with pytest.raises(FatalError, match="newer"):
        await PostgresStore.open(pg_url)


async def test_a_step_added_under_a_lower_number_still_runs_on_a_newer_database(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL skips the numbers of SQLite steps it does not need yet; one filled in later
    must not be taken as applied because a higher version is."""
    await (await PostgresStore.open(pg_url)).close()
    assert LATEST_VERSION > 4 and 4 not in [m.version for m in MIGRATIONS]
    late = PgMigration(4, "filled in later", ("CREATE TABLE filled_in_later (x integer)",))
    monkeypatch.setattr(pg_schema, "MIGRATIONS",
                        tuple(sorted((*MIGRATIONS, late), key=lambda m: m.version)))
    await (await PostgresStore.open(pg_url)).close()
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('filled_in_later') IS NOT NULL")
        assert await schema_version(conn) == LATEST_VERSION
    finally:
        await conn.close()


async def test_leases_are_exclusive_across_processes(pg_url: str) -> None:
    """Three stores with their own pools (three processes' view) lease one queue at once."""
    stores = [await PostgresStore.open(pg_url) for _ in range(3)]
    try:
        await stores[0].enqueue([lead(n) for n in range(600)], T0, "cdc")

        async def flusher(store: PostgresStore, name: str) -> list[str]:
            got: list[str] = []
            while leases := await store.lease(name, 25, 60, T0 + 1):
                got.extend(lease.record_id for lease in leases)
                await store.ack(leases)
            return got

        results = await asyncio.gather(*(flusher(s, f"w{i}") for i, s in enumerate(stores)
                                         for _ in range(2)))
        every = [rid for got in results for rid in got]
        assert len(every) == len(set(every)) == 600  # each row leased exactly once
        assert (await stores[1].queue_stats(T0 + 2)).depth == 0
    finally:
        for store in stores:
            await store.close()


async def test_a_lease_skips_rows_another_transaction_holds(pg_url: str) -> None:
    async with await PostgresStore.open(pg_url) as store:
        await store.enqueue([lead(1), lead(2)], T0, "cdc")
        other = await asyncpg.connect(pg_url)
        try:
            async with other.transaction():
                await other.execute("SELECT 1 FROM queue WHERE record_id = $1 FOR UPDATE",
                                    lead(1).record_id)
                leases = await asyncio.wait_for(store.lease("f", 10, 30, T0), timeout=5)
                assert [lease.record_id for lease in leases] == [lead(2).record_id]
        finally:
            await other.close()
        [late] = await store.lease("f", 10, 30, T0)
        assert late.record_id == lead(1).record_id


async def test_owed_reconciliations_from_two_processes_merge(pg_url: str) -> None:
    first, second = await PostgresStore.open(pg_url), await PostgresStore.open(pg_url)
    try:
        await asyncio.gather(*(
            (first if n % 2 else second).set_reconcile_pending("Lead", 1_000 * n, f"t{n}", T0)
            for n in range(1, 21)))
        owed = await first.reconcile_pending("Lead")
        assert owed is not None and owed.since_ms == 1_000 and owed.seq == 20
        assert set(owed.trigger.split("+")) == {f"t{n}" for n in range(1, 21)}
    finally:
        await first.close()
        await second.close()


async def test_a_connection_dropped_mid_transaction_is_transient_and_the_store_recovers(
        pg_url: str) -> None:
    async with await PostgresStore.open(pg_url, pool_size=1) as store:
        await store.enqueue([lead(1)], T0, "cdc")
        admin = await asyncpg.connect(pg_url)
        try:
            async with admin.transaction():  # the store's next write waits on this lock
                await admin.execute("SELECT pg_advisory_xact_lock($1, hashtext('Lead'))",
                                    PENDING_LOCK)
                owe = asyncio.create_task(store.set_reconcile_pending("Lead", 1, "gap", T0))
                for _ in range(200):
                    if await admin.fetchval(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                            "'Lock' AND datname = current_database()"):
                        break
                    await asyncio.sleep(0.02)
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")
                with pytest.raises(TransientError, match="set_reconcile_pending"):
                    await owe
        finally:
            await admin.close()
        assert await store.reconcile_pending("Lead") is None  # rolled back with the connection
        assert (await store.queue_stats(T0)).depth == 1  # the pool connected again


async def test_an_unreachable_server_is_transient_and_a_closed_store_fatal(
        pg_server: PgServer, pg_url: str) -> None:
    nobody = f"postgresql://streamsync@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(TransientError, match="cannot reach PostgreSQL"):
        await PostgresStore.open(nobody, connect_timeout_s=2)
    store = await PostgresStore.open(pg_url)
    await store.close()
    await store.close()
    with pytest.raises(FatalError, match="closed"):
        await store.enqueue([lead(1)], T0, "cdc")


async def test_a_wrong_password_is_fatal_and_never_shown(pg_server: PgServer) -> None:
    admin = await asyncpg.connect(pg_server.url())
    try:
        await admin.execute("CREATE ROLE app LOGIN PASSWORD 'right-horse-battery'")
        await admin.execute("CREATE DATABASE app_db OWNER app")
    finally:
        await admin.close()
    url = pg_server.url("app_db", user="app")
    async with await PostgresStore.open(url, password="right-horse-battery") as store:
        assert store.location == url
    with pytest.raises(FatalError) as refused:
        await PostgresStore.open(url, password="wrong-staple")
    assert "wrong-staple" not in str(refused.value)


def test_driver_errors_are_sorted_by_what_the_caller_should_do() -> None:
    for exc in (asyncpg.DeadlockDetectedError("deadlock"),
                asyncpg.SerializationError("could not serialize"),
                asyncpg.TooManyConnectionsError("too many"),
                asyncpg.AdminShutdownError("terminating"),
                asyncpg.CannotConnectNowError("starting up"),
                asyncpg.ConnectionDoesNotExistError("gone"),
                asyncpg.InterfaceError("connection is closed"),
                asyncpg.exceptions.InternalClientError(
                    "cannot switch to state 15; another operation (2) is in progress"),
                ConnectionRefusedError(111, "refused"), TimeoutError()):
        assert isinstance(translate(exc, "lease"), TransientError), exc
    for exc in (asyncpg.UniqueViolationError("dup"), asyncpg.UndefinedTableError("no table"),
                asyncpg.InvalidPasswordError("bad password"),
                asyncpg.InterfaceError("the server expects 2 arguments")):
        assert isinstance(translate(exc, "lease"), FatalError), exc


def test_a_url_is_shown_without_its_password() -> None:
    assert redacted_url("postgresql://app:s3cret@db.internal:5433/sync?sslmode=require") == (
        "postgresql://app@db.internal:5433/sync")
    assert "s3cret" not in redacted_url("postgres://:s3cret@h/db")


def _scans(plan_json: str) -> set[tuple[str, str | None]]:
    """(node type, table) of every scan in an `EXPLAIN (FORMAT JSON)` plan."""
    found: set[tuple[str, str | None]] = set()
    nodes = [orjson.loads(plan_json)[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        if "Scan" in node["Node Type"]:
            found.add((node["Node Type"], node.get("Relation Name")))
        nodes.extend(node.get("Plans", []))
    return found


async def test_an_ack_finds_its_rows_by_index_never_by_scanning_the_queue(pg_url: str) -> None:
    """An ack costs the batch, not the queue: joining 1,000 keys with a queue of a few thousand
    rows, a planner picks a hash of the whole queue (a scan of every row)."""
    async with await PostgresStore.open(pg_url, pool_size=1) as store:
        await store.enqueue([lead(n) for n in range(3_000)], T0, "cdc")
        leases = await store.lease("f", 1_000, 30, T0)
        sent: list[asyncpg.connection.LoggedQuery] = []
        async with store._read("test") as conn:  # the pool's one connection
            conn.add_query_logger(sent.append)
        assert (await store.ack(leases)).deleted == 1_000
        await asyncio.sleep(0.05)  # query loggers are called soon after each statement
        async with store._read("test") as conn:
            conn.remove_query_logger(sent.append)
            statements = [q for q in sent if q.args and "queue" in q.query]
            assert statements
            for query in statements:
                plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {query.query}", *query.args)
                assert ("Seq Scan", "queue") not in _scans(plan), query.query
        assert await _queued(store) == {lead(n).record_id for n in range(1_000, 3_000)}


async def test_a_record_re_enqueued_while_its_ack_runs_stays_queued_and_due(pg_url: str) -> None:
    """The ack's one statement waits for the row an enqueue holds, then finds it changed (a new
    version at a new address): it is not deleted, but released to be synced again, like a row
    re-enqueued before the ack."""
    async with await PostgresStore.open(pg_url) as store:
        await store.enqueue([lead(1), lead(2)], T0, "cdc")
        leases = await store.lease("f", 10, 30, T0)
        other = await asyncpg.connect(pg_url)
        try:
            tx = other.transaction()
            await tx.start()
            await other.execute(UPSERT_SQL, ["Lead"], [lead(1).record_id], ["UPDATE"], [1],
                                "cdc", T0 + 1, None)
            ack = asyncio.create_task(store.ack(leases))
            for _ in range(500):  # until the ack waits for the row lock the enqueue holds
                if await other.fetchval("SELECT count(*) FROM pg_stat_activity "
                                        "WHERE wait_event_type = 'Lock'"):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the ack never waited for the enqueued row")
            await tx.commit()
            result = await asyncio.wait_for(ack, timeout=10)
        finally:
            await other.close()
        assert (result.deleted, result.kept) == (1, 1)
        [again] = await store.lease("g", 10, 30, T0 + 2)
        assert (again.record_id, again.version, again.attempts) == (lead(1).record_id, 2, 0)
