"""Durability of the store: atomic events, kill -9, cancellation, migrations, 2 processes; on
both backends, except the tests named `test_sqlite_*` (file modes, WAL locking, PRAGMA
user_version): tests/adapters/test_store_postgres.py has their PostgreSQL counterparts."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import stat
import sys
import textwrap
from pathlib import Path

import aiosqlite
import pytest

from streamsync.adapters.store import (
    LATEST_VERSION,
    QueueInput,
    Store,
    StoreAPI,
    migrate,
    schema_version,
)
from streamsync.errors import FatalError, StreamsyncError, TransientError
from tests.store_backends import StoreSpace, peek

T0 = 1_700_000_000.0
CHANNEL = "/data/LeadChangeEvent"
REPO_ROOT = Path(__file__).resolve().parents[2]


def lead(n: int) -> QueueInput:
    return QueueInput("Lead", f"00Q{n:015d}")


async def _queued_ids(store: StoreAPI) -> set[str]:
    return {str(row[0]) for row in await peek(store, "SELECT record_id FROM queue")}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_sqlite_failure_mid_event_rolls_back_ids_and_replay_id(tmp_path: Path) -> None:
    path = tmp_path / "atomic.db"
    store = await Store.open(path)
    try:
        await store.record_event(CHANNEL, 10, [lead(1)], 1_000, T0)
        # Inject a failure on the LAST id of the next event, after the others were written.
        async with store._tx("inject") as conn:
            await conn.execute(
                "CREATE TRIGGER poison BEFORE INSERT ON queue WHEN NEW.record_id = 'poison' "
                "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
            )
        items = [lead(2), lead(3), QueueInput("Lead", "poison")]
        with pytest.raises(StreamsyncError, match="injected failure"):
            await store.record_event(CHANNEL, 11, items, 2_000, T0 + 1)
        assert await _queued_ids(store) == {lead(1).record_id}
        replay = await store.get_replay(CHANNEL)
        assert replay is not None
        assert (replay.replay_id, replay.last_commit_ts_ms) == (10, 1_000)

        # And the other way round: the replay write fails after the ids were written.
        async with store._tx("inject") as conn:
            await conn.execute(
                "CREATE TRIGGER stuck BEFORE UPDATE ON replay WHEN NEW.replay_id = 12 "
                "BEGIN SELECT RAISE(ABORT, 'replay write failed'); END"
            )
        with pytest.raises(FatalError, match="replay write failed"):
            await store.record_event(CHANNEL, 12, [lead(4), lead(5)], 3_000, T0 + 2)
        assert await _queued_ids(store) == {lead(1).record_id}
        replay = await store.get_replay(CHANNEL)
        assert replay is not None and replay.replay_id == 10

        # The store is still usable afterwards (the failed transaction was rolled back).
        await store.record_event(CHANNEL, "opaque-13", [lead(6)], 4_000, T0 + 3)
        replay = await store.get_replay(CHANNEL)
        assert replay is not None and replay.replay_id == "opaque-13"
        assert await _queued_ids(store) == {lead(1).record_id, lead(6).record_id}
    finally:
        await store.close()


async def test_merged_event_of_2000_ids_is_one_commit(store_space: StoreSpace) -> None:
    store = await store_space.open()
    try:
        items = [lead(n) for n in range(2_000)]
        await store.record_event(CHANNEL, 99, items, 5_000, T0)
        assert (await store.queue_stats(T0)).depth == 2_000
        leases = await store.lease("f", 1_000, 30, T0)
        assert len(leases) == 1_000  # memory bounded by `limit`
    finally:
        await store.close()


async def test_sqlite_database_and_wal_files_are_owner_only(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # even a permissive umask must not widen the files
    try:
        path = tmp_path / "state" / "perm.db"
        store = await Store.open(path)
        await store.record_event(CHANNEL, 1, [lead(1)], 1, T0)
        wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
        assert (_mode(path), _mode(wal), _mode(shm)) == (0o600, 0o600, 0o600)
        assert _mode(path.parent) == 0o700
        await store.close()
    finally:
        os.umask(old_umask)

    loose = tmp_path / "loose.db"
    loose.touch()
    loose.chmod(0o644)
    store = await Store.open(loose)
    await store.close()
    assert _mode(loose) == 0o600


async def test_sqlite_open_without_create_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FatalError, match="does not exist"):
        await Store.open(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(FatalError, match="not a regular file"):
        await Store.open(tmp_path)


async def test_closed_store_raises_a_clear_error(store_space: StoreSpace) -> None:
    store = await store_space.open()
    await store.close()
    await store.close()
    with pytest.raises(FatalError, match="closed"):
        await store.queue_stats(T0)


async def test_sqlite_upgrade_from_v1_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    async with aiosqlite.connect(str(path), isolation_level=None) as conn:
        assert await migrate(conn, target=1) == 1
        await conn.execute(
            "INSERT INTO queue (object_name, record_id, change_type, source, first_enqueued_at, "
            "last_enqueued_at, next_attempt_at) VALUES ('Lead', 'A', 'UPDATE', 'cdc', 1, 1, 1)"
        )
        await conn.execute(
            "INSERT INTO identity VALUES ('Contact', 'C1', 'Ann@Example.com', NULL, 'h1', 5)"
        )
        await conn.execute("INSERT INTO replay VALUES ('/data/X', 42, 7, 1)")

    store = await Store.open(path)
    try:
        async with store._read("version") as conn:
            assert await schema_version(conn) == LATEST_VERSION
        [lease] = await store.lease("f", 10, 30, T0)
        assert (lease.record_id, lease.version) == ("A", 1)
        [ident] = await store.find_by_email("ann@example.com")  # v3 index, v1 data
        assert ident.record_id == "C1"
        await store.start_run("r1", [], {}, T0)  # v2 tables
        await store.note_error("flusher", "boom", T0)  # v3 table
        replay = await store.get_replay("/data/X")
        assert replay is not None and replay.replay_id == 42
    finally:
        await store.close()


async def test_sqlite_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    await (await Store.open(path)).close()
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    with pytest.raises(FatalError, match="newer"):
        await Store.open(path)


async def test_two_processes_opening_a_new_store_at_once_migrate_once(
        store_space: StoreSpace) -> None:
    first, second = await asyncio.gather(store_space.open(), store_space.open())
    try:
        await first.enqueue([lead(1)], T0, "cdc")
        assert (await second.queue_stats(T0)).depth == 1
    finally:
        await first.close()
        await second.close()


async def test_sqlite_second_connection_reads_and_writes_while_the_first_writes(
        tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    service = await Store.open(path)
    status = await Store.open(path, create=False)  # what the `status` CLI does
    try:

        async def ingest() -> None:
            for n in range(60):
                await service.record_event(CHANNEL, n, [lead(n), lead(n + 1)], n, T0 + n)

        async def backfill_catchup() -> None:
            for n in range(60):
                await status.enqueue([QueueInput("Contact", f"003{n:015d}")], T0 + n, "catchup")
                await status.queue_stats(T0 + n)

        await asyncio.gather(ingest(), backfill_catchup())
        assert (await status.queue_stats(T0 + 100)).depth == 61 + 60
        replay = await status.get_replay(CHANNEL)
        assert replay is not None and replay.replay_id == 59

        # A reader is never blocked by an open write transaction of the other process...
        raw = sqlite3.connect(path, timeout=0)
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("INSERT INTO meta (key, value, updated_at) VALUES ('uncommitted', 'x', 0)")
        assert await status.get_meta("uncommitted") is None
        assert (await status.queue_stats(T0 + 100)).depth == 121
        # ...and a writer that waits longer than busy_timeout gets a retriable error.
        impatient = await Store.open(path, busy_timeout_s=0.05)
        try:
            with pytest.raises(TransientError, match="busy"):
                await impatient.enqueue([lead(999)], T0, "cdc")
        finally:
            raw.rollback()
            raw.close()
            await impatient.close()
        await service.enqueue([lead(999)], T0, "cdc")
    finally:
        await service.close()
        await status.close()


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from streamsync.adapters.store import IdentityUpdate, QueueInput, Store
    from streamsync.adapters.store.postgres import PostgresStore

    async def main(path: str, start: int) -> None:
        if path.startswith("postgresql://"):
            store = await PostgresStore.open(path)
        else:
            store = await Store.open(path)
        n = start
        while True:
            items = [QueueInput("Lead", f"{n}-{k}") for k in range(5)]
            await store.record_event("/data/LeadChangeEvent", n, items, n, float(n))
            print(n, flush=True)
            if n % 7 == 0:  # a flusher: the sink confirms (identity saved), then ack
                leases = await store.lease("child", 3, 30.0, float(n))
                await store.save_identities(
                    [IdentityUpdate(x.object_name, x.record_id, None, x.record_id, "h")
                     for x in leases],
                    float(n),
                )
                await store.ack(leases)
            n += 1

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


async def test_kill_9_never_loses_a_committed_event(store_space: StoreSpace) -> None:
    path = store_space.url or str(store_space.path)
    confirmed: list[int] = []
    start = 0
    for round_no in range(3):
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            str(path),
            str(start),
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO_ROOT,
        )
        assert child.stdout is not None
        target = 150 + 37 * round_no  # kill at a different point each round
        seen = 0
        while seen < target:
            line = await asyncio.wait_for(child.stdout.readline(), timeout=30)
            assert line, "child exited early"
            confirmed.append(int(line))
            seen += 1
        child.send_signal(signal.SIGKILL)
        rest, _ = await child.communicate()  # lines printed before the kill landed
        confirmed.extend(int(x) for x in rest.split())
        assert child.returncode == -signal.SIGKILL

        store = await store_space.open()
        try:
            replay = await store.get_replay("/data/LeadChangeEvent")
            assert replay is not None and isinstance(replay.replay_id, int)
            assert replay.replay_id >= confirmed[-1]
            acked = await _acked_ids(store)
            queued = await _queued_ids(store)
            for n in confirmed:
                for k in range(5):
                    rid = f"{n}-{k}"
                    assert rid in queued or rid in acked, f"event {n} lost ({rid})"
            start = int(replay.replay_id) + 1  # resume from the stored replay id
        finally:
            await store.close()
    assert len(confirmed) >= 150 + 187 + 224


async def _acked_ids(store: StoreAPI) -> set[str]:
    # The child saves an identity for every row the "sink" confirmed before acking it.
    return {str(row[0]) for row in await peek(store, "SELECT record_id FROM identity")}


async def test_cancelled_write_leaves_all_or_nothing_and_a_usable_store(
        store_space: StoreSpace) -> None:
    store = await store_space.open()
    try:
        for yields in range(8):
            items = [QueueInput(f"Obj{yields}", f"id{n}") for n in range(2_000)]
            task = asyncio.create_task(store.record_event(CHANNEL, yields, items, None, T0))
            for _ in range(yields):
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            depth = (await store.queue_depth_by_object()).get(f"Obj{yields}", 0)
            replay = await store.get_replay(CHANNEL)
            committed = replay is not None and replay.replay_id == yields
            assert depth == (2_000 if committed else 0)
            await store.enqueue([QueueInput("After", str(yields))], T0, "cdc")  # still usable
    finally:
        await store.close()
