"""`streamsync store migrate --to postgresql://…`: a SQLite store a service ran on is copied
into an empty PostgreSQL database with nothing lost (every table's rows equal), and a service
started on the new store resumes from the stored replay ids: changes made in Salesforce while
nothing ran reach Iterable by replay. A running service, a non-empty target and a password in
the URL are refused."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from streamsync.adapters.cometd import ReplayId
from streamsync.adapters.store import BackfillWindow, IdentityUpdate, QueueInput, Store
from streamsync.adapters.store.owner import StoreOwnership
from streamsync.config import Config, parse_config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.errors import FatalError, StoreBusy
from streamsync.runtime import replay_anchors
from streamsync.runtime.store_migrate import migrate_store
from streamsync.runtime.store_open import open_store
from streamsync.testing.pg_server import PgServer
from tests.e2e.harness import FinalStateChecker, InProcessService, backfill, wait_caught_up
from tests.e2e.process import service_config_data, toml_dumps
from tests.e2e.test_postgres_store import app_database
from tests.store_backends import create_database
from tests.test_cli import run_cli, secret_env

pytestmark = [
    pytest.mark.salesforce(long_poll_s=1.0, seed_accounts=3, seed_contacts=12, seed_leads=12),
    pytest.mark.timeout(120),
]
# PostgreSQL numbers these itself, in the SQLite rows' order (postgres/copy.py).
RENUMBERED = {"backfill_run": "seq", "error_log": "id"}


def configs(sf: SalesforceEmulator, it: IterableEmulator, workdir: Path, url: str,
            password: str) -> tuple[Config, Config]:
    """The same service on its SQLite file, and on the PostgreSQL database at `url`."""
    env = {"STREAMSYNC_SF_CLIENT_SECRET": sf.client_secret,
           "STREAMSYNC_ITERABLE_API_KEY": it.api_key, "STREAMSYNC_STORE_PASSWORD": password}
    sqlite = parse_config(service_config_data(sf, it, workdir), env)
    pg = parse_config(service_config_data(sf, it, workdir, store={"url": url}), env)
    return sqlite, pg


def sqlite_rows(path: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows as comparable tuples (by column name, renumbered columns left out)."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        out: dict[str, list[tuple[Any, ...]]] = {}
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = "
                                            "'table' AND name NOT LIKE 'sqlite_%'")]
        for name in names:
            columns = [c[1] for c in conn.execute(f'PRAGMA table_info("{name}")')
                       if c[1] != RENUMBERED.get(name)]
            rows = conn.execute(f'SELECT {", ".join(columns)} FROM "{name}"').fetchall()
            out[name] = sorted((tuple(zip(columns, row, strict=True)) for row in rows), key=repr)
        return out
    finally:
        conn.close()


async def postgres_rows(url: str, password: str, tables: dict[str, list[tuple[Any, ...]]]
                        ) -> dict[str, list[tuple[Any, ...]]]:
    """The same view of the PostgreSQL copy (booleans as 0/1, the replay id one column)."""
    conn = await asyncpg.connect(url, password=password)
    try:
        out: dict[str, list[tuple[Any, ...]]] = {}
        for name, rows in tables.items():
            columns = [c for c, _ in rows[0]] if rows else []
            if not columns:
                out[name] = [] if not await conn.fetchval(f'SELECT count(*) FROM "{name}"') \
                    else [("rows", "unexpected")]
                continue
            select = [("coalesce(replay_id_int::text, replay_id_text) AS replay_id"
                       if (name, c) == ("replay", "replay_id") else f'"{c}"') for c in columns]
            fetched = await conn.fetch(f'SELECT {", ".join(select)} FROM "{name}"')
            converted = []
            for record in fetched:
                values = []
                for column, value in zip(columns, record, strict=True):
                    if isinstance(value, bool):
                        value = int(value)
                    if (name, column) == ("replay", "replay_id") and value is not None \
                            and value.lstrip("-").isdigit():
                        value = int(value)
                    values.append((column, value))
                converted.append(tuple(values))
            out[name] = sorted(converted, key=repr)
        return out
    finally:
        await conn.close()


async def test_nothing_is_lost_and_the_service_resumes_from_the_stored_replay_ids(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        pg_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    url, password = await app_database(pg_server)
    on_sqlite, on_pg = configs(sf_emulator, iterable_emulator, tmp_path, url, password)

    # A service ran on SQLite: replay ids, identities, a backfill, a queue, dead letters, errors.
    await backfill(on_sqlite)
    service = InProcessService(on_sqlite)
    await service.start()
    store = await open_store(on_sqlite)
    try:
        leads = sf_emulator.select_ids("Lead", "IsDeleted = false AND Email != null AND "
                                       "IsConverted = false", 3)
        sf_emulator.state.update("Lead", leads[0], {"FirstName": "Before"})
        await wait_caught_up(store, sf_emulator, on_sqlite, 30.0)
        assert await service.stop() == 0
        await store.enqueue([QueueInput("Contact", "003000000000001AAA")], time.time(), "retry")
        await store.add_dead_letters("Lead", {"00Q000000000009AAA": ("invalid_email", "x")},
                                     time.time())
        await store.note_error("iterable", "HTTP 503", time.time())
        await store.save_identities([IdentityUpdate("Lead", "00Q000000000009AAA",
                                                    "odd@example.com", None, "h")], time.time())
        await store.save_checkpoint((await store.latest_run()).run_id,  # type: ignore[union-attr]
                                    BackfillWindow("Lead", "a", "b"), "00Q1", 1, time.time())
        stored = {r.channel: r.replay_id for r in await store.replays()}
    finally:
        await service.abandon()
        await store.close()
    assert stored and all(isinstance(v, int) for v in stored.values())

    # While nothing runs, Salesforce changes: only replay brings these.
    sf_emulator.state.update("Lead", leads[1], {"FirstName": "WhileStopped"})
    before = sqlite_rows(on_sqlite.queue.path)
    result = await migrate_store(on_sqlite, url, now=time.time())
    assert result.rows == {name: len(rows) for name, rows in before.items()}
    assert result.total > 0 and result.target == url
    assert await postgres_rows(url, password, before) == before

    asked: dict[str, ReplayId | None] = {}
    original = replay_anchors.ReplayAnchors.replay_from

    async def spy(self: replay_anchors.ReplayAnchors, channel: str) -> ReplayId | None:
        got = await original(self, channel)
        asked.setdefault(channel, got)
        return got

    monkeypatch.setattr(replay_anchors.ReplayAnchors, "replay_from", spy)
    service = InProcessService(on_pg)
    await service.start()
    store = await open_store(on_pg)
    try:
        await wait_caught_up(store, sf_emulator, on_pg, 30.0)
        assert {c: asked[c] for c in stored} == stored  # resumed where SQLite left off
        assert await store.purge_dead_letters("invalid_email") == 1  # the made-up one above
        async with FinalStateChecker.open(on_pg, iterable_emulator) as checker:
            await checker.assert_consistent(10.0)
        assert await service.stop() == 0
    finally:
        await service.abandon()
        await store.close()


async def test_a_running_service_and_a_non_empty_target_are_refused(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        pg_server: PgServer) -> None:
    url, password = await app_database(pg_server)
    on_sqlite, _ = configs(sf_emulator, iterable_emulator, tmp_path, url, password)
    store = await Store.open(on_sqlite.queue.path)
    await store.enqueue([QueueInput("Lead", "00Q000000000001AAA")], 1.0, "cdc")
    await store.close()
    running = StoreOwnership.acquire(on_sqlite.queue.path, now=1.0)
    try:
        with pytest.raises(StoreBusy):
            await migrate_store(on_sqlite, url, now=2.0)
    finally:
        running.release()
    assert (await migrate_store(on_sqlite, url, now=3.0)).rows["queue"] == 1
    with pytest.raises(FatalError, match=r"not empty \(.*queue: 1 rows"):
        await migrate_store(on_sqlite, url, now=4.0)
    empty_other = await create_database(pg_server)
    with pytest.raises(FatalError, match="does not exist"):
        await migrate_store(parse_config(service_config_data(
            sf_emulator, iterable_emulator, tmp_path / "nothing-here"), secret_env()),
            empty_other, now=5.0)


def test_the_command_prints_what_it_copied_and_refuses_a_password_in_the_url(
        tmp_path: Path, pg_server: PgServer) -> None:
    import asyncio

    db = tmp_path / "streamsync.db"

    async def prepare() -> str:
        async with await Store.open(db) as store:
            await store.record_event("/data/LeadChangeEvent", 41, [
                QueueInput("Lead", "00Q000000000001AAA")], 1_000, 1.0)
        return await create_database(pg_server)

    url = asyncio.run(prepare())
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps({
        "salesforce": {"login_url": "http://127.0.0.1:9", "auth": "client_credentials",
                       "client_id": "x"},
        "queue": {"path": str(db)}}))
    done = run_cli("store", "migrate", "--to", url, "-c", str(config))
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line.split()[-1] for line in done.stdout.splitlines()
             if len(line.split()) == 2}
    assert (lines["queue"], lines["replay"], lines["identity"]) == ("1", "1", "0")
    assert "row counts verified" in done.stdout and f'url = "{url}"' in done.stdout
    refused = run_cli("store", "migrate", "--to", "postgresql://u:hunter2-secret@h/db",
                      "-c", str(config))
    assert refused.returncode == 2 and "carries a password" in refused.stderr
    assert "hunter2" not in refused.stderr + refused.stdout


async def test_a_table_postgresql_cannot_hold_stops_the_copy_before_anything_is_written(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        pg_server: PgServer) -> None:
    import sqlite3

    url, password = await app_database(pg_server)
    on_sqlite, _ = configs(sf_emulator, iterable_emulator, tmp_path, url, password)
    async with await Store.open(on_sqlite.queue.path) as store:
        await store.enqueue([QueueInput("Lead", "00Q000000000001AAA")], 1.0, "cdc")
    raw = sqlite3.connect(on_sqlite.queue.path)
    with raw:
        raw.execute("CREATE TABLE surprise (x INTEGER)")
        raw.execute("ALTER TABLE meta ADD COLUMN extra TEXT")
    raw.close()
    with pytest.raises(FatalError) as refused:
        await migrate_store(on_sqlite, url, now=1.0)
    assert "table surprise" in str(refused.value) and "column meta.extra" in str(refused.value)
    conn = await asyncpg.connect(url, password=password)
    try:
        assert await conn.fetchval("SELECT count(*) FROM queue") == 0  # nothing was copied
    finally:
        await conn.close()
