"""The PostgreSQL connection pool, transactions, and the one place driver errors are translated.

Driver: asyncpg (why: docs/design.md §1.6). A small pool (`pool_size`, 4 by default) serves the
process's concurrent flush loops, ingest and the backfill's windows; each operation is one
transaction on one pooled connection, at READ COMMITTED. A transaction that PostgreSQL rolled
back for a deadlock or a serialization failure did nothing, so it is run again, up to
`TX_ATTEMPTS` times, before the caller sees a `TransientError`.

Durability: a commit returns once PostgreSQL has flushed its WAL (`synchronous_commit=on`, the
server default; with a synchronous standby, once the standby has it too). That is the
counterpart of SQLite's `synchronous=FULL` (streamsync/adapters/store/base.py): whatever
`record_event` or `enqueue` returned from survives a crash of the service or of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Self, TypeAlias, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import asyncpg.pool

from streamsync.errors import FatalError, StreamsyncError, TransientError

from .schema import migrate

T = TypeVar("T")
Connection: TypeAlias = "asyncpg.pool.PoolConnectionProxy[Any]"
DEFAULT_POOL_SIZE = 4
TX_ATTEMPTS = 5

# SQLSTATE classes and codes that say "try again later" (docs/design.md §6): the connection
# (08), a rolled-back transaction (40: serialization failure, deadlock), the server out of
# resources (53: too many connections), shutting down or starting (57P01-57P03), a statement
# timeout (57014), a lock not available (55P03), a read-only transaction (25006: a failover
# made this server a standby).
_TRANSIENT_CLASSES = ("08", "40", "53")
_TRANSIENT_CODES = ("57P01", "57P02", "57P03", "57014", "55P03", "25006")
_RETRY_IN_PLACE = ("40001", "40P01")


def redacted_url(url: str) -> str:
    """`url` without any password, fit for logs and messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://(unparsable url)"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    if parts.username:
        host = f"{parts.username}@{host}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def translate(exc: BaseException, doing: str) -> StreamsyncError:
    """Map a driver or network error into our tree: a lost connection, a rolled-back
    transaction or a server going away is transient; anything else is fatal."""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        if state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_CODES:
            return TransientError(f"store: {doing}: PostgreSQL unavailable ({exc}; {state})")
        return FatalError(f"store: {doing} failed: {exc} ({type(exc).__name__} {state})")
    if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
        return TransientError(f"store: {doing}: connection to PostgreSQL lost ({exc})")
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        # The driver's protocol state is off (seen after a server restart cut a query short):
        # the connection is dropped (`_drop`) and the next call gets a new one.
        return TransientError(f"store: {doing}: PostgreSQL connection unusable ({exc})")
    if isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError | ConnectionError):
        return TransientError(f"store: {doing}: cannot reach PostgreSQL "
                              f"({type(exc).__name__}: {exc})")
    return FatalError(f"store: {doing} failed: {type(exc).__name__}: {exc}")


_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError,
                  asyncpg.exceptions.InternalClientError, OSError, TimeoutError,
                  asyncio.TimeoutError)
_BROKEN = (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)


def _drop(conn: Connection) -> None:
    """Close a connection the driver can no longer use, so the pool replaces it."""
    with contextlib.suppress(Exception):
        conn.terminate()


