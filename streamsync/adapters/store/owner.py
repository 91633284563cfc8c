"""One `streamsync run` per store: an OS lock held for the life of the service, and its holder.

For SQLite the lock is `flock(LOCK_EX | LOCK_NB)` on a sidecar file `<store>.lock`. The kernel
drops it when the holding process ends in any way (kill -9 included), so a crashed service
never blocks its restart and a live one is never taken for dead. The holder writes its pid, host
and start time into the file so that a refused second `run` can name it. Other commands
(`status`, `dlq`, a backfill) do not take the lock: they may run beside the service.

Holding the lock makes the service the store's only flusher, so at start every lease still in
the queue belongs to a process that is gone and is reclaimed at once (`Store.expire_leases`).

A PostgreSQL store would keep the same contract with a session-level advisory lock
(`pg_try_advisory_lock` on a key derived from the schema) and an owner row holding the same
pid, host and start time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from streamsync.errors import FatalError, StoreBusy

LOCK_SUFFIX = ".lock"
FILE_MODE = 0o600


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds (or last held) a store: process id, host name, start time (epoch seconds)."""

    pid: int
    host: str
    since: float

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"pid {self.pid} on {self.host}, running since {since}"


def lock_path(store_path: str | Path) -> Path:
    """The sidecar lock file of a store."""
    path = Path(store_path)
    return path.with_name(path.name + LOCK_SUFFIX)


def read_holder(path: Path) -> Holder | None:
    """The holder recorded in a lock file, or None (missing, empty or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "null")
        return Holder(int(data["pid"]), str(data["host"]), float(data["since"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def lost_store_holder(store_path: str | Path) -> Holder | None:
    """The last holder of a store whose file is gone (a run used it before), else None."""
    if Path(store_path).exists():
        return None
    return read_holder(lock_path(store_path))


class StoreOwnership:
    """The held lock of one store; `release()` (or the process ending) gives it up."""

    def __init__(self, path: Path, fd: int, holder: Holder) -> None:
        self.path = path
        self.holder = holder
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, store_path: str | Path, *, now: float) -> StoreOwnership:
        """Take the store or raise StoreBusy naming the live holder."""
        path = lock_path(store_path)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise FatalError(f"store: cannot open the lock file {path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreBusy(Path(store_path), read_holder(path)) from None
        except OSError as exc:
            os.close(fd)
            raise FatalError(f"store: cannot lock {path}: {exc}") from exc
        holder = Holder(os.getpid(), socket.gethostname(), now)
        record = json.dumps({"pid": holder.pid, "host": holder.host, "since": holder.since})
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (record + "\n").encode(), 0)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            raise FatalError(f"store: cannot write the lock file {path}: {exc}") from exc
        return cls(path, fd, holder)

    def release(self) -> None:
        """Give the store up (idempotent). The file stays: it is reused by the next holder."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
