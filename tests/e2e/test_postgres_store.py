"""The service on a PostgreSQL store (`[store] url`, its password from the environment): a
backfill and the running service keep Iterable equal to Salesforce, and no SQLite file is made.
A shared store holds no single-owner lock: a second `run` joins it."""

from __future__ import annotations

import itertools
from pathlib import Path

import asyncpg
import pytest

from streamsync.adapters.store.postgres import PostgresStore
from streamsync.config import Config, parse_config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.logs import REDACTED, redactor
from streamsync.runtime.store_open import hold_store, open_store
from streamsync.testing.pg_server import PgServer
from tests.e2e.harness import FinalStateChecker, InProcessService, backfill, wait_caught_up
from tests.e2e.process import service_config_data

pytestmark = [
    pytest.mark.salesforce(long_poll_s=1.0, seed_accounts=3, seed_contacts=12, seed_leads=12),
    pytest.mark.timeout(90),
]

_roles = itertools.count(1)


async def app_database(server: PgServer) -> tuple[str, str]:
    """A database owned by a new password-protected role: (URL without password, password)."""
    n = next(_roles)
    role, password = f"sync_app_{n}", f"pw-{n}-correct-horse-battery"
    admin = await asyncpg.connect(server.url())
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await admin.execute(f"CREATE DATABASE {role}_db OWNER {role}")
    finally:
        await admin.close()
    return server.url(f"{role}_db", user=role), password


def leftovers(path: Path, pattern: str) -> list[Path]:
    return list(path.glob(pattern))


def pg_config(sf: SalesforceEmulator, it: IterableEmulator, workdir: Path, url: str,
              password: str) -> Config:
    data = service_config_data(sf, it, workdir, store={"url": url})
    env = {"STREAMSYNC_SF_CLIENT_SECRET": sf.client_secret,
           "STREAMSYNC_ITERABLE_API_KEY": it.api_key, "STREAMSYNC_STORE_PASSWORD": password}
    return parse_config(data, env)


async def test_the_service_keeps_iterable_in_step_on_a_postgresql_store(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        pg_server: PgServer) -> None:
    url, password = await app_database(pg_server)
    config = pg_config(sf_emulator, iterable_emulator, tmp_path, url, password)
    assert redactor().text(f"auth failed for {password}") == f"auth failed for {REDACTED}"

    await backfill(config)
    service = InProcessService(config)
    await service.start()
    store = await open_store(config)
    try:
        assert isinstance(store, PostgresStore) and store.location == url
        lead = sf_emulator.select_ids("Lead", "IsDeleted = false AND Email != null "
                                      "AND IsConverted = false", 1)[0]
        sf_emulator.state.update("Lead", lead, {"FirstName": "Grace"})
        await wait_caught_up(store, sf_emulator, config, 30.0)
        async with FinalStateChecker.open(config, iterable_emulator) as checker:
            await checker.assert_consistent(10.0)
        replays = await store.replays()
        assert replays and all(r.replay_id is not None for r in replays)
        assert await service.stop() == 0
    finally:
        await service.abandon()
        await store.close()
    assert not leftovers(tmp_path, "*.db*")  # nothing went to a SQLite file


async def test_a_shared_store_is_not_held_by_one_run(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        pg_server: PgServer) -> None:
    url, password = await app_database(pg_server)
    config = pg_config(sf_emulator, iterable_emulator, tmp_path, url, password)
    with hold_store(config, now=1.0), hold_store(config, now=2.0):
        pass  # two runs on one PostgreSQL store: neither is refused
    assert not leftovers(tmp_path, "*.lock")
