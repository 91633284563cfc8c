"""Outages of Iterable or Salesforce are waited out by the flusher, never dead-lettered: both
emulators over real HTTP, a real SQLite queue, the flusher stepped with a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from streamsync.core.ids import to_18
from streamsync.errors import TransientError
from tests.conftest import SyncRig

OUTAGE_CONFIG = {
    # max_attempts × backoff is a few minutes; the outage below lasts far longer.
    "queue": {"max_attempts": 3, "backoff_base_s": 5.0, "backoff_max_s": 60.0},
    "flush": {"batch_ids": 100, "outage_after_failures": 2, "outage_probe_max_s": 20.0},
}
OUTAGE_S = 900.0
FOREVER = 10**6


def new_contacts(rig: SyncRig, n: int, tag: str) -> list[str]:
    return [to_18(rig.sf.state.create("Contact", {
        "FirstName": "Out", "LastName": f"{tag}{i}", "Email": f"{tag}{i}@example.com"}))
        for i in range(n)]


def sf_queries(rig: SyncRig) -> int:
    """REST query and queryAll calls the Salesforce emulator served so far."""
    return int(rig.sf.counters()["api"]["by_kind"].get("query", 0))


def down(rig: SyncRig, destination: str) -> float | None:
    """The streamsync_destination_down gauge."""
    return rig.metrics.registry.get_sample_value("streamsync_destination_down",
                                                 {"destination": destination})


async def ride_out(rig: SyncRig, seconds: float, step_s: float = 1.0) -> list[int]:
    """Flush once per `step_s` of fake time for `seconds`; the rows leased by each flush."""
    leased = []
    end = rig.clock() + seconds
    while rig.clock() < end:
        leased.append((await rig.flusher.flush_once()).leased)
        rig.clock.advance(step_s)
    return leased


@pytest.mark.sync_config(**OUTAGE_CONFIG)
async def test_an_iterable_outage_longer_than_the_retry_budget_dead_letters_nothing(
        sync_rig: SyncRig) -> None:
    rig = sync_rig
    ids = new_contacts(rig, 80, "iout")
    await rig.enqueue("Contact", ids)
    rig.it.faults.fail_next("*", times=FOREVER, status=503)
    queries_before = sf_queries(rig)

    leased = await ride_out(rig, OUTAGE_S)

    assert await rig.store.dead_letters() == []
    assert (await rig.store.queue_stats(rig.clock())).depth == 80
    flushes = sum(1 for n in leased if n)
    # Two failed flushes open the breaker; then one probe batch of 50 per probe, at most 20 s
    # apart, and each probe reads its records once (a queryAll, and the query for Leads
    # converted into these Contacts).
    assert leased[0] == 80
    assert all(n <= 50 for n in leased[10:])
    assert flushes <= 2 + OUTAGE_S / 20 + 8  # the waits double up to 20 s first
    assert sf_queries(rig) - queries_before <= 2 * flushes
    outage = rig.flusher.outage()
    assert outage.startswith("Iterable unreachable since ")
    assert "HTTP 503" in outage
    assert down(rig, "iterable") == 1.0 and down(rig, "salesforce") == 0.0
    stats = await rig.store.queue_stats(rig.clock())
    assert stats.retrying + stats.due == 80

    rig.it.faults.clear()
    rig.clock.advance(20.0)
    probe = await rig.flusher.flush_once()
    assert (probe.leased, probe.synced) == (50, 50)
    assert rig.flusher.outage() == ""
    assert down(rig, "iterable") == 0.0
    rest = await rig.flusher.flush_once()  # due at once: no backoff is waited out
    assert (rest.leased, rest.synced) == (30, 30)
    assert (await rig.store.queue_stats(rig.clock())).depth == 0
    assert await rig.store.dead_letters() == []
    assert {f"iout{i}@example.com" for i in range(80)} <= set(rig.profiles())


@pytest.mark.sync_config(**OUTAGE_CONFIG)
async def test_a_salesforce_outage_is_waited_out_without_reading_while_it_lasts(
        sync_rig: SyncRig) -> None:
    rig = sync_rig
    ids = new_contacts(rig, 8, "sfout")
    await rig.enqueue("Contact", ids)
    query_path = f"/services/data/v{rig.sf.config.api_version}/query"  # query and queryAll
    rig.sf.faults.fail_next(query_path, FOREVER, status=503)
    before = sf_queries(rig)

    leased = await ride_out(rig, OUTAGE_S)

    assert await rig.store.dead_letters() == []
    probes = sum(1 for n in leased if n)
    assert probes <= 2 + OUTAGE_S / 20 + 8
    assert sf_queries(rig) - before <= probes  # the faulted calls are counted too
    assert rig.flusher.outage().startswith("Salesforce unreachable since ")
    assert rig.it.state.count("POST /api/users/bulkUpdate", 200) == 0

    rig.sf.faults.clear()
    rig.clock.advance(20.0)
    done = await rig.flusher.flush_once()
    assert (done.leased, done.synced) == (8, 8)
    assert rig.flusher.outage() == ""
    assert (await rig.store.queue_stats(rig.clock())).depth == 0
    assert await rig.store.dead_letters() == []


@pytest.mark.sync_config(queue={"max_attempts": 2}, iterable={"batch_max_users": 3})
async def test_a_partly_failing_flush_costs_no_attempt_and_keeps_iterable_up(
        sync_rig: SyncRig) -> None:
    """Iterable answered one batch and failed the other: it is up, and the failed batch's
    records wait without an attempt (a 503 says nothing about them)."""
    rig = sync_rig
    ids = new_contacts(rig, 6, "part")
    # Two batches of 3, three tries each: 5 failures leave one batch failed, one written.
    rig.it.faults.fail_next("/api/users/bulkUpdate", times=5, status=503)
    await rig.enqueue("Contact", ids)
    first = await rig.flusher.flush_once()
    assert (first.synced, first.retried, first.dead) == (3, 3, 0)
    assert rig.flusher.outage() == ""
    rig.clock.advance(1.0)  # past the row's backoff (backoff_max_s is 0.05 here)
    waiting = await rig.store.lease("peek", 5, 1.0, rig.clock())
    assert [(x.attempts, x.outage_retries) for x in waiting] == [(0, 1)] * 3
    await rig.store.release(waiting)
    await rig.drain()
    assert {f"part{i}@example.com" for i in range(6)} <= set(rig.profiles())


@pytest.mark.sync_config(queue={"max_attempts": 2})
async def test_a_busy_store_costs_no_attempt(sync_rig: SyncRig) -> None:
    rig = sync_rig
    ids = new_contacts(rig, 2, "busy")
    real = rig.pipeline.sync_records
    calls = 0

    async def busy_at_first(object_name: str, records: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls <= 5:  # more often than max_attempts
            raise TransientError("store: save_identities: database is busy (database is locked)")
        return await real(object_name, records, **kw)

    rig.pipeline.sync_records = busy_at_first  # type: ignore[method-assign]
    await rig.enqueue("Contact", ids)
    result = await rig.drain()
    assert (result.synced, result.dead, result.retried) == (2, 0, 5 * 2)
    assert await rig.store.dead_letters() == []


@pytest.mark.parametrize("project_type", [
    pytest.param(kind, marks=pytest.mark.iterable(project_type=kind))
    for kind in ("email", "hybrid")])
async def test_an_email_change_then_a_delete_seen_together_flag_the_moved_profile(
        sync_rig: SyncRig, project_type: str) -> None:
    """While Iterable was down (or the service stopped) a record's email changed and then it
    was deleted: one queue row, read once as deleted. Its profile moves to the new email as it
    is flagged, as the record's last state says (not flagged under the old one)."""
    rig = sync_rig
    assert rig.config.iterable.project_type == project_type
    sf_id = to_18(rig.sf.state.create("Contact", {"LastName": "Mover",
                                                  "Email": "before@example.com"}))
    await rig.enqueue("Contact", [sf_id])
    await rig.drain()
    assert "before@example.com" in rig.profiles()

    rig.sf.state.update("Contact", sf_id, {"Email": "after@example.com"})
    rig.sf.state.delete("Contact", sf_id)
    await rig.enqueue("Contact", [sf_id])
    result = await rig.drain()
    assert (result.synced, result.dead, result.retried) == (1, 0, 0)
    profiles = rig.profiles()
    assert "before@example.com" not in profiles
    assert profiles["after@example.com"]["dataFields"]["salesforceDeleted"] is True
    assert profiles["after@example.com"]["dataFields"]["lastName"] == "Mover"
    ident = (await rig.store.identities("Contact", [sf_id]))[sf_id]
    assert ident.iterable_email == "after@example.com"
