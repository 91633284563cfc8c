"""`[store]`: without `url` the SQLite file of `[queue].path`; with a PostgreSQL `url` its
password comes only from the environment or systemd credentials, never from the URL, and is
masked in logs (docs/design.md invariant 11)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamsync.adapters.store import IdentityUpdate, Store
from streamsync.adapters.store.postgres import PostgresStore
from streamsync.config import parse_config
from streamsync.errors import ConfigError
from streamsync.logs import REDACTED, redactor
from streamsync.runtime.check_config import CheckReport, check_store
from streamsync.runtime.store_open import open_store, read_applied, read_hashes, store_location
from streamsync.testing.pg_server import PgServer
from tests.e2e.test_postgres_store import app_database
from tests.store_backends import StoreSpace

BASE: dict[str, Any] = {"salesforce": {"login_url": "https://login.salesforce.com",
                                       "auth": "client_credentials", "client_id": "abc"}}
ENV = {"STREAMSYNC_SF_CLIENT_SECRET": "sf-secret", "STREAMSYNC_ITERABLE_API_KEY": "it-key"}


def config_with(store: dict[str, Any], env: dict[str, str] | None = None,
                **more: Any) -> Any:
    return parse_config({**BASE, "store": store, **more}, {**ENV, **(env or {})})


@pytest.mark.parametrize("url", [
    "postgresql://sync:hunter2-but-longer@db.internal:5432/streamsync",
    "postgresql://sync@db.internal/streamsync?password=hunter2-but-longer",
    "postgres://sync@db.internal/streamsync?sslmode=require&password=hunter2-but-longer",
])
def test_a_password_in_the_url_is_refused_without_being_repeated(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        config_with({"url": url})
    message = str(refused.value)
    assert "store.url: carries a password" in message
    assert "STREAMSYNC_STORE_PASSWORD" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(("url", "problem"), [
    ("mysql://sync@db/streamsync", "not a mysql one"),
    ("postgresql://sync@db:5432/", "must name the database"),
    ("postgresql://sync@db:port/streamsync", "postgresql://user@host:port/database"),
])
def test_a_url_that_is_not_a_postgresql_database_is_refused(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        config_with({"url": url})


def test_the_password_comes_from_the_environment_a_file_or_credentials(tmp_path: Path) -> None:
    url = "postgresql://sync@db.internal:5432/streamsync"
    assert config_with({"url": url}).secrets.store_password is None
    env = config_with({"url": url}, {"STREAMSYNC_STORE_PASSWORD": "from-env-0123"})
    assert env.secrets.store_password.get_secret_value() == "from-env-0123"
    (tmp_path / "pw").write_text("from-file-4567\n")
    filed = config_with({"url": url}, {"STREAMSYNC_STORE_PASSWORD_FILE": str(tmp_path / "pw")})
    assert filed.secrets.store_password.get_secret_value() == "from-file-4567"
    (tmp_path / "store_password").write_text("from-systemd-89ab")
    cred = config_with({"url": url}, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert cred.secrets.store_password.get_secret_value() == "from-systemd-89ab"
    libpq = config_with({"url": url}, {"PGPASSWORD": "from-libpq-cdef"})
    assert libpq.secrets.store_password.get_secret_value() == "from-libpq-cdef"
    for secret in ("from-env-0123", "from-file-4567", "from-systemd-89ab", "from-libpq-cdef"):
        assert redactor().text(f"login failed with {secret}") == f"login failed with {REDACTED}"
    assert "from-env" not in repr(env)


def test_a_password_key_in_the_store_section_is_refused() -> None:
    with pytest.raises(ConfigError, match="store.password: secrets are never read"):
        config_with({"url": "postgresql://sync@db/streamsync", "password": "nope-nope-nope"})


async def test_without_a_url_the_sqlite_file_is_the_store(tmp_path: Path) -> None:
    config = config_with({}, queue={"path": str(tmp_path / "state.db")})
    assert config.store.url is None and store_location(config) == str(tmp_path / "state.db")
    store = await open_store(config)
    try:
        assert isinstance(store, Store) and not store.shared
        assert store.location == str(tmp_path / "state.db")
    finally:
        await store.close()


async def test_plan_reads_the_applied_mappings_and_hashes_of_either_store(
        store_space: StoreSpace) -> None:
    """`streamsync plan` compares with the store the config names, PostgreSQL included."""
    store = await store_space.open()
    try:
        await store.set_applied_mapping("Lead", "f1", {"object": "Lead"}, 1.0)
        await store.save_identities([IdentityUpdate("Lead", "00Q1", "a@x.io", None, "h1"),
                                     IdentityUpdate("Lead", "00Q2", "b@x.io", None, None)], 1.0)
    finally:
        await store.close()
    section = {"url": store_space.url} if store_space.url is not None else {}
    config = config_with(section, queue={"path": str(store_space.path)})
    applied = await read_applied(config)
    assert list(applied) == ["Lead"] and applied["Lead"].fingerprint == "f1"
    assert await read_hashes(config, "Lead", ["00Q1", "00Q2", "00Q3"]) == {
        "00Q1": "h1", "00Q2": None}


async def test_check_config_logs_in_to_the_postgresql_store_and_writes_nothing(
        pg_server: PgServer) -> None:
    url, password = await app_database(pg_server)
    report = CheckReport()
    await check_store(config_with({"url": url}, {"STREAMSYNC_STORE_PASSWORD": password}),
                      report)
    [passed] = report.passed
    assert report.problems == [] and passed.startswith(f"store: {url} (PostgreSQL ")
    assert passed.endswith("empty: the first start creates the tables)")
    await (await PostgresStore.open(url, password=password)).close()  # the first start
    report = CheckReport()
    await check_store(config_with({"url": url}, {"STREAMSYNC_STORE_PASSWORD": password}),
                      report)
    assert "schema version" in report.passed[0]
    report = CheckReport()
    await check_store(config_with({"url": url}, {"STREAMSYNC_STORE_PASSWORD": "wrong-1234"}),
                      report)
    [problem] = report.problems
    assert (problem.component, problem.path) == ("store", "store.url")
    assert "password authentication failed" in problem.message
    assert "wrong-1234" not in problem.message
    report = CheckReport()
    await check_store(config_with({}), report)
    assert report.problems == report.passed == []
