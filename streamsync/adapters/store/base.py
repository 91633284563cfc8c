"""Opening the SQLite file safely, one serialised connection, transactions, error translation.

Durability choice: WAL with ``synchronous=FULL`` by default. In WAL mode ``NORMAL`` already
survives a crash of the process (kill -9): a commit is in the WAL file once ``COMMIT`` returns.
It can lose the last commits on power loss or an OS crash. For CDC events that alone would be
safe, because a record's id and the replay id that covers it roll back together and Salesforce
re-delivers from the older id. Rows enqueued *without* a replay id (reconcile, fan-out,
catch-up, dead-letter retry) have no such second chance, so ``FULL`` (one WAL fsync per commit)
is the default. Commits are batched (a merged event of 2,000 ids, a leased batch acked at once),
so the fsync cost is per batch, not per record. ``synchronous="NORMAL"`` is offered for disks
where fsync is slow and that risk is accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal, Self

import aiosqlite

from streamsync.errors import FatalError, StreamsyncError, TransientError
from streamsync.logs import redactor

from .schema import migrate

Synchronous = Literal["NORMAL", "FULL"]
FILE_MODE = 0o600
MIN_SQLITE = (3, 35, 0)
MAX_ERROR_CHARS = 1000
_BUSY_NAMES = ("SQLITE_BUSY", "SQLITE_LOCKED")


def translate(exc: sqlite3.Error, doing: str) -> StreamsyncError:
    """Map a sqlite3 error into our tree: lock contention is transient, the rest is fatal."""
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    if name.startswith(_BUSY_NAMES) or "database is locked" in str(exc):
        return TransientError(f"store: {doing}: database is busy ({exc})")
    return FatalError(f"store: {doing} failed: {exc} ({name})")


def clean_error(text: str) -> str:
    """Error text fit to persist: known secrets masked, length capped."""
    cleaned = redactor().text(str(text))
    if len(cleaned) > MAX_ERROR_CHARS:
        cleaned = cleaned[: MAX_ERROR_CHARS - 3] + "..."
    return cleaned


def _restrict(path: Path) -> None:
    """Make an existing file owner-only (0600)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode != FILE_MODE:
        try:
            os.chmod(path, FILE_MODE)
        except OSError as exc:
            raise FatalError(f"store: cannot make {path} owner-only (0600): {exc}") from exc


def prepare_file(path: Path, create: bool) -> None:
    """Create the database file with mode 0600 before SQLite opens it (its -wal/-shm inherit it)."""
    if path.exists():
        if not path.is_file():
            raise FatalError(f"store: {path} exists and is not a regular file")
    elif not create:
        raise FatalError(f"store: {path} does not exist (has the service run with this config?)")
    else:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            pass
        except OSError as exc:
            raise FatalError(f"store: cannot create {path}: {exc}") from exc
        else:
            try:
                os.fchmod(fd, FILE_MODE)
            finally:
                os.close(fd)
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        _restrict(candidate)


async def _enable_wal(conn: aiosqlite.Connection, path: Path, busy_timeout_s: float) -> None:
    """Switch the file to WAL (persistent). SQLite does not call the busy handler for this
    switch, so two processes opening a new file at once are retried here, up to the timeout."""
    deadline = time.monotonic() + busy_timeout_s
    delay_s = 0.005
    while True:
        try:
            async with conn.execute("PRAGMA journal_mode") as cursor:
                row = await cursor.fetchone()
            if row is not None and str(row[0]).lower() == "wal":
                return
            async with conn.execute("PRAGMA journal_mode = WAL") as cursor:
                row = await cursor.fetchone()
            if row is not None and str(row[0]).lower() == "wal":
                return
            raise FatalError(f"store: {path} cannot use WAL journaling (got {row!r})")
        except sqlite3.OperationalError as exc:
            if not isinstance(translate(exc, ""), TransientError) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, 0.1)


def _file_id(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


class StoreBase:
    """Owns the aiosqlite connection; every operation runs under one asyncio lock."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn: aiosqlite.Connection | None = conn
        self.path = path
        self._lock = asyncio.Lock()
        self._file_id = _file_id(path)

    @property
    def location(self) -> str:
        """The file's path (for logs)."""
        return str(self.path)

    @property
    def shared(self) -> bool:
        """False: one `run` owns a SQLite store (owner.py)."""
        return False

    def file_problem(self) -> str | None:
        """None while `path` is still the file this store opened; else what became of it.
        (SQLite keeps writing to a deleted file's inode: everything is lost at close.)"""
        try:
            current = _file_id(self.path)
        except FileNotFoundError:
            return (f"store file {self.path} was deleted while in use: nothing written from "
                    "now on survives a restart")
        except OSError as exc:
            return f"store file {self.path} cannot be checked: {exc}"
        if current != self._file_id:
            return (f"store file {self.path} was replaced while in use: this process still "
                    "writes to the old one")
        return None

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        create: bool = True,
        synchronous: Synchronous = "FULL",
        busy_timeout_s: float = 10.0,
    ) -> Self:
        """Open (creating with mode 0600 unless `create=False`) and migrate the store at `path`.

        `busy_timeout_s` is how long a statement waits for another process's write lock (the
        `status` CLI, a backfill beside the service) before failing with TransientError.
        """
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise FatalError(
                f"store: SQLite {sqlite3.sqlite_version} is too old; streamsync needs "
                f"{'.'.join(map(str, MIN_SQLITE))} or later (UPDATE ... RETURNING)"
            )
        path = Path(path)
        prepare_file(path, create)
        try:
            conn = await aiosqlite.connect(str(path), isolation_level=None)
        except sqlite3.Error as exc:
            raise translate(exc, f"opening {path}") from exc
        try:
            await conn.execute(f"PRAGMA busy_timeout = {max(0, int(busy_timeout_s * 1000)):d}")
            await _enable_wal(conn, path, busy_timeout_s)
            await conn.execute(f"PRAGMA synchronous = {synchronous}")
            await conn.execute("PRAGMA foreign_keys = ON")
            await conn.execute("PRAGMA journal_size_limit = 67108864")
            await migrate(conn)
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise translate(exc, f"opening {path}") from exc
            raise
        for candidate in (Path(f"{path}-wal"), Path(f"{path}-shm")):
            _restrict(candidate)
        return cls(conn, path)

    async def close(self) -> None:
        """Close the connection (idempotent); later calls raise FatalError."""
        conn, self._conn = self._conn, None
        if conn is not None:
            async with self._lock:
                await conn.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _require(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise FatalError(f"store: {self.path} is closed")
        return self._conn

    @contextlib.asynccontextmanager
    async def _tx(self, doing: str) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction (BEGIN IMMEDIATE): committed on exit, rolled back on any error."""
        async with self._lock:
            conn = self._require()
            try:
                await conn.execute("BEGIN IMMEDIATE")
                yield conn
                await conn.execute("COMMIT")
            except BaseException as exc:
                # Also on cancellation: aiosqlite runs calls in order, so this ROLLBACK follows
                # whatever statement was in flight, and the next BEGIN finds no open transaction.
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise translate(exc, doing) from exc
                raise

    @contextlib.asynccontextmanager
    async def _read(self, doing: str) -> AsyncIterator[aiosqlite.Connection]:
        """A read outside any transaction of ours (each statement sees one committed snapshot)."""
        async with self._lock:
            conn = self._require()
            try:
                yield conn
            except sqlite3.Error as exc:
                raise translate(exc, doing) from exc
