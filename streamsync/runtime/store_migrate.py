"""`streamsync store migrate --to postgresql://…`: move a SQLite store into an empty PostgreSQL
database, nothing lost (docs/design.md §1.6).

The SQLite store's single-owner lock is taken for the whole copy, so a running service refuses
the move (StoreBusy names it) and none can start during it. The file is first brought to the
current schema, then read in one snapshot; the copy is one PostgreSQL transaction that refuses
a non-empty target and compares row counts before it commits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streamsync.adapters.store import Store
from streamsync.adapters.store.owner import StoreOwnership
from streamsync.adapters.store.postgres import PostgresStore
from streamsync.adapters.store.postgres.copy import open_snapshot
from streamsync.config import Config
from streamsync.errors import FatalError, UsageError


@dataclass(frozen=True, slots=True)
class MigrateResult:
    """What was copied: from which file, to which database (no password), rows per table."""

    source: str
    target: str
    rows: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def _hold(path: Path, now: float) -> StoreOwnership:
    """The SQLite store's single-owner lock (StoreBusy while a service runs on it)."""
    if not path.is_file():
        raise FatalError(f"store migrate: {path} does not exist (is [queue] path right?)")
    return StoreOwnership.acquire(path, now=now)


async def migrate_store(config: Config, url: str, *, now: float) -> MigrateResult:
    """Copy the SQLite store of `config` into the PostgreSQL database at `url` (its password
    from the config's secrets: STREAMSYNC_STORE_PASSWORD, its file, or PGPASSWORD)."""
    if config.store.url is not None:
        raise UsageError("store migrate: this config already uses PostgreSQL ([store] url); "
                         "migrate reads the SQLite file of a config without it")
    path = Path(config.queue.path)
    ownership = _hold(path, now)
    try:
        await (await Store.open(path, create=False)).close()  # to the current schema
        password = config.secrets.store_password
        target = await PostgresStore.open(
            url, password=None if password is None else password.get_secret_value(),
            pool_size=1, connect_timeout_s=config.store.connect_timeout_s)
        source = open_snapshot(path)
        try:
            rows = await target.import_sqlite(source)
        finally:
            source.close()
            await target.close()
        return MigrateResult(str(path), target.location, rows)
    finally:
        ownership.release()
