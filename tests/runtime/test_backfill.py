"""Backfill against both emulators over real HTTP: equality with Salesforce, dry run, resume after
a crash, finished runs, catch-up, the Bulk API path, Account fan-out, retries, dead letters."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamsync.adapters.salesforce import SalesforceClient
from streamsync.adapters.store import BackfillWindow, Store
from streamsync.cli.progress import ConsoleProgress, summary_lines
from streamsync.config import Config
from streamsync.core.soql import count as count_query
from streamsync.core.verify import ObjectPolicy, VerifyReport, compare
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.errors import BackfillError, WritesFailed
from streamsync.runtime.backfill import (
    CATCH_UP_MARGIN_S,
    Backfill,
    BackfillOptions,
    BackfillSummary,
    PageHook,
    split_windows,
)
from streamsync.runtime.mappings import compile_mappings
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.pipeline import SyncPipeline
from streamsync.runtime.progress import Progress
from tests.conftest import Clients, FakeClock, MakeConfig, emulator_describes

PAGE = 200
LEADS_CONTACTS = {"seed_accounts": 6, "seed_contacts": 260, "seed_leads": 420}


pytestmark = pytest.mark.usefixtures("no_retry_waits")


def make_backfill(config: Config, store: Store, clients: Clients, *,
                  on_page: PageHook | None = None, progress: Progress | None = None,
                  salesforce: SalesforceClient | None = None,
                  clock: FakeClock | None = None) -> Backfill:
    metrics = Metrics()
    mappings = compile_mappings(config, emulator_describes())
    pipeline = SyncPipeline(config=config, store=store, iterable=clients.iterable,
                            metrics=metrics, mappings=mappings)
    return Backfill(config=config, store=store, salesforce=salesforce or clients.salesforce,
                    pipeline=pipeline, metrics=metrics, progress=progress, mappings=mappings,
                    on_page=on_page, **({"clock": clock} if clock else {}))


def fast_bulk_client(config: Config, clients: Clients) -> SalesforceClient:
    """A Salesforce client that polls Bulk jobs without waiting."""
    return SalesforceClient(clients.session, clients.auth, config.salesforce.api_version,
                            clients.counter, bulk_poll_s=0.01, bulk_max_poll_s=0.01)


async def verify(config: Config, clients: Clients, store: Store, it: IterableEmulator,
                 objects: tuple[str, ...] = ("Lead", "Contact")) -> VerifyReport:
    """Iterable's profiles against what Salesforce's current records imply."""
    mappings = compile_mappings(config, emulator_describes())
    records: dict[str, list[dict[str, Any]]] = {}
    for name in objects:
        extra = ("IsDeleted", "IsConverted") if name == "Lead" else ("IsDeleted",)
        fields = ", ".join(mappings[name].soql_fields(*extra))
        records[name] = [r async for r in clients.salesforce.records(
            f"SELECT {fields} FROM {name}", include_deleted=True)]
    policies = {name: ObjectPolicy(mappings[name], defers_when_converted=name == "Lead")
                for name in objects}
    dead = [d.record_id for d in await store.dead_letters(limit=100_000)]
    it.flush()
    return compare(policies, records, it.state.snapshot(), dead)


async def sf_count(clients: Clients, soql: str) -> int:
    return await clients.salesforce.count(soql)


# ---------------------------------------------------------------- pure helpers


def test_split_windows_covers_the_range_on_whole_seconds() -> None:
    from datetime import UTC, datetime, timedelta
    start = datetime(2024, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC)
    end = datetime(2024, 1, 1, 0, 0, 10, 250_000, tzinfo=UTC)
    parts = split_windows(start, end, 4)
    assert parts[0][0] == start.replace(microsecond=0)
    assert parts[-1][1] == datetime(2024, 1, 1, 0, 0, 11, tzinfo=UTC)
    assert all(a < b and b - a >= timedelta(seconds=1) for a, b in parts)
    assert all(parts[i][1] == parts[i + 1][0] for i in range(len(parts) - 1))
    whole = start.replace(microsecond=0)
    assert len(split_windows(whole, whole + timedelta(seconds=2), 8)) == 2


def test_options_are_validated() -> None:
    with pytest.raises(BackfillError, match="exclude"):
        BackfillOptions(resume=True, restart=True)
    with pytest.raises(BackfillError, match="--where"):
        BackfillOptions(where="Id = 1; DELETE")
    with pytest.raises(BackfillError, match="parallel"):
        BackfillOptions(parallel=30)


# ---------------------------------------------------------------- full runs


@pytest.mark.salesforce(**LEADS_CONTACTS)
async def test_full_backfill_equals_salesforce(
    config: Config, store: Store, clients: Clients, iterable_emulator: IterableEmulator
) -> None:
    backfill = make_backfill(config, store, clients)
    summary = await backfill.run(BackfillOptions(page_size=PAGE, parallel=3))

    total = (await sf_count(clients, "SELECT COUNT() FROM Lead")
             + await sf_count(clients, "SELECT COUNT() FROM Contact"))
    assert summary.status == "finished"
    assert summary.objects == ("Lead", "Contact")
    assert summary.records_read == total
    assert (summary.records_written + summary.records_skipped + summary.dead_lettered
            == total)
    report = await verify(config, clients, store, iterable_emulator)
    assert report.ok, (report.summary(), report.mismatches[:3])
    assert report.unexpected_profiles == set()
    assert report.matched > 0
    # every poison record is in the dead-letter table, by reason
    assert summary.dead_by_reason == await store.dead_letter_counts()
    assert summary.dead_lettered > 0
    # 6 windows, keyset pages of <= 200: one query per page plus a few planning calls
    assert summary.windows == 6
    assert summary.sf_api_calls <= summary.pages + 6 + 3 * 2 + 3
    assert summary.iterable_requests >= 1 and summary.iterable_429s == 0
    windows = await store.windows(summary.run_id or "")
    assert all(w.done for w in windows)
    assert sum(w.records_done for w in windows) == total


@pytest.mark.salesforce(**LEADS_CONTACTS)
async def test_dry_run_writes_mapped_payloads_and_sends_nothing(
    config: Config, store: Store, clients: Clients, iterable_emulator: IterableEmulator,
    tmp_path: Path,
) -> None:
    out = tmp_path / "payloads.jsonl"
    summary = await make_backfill(config, store, clients).run(
        BackfillOptions(dry_run=out, page_size=PAGE))

    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert summary.status == "dry_run" and summary.records_read == len(lines)
    assert len({(x["object"], x["id"]) for x in lines}) == len(lines)
    mappings = compile_mappings(config, emulator_describes())
    by_id = {x["id"]: x for x in lines}
    for name in ("Lead", "Contact"):
        fields = ", ".join(mappings[name].soql_fields())
        async for record in clients.salesforce.records(f"SELECT {fields} FROM {name}"):
            line = by_id[record["Id"]]
            mapped = mappings[name].map_or_error(record)
            if "error" in line:
                assert line["error"]["reason"] == getattr(mapped, "reason", None)
            else:
                assert line["payload"] == orjson.loads(orjson.dumps(
                    getattr(mapped, "payload", None)))
    errors = [x for x in lines if "error" in x]
    assert errors and sum(summary.dead_by_reason.values()) == len(errors)
    assert f"would be dead-lettered {len(errors):,}" in "\n".join(summary_lines(summary))
    assert iterable_emulator.state.users_received == 0
    assert iterable_emulator.state.snapshot() == {}
    assert await store.latest_run() is None            # a dry run keeps no checkpoints
    assert await store.dead_letter_counts() == {}


# ---------------------------------------------------------------- resume


class Crash(Exception):
    """Stands in for the process dying after a page was checkpointed."""


@pytest.mark.salesforce(seed_accounts=2, seed_contacts=0, seed_leads=1500)
async def test_resume_after_crash_continues_each_window_from_its_checkpoint(
    store: Store, clients: Clients, iterable_emulator: IterableEmulator,
    sf_emulator: SalesforceEmulator, make_config: MakeConfig, tmp_path: Path,
) -> None:
    pages_done = 0

    async def crash_after_4(window: BackfillWindow, page_no: int) -> None:
        nonlocal pages_done
        pages_done += 1
        if pages_done == 4:
            raise Crash("killed")

    # Iterable batches of 200 users: each pipeline call (checkpoint) covers about one page
    config = make_config(sf_emulator, iterable_emulator, tmp_path,
                         iterable={"batch_max_users": PAGE})
    options = BackfillOptions(objects=("Lead",), page_size=PAGE, parallel=3)
    with pytest.raises(Crash):
        await make_backfill(config, store, clients, on_page=crash_after_4).run(options)
    run = await store.latest_run()
    assert run is not None and not run.finished
    before = {w.window: w for w in await store.windows(run.run_id)}
    done_before = sum(w.records_done for w in before.values())
    assert 4 * PAGE <= done_before <= 4 * (PAGE + 20)     # 4 calls of 200 likely writes
    started = [w for w in before.values() if w.last_id is not None]
    assert started                                      # some windows have a checkpoint

    # the same backfill without --resume/--restart refuses to guess
    with pytest.raises(BackfillError, match="--resume"):
        await make_backfill(config, store, clients).run(options)

    resumed = await make_backfill(config, store, clients).run(
        BackfillOptions(objects=("Lead",), page_size=PAGE, parallel=3, resume=True))
    total = await sf_count(clients, "SELECT COUNT() FROM Lead")
    assert resumed.run_id == run.run_id and resumed.status == "finished"
    assert resumed.windows_resumed == len([w for w in started if not w.done])
    # nothing checkpointed is read again
    assert resumed.records_read == total - done_before
    # no window restarted from zero: each window's final count is exactly its size
    field = config.backfill.window_field
    for w in await store.windows(run.run_id):
        size = await sf_count(clients, count_query("Lead", window=(
            _dt(w.window.window_start), _dt(w.window.window_end)), window_field=field))
        assert w.done and w.records_done == size
    # re-sent: only calls in flight when it stopped (write_depth 2 per window at most); those
    # Iterable had confirmed before the crash are skipped as unchanged, the others re-sent
    dead = sum((await store.dead_letter_counts()).values())
    resent_users = iterable_emulator.state.users_received - (total - dead)
    assert 0 <= resent_users <= 3 * 2 * (PAGE + 20)
    assert resumed.records_skipped + resent_users <= 3 * 2 * (PAGE + 20)
    report = await verify(config, clients, store, iterable_emulator, ("Lead",))
    assert report.ok, report.summary()


def _dt(text: str) -> Any:
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.salesforce(seed_accounts=2, seed_contacts=30, seed_leads=300)
async def test_finished_run_does_nothing_unless_restart(
    config: Config, store: Store, clients: Clients, iterable_emulator: IterableEmulator
) -> None:
    first = await make_backfill(config, store, clients).run(BackfillOptions(page_size=PAGE))
    sent = iterable_emulator.state.users_received
    calls = clients.counter.total("salesforce")

    out = io.StringIO()
    again = await make_backfill(config, store, clients,
                                progress=ConsoleProgress(out, tty=False)).run(
        BackfillOptions(page_size=PAGE, resume=True))
    assert again.status == "already_finished" and again.run_id == first.run_id
    assert "already finished" in out.getvalue() and "--restart" in out.getvalue()
    assert iterable_emulator.state.users_received == sent
    assert clients.counter.total("salesforce") == calls  # not even a query

    restarted = await make_backfill(config, store, clients).run(
        BackfillOptions(page_size=PAGE, restart=True))
    assert restarted.status == "finished" and restarted.run_id != first.run_id
    assert restarted.records_read == first.records_read
    assert restarted.records_skipped == first.records_written   # unchanged: nothing re-sent
    assert restarted.records_written == 0
    assert iterable_emulator.state.users_received == sent

    # another scope is another backfill
    leads = await make_backfill(config, store, clients).run(
        BackfillOptions(objects=("Lead",), page_size=PAGE))
    assert leads.status == "finished" and leads.objects == ("Lead",)


# ---------------------------------------------------------------- catch-up


@pytest.mark.salesforce(seed_accounts=3, seed_contacts=40, seed_leads=600)
async def test_records_modified_during_the_run_are_queued_for_catch_up(
    config: Config, store: Store, clients: Clients, sf_emulator: SalesforceEmulator
) -> None:
    lead_ids = sf_emulator.select_ids("Lead", limit=600)
    account_id = sf_emulator.select_ids("Account", limit=1)[0]
    changed: dict[str, str] = {}

    async def change_records(window: BackfillWindow, page_no: int) -> None:
        if changed:
            return
        # the last Lead of the id order: its page is read later, the first one's earlier
        sf_emulator.state.update("Lead", lead_ids[0], {"LastName": "Changed"})
        changed["updated"] = lead_ids[0]
        changed["created"] = sf_emulator.state.create(
            "Lead", {"LastName": "New", "Company": "Acme", "Email": "new.lead@example.org"})
        sf_emulator.state.delete("Lead", lead_ids[1])
        changed["deleted"] = lead_ids[1]
        sf_emulator.state.update("Account", account_id, {"Name": "Renamed Inc"})

    summary = await make_backfill(config, store, clients, on_page=change_records).run(
        BackfillOptions(page_size=PAGE))
    assert summary.catchup_queued >= 4
    leases = await store.lease("test", 10_000, 60.0, 2e9)
    queued = {(lease.object_name, lease.record_id): lease for lease in leases}
    assert all(lease.source == "catchup" for lease in leases)
    for key in ("updated", "created"):
        assert queued[("Lead", changed[key])].change_type == "UPDATE"
    assert queued[("Lead", changed["deleted"])].change_type == "DELETE"
    assert ("Account", account_id) in queued               # the flusher fans it out to Contacts
    run = await store.latest_run()
    assert run is not None and run.finished


@pytest.mark.salesforce(seed_accounts=2, seed_contacts=0, seed_leads=1000)
@pytest.mark.parametrize("api", ["rest", "bulk"])
async def test_catch_up_starts_at_the_run_start_and_skips_records_read_in_their_latest_state(
    store: Store, clients: Clients, sf_emulator: SalesforceEmulator,
    iterable_emulator: IterableEmulator, make_config: MakeConfig, tmp_path: Path, api: str,
) -> None:
    # calls of about one page each, so the last page is read after the first call is written
    config = make_config(sf_emulator, iterable_emulator, tmp_path,
                         iterable={"batch_max_users": PAGE})
    # Salesforce stamps and the backfill share one clock that jumps, so the run lasts minutes
    clock = FakeClock()
    sf_emulator.state.clock = clock
    fresh = [sf_emulator.state.create("Lead", {"LastName": f"Fresh{i}", "Company": "Acme",
                                                "Email": f"fresh.{i}@example.org"})
             for i in range(30)]                        # created just before the backfill
    clock.advance(CATCH_UP_MARGIN_S / 2)
    ids = sorted(sf_emulator.select_ids("Lead", limit=2000))
    first, last = ids[0], ids[-1]          # read by the first and by the last page
    changed: list[str] = []

    async def change_then_let_minutes_pass(window: BackfillWindow, page_no: int) -> None:
        if changed:
            return
        sf_emulator.state.update("Lead", first, {"LastName": "ChangedAfterItsPage"})
        sf_emulator.state.update("Lead", last, {"LastName": "ChangedBeforeItsPage"})
        changed.append(first)
        clock.advance(600)

    out = io.StringIO()
    salesforce = SalesforceClient(clients.session, clients.auth, config.salesforce.api_version,
                                  clients.counter, bulk_poll_s=0.01, bulk_max_poll_s=0.01)
    summary = await make_backfill(
        config, store, clients, on_page=change_then_let_minutes_pass, clock=clock,
        progress=ConsoleProgress(out, tty=False), salesforce=salesforce).run(
        BackfillOptions(objects=("Lead",), page_size=PAGE, parallel=1,
                        api="bulk" if api == "bulk" else "rest"))
    assert changed and summary.status == "finished"
    leases = await store.lease("test", 10_000, 60.0, 2e9)
    # the records changed after their page was read, not the fresh ones (read as they are);
    # by REST the last page is read after the change, a Bulk job read the window before it
    expected = [first] if api == "rest" else sorted([first, last])
    assert sorted(lease.record_id for lease in leases) == expected
    assert {lease.source for lease in leases} == {"catchup"}
    assert summary.catchup_queued == len(expected)
    assert (f"catch-up: {len(expected)} records modified during the backfill queued"
            in out.getvalue())
    assert last in fresh and not (set(fresh) - {last}) & {lease.record_id for lease in leases}


# ---------------------------------------------------------------- Bulk API, Accounts


@pytest.mark.salesforce(seed_accounts=4, seed_contacts=150, seed_leads=450)
async def test_bulk_api_backfill_equals_salesforce(
    config: Config, store: Store, clients: Clients, iterable_emulator: IterableEmulator,
    sf_emulator: SalesforceEmulator,
) -> None:
    fast_bulk = fast_bulk_client(config, clients)
    summary = await make_backfill(config, store, clients, salesforce=fast_bulk).run(
        BackfillOptions(api="bulk", page_size=PAGE, parallel=2))
    assert summary.status == "finished"
    assert sf_emulator.counters()["bulk_jobs_created"] == 4     # one job per window
    report = await verify(config, clients, store, iterable_emulator)
    assert report.ok, (report.summary(), report.mismatches[:3])
    total = (await sf_count(clients, "SELECT COUNT() FROM Lead")
             + await sf_count(clients, "SELECT COUNT() FROM Contact"))
    assert summary.records_read == total

    # the same records read by REST produce the same payloads: nothing to re-send
    rest = await make_backfill(config, store, clients).run(
        BackfillOptions(api="rest", page_size=PAGE, parallel=2))
    assert rest.records_written == 0
    assert rest.records_skipped == summary.records_written


@pytest.mark.salesforce(seed_accounts=0, seed_contacts=0, seed_leads=450)
async def test_a_failed_bulk_job_is_started_again_under_the_read_policy(
    config: Config, store: Store, clients: Clients, iterable_emulator: IterableEmulator,
    sf_emulator: SalesforceEmulator,
) -> None:
    fast_bulk = fast_bulk_client(config, clients)
    sf_emulator.faults.fail_next("/services/data/v66.0/jobs/query", 2, status=503)
    summary = await make_backfill(config, store, clients, salesforce=fast_bulk).run(
        BackfillOptions(objects=("Lead",), api="bulk", page_size=PAGE, parallel=1))
    assert summary.status == "finished"
    assert summary.records_read == 450 and summary.records_written > 400
    assert sf_emulator.counters()["bulk_jobs_created"] == 1  # the two refused ones made none


@pytest.mark.salesforce(seed_accounts=4, seed_contacts=120, seed_leads=10)
async def test_account_backfills_its_contacts_with_account_fields_read_directly(
    config: Config, store: Store, clients: Clients, iterable_emulator: IterableEmulator
) -> None:
    summary = await make_backfill(config, store, clients).run(
        BackfillOptions(objects=("Account",), page_size=PAGE))
    with_account = await sf_count(clients, "SELECT COUNT() FROM Contact WHERE AccountId != null")
    assert summary.objects == ("Contact",)
    assert summary.records_read == with_account
    profiles = iterable_emulator.state.snapshot()
    names = {p["dataFields"]["Company"]["Name"] for p in profiles.values()}
    accounts = {r["Name"] async for r in clients.salesforce.records("SELECT Name FROM Account")}
    assert names <= accounts and names


# ---------------------------------------------------------------- faults


@pytest.mark.salesforce(seed_accounts=2, seed_contacts=0, seed_leads=300)
async def test_transient_iterable_and_salesforce_errors_are_retried(
    config: Config, store: Store, clients: Clients, iterable_emulator: IterableEmulator,
    sf_emulator: SalesforceEmulator,
) -> None:
    iterable_emulator.faults.fail_next("/api/users/bulkUpdate", times=2, status=503)
    sf_emulator.faults.fail_next("/services/data/v66.0/query", 1, status=503)
    summary = await make_backfill(config, store, clients).run(
        BackfillOptions(objects=("Lead",), page_size=PAGE, parallel=1))
    assert summary.status == "finished" and summary.retry_queued == 0
    report = await verify(config, clients, store, iterable_emulator, ("Lead",))
    assert report.ok, report.summary()


@pytest.mark.salesforce(seed_accounts=2, seed_contacts=0, seed_leads=250)
async def test_an_iterable_that_takes_nothing_stops_the_run_unfinished(
    config: Config, store: Store, clients: Clients, iterable_emulator: IterableEmulator
) -> None:
    iterable_emulator.faults.fail_next("/api/users/bulkUpdate", times=1000, status=503)
    options = BackfillOptions(objects=("Lead",), page_size=PAGE, parallel=1)
    with pytest.raises(WritesFailed, match="none of a page") as info:
        await make_backfill(config, store, clients).run(options)
    assert iterable_emulator.base_url in info.value.advice and "--resume" in info.value.advice
    run = await store.latest_run()
    assert run is not None and not run.finished           # not "finished", resumable
    assert [(w.done, w.records_done) for w in await store.windows(run.run_id)] == [(False, 0)]
    assert await store.lease("test", 10_000, 60.0, 2e9) == []  # nothing set aside meanwhile

    iterable_emulator.faults.clear()
    resumed = await make_backfill(config, store, clients).run(
        BackfillOptions(objects=("Lead",), page_size=PAGE, parallel=1, resume=True))
    assert resumed.run_id == run.run_id and resumed.status == "finished"
    assert resumed.records_read == 250
    report = await verify(config, clients, store, iterable_emulator, ("Lead",))
    assert report.ok, report.summary()


@pytest.mark.salesforce(seed_accounts=2, seed_contacts=0, seed_leads=250)
async def test_a_key_revoked_mid_run_stops_it_unfinished(
    store: Store, clients: Clients, iterable_emulator: IterableEmulator,
    sf_emulator: SalesforceEmulator, make_config: MakeConfig, tmp_path: Path,
) -> None:
    config = make_config(sf_emulator, iterable_emulator, tmp_path,
                         iterable={"batch_max_users": PAGE})
    async def revoke(window: BackfillWindow, page_no: int) -> None:
        iterable_emulator.state.disable_key(iterable_emulator.api_key)

    with pytest.raises(WritesFailed, match="refused the API key") as info:
        await make_backfill(config, store, clients, on_page=revoke).run(
            BackfillOptions(objects=("Lead",), page_size=PAGE, parallel=1, catch_up=False))
    assert "STREAMSYNC_ITERABLE_API_KEY" in info.value.advice
    run = await store.latest_run()
    assert run is not None and not run.finished
    windows = await store.windows(run.run_id)
    assert not windows[0].done and 0 < windows[0].records_done < 250


@pytest.mark.salesforce(seed_accounts=2, seed_contacts=0, seed_leads=220)
async def test_records_that_keep_failing_transiently_go_to_the_queue(
    config: Config, store: Store, clients: Clients, iterable_emulator: IterableEmulator,
    sf_emulator: SalesforceEmulator,
) -> None:
    options = BackfillOptions(objects=("Lead",), page_size=2000, parallel=1, catch_up=False)
    await make_backfill(config, store, clients).run(options)
    synced = sorted((await store.identities(
        "Lead", sf_emulator.select_ids("Lead", limit=1000))).keys())
    moved, renamed = synced[0], synced[1]
    # an email change goes through updateEmail, which keeps failing; the rename is written
    sf_emulator.state.update("Lead", moved, {"Email": "moved.lead@example.org"})
    sf_emulator.state.update("Lead", renamed, {"LastName": "Renamed"})
    iterable_emulator.faults.fail_next("/api/users/updateEmail", times=1000, status=503)
    summary = await make_backfill(config, store, clients).run(
        BackfillOptions(objects=("Lead",), page_size=2000, parallel=1, catch_up=False,
                        restart=True))
    assert summary.status == "finished"
    assert summary.records_written == 1 and summary.retry_queued == 1
    leases = await store.lease("test", 10_000, 60.0, 2e9)
    assert [(lease.record_id, lease.source) for lease in leases] == [(moved, "retry")]


@pytest.mark.salesforce(seed_accounts=2, seed_contacts=0, seed_leads=220)
async def test_a_dead_letter_leaves_the_table_once_its_record_syncs(
    config: Config, store: Store, clients: Clients, sf_emulator: SalesforceEmulator
) -> None:
    first = await make_backfill(config, store, clients).run(
        BackfillOptions(objects=("Lead",), page_size=PAGE))
    dead = await store.dead_letters(limit=1000)
    assert dead and first.dead_by_reason == await store.dead_letter_counts()
    fixed = dead[0]
    sf_emulator.state.update("Lead", fixed.record_id, {"Email": "fixed.lead@example.org"})
    await make_backfill(config, store, clients).run(
        BackfillOptions(objects=("Lead",), page_size=PAGE, restart=True))
    remaining = {d.record_id for d in await store.dead_letters(limit=1000)}
    assert fixed.record_id not in remaining
    assert len(remaining) == len(dead) - 1


# ---------------------------------------------------------------- progress


@pytest.mark.salesforce(seed_accounts=2, seed_contacts=0, seed_leads=600)
async def test_progress_lines_when_not_a_terminal(
    config: Config, store: Store, clients: Clients
) -> None:
    out = io.StringIO()
    progress = ConsoleProgress(out, tty=False, line_every_s=0.0)
    summary = await make_backfill(config, store, clients, progress=progress).run(
        BackfillOptions(objects=("Lead",), page_size=PAGE, parallel=2))
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    progress_lines = [line for line in lines if line.startswith("backfill:") and "%" in line]
    assert progress_lines[0].startswith("backfill:   0.0%  0/600 records")
    assert "100.0%  600/600 records" in progress_lines[-1] and "ETA 0s" in progress_lines[-1]
    assert len(progress_lines) == summary.pages + 1
    tail = "\n".join(lines[-10:])
    for label in ("records read", "written to Iterable", "skipped (unchanged)", "dead-lettered",
                  "Iterable requests", "Salesforce API calls", "rate-limited"):
        assert label in tail


def test_progress_bar_on_a_terminal_redraws_in_place() -> None:
    now = [0.0]
    out = io.StringIO()
    progress = ConsoleProgress(out, tty=True, clock=lambda: now[0], redraw_s=0.5)
    progress.start(1000)
    now[0] = 1.0
    progress.advance(250)
    now[0] = 1.1
    progress.advance(10)                                   # within redraw_s: not drawn
    now[0] = 2.0
    progress.advance(240)
    summary = BackfillSummary("run-1", "finished", ("Lead",), records_read=500,
                              duration_s=125.0)
    progress.finish(summary)
    frames = out.getvalue().split("\r")[1:]
    assert "[#######.......................]  25.0%  250/1,000 records  250 rec/s  ETA 3s" \
        in frames[1]
    assert "50.0%  500/1,000 records  250 rec/s  ETA 2s" in frames[2]
    assert len(frames) == 4
    lines = summary_lines(summary)
    assert lines[:2] == ["backfill run-1 finished in 2m 05s (Lead)",
                         "  records read          500 (4/s)"]
    assert out.getvalue().endswith("\n" + "\n".join(lines) + "\n")


def test_progress_eta_counts_only_this_attempt() -> None:
    now = [0.0]
    progress = ConsoleProgress(io.StringIO(), tty=False, clock=lambda: now[0])
    progress.start(1000, done=600)
    now[0] = 10.0
    progress.advance(100)
    assert progress.rate_per_s() == 10.0
    assert progress.eta_s() == 30.0


@pytest.mark.salesforce(seed_accounts=2, seed_contacts=0, seed_leads=1000)
async def test_pipeline_calls_carry_whole_batches_across_page_boundaries(
    store: Store, clients: Clients, iterable_emulator: IterableEmulator,
    sf_emulator: SalesforceEmulator, make_config: MakeConfig, tmp_path: Path,
) -> None:
    # pages of 250 records, batches of 100 users: without carrying records over to the next
    # call every page would end in a partial batch (250 records, ~245 writes: 3 requests)
    config = make_config(sf_emulator, iterable_emulator, tmp_path,
                         iterable={"batch_max_users": 100})
    summary = await make_backfill(config, store, clients).run(
        BackfillOptions(objects=("Lead",), page_size=250, parallel=1))
    assert summary.dead_lettered > 0
    assert summary.iterable_requests == -(-summary.records_written // 100)
    windows = await store.windows(summary.run_id or "")
    assert [w.records_done for w in windows] == [1000] and windows[0].done


@pytest.mark.salesforce(seed_accounts=2, seed_contacts=0, seed_leads=800)
async def test_since_until_and_where_limit_what_is_read(
    config: Config, store: Store, clients: Clients, iterable_emulator: IterableEmulator
) -> None:
    from datetime import UTC, datetime
    since = datetime(2024, 6, 1, tzinfo=UTC)
    until = datetime(2025, 3, 1, tzinfo=UTC)
    where = "LeadSource IN ('Web', 'Phone Inquiry')"
    summary = await make_backfill(config, store, clients).run(BackfillOptions(
        objects=("Lead",), since=since, until=until, where=where, page_size=PAGE, parallel=3))
    expected = await sf_count(clients, f"SELECT COUNT() FROM Lead WHERE CreatedDate >= "
                                       f"2024-06-01T00:00:00Z AND CreatedDate < "
                                       f"2025-03-01T00:00:00Z AND ({where})")
    assert 0 < expected < 800
    assert summary.records_read == expected
    windows = await store.windows(summary.run_id or "")
    assert windows[0].window.window_start == "2024-06-01T00:00:00Z"
    assert windows[-1].window.window_end == "2025-03-01T00:00:00Z"
    profiles = iterable_emulator.state.snapshot().values()
    sources = {p["dataFields"].get("leadSource") for p in profiles}
    assert sources <= {"Web", "Phone Inquiry"}
