"""One `run` per store: the lock, the holder named in the refusal, and reclaimed leases."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamsync.adapters.store import QueueInput
from streamsync.adapters.store.owner import (
    StoreOwnership,
    lock_path,
    lost_store_holder,
    read_holder,
)
from streamsync.errors import StoreBusy
from tests.store_backends import StoreSpace

NOW = 1_700_000_000.0


def test_a_second_owner_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "streamsync.db"
    first = StoreOwnership.acquire(db, now=NOW)
    try:
        with pytest.raises(StoreBusy) as info:
            StoreOwnership.acquire(db, now=NOW + 5)
        message = str(info.value)
        assert f"pid {os.getpid()} on {socket.gethostname()}" in message
        assert "running since 2023-11-14T22:13:20Z" in message and str(db) in message
        assert info.value.holder == first.holder
    finally:
        first.release()
    again = StoreOwnership.acquire(db, now=NOW + 10)
    again.release()
    assert read_holder(lock_path(db)) == again.holder
    assert (lock_path(db).stat().st_mode & 0o777) == 0o600


def test_a_dead_holder_never_blocks(tmp_path: Path) -> None:
    """What kill -9 leaves: the file with the dead process's details, no lock."""
    db = tmp_path / "streamsync.db"
    lock_path(db).write_text(json.dumps({"pid": 999_999, "host": "gone", "since": NOW}))
    owner = StoreOwnership.acquire(db, now=NOW)
    try:
        assert owner.holder.pid == os.getpid()
        assert read_holder(lock_path(db)) == owner.holder
    finally:
        owner.release()


def test_another_process_holding_the_store_is_named(tmp_path: Path) -> None:
    db = tmp_path / "streamsync.db"
    code = ("import sys, time; from streamsync.adapters.store.owner import StoreOwnership;"
            f"o = StoreOwnership.acquire({str(db)!r}, now=time.time()); print('held', "
            "flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(StoreBusy, match=f"pid {proc.pid} on "):
            StoreOwnership.acquire(db, now=time.time())
    finally:
        proc.kill()
        proc.wait()
    StoreOwnership.acquire(db, now=time.time()).release()  # killed: the kernel let go


async def test_expire_leases_makes_a_dead_runs_leases_due_now(store_space: StoreSpace) -> None:
    async with await store_space.open() as store:
        await store.enqueue([QueueInput("Lead", f"00Q{i:015d}") for i in range(3)], NOW, "cdc")
        leased = await store.lease("service", 2, 120.0, NOW)
        assert len(leased) == 2
        assert await store.lease("service", 10, 120.0, NOW + 1) != []  # the third one
        assert await store.lease("service", 10, 120.0, NOW + 2) == []  # all leased
        assert await store.expire_leases(NOW + 3) == 3
        again = await store.lease("service", 10, 120.0, NOW + 3)
        assert len(again) == 3
        assert all(lease.attempts == 1 for lease in again)  # still counts as an attempt
        assert await store.expire_leases(NOW + 200) == 0  # nothing live any more


def test_a_lost_store_is_told_from_a_first_run(tmp_path: Path) -> None:
    db = tmp_path / "streamsync.db"
    assert lost_store_holder(db) is None  # never run here
    StoreOwnership.acquire(db, now=NOW).release()
    lost = lost_store_holder(db)  # a run held it, and the store file is not there
    assert lost is not None and lost.pid == os.getpid() and lost.since == NOW
    db.write_bytes(b"")
    assert lost_store_holder(db) is None  # the store is there
