"""Reconciler against the Salesforce emulator over real HTTP and a real SQLite store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from streamsync.adapters.store import Lease, Store
from streamsync.config import Config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.errors import RetriableError
from streamsync.retry import Policy
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.reconcile import Reconciler
from tests.conftest import Clients, MakeConfig

pytestmark = pytest.mark.salesforce(seed_leads=40, seed_contacts=6, seed_accounts=2)


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _queued(store: Store) -> dict[tuple[str, str], Lease]:
    leases = await store.lease("test", 100_000, 60.0, time.time() + 1)
    await store.release(leases)
    return {(lease.object_name, lease.record_id): lease for lease in leases}


def _reconciler(config: Config, store: Store, clients: Clients, metrics: Metrics,
                page_size: int = 2000) -> Reconciler:
    return Reconciler(config=config, store=store, salesforce=clients.salesforce,
                      metrics=metrics, page_size=page_size)


def _lead(emu: SalesforceEmulator, name: str) -> str:
    return emu.state.create("Lead", {"LastName": name, "Company": "Acme",
                                     "Email": f"{name.lower()}@example.com"})


async def test_queues_only_records_modified_since_including_deleted(
    sf_emulator: SalesforceEmulator, config: Config, store: Store, clients: Clients
) -> None:
    metrics = Metrics()
    since_ms = _now_ms()
    fresh = [_lead(sf_emulator, f"Fresh{i}") for i in range(3)]
    old = sf_emulator.select_ids("Lead", limit=5)
    old_updated, old_deleted = old[0], old[1]
    sf_emulator.state.update("Lead", old_updated, {"Title": "Now modified"})
    sf_emulator.state.delete("Lead", old_deleted)

    queued = await _reconciler(config, store, clients, metrics).reconcile(
        "Lead", since_ms, trigger="gap_overflow")

    rows = await _queued(store)
    expected = {*fresh, old_updated, old_deleted}
    assert queued == len(expected)
    assert {rid for _obj, rid in rows} == expected  # untouched seed leads are not re-queued
    assert all(obj == "Lead" and lease.source == "reconcile" for (obj, _), lease in rows.items())
    assert rows[("Lead", old_deleted)].change_type == "DELETE"
    assert rows[("Lead", old_updated)].change_type == "UPDATE"
    assert metrics.registry.get_sample_value(
        "streamsync_reconciliations_total", {"trigger": "gap_overflow"}) == 1.0


async def test_keyset_pages_cover_every_record_with_bounded_pages(
    sf_emulator: SalesforceEmulator, config: Config, store: Store, clients: Clients
) -> None:
    every = sf_emulator.select_ids("Lead")
    deleted = every[7]
    sf_emulator.state.delete("Lead", deleted)
    before = clients.counter.total(endpoint="queryAll")
    reconciler = _reconciler(config, store, clients, Metrics(), page_size=7)

    queued = await reconciler.reconcile("Lead", None, trigger="replay_invalid")

    assert queued == len(every) == 40
    rows = await _queued(store)
    assert {rid for _obj, rid in rows} == set(every)  # deleted one found through queryAll
    assert rows[("Lead", deleted)].change_type == "DELETE"
    # 40 ids in pages of 7: six keyset queries (the last one short), one page held at a time.
    assert clients.counter.total(endpoint="queryAll") - before == 6


async def test_window_end_and_margin(
    sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
    make_config: MakeConfig, store: Store, clients: Clients
) -> None:
    # A record modified just before `since` is caught by the overlap margin; `until` bounds it.
    clock = [time.time() - 1000.0]
    sf_emulator.state.clock = lambda: clock[0]
    early = _lead(sf_emulator, "Early")          # t0 - 1000 s
    clock[0] += 30.0
    inside = _lead(sf_emulator, "Inside")        # t0 - 970 s
    clock[0] += 500.0
    late = _lead(sf_emulator, "Late")            # t0 - 470 s
    since_ms = int((clock[0] - 500.0 + 10.0) * 1000)  # 10 s after `inside`
    until_ms = int((clock[0] - 100.0) * 1000)
    cfg = make_config(sf_emulator, iterable_emulator, tmp_path,
                      ingest={"reconcile_overlap_s": 15.0})

    queued = await _reconciler(cfg, store, clients, Metrics()).reconcile(
        "Lead", since_ms, trigger="manual", until_ms=until_ms)

    rows = await _queued(store)
    assert queued == 1
    assert set(rows) == {("Lead", inside)}
    assert early not in {rid for _o, rid in rows} and late not in {rid for _o, rid in rows}


async def test_object_filter_is_not_applied_so_records_leaving_it_are_found(
    sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
    make_config: MakeConfig, store: Store, clients: Clients
) -> None:
    cfg = make_config(sf_emulator, iterable_emulator, tmp_path,
                      objects={"Lead": {"filter": "IsConverted = false"}, "Contact": {},
                               "Account": {}})
    since_ms = _now_ms()
    lead = _lead(sf_emulator, "Converts")
    sf_emulator.state.convert_lead(lead)

    await _reconciler(cfg, store, clients, Metrics()).reconcile("Lead", since_ms,
                                                                trigger="gap_overflow")

    rows = await _queued(store)
    assert ("Lead", lead) in rows  # now IsConverted = true: the flusher decides what it means


async def test_reconcile_from_timestamp_by_channel_or_object(
    sf_emulator: SalesforceEmulator, config: Config, store: Store, clients: Clients
) -> None:
    metrics = Metrics()
    reconciler = _reconciler(config, store, clients, metrics)
    start = int(time.time() - 1) * 1000
    lead = _lead(sf_emulator, "ByChannel")
    contact = sf_emulator.state.create("Contact", {"LastName": "C", "Email": "c@example.com"})

    by_channel = await reconciler.reconcile_from_timestamp("/data/LeadChangeEvent", start)
    by_object = await reconciler.reconcile_from_timestamp("Contact", start)

    assert by_channel == {"Lead": 1} and by_object == {"Contact": 1}
    assert set(await _queued(store)) == {("Lead", lead), ("Contact", contact)}
    assert metrics.registry.get_sample_value(
        "streamsync_reconciliations_total", {"trigger": "replay_timestamp"}) == 2.0
    with pytest.raises(ValueError, match="neither a configured object"):
        await reconciler.reconcile_from_timestamp("Opportunity", start)
    with pytest.raises(ValueError, match="neither a configured object"):
        await reconciler.reconcile_from_timestamp("/data/LeadChangeEvnt", start)
    with pytest.raises(ValueError, match="in the future"):
        await reconciler.reconcile_from_timestamp("Lead", 32503680000000)  # 3000-01-01
    with pytest.raises(ValueError, match="not a configured object"):
        await reconciler.reconcile("Opportunity", None, trigger="manual")


def test_channel_to_objects(config: Config) -> None:
    reconciler = Reconciler(config=config, store=None, salesforce=None,  # type: ignore[arg-type]
                            metrics=Metrics())
    assert reconciler.objects_for_channel("/data/ContactChangeEvent") == ["Contact"]
    assert sorted(reconciler.objects_for_channel("/data/ChangeEvents")) == [
        "Account", "Contact", "Lead"]


async def test_select_margin_source_and_retry_for_the_backfill_catch_up(
    sf_emulator: SalesforceEmulator, config: Config, store: Store, clients: Clients,
    no_retry_waits: None,
) -> None:
    """What the backfill's catch-up needs: its own margin, its queue source, SystemModstamp
    read, rows left out by `select` (a whole page of them does not end the keyset walk), and
    each page's query retried under the caller's policy."""
    every = sf_emulator.select_ids("Lead")
    for lead in every:  # all 40 modified just now
        sf_emulator.state.update("Lead", lead, {"Title": "Touched"})
    keep = set(every[-3:])  # only on the last of several pages
    seen_rows: list[dict[str, object]] = []

    def select(row: object) -> bool:
        assert isinstance(row, dict) and "SystemModstamp" in row
        seen_rows.append(row)
        return row["Id"] in keep

    metrics = Metrics()
    sf_emulator.faults.fail_next("/services/data/v66.0/queryAll", 2, status=503)
    queued = await _reconciler(config, store, clients, metrics, page_size=7).reconcile(
        "Lead", _now_ms() + 30_000, trigger="catchup", margin_s=3600.0, source="catchup",
        extra_fields=("SystemModstamp",), select=select, retry=Policy(attempts=4))

    assert queued == 3 and len(seen_rows) == 40
    rows = await _queued(store)
    assert {rid for _obj, rid in rows} == keep
    assert {lease.source for lease in rows.values()} == {"catchup"}
    assert metrics.registry.get_sample_value(
        "streamsync_reconciliations_total", {"trigger": "catchup"}) == 1.0
    # The default margin (ingest.reconcile_overlap_s) does not reach back an hour, and by
    # default a failed page fails the reconciliation (the ingest's worker retries it whole).
    assert await _reconciler(config, store, clients, Metrics()).reconcile(
        "Lead", _now_ms() + 3_600_000, trigger="gap_overflow") == 0
    sf_emulator.faults.fail_next("/services/data/v66.0/queryAll", 1, status=503)
    with pytest.raises(RetriableError):
        await _reconciler(config, store, clients, Metrics()).reconcile(
            "Lead", _now_ms(), trigger="gap_overflow")
