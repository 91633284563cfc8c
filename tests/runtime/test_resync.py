"""Issue 15: a changed mapping re-syncs its object (runtime/resync.py), against both emulators
over loopback HTTP and a real SQLite store: renamed targets move, removed ones are cleared,
changed conversions are re-sent, unchanged payloads are skipped, records leaving a changed
filter follow `out_of_scope`, and a stopped re-sync resumes from its checkpoint."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from streamsync.adapters.ratelimit import is_yielding
from streamsync.adapters.store import QueueInput, Store
from streamsync.adapters.store.postgres import PostgresStore
from streamsync.config import Config, load_config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.runtime.reload import open_resync_and_reload
from streamsync.runtime.resync import Resyncer, open_resyncer
from streamsync.runtime.status import read_status
from streamsync.testing.pg_server import PgServer
from tests.conftest import MakeConfig, production_components
from tests.e2e.harness import backfill, wait_for
from tests.e2e.process import service_config_data, service_env, toml_dumps

pytestmark = pytest.mark.salesforce(seed_accounts=2, seed_contacts=8, seed_leads=30)

BULK = "POST /api/users/bulkUpdate"


def lead_objects(**lead: Any) -> dict[str, Any]:
    return {"Lead": lead}


async def run_resyncs(config: Config, *, page_size: int = 2000,
                      stop_after_pages: int | None = None,
                      write_width: int | None = None,
                      watch: Callable[[Resyncer], None] | None = None) -> dict[str, Any]:
    """Open the service's components, schedule and run the owed re-syncs until none is left
    (or `stop_after_pages` checkpoints were saved); what the store then says."""
    async with production_components(config) as parts:
        resyncer = await open_resyncer(config, store=parts.store, salesforce=parts.salesforce,
                                       pipeline=parts.pipeline, mappings=parts.mappings,
                                       metrics=parts.metrics, clock=parts.clock)
        resyncer.page_size = page_size
        if write_width is not None:
            resyncer.write_width = write_width
        if watch is not None:
            watch(resyncer)
        owed = sorted(await parts.store.resyncs())
        stop = asyncio.Event()
        if stop_after_pages is not None:
            _stop_after(resyncer, stop, stop_after_pages)
        task = asyncio.create_task(resyncer.run(stop))

        async def finished() -> bool:
            if task.done():
                return True
            return not await parts.store.resyncs()

        await wait_for(finished, 30.0, "the re-syncs to finish")
        stop.set()
        await asyncio.wait_for(task, 10.0)
        return {"owed": owed, "left": await parts.store.resyncs(),
                "applied": await parts.store.applied_mappings(),
                "metrics": parts.metrics.render().decode()}


def _stop_after(resyncer: Resyncer, stop: asyncio.Event, pages: int) -> None:
    saved = resyncer.store.save_resync_progress
    count = 0

    async def counting(*args: Any, **kw: Any) -> bool:
        nonlocal count
        kept = await saved(*args, **kw)
        count += 1
        if count >= pages:
            stop.set()
        return kept

    resyncer.store.save_resync_progress = counting  # type: ignore[method-assign]


def lead_profiles(sf: SalesforceEmulator, it: IterableEmulator) -> dict[str, dict[str, Any]]:
    """Iterable's profile of every live, unconverted Lead with an email, by Lead Id."""
    it.flush()
    snap = it.state.snapshot()
    out = {}
    for record_id in sf.select_ids("Lead", "IsDeleted = false"):
        record = sf.state.record("Lead", record_id) or {}
        email = (record.get("Email") or "").lower()
        if record.get("IsDeleted") or record.get("IsConverted") or email not in snap:
            continue
        out[record["Id"]] = {"record": record, "data": snap[email].get("dataFields") or {}}
    return out


