"""Property test: under any interleaving of queue operations and crashes, no change is lost (on
SQLite, and on PostgreSQL with fewer examples: each one costs a few round trips more)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamsync.adapters.store import Backoff, Lease, QueueInput, Store, StoreAPI
from streamsync.adapters.store.postgres import PostgresStore
from streamsync.testing.pg_server import PgServer
from tests.store_backends import create_database, peek

IDS = ["A", "B", "C"]
LEASE_S = 10.0
T0 = 1_700_000_000.0

Op = tuple[str, int]
# Weighted so that the interesting interleavings (change while leased, then settle) are common.
KINDS = ["enqueue"] * 4 + ["lease"] * 3 + ["ack"] * 3 + ["retry", "dead", "release"]
KINDS += ["advance", "advance", "crash", "dlq_retry"]
OPS = st.tuples(st.sampled_from(KINDS), st.integers(0, 5))


@dataclass
class Model:
    """What the sink must eventually see: change numbers not yet covered by an acked read."""

    pending: dict[str, set[int]] = field(default_factory=lambda: {i: set() for i in IDS})
    covered: dict[str, set[int]] = field(default_factory=dict)  # lease token+id -> changes
    changes: int = 0


Opener = Callable[[], Awaitable[StoreAPI]]


async def _present(store: StoreAPI) -> tuple[set[str], set[str]]:
    queued = {str(row[0]) for row in await peek(store, "SELECT record_id FROM queue")}
    dead = {d.record_id for d in await store.dead_letters(limit=100)}
    return queued, dead


async def _run(ops: list[Op], open_store: Opener) -> tuple[set[str], set[str], dict[str, set[int]]]:
    """Play `ops`, checking after each that no change is lost; then drain. Returns what is
    still queued, what is dead-lettered, and the model's pending changes per record."""
    store = await open_store()
    model = Model()
    outstanding: list[Lease] = []
    backoff = Backoff(base_s=1.0, max_delay_s=8.0, max_attempts=3, rand=lambda: 0.5)
    now = T0
    try:
        for kind, arg in ops:
            if kind == "enqueue":
                model.changes += 1
                record_id = IDS[arg % len(IDS)]
                model.pending[record_id].add(model.changes)
                await store.enqueue([QueueInput("Lead", record_id)], now, "cdc")
            elif kind == "lease":
                got = await store.lease(
                    "f", arg % 3 + 1, LEASE_S, now, max_attempts=backoff.max_attempts
                )
                for lease in got:
                    live = [
                        o
                        for o in outstanding
                        if o.record_id == lease.record_id and o.lease_expires_at > now
                    ]
                    assert not live, "a row under a live lease was handed out twice"
                    model.covered[lease.token + lease.record_id] = set(
                        model.pending[lease.record_id]
                    )
                outstanding.extend(got)
            elif kind in ("ack", "retry", "dead", "release") and outstanding:
                lease = outstanding.pop(arg % len(outstanding))
                if kind == "ack":
                    await store.ack([lease])
                    model.pending[lease.record_id] -= model.covered[lease.token + lease.record_id]
                elif kind == "retry":
                    await store.retry_later([lease], "503", now, backoff)
                elif kind == "dead":
                    await store.dead_letter([lease], "invalid_email", "bad", now)
                else:
                    await store.release([lease])
            elif kind == "advance":
                now += 3 * arg + 1
            elif kind == "crash":
                await store.close()
                store = await open_store()
                outstanding.clear()  # a crashed flusher settles nothing
            elif kind == "dlq_retry":
                await store.retry_dead_letters(None, now)

            queued, dead = await _present(store)
            for record_id, changes in model.pending.items():
                if changes:
                    assert record_id in queued or record_id in dead, (
                        f"change(s) {sorted(changes)} of {record_id} lost after {kind}"
                    )
        # Drain: with time moving on, every pending change is synced or dead-lettered.
        for _ in range(50):
            now += 100
            leases = await store.lease("drain", 10, LEASE_S, now)
            if not leases:
                break
            for lease in leases:
                model.covered[lease.token + lease.record_id] = set(model.pending[lease.record_id])
            await store.ack(leases)
            for lease in leases:
                model.pending[lease.record_id] -= model.covered[lease.token + lease.record_id]
        queued, dead = await _present(store)
        return queued, dead, dict(model.pending)
    finally:
        await store.close()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(OPS, min_size=8, max_size=40))
def test_no_change_is_lost_under_any_interleaving(ops: list[Op]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.db"
        queued, dead, pending = asyncio.run(
            _run(ops, lambda: Store.open(path, synchronous="NORMAL")))
    assert not queued  # drained: every change synced or dead-lettered
    assert all(not changes or rid in dead for rid, changes in pending.items())


_PG_DATABASE: dict[str, str] = {}


async def _emptied(server: PgServer) -> str:
    """One database for every example, emptied before each (a new one costs more)."""
    if "url" not in _PG_DATABASE:
        _PG_DATABASE["url"] = await create_database(server, "model")
    store = await PostgresStore.open(_PG_DATABASE["url"])
    try:
        async with store._read("empty") as conn:
            await conn.execute("TRUNCATE queue, dead_letter")
    finally:
        await store.close()
    return _PG_DATABASE["url"]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(OPS, min_size=8, max_size=40))
def test_no_change_is_lost_under_any_interleaving_on_postgres(
        pg_server: PgServer, ops: list[Op]) -> None:
    async def play() -> tuple[set[str], set[str], dict[str, set[int]]]:
        url = await _emptied(pg_server)
        return await _run(ops, lambda: PostgresStore.open(url, pool_size=2))

    queued, dead, pending = asyncio.run(play())
    assert not queued
    assert all(not changes or rid in dead for rid, changes in pending.items())
