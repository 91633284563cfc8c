"""Owed reconciliations, channel anchors and backfill starts as typed store rows; the version 5
migration that moves them out of the meta table and backfill_run.options (SQLite only: no
PostgreSQL store predates version 5)."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import orjson

from streamsync.adapters.store import (
    LATEST_VERSION,
    ChannelAnchor,
    PendingReconcile,
    Store,
    migrate,
    schema_version,
)
from tests.store_backends import StoreSpace

T0 = 1_700_000_000.0


async def test_owed_reconciliations_merge_and_clear_only_what_ran(
        store_space: StoreSpace) -> None:
    store = await store_space.open()
    try:
        assert await store.reconcile_pending("Lead") is None
        first = await store.set_reconcile_pending("Lead", 5_000, "gap_overflow", T0)
        assert first == PendingReconcile(5_000, "gap_overflow", 1)
        merged = await store.set_reconcile_pending("Lead", 3_000, "replay_invalid", T0 + 1)
        assert merged == PendingReconcile(3_000, "gap_overflow+replay_invalid", 2)
        await store.set_reconcile_pending("Contact", None, "resubscribe", T0)
        assert await store.reconciles_pending() == {
            "Contact": PendingReconcile(None, "resubscribe", 1), "Lead": merged}

        # A worker that ran `first` leaves the newer merge owed; the one that ran it clears it.
        assert not await store.clear_reconcile_pending("Lead", first)
        assert await store.reconcile_pending("Lead") == merged
        assert await store.clear_reconcile_pending("Lead", merged)
        assert await store.clear_reconcile_pending(
            "Contact", PendingReconcile(None, "resubscribe", 1))  # NULL since matches None
        assert await store.reconciles_pending() == {}
    finally:
        await store.close()


async def test_channel_anchors_and_latest_backfill_starts(store_space: StoreSpace) -> None:
    store = await store_space.open()
    try:
        assert await store.channel_anchor("/data/LeadChangeEvent") is None  # never subscribed
        for anchor in (ChannelAnchor("earliest"), ChannelAnchor("unanchored", 42),
                       ChannelAnchor("anchored")):
            await store.set_channel_anchor("/data/LeadChangeEvent", anchor, T0)
            assert await store.channel_anchor("/data/LeadChangeEvent") == anchor

        await store.start_run("bf-1", [], {}, T0, objects=["Lead", "Contact"])
        await store.start_run("bf-2", [], {}, T0 + 50, objects=["Contact"])
        await store.start_run("bf-3", [], {}, T0 + 90)  # loaded nothing (a dry scope)
        assert await store.latest_backfill_starts() == {"Lead": T0, "Contact": T0 + 50}
    finally:
        await store.close()


async def test_sqlite_a_version_4_store_opens_with_its_markers_anchors_and_runs_typed(
        tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    async with aiosqlite.connect(str(path), isolation_level=None) as conn:
        assert await migrate(conn, target=4) == 4
        meta = [
            ("reconcile_pending:Lead",
             orjson.dumps({"since_ms": 5000, "trigger": "gap_overflow", "seq": 3}).decode()),
            ("reconcile_pending:Contact",
             orjson.dumps({"since_ms": None, "trigger": "replay_invalid"}).decode()),
            ("reconcile_pending:Account", "{broken"),
            ("reconcile_pending:Campaign", ""),  # cleared: owes nothing
            ("unanchored_since:/data/LeadChangeEvent", "1700000000123"),
            ("unanchored_since:/data/ContactChangeEvent", "earliest"),
            ("unanchored_since:/data/AccountChangeEvent", ""),
            ("client_id", "abc"),
        ]
        await conn.executemany(
            "INSERT INTO meta (key, value, updated_at) VALUES (?, ?, 1)", meta)
        await conn.execute(
            "INSERT INTO backfill_run (run_id, started_at, finished_at, options) VALUES "
            "('bf-old', 100, 200, ?), ('bf-new', 300, NULL, ?), ('bf-odd', 400, 450, 'x')",
            (orjson.dumps({"scope": {"objects": ["Lead", "Contact"]}}).decode(),
             orjson.dumps({"scope": {"objects": ["Contact"]}, "parallel": 4}).decode()))
        await conn.execute(
            "INSERT INTO queue (object_name, record_id, change_type, source, first_enqueued_at,"
            " last_enqueued_at, next_attempt_at) VALUES ('Lead', 'A', 'UPDATE', 'cdc', 1, 1, 1)")

    store = await Store.open(path)
    try:
        async with store._read("version") as conn:
            assert await schema_version(conn) == LATEST_VERSION
        assert await store.reconciles_pending() == {
            "Account": PendingReconcile(None, "unreadable_marker", 0),
            "Contact": PendingReconcile(None, "replay_invalid", 0),
            "Lead": PendingReconcile(5000, "gap_overflow", 3),
        }
        assert await store.channel_anchor("/data/LeadChangeEvent") == ChannelAnchor(
            "unanchored", 1_700_000_000_123)
        assert await store.channel_anchor("/data/ContactChangeEvent") == ChannelAnchor(
            "earliest")
        assert await store.channel_anchor("/data/AccountChangeEvent") == ChannelAnchor(
            "anchored")
        assert await store.latest_backfill_starts() == {"Lead": 100.0, "Contact": 300.0}
        # Everything else is kept: other meta values, runs with their options, the queue.
        assert await store.get_meta("client_id") == "abc"
        assert await store.get_meta("reconcile_pending:Lead") is None
        runs = {run.run_id: run for run in await store.runs()}
        assert runs["bf-new"].options == {"scope": {"objects": ["Contact"]}, "parallel": 4}
        assert runs["bf-old"].finished and not runs["bf-new"].finished
        assert runs["bf-odd"].options == {}  # unreadable options do not hide the run
        [lease] = await store.lease("f", 10, 30, T0)
        assert (lease.object_name, lease.record_id) == ("Lead", "A")
    finally:
        await store.close()
