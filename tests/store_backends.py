"""Fixtures that run a test against both store backends (a pytest plugin of tests/conftest.py).

- `pg_server`: one throwaway PostgreSQL server for the whole session
  (streamsync/testing/pg_server.py), started the first time a test asks for it. It never
  skips: a machine where it cannot start fails those tests, saying why.
- `pg_url`: a new, empty database on it for this test (a `CREATE DATABASE` takes ~15 ms).
- `store_space`: parametrized `sqlite` / `postgres`: where this test's store lives; `open()`
  connects a new handle to it (a second process's view, or the same store after a restart).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from streamsync.adapters.store import Store, StoreAPI
from streamsync.adapters.store.postgres import PostgresStore
from streamsync.testing.pg_server import PgServer

BACKENDS = ("sqlite", "postgres")
_databases = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server; RuntimeError (a failed test) when it cannot start."""
    server = PgServer.start()
    try:
        yield server
    finally:
        server.destroy()


async def create_database(server: PgServer, prefix: str = "t") -> str:
    """A new empty database on `server`; returns its URL."""
    name = f"{prefix}_{next(_databases)}"
    conn = await asyncpg.connect(server.url())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server.url(name)


async def drop_database(server: PgServer, url: str) -> None:
    """Drop a test's database (its connections cut), so a session's databases do not pile up
    on disk (each copies the ~8 MB template)."""
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(server.url())
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def pg_url(pg_server: PgServer) -> AsyncIterator[str]:
    """The URL of a new empty database for this test (dropped afterwards)."""
    url = await create_database(pg_server)
    yield url
    await drop_database(pg_server, url)


@dataclass
class StoreSpace:
    """One test's store on one backend."""

    backend: str
    path: Path
    url: str | None = None

    async def open(self) -> StoreAPI:
        """A new handle on the store (creating and migrating it the first time)."""
        if self.url is not None:
            return await PostgresStore.open(self.url)
        return await Store.open(self.path)


@pytest.fixture(params=BACKENDS)
async def store_space(request: pytest.FixtureRequest,
                      tmp_path: Path) -> AsyncIterator[StoreSpace]:
    """Where this test's store lives: a SQLite file, or a new PostgreSQL database (dropped
    afterwards)."""
    if request.param != "postgres":
        yield StoreSpace("sqlite", tmp_path / "streamsync.db")
        return
    server: PgServer = request.getfixturevalue("pg_server")
    url = await create_database(server)
    yield StoreSpace("postgres", tmp_path / "unused.db", url)
    await drop_database(server, url)


@pytest.fixture
async def any_store(store_space: StoreSpace) -> AsyncIterator[StoreAPI]:
    """An open store on each backend, closed at teardown."""
    store = await store_space.open()
    try:
        yield store
    finally:
        await store.close()


async def peek(store: StoreAPI, sql: str) -> list[tuple[object, ...]]:
    """White-box: the rows of a plain SELECT, on either backend."""
    if isinstance(store, PostgresStore):
        async with store._read("peek") as conn:
            return [tuple(row) for row in await conn.fetch(sql)]
    assert isinstance(store, Store)
    async with store._read("peek") as sqlite_conn:
        async with sqlite_conn.execute(sql) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]