async def test_pages_written_in_chunks_are_checkpointed_only_once_iterable_took_them(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    old = make_config(sf_emulator, iterable_emulator, tmp_path)
    await backfill(old)
    await run_resyncs(old)
    mapping = {**old.objects["Lead"].mapping, "Title": "dataFields.title"}
    # batches of 4: each page of 10 is three chunks, and chunks of several pages are written
    # at once (the window's width)
    new = make_config(sf_emulator, iterable_emulator, tmp_path,
                      objects=lead_objects(mapping=mapping), iterable={"batch_max_users": 4})
    checkpoints: list[tuple[str, int, bool]] = []
    sizes: list[tuple[int, bool]] = []

    def watch(resyncer: Resyncer) -> None:
        save = resyncer.store.save_resync_progress
        bulk = resyncer.pipeline.iterable.bulk_update

        async def saving(name: str, fingerprint: str, **kw: Any) -> bool:
            if kw["phase"] == "sync" and kw["last_id"] is not None:
                profiles = lead_profiles(sf_emulator, iterable_emulator)
                done = all(p["data"].get("title") == p["record"].get("Title")
                           for i, p in profiles.items() if i <= kw["last_id"])
                checkpoints.append((kw["last_id"], kw["read"], done))
            return await save(name, fingerprint, **kw)

        async def sending(body: bytes) -> Any:
            sizes.append((body.count(b'"email"'), is_yielding()))
            return await bulk(body)

        resyncer.store.save_resync_progress = saving  # type: ignore[method-assign]
        resyncer.pipeline.iterable.bulk_update = sending  # type: ignore[method-assign]

    done = await run_resyncs(new, page_size=10, watch=watch)
    assert done["owed"] == ["Lead"] and done["left"] == {}
    total = len(sf_emulator.select_ids("Lead", "IsDeleted = false"))
    assert [i for i, _, _ in checkpoints] == sorted(i for i, _, _ in checkpoints)
    assert sum(n for _, n, _ in checkpoints) == total
    assert all(ok for _, _, ok in checkpoints), checkpoints  # none passed an unwritten record
    assert sizes and all(0 < n <= 4 and background for n, background in sizes)
    assert all(p["data"].get("title") == p["record"].get("Title")
               for p in lead_profiles(sf_emulator, iterable_emulator).values())


async def test_first_run_records_the_mapping_and_owes_no_resync(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    config = make_config(sf_emulator, iterable_emulator, tmp_path)
    done = await run_resyncs(config)
    assert done["owed"] == [] and done["left"] == {}
    assert set(done["applied"]) == {"Lead", "Contact"}
    again = await run_resyncs(config)
    assert again["owed"] == [] and again["applied"] == done["applied"]


async def test_renamed_target_moves_removed_is_cleared_and_unchanged_are_skipped(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    old = make_config(sf_emulator, iterable_emulator, tmp_path)
    await backfill(old)
    await run_resyncs(old)  # the first run records what the backfill applied
    before = lead_profiles(sf_emulator, iterable_emulator)
    assert before and all(p["data"].get("firstName") == p["record"]["FirstName"]
                          for p in before.values())
    mapping = {k: v for k, v in old.objects["Lead"].mapping.items() if k != "LeadSource"}
    mapping["FirstName"] = "dataFields.givenName"
    new = make_config(sf_emulator, iterable_emulator, tmp_path,
                      objects=lead_objects(mapping=mapping))
    writes_before = iterable_emulator.state.count(BULK)
    done = await run_resyncs(new)
    assert done["owed"] == ["Lead"] and done["left"] == {}
    after = lead_profiles(sf_emulator, iterable_emulator)
    assert set(after) == set(before)
    for profile in after.values():
        data, record = profile["data"], profile["record"]
        assert data.get("givenName") == record["FirstName"]
        assert data.get("firstName") is None  # the old name of the renamed target
        assert data.get("leadSource") is None  # removed, null policy clear
        assert data.get("lastName") == record["LastName"]
    assert 'streamsync_resync_records_total{kind="written",object="Lead"}' in done["metrics"]
    # Applied now: the same config again owes nothing and writes nothing.
    writes_after = iterable_emulator.state.count(BULK)
    assert writes_after > writes_before
    again = await run_resyncs(new)
    assert again["owed"] == []
    assert iterable_emulator.state.count(BULK) == writes_after


async def test_removed_target_is_left_in_place_with_null_policy_omit(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    old = make_config(sf_emulator, iterable_emulator, tmp_path,
                      objects=lead_objects(null_policy="omit"))
    await backfill(old)
    await run_resyncs(old)
    mapping = {k: v for k, v in old.objects["Lead"].mapping.items() if k != "Status"}
    new = make_config(sf_emulator, iterable_emulator, tmp_path,
                      objects=lead_objects(null_policy="omit", mapping=mapping))
    await run_resyncs(new)
    after = lead_profiles(sf_emulator, iterable_emulator)
    assert after and all(p["data"].get("leadStatus") == p["record"]["Status"]
                         for p in after.values())


async def test_changed_date_conversion_is_resent(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    mapping = {"Email": "email", "LastName": "dataFields.lastName",
               "CreatedDate": "dataFields.created"}
    old = make_config(sf_emulator, iterable_emulator, tmp_path,
                      objects=lead_objects(mapping=mapping))
    await backfill(old)
    await run_resyncs(old)
    dated = lead_profiles(sf_emulator, iterable_emulator)
    assert dated and all(p["data"]["created"].endswith("+00:00") for p in dated.values())
    new = make_config(sf_emulator, iterable_emulator, tmp_path,
                      objects=lead_objects(mapping=mapping, convert_dates=False))
    done = await run_resyncs(new)
    assert done["owed"] == ["Lead"]
    after = lead_profiles(sf_emulator, iterable_emulator)
    assert all(p["data"]["created"] == p["record"]["CreatedDate"] for p in after.values())


@pytest.mark.parametrize("policy", ["flag", "delete", "ignore"])
async def test_records_leaving_a_changed_filter_follow_out_of_scope(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig, policy: str) -> None:
    old = make_config(sf_emulator, iterable_emulator, tmp_path,
                      objects=lead_objects(out_of_scope=policy))
    await backfill(old)
    await run_resyncs(old)
    before = lead_profiles(sf_emulator, iterable_emulator)
    kept = {i for i, p in before.items() if p["record"]["Status"] == "Open - Not Contacted"}
    left = set(before) - kept
    assert kept and left
    new = make_config(sf_emulator, iterable_emulator, tmp_path, objects=lead_objects(
        out_of_scope=policy, filter="Status = 'Open - Not Contacted'"))
    await run_resyncs(new)
    after = lead_profiles(sf_emulator, iterable_emulator)
    assert kept <= set(after)
    assert all(after[i]["data"].get("salesforceOutOfScope") in (None, False) for i in kept)
    if policy == "delete":
        assert not left & set(after)
    elif policy == "flag":
        assert all(after[i]["data"].get("salesforceOutOfScope") is True for i in left)
    else:
        assert left <= set(after)
        assert all("salesforceOutOfScope" not in after[i]["data"] for i in left)


async def test_a_newly_in_scope_record_is_synced(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    narrow = make_config(sf_emulator, iterable_emulator, tmp_path,
                         objects=lead_objects(filter="Status = 'Open - Not Contacted'"))
    await backfill(narrow)
    await run_resyncs(narrow)
    synced = lead_profiles(sf_emulator, iterable_emulator)
    assert all(p["record"]["Status"] == "Open - Not Contacted" for p in synced.values())
    wide = make_config(sf_emulator, iterable_emulator, tmp_path)
    await run_resyncs(wide)
    everyone = lead_profiles(sf_emulator, iterable_emulator)
    assert len(everyone) > len(synced)
    assert any(p["record"]["Status"] != "Open - Not Contacted" for p in everyone.values())


async def test_a_stopped_resync_resumes_from_its_checkpoint(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    old = make_config(sf_emulator, iterable_emulator, tmp_path)
    await backfill(old)
    await run_resyncs(old)
    mapping = {**old.objects["Lead"].mapping, "Title": "dataFields.title"}
    new = make_config(sf_emulator, iterable_emulator, tmp_path,
                      objects=lead_objects(mapping=mapping))
    # one chunk at a time: the stop comes right after the first page's checkpoint
    first = await run_resyncs(new, page_size=10, stop_after_pages=1, write_width=1)
    state = first["left"]["Lead"]
    assert state.phase == "sync" and state.records_read == 10 and state.last_id is not None
    async with await Store.open(new.queue.path) as store:  # what `streamsync status` shows
        shown = (await read_status(store, new, time.time()))["mapping"]["resyncs"]
    assert [(r["object"], r["phase"], r["records_read"]) for r in shown] == [("Lead", "sync", 10)]
    assert 'streamsync_resync_running{object="Lead"} 1.0' in first["metrics"]
    done = await run_resyncs(new, page_size=10)
    assert done["owed"] == ["Lead"] and done["left"] == {}
    total = len(sf_emulator.select_ids("Lead", "IsDeleted = false"))
    read = done["metrics"].split('streamsync_resync_records_total{kind="read",object="Lead"} ')
    assert float(read[1].split()[0]) == total - 10  # the second run started after the first
    assert all(p["data"].get("title") == p["record"].get("Title")
               for p in lead_profiles(sf_emulator, iterable_emulator).values())


async def test_a_record_out_of_reach_during_the_resync_is_cleared_when_it_comes_back(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    old = make_config(sf_emulator, iterable_emulator, tmp_path)
    await backfill(old)
    await run_resyncs(old)
    gone = next(iter(lead_profiles(sf_emulator, iterable_emulator)))
    sf_emulator.state.delete("Lead", gone)  # the re-sync cannot read it
    mapping = {**old.objects["Lead"].mapping, "FirstName": "dataFields.givenName"}
    new = make_config(sf_emulator, iterable_emulator, tmp_path,
                      objects=lead_objects(mapping=mapping))
    await run_resyncs(new)
    sf_emulator.state.undelete("Lead", gone)
    async with production_components(new) as parts:  # the service after the re-sync
        await open_resyncer(new, store=parts.store, salesforce=parts.salesforce,
                            pipeline=parts.pipeline, mappings=parts.mappings,
                            metrics=parts.metrics, clock=parts.clock)
        fields = parts.pipeline.mappings["Lead"].soql_fields()
        record = [r async for r in parts.salesforce.records(
            f"SELECT {', '.join(fields)} FROM Lead WHERE Id = '{gone}'")]
        outcome = await parts.pipeline.sync_records("Lead", record, source="test")
    assert outcome.synced == [gone]
    data = lead_profiles(sf_emulator, iterable_emulator)[gone]["data"]
    assert data.get("firstName") is None and data.get("givenName")


class _Leads:
    worker_id = "this-worker"

    def __init__(self) -> None:
        self.led: list[str] = []

    def channels(self) -> list[str]:
        return list(self.led)


async def test_with_several_workers_an_object_resyncs_where_its_channel_is_led(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    import streamsync.runtime.resync as resync_module

    monkeypatch.setattr(resync_module, "LEADER_RECHECK_S", 0.05)
    old = make_config(sf_emulator, iterable_emulator, tmp_path)
    await run_resyncs(old)
    mapping = {**old.objects["Lead"].mapping, "Title": "dataFields.title"}
    new = make_config(sf_emulator, iterable_emulator, tmp_path,
                      objects=lead_objects(mapping=mapping))
    leads = _Leads()
    async with production_components(new) as parts:
        resyncer = await open_resyncer(new, store=parts.store, salesforce=parts.salesforce,
                                       pipeline=parts.pipeline, mappings=parts.mappings,
                                       metrics=parts.metrics, clock=parts.clock, leads=leads)
        stop = asyncio.Event()
        task = asyncio.create_task(resyncer.run(stop))
        await asyncio.sleep(0.5)
        assert "Lead" in await parts.store.resyncs()  # another worker leads Lead's channel
        leads.led = [new.channel("Lead")]

        async def done() -> bool:
            return not await parts.store.resyncs()

        await wait_for(done, 10.0, "the re-sync once this worker leads the channel")
        stop.set()
        await asyncio.wait_for(task, 5.0)


async def test_with_several_workers_a_resync_writes_once_no_other_worker_holds_its_rows(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig, pg_url: str) -> None:
    """Another worker's flush leased before it saw the re-sync may still write a record of the
    object: the re-sync waits for that lease to end before it writes (runtime/resync_holds.py)."""
    config = make_config(sf_emulator, iterable_emulator, tmp_path)
    store = await PostgresStore.open(pg_url)
    leads = _Leads()
    leads.led = [config.channel("Lead")]
    try:
        async with production_components(config) as parts:
            resyncer = await open_resyncer(config, store=store, salesforce=parts.salesforce,
                                           pipeline=parts.pipeline, mappings=parts.mappings,
                                           metrics=parts.metrics, clock=parts.clock,
                                           leads=leads)
            await store.start_resync("Lead", resyncer.syncs["Lead"].fingerprint, {}, [],
                                     time.time())
            [lead_id] = sf_emulator.select_ids("Lead", "IsConverted = false", limit=1)
            await store.enqueue([QueueInput("Lead", lead_id)], time.time(), "cdc")
            [foreign] = await store.lease("another-worker", 10, 60.0, time.time())
            writes_before = iterable_emulator.state.count(BULK)
            stop = asyncio.Event()
            task = asyncio.create_task(resyncer.run(stop))
            try:
                await asyncio.sleep(2.5)
                assert "Lead" in await store.resyncs()
                assert iterable_emulator.state.count(BULK) == writes_before
                assert (await store.ack([foreign])).deleted == 1

                async def done() -> bool:
                    return "Lead" not in await store.resyncs()

                await wait_for(done, 15.0, "the re-sync once the other worker's lease ended")
                assert iterable_emulator.state.count(BULK) > writes_before
            finally:
                stop.set()
                await asyncio.wait_for(task, 10.0)
    finally:
        await store.close()


async def test_a_page_read_before_a_real_time_write_does_not_overwrite_it(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    config = make_config(sf_emulator, iterable_emulator, tmp_path)
    async with production_components(config) as parts:
        fields = parts.pipeline.mappings["Lead"].soql_fields()
        rows = [r async for r in parts.salesforce.records(
            f"SELECT {', '.join(fields)} FROM Lead WHERE Email != null AND IsConverted = false "
            "ORDER BY Id LIMIT 1")]
        page_read_at = time.time()  # a re-sync page holds this state ...
        stale = {**rows[0], "LastName": "Stale"}
        fresh = {**rows[0], "LastName": "Fresh"}
        await asyncio.sleep(0.01)
        # ... then real time writes a newer state of the record before the page is written
        assert (await parts.pipeline.sync_records("Lead", [fresh], source="cdc")).synced
        outcome = await parts.pipeline.sync_records("Lead", [stale], source="resync",
                                                    read_at=page_read_at)
    assert outcome.skipped == [rows[0]["Id"]] and not outcome.synced
    iterable_emulator.flush()
    profile = iterable_emulator.state.snapshot()[rows[0]["Email"].lower()]
    assert profile["dataFields"]["lastName"] == "Fresh"


async def test_a_store_that_cannot_be_reached_is_waited_out_not_a_crash(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    """A PostgreSQL restart (every connection dropped, new ones refused) while the re-syncer
    runs is a transient fault: it keeps running instead of ending the service."""
    config = make_config(sf_emulator, iterable_emulator, tmp_path)
    server = await asyncio.to_thread(PgServer.start)
    try:
        store = await PostgresStore.open(server.url())
        async with production_components(config) as parts:
            resyncer = await open_resyncer(config, store=store, salesforce=parts.salesforce,
                                           pipeline=parts.pipeline, mappings=parts.mappings,
                                           metrics=parts.metrics, clock=parts.clock)
            stop = asyncio.Event()
            task = asyncio.create_task(resyncer.run(stop))
            try:
                await asyncio.sleep(0.3)
                await asyncio.to_thread(server.stop)
                resyncer.wake.set()  # look at the store again while it is down
                await asyncio.sleep(2.5)
                assert not task.done(), task.exception()
            finally:
                stop.set()
                resyncer.wake.set()
                await asyncio.wait_for(task, 10)
        await store.close()
    finally:
        await asyncio.to_thread(server.destroy)


async def test_a_reload_the_store_cannot_take_is_tried_again_not_a_crash(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGHUP while the PostgreSQL store is restarting: the reloader waits and tries again
    (the service keeps running on the old config) instead of ending the service."""
    sf, it = sf_emulator, iterable_emulator
    for key, value in service_env(sf, it).items():
        monkeypatch.setenv(key, value)
    data = service_config_data(sf, it, tmp_path)
    path = tmp_path / "config.toml"
    path.write_text(toml_dumps(data), encoding="utf-8")
    config = load_config(path, dict(os.environ))
    server = await asyncio.to_thread(PgServer.start)
    try:
        store = await PostgresStore.open(server.url())
        async with production_components(config) as parts:
            requested = asyncio.Event()
            _, reloader = await open_resync_and_reload(
                replace(parts, store=store), path, parts.metrics, holders=[],
                requested=requested)
            assert reloader is not None
            data["objects"]["Lead"]["null_policy"] = "omit"
            path.write_text(toml_dumps(data), encoding="utf-8")
            await asyncio.to_thread(server.stop)
            stop = asyncio.Event()
            task = asyncio.create_task(reloader.run(stop))
            requested.set()
            try:
                await asyncio.sleep(2.5)
                assert not task.done(), task.exception()
                assert reloader.config is config  # the old config keeps running
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)
        await store.close()
    finally:
        await asyncio.to_thread(server.destroy)
