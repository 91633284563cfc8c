"""The applied mapping per object and the re-syncs under way (adapters/store/mapping_state.py),
on both backends; and the read-only reader `streamsync plan` uses on a SQLite file."""

from __future__ import annotations

import hashlib
from pathlib import Path

from streamsync.adapters.store import Store, StoreAPI, read_applied_mappings

DESC = {"object": "Lead", "fields": {"dataFields.a": {"source": "A", "convert": "date"}}}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_applied_mapping_replaces_and_ends_a_resync_towards_it(any_store: StoreAPI) -> None:
    store = any_store
    assert await store.applied_mappings() == {}
    await store.set_applied_mapping("Lead", "f1", DESC, 10.0)
    started = await store.start_resync("Lead", "f2", DESC, ["dataFields.b"], 11.0)
    assert started.phase == "sync" and started.clears == ("dataFields.b",)
    assert await store.save_resync_progress("Lead", "f2", phase="sync", last_id="00Q1",
                                            read=5, written=3, out_of_scope=0, now=12.0)
    assert not await store.save_resync_progress("Lead", "f1", phase="sync", last_id="00Q2",
                                                read=5, written=3, out_of_scope=0, now=12.0)
    state = (await store.resyncs())["Lead"]
    assert (state.last_id, state.records_read, state.records_written) == ("00Q1", 5, 3)
    # A re-sync towards another fingerprint restarts from the first record, clears merged.
    again = await store.start_resync("Lead", "f3", DESC, ["dataFields.c"], 13.0)
    assert again.clears == ("dataFields.b", "dataFields.c") and again.last_id is None
    await store.set_applied_mapping("Lead", "f2", DESC, 14.0)
    assert "Lead" in await store.resyncs()  # f3 is still owed
    await store.set_applied_mapping("Lead", "f3", DESC, 15.0)
    assert await store.resyncs() == {}
    applied = (await store.applied_mappings())["Lead"]
    assert applied.fingerprint == "f3" and applied.description == DESC


async def test_sqlite_the_read_only_reader_changes_nothing(store: Store, tmp_path: Path) -> None:
    await store.set_applied_mapping("Lead", "f1", DESC, 10.0)
    path = store.path
    await store.close()
    before = _digest(path)
    assert read_applied_mappings(path)["Lead"].fingerprint == "f1"
    assert _digest(path) == before
    assert read_applied_mappings(tmp_path / "absent.db") == {}
    assert not (tmp_path / "absent.db").exists()
