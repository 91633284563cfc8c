"""Opening the configured store: the SQLite file `[queue].path`, or the PostgreSQL database of
`[store] url` (docs/design.md §1.6). Every command opens its store here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from streamsync.adapters.store import (
    AppliedMapping,
    Store,
    StoreAPI,
    read_applied_mappings,
    read_payload_hashes,
)
from streamsync.adapters.store.owner import StoreOwnership, lost_store_holder
from streamsync.adapters.store.postgres import PostgresStore
from streamsync.config import Config
from streamsync.logs import get_logger

log = get_logger(__name__)


def store_location(config: Config) -> str:
    """Where the configured store is, fit for logs and messages (no password)."""
    return config.store.url if config.store.url is not None else config.queue.path


async def open_store(config: Config, *, create: bool = True) -> StoreAPI:
    """Open (and migrate) the configured store. `create=False` refuses a SQLite file that does
    not exist yet (`status`, `dlq`); a PostgreSQL database must exist in any case, its tables
    are created on first use."""
    if config.store.url is None:
        return await Store.open(config.queue.path, create=create)
    password = config.secrets.store_password
    return await PostgresStore.open(
        config.store.url,
        password=None if password is None else password.get_secret_value(),
        pool_size=config.store.pool_size,
        connect_timeout_s=config.store.connect_timeout_s,
    )


async def read_applied(config: Config) -> dict[str, AppliedMapping]:
    """The mapping last applied per object, for `plan`: from a SQLite file opened read-only
    (nothing created), or from the PostgreSQL store."""
    if config.store.url is None:
        return read_applied_mappings(config.queue.path)
    async with await open_store(config) as store:
        return await store.applied_mappings()


async def read_hashes(config: Config, object_name: str, ids: Sequence[str]
                      ) -> dict[str, str | None]:
    """Record id → the payload hash last confirmed (records with an identity), for `plan`."""
    if config.store.url is None:
        return read_payload_hashes(config.queue.path, object_name, ids)
    async with await open_store(config) as store:
        found = await store.identities(object_name, ids)
    return {record_id: identity.payload_hash for record_id, identity in found.items()}


@contextlib.contextmanager
def hold_store(config: Config, *, now: float) -> Iterator[None]:
    """For `run`: hold a SQLite store for the whole run (a second `run` raises StoreBusy naming
    the holder; adapters/store/owner.py), and say so when a store a run used is gone. A
    PostgreSQL store is shared: nothing to hold, several `run` processes join it (their
    leadership: runtime/leadership.py)."""
    if config.store.url is not None:
        yield
        return
    path = config.queue.path
    previous = lost_store_holder(path)
    ownership = StoreOwnership.acquire(path, now=now)
    if previous is not None:
        log.error("store.missing", path=path, last_run=previous.describe(),
                  detail="a run used this store before, and it is gone: its queue, replay "
                         "ids and dead letters are lost; a new store starts from the "
                         "oldest retained change events (see `streamsync status`)")
    try:
        yield
    finally:
        ownership.release()