def rows_affected(status: str) -> int:
    """The row count of a command status such as 'DELETE 3' or 'INSERT 0 1'."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except (ValueError, IndexError):
        return 0


class PgBase:
    """Owns the asyncpg pool; every operation is one transaction on a pooled connection."""

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self._pool: asyncpg.Pool | None = pool
        self._location = redacted_url(url)

    @property
    def location(self) -> str:
        return self._location

    @property
    def shared(self) -> bool:
        return True

    def file_problem(self) -> str | None:
        """Always None: a database has no file that could be deleted under us."""
        return None

    @classmethod
    async def open(cls, url: str, *, password: str | None = None,
                   pool_size: int = DEFAULT_POOL_SIZE, connect_timeout_s: float = 10.0) -> Self:
        """Connect to the database at `url` (its password given apart, never in the URL) and
        migrate its schema (under an advisory lock: processes starting together are safe)."""
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        where = redacted_url(url)
        try:
            pool = await asyncpg.create_pool(
                url, password=password, min_size=1, max_size=pool_size,
                timeout=connect_timeout_s, max_inactive_connection_lifetime=300.0,
            )
        except _DRIVER_ERRORS as exc:
            raise translate(exc, f"connecting to {where}") from exc
        except ValueError as exc:  # a malformed URL: the driver's message never holds secrets
            raise FatalError(f"store: {where} is not a usable PostgreSQL URL: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, _DRIVER_ERRORS):
                raise translate(exc, f"migrating {where}") from exc
            raise
        return cls(pool, url)

    async def close(self) -> None:
        """Close the pool (idempotent); later calls raise FatalError."""
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(*_DRIVER_ERRORS):
                await asyncio.wait_for(pool.close(), timeout=10)
            pool.terminate()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _require(self) -> asyncpg.Pool:
        if self._pool is None:
            raise FatalError(f"store: {self._location} is closed")
        return self._pool

    async def _write(self, doing: str, body: Callable[[Connection], Awaitable[T]], *,
                     one_statement: bool = False) -> T:
        """Run `body` in one transaction: committed when it returns, rolled back on any error,
        run again when PostgreSQL rolled it back for a deadlock or serialization failure.

        `one_statement`: `body` runs a single statement, which PostgreSQL already runs as its
        own transaction; no BEGIN and COMMIT (two round trips fewer), the same guarantees."""
        pool = self._require()
        for attempt in range(1, TX_ATTEMPTS + 1):
            try:
                async with pool.acquire() as conn:
                    try:
                        if one_statement:
                            return await body(conn)
                        async with conn.transaction():
                            return await body(conn)
                    except _BROKEN:
                        _drop(conn)
                        raise
            except asyncpg.PostgresError as exc:
                if exc.sqlstate not in _RETRY_IN_PLACE or attempt == TX_ATTEMPTS:
                    raise translate(exc, doing) from exc
            except _DRIVER_ERRORS as exc:
                raise translate(exc, doing) from exc
            await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.asynccontextmanager
    async def _read(self, doing: str) -> AsyncIterator[Connection]:
        """A pooled connection for reads outside any transaction of ours."""
        pool = self._require()
        try:
            async with pool.acquire() as conn:
                try:
                    yield conn
                except _BROKEN:
                    _drop(conn)
                    raise
        except _DRIVER_ERRORS as exc:
            raise translate(exc, doing) from exc


async def probe(url: str, *, password: str | None = None,
                connect_timeout_s: float = 10.0) -> str:
    """Connect once and describe the server and the store's schema, changing nothing (for
    `check-config`); errors translated like every store call."""
    from .schema import LATEST_VERSION, schema_version

    where = redacted_url(url)
    try:
        conn = await asyncpg.connect(url, password=password, timeout=connect_timeout_s)
    except _DRIVER_ERRORS as exc:
        raise translate(exc, f"connecting to {where}") from exc
    except ValueError as exc:
        raise FatalError(f"store: {where} is not a usable PostgreSQL URL: {exc}") from exc
    try:
        server = str(await conn.fetchval("SHOW server_version"))
        version = await schema_version(conn)
    except _DRIVER_ERRORS as exc:
        raise translate(exc, f"reading {where}") from exc
    finally:
        await conn.close()
    if version > LATEST_VERSION:
        raise FatalError(f"store schema version {version} is newer than this streamsync "
                         f"understands ({LATEST_VERSION})")
    schema = "empty: the first start creates the tables" if version == 0 else (
        f"schema version {version}")
    return f"PostgreSQL {server}, {schema}"
