"""`backfill --events` (issue 14 item 2): the events of records qualifying now, on both
emulators over real loopback HTTP; events are read back from Iterable."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from streamsync.adapters.iterable import IterableClient
from streamsync.adapters.store import Store
from streamsync.cli.backfill import backfill_with_events
from streamsync.config import Config
from streamsync.core.sf_time import sf_datetime
from streamsync.core.verify_events import ExpectedEvent, compare_events
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.emulators.salesforce.actions import set_stage
from streamsync.errors import BackfillError
from streamsync.runtime.backfill import BackfillOptions
from tests.conftest import build_config
from tests.e2e.harness import InProcessService, backfill, wait_for

pytestmark = [
    pytest.mark.salesforce(long_poll_s=1.0, seed_accounts=3, seed_contacts=12, seed_leads=12,
                           seed_users=3, seed_queues=1, seed_opportunities=20),
    pytest.mark.timeout(90),
]

FAST_INGEST = {"watchdog_s": 5.0, "long_poll_timeout_s": 3.0, "reconcile_overlap_s": 5.0}
WON = {"name": "opportunity-won", "object": "Opportunity", "trigger": "update",
       "changed_fields": ["StageName"], "condition": "StageName = 'Closed Won'",
       "event_name": "opportunityWon", "profile": "primary_contact_role",
       "mapping": {"Name": "dataFields.opportunityName", "Amount": "dataFields.amount"}}
TRACK_BULK = "/api/events/trackBulk"


def _config(sf: SalesforceEmulator, it: IterableEmulator, tmp_path: Path,
            **overrides: Any) -> Config:
    return build_config(sf, it, tmp_path, events=[WON], ingest=FAST_INGEST, **overrides)


def _ms(value: Any) -> int:
    moment = sf_datetime(value)
    assert moment is not None, value
    return int(moment.timestamp() * 1000)


def _stored(it: IterableEmulator) -> dict[str, Any]:
    return it.messaging_for(it.state.project()).events.by_id


def _primary_email(sf: SalesforceEmulator, opp: str) -> str | None:
    rows = sf.select_ids("OpportunityContactRole",
                         f"OpportunityId = '{opp}' AND IsPrimary = true", 1)
    if not rows:
        return None
    role = sf.state.record("OpportunityContactRole", rows[0])
    assert role is not None
    contact = sf.state.record("Contact", role["ContactId"])
    assert contact is not None and contact.get("Email")
    return str(contact["Email"]).lower()


def expected_events(sf: SalesforceEmulator) -> dict[str, ExpectedEvent]:
    """Built from Salesforce alone: every won Opportunity with a primary contact, its event id
    from its SystemModstamp, createdAt its LastModifiedDate."""
    out: dict[str, ExpectedEvent] = {}
    for opp in sf.select_ids("Opportunity", "StageName = 'Closed Won'"):
        record = sf.state.record("Opportunity", opp)
        email = _primary_email(sf, opp)
        assert record is not None
        if email is None:
            continue
        event_id = f"opportunity-won-{opp}-bf-{_ms(record['SystemModstamp'])}"
        out[event_id] = ExpectedEvent(
            event_id, "opportunityWon", email, _ms(record["LastModifiedDate"]) // 1000,
            {k: v for k, v in (("opportunityName", record["Name"]),
                               ("amount", record["Amount"])) if v is not None})
    return out


def win(sf: SalesforceEmulator, count: int) -> list[str]:
    """Close `count` open Opportunities that have a primary contact as won."""
    chosen = [o for o in sf.select_ids("Opportunity", "IsClosed = false")
              if _primary_email(sf, o) is not None][:count]
    assert len(chosen) == count
    for opp in chosen:
        set_stage(sf.state, opp, "Closed Won")
    return chosen


async def _read_back(it: IterableEmulator, emails: set[str]) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        client = IterableClient(session, it.base_url, it.api_key)
        found: list[dict[str, Any]] = []
        for email in sorted(emails):
            found.extend(e for e in await client.user_events(email=email)
                         if e.get("eventType") == "customEvent")
        return found


async def test_a_backfill_without_events_fires_no_event(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    win(sf_emulator, 3)
    config = _config(sf_emulator, iterable_emulator, tmp_path)
    await backfill(config)
    assert _stored(iterable_emulator) == {}
    assert iterable_emulator.state.count(TRACK_BULK) == 0


async def test_events_fire_once_for_the_records_qualifying_now(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    sf, it = sf_emulator, iterable_emulator
    win(sf, 3)
    config = _config(sf, it, tmp_path)
    profiles, events = await backfill_with_events(config, BackfillOptions())
    assert profiles is not None and profiles.records_written > 0  # the profiles came first
    want = expected_events(sf)
    assert len(want) >= 3
    assert set(_stored(it)) == set(want)  # qualifying records only, with their ids
    report = compare_events(want.values(), await _read_back(it, {e.user for e in want.values()}),
                            ["opportunityWon"])
    assert report.ok, report.mismatches  # name, user, createdAt, data
    [rule] = events.rules
    won = len(sf.select_ids("Opportunity", "StageName = 'Closed Won'"))
    assert (rule.qualifying, rule.fired, events.sent) == (won, len(want), len(want))
    assert rule.dead == ({"no_profile": won - len(want)} if won > len(want) else {})
    # Run again: the same scope finished; judged again (--restart): the store knows each one.
    _, again = await backfill_with_events(config, BackfillOptions())
    assert again.rules[0].status == "already_finished" and again.sent == 0
    _, restarted = await backfill_with_events(config, BackfillOptions(restart=True))
    assert (restarted.rules[0].fired, restarted.rules[0].known) == (0, len(want))
    assert restarted.sent == 0
    assert all(event.writes == 1 for event in _stored(it).values())


async def test_a_moment_fired_from_cdc_is_not_fired_again_and_the_state_is_seeded(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    sf, it = sf_emulator, iterable_emulator
    config = _config(sf, it, tmp_path)
    await backfill(config)
    service = InProcessService(config)
    await service.start()
    try:
        [live] = win(sf, 1)  # fired from CDC while the service runs
        await wait_for(lambda: _fired(it, live), 15.0, "the CDC event", poll_s=0.1)
        assert await service.stop() == 0
        # While the service is down: won, then an unrelated update (the state the backfill
        # judges is newer than the change that made it hold).
        [offline] = win(sf, 1)
        await asyncio.sleep(1.1)  # SystemModstamp has whole seconds: a later one
        sf.state.update("Opportunity", offline, {"NextStep": "Send the contract"})
        _, summary = await backfill_with_events(config, BackfillOptions(objects=("Opportunity",)))
        assert summary.rules[0].known >= 1 and summary.rules[0].fired >= 1
        assert _ids_of(it, live) == [_cdc_id(it, live)]
        [seeded] = _ids_of(it, offline)
        assert "-bf-" in seeded
        # The service replays the offline changes, then unrelated updates of both: nothing.
        await service.start()
        for opp in (live, offline):
            sf.state.update("Opportunity", opp, {"Amount": 4321.0})
        store = await Store.open(config.queue.path)
        try:
            async def settled() -> bool:
                counts = await store.event_counts()
                return not counts.get("new") and not counts.get("ready")

            await asyncio.sleep(2.0)  # the replay and the updates reach the decide loop
            await wait_for(settled, 15.0, "the event rows to settle")
        finally:
            await store.close()
        assert _ids_of(it, live) == [_cdc_id(it, live)]
        assert _ids_of(it, offline) == [seeded]
    finally:
        await service.abandon()


def _ids_of(it: IterableEmulator, opp: str) -> list[str]:
    return sorted(i for i in _stored(it) if i.startswith(f"opportunity-won-{opp}-"))


def _cdc_id(it: IterableEmulator, opp: str) -> str:
    [event_id] = [i for i in _ids_of(it, opp) if "-bf-" not in i]
    return event_id


async def _fired(it: IterableEmulator, opp: str) -> bool:
    return bool(_ids_of(it, opp))


def many_won(sf: SalesforceEmulator, count: int) -> None:
    """`count` won Opportunities, each with a primary contact, created in one transaction."""
    contacts = [c for c in sf.select_ids("Contact", "Email != null")]
    account = sf.state.record("Contact", contacts[0])["AccountId"]
    with sf.state.transaction(user_id=sf.state.sales_user_id) as tx:
        for i in range(count):
            opp = tx.create("Opportunity", {"Name": f"Bulk {i}", "StageName": "Closed Won",
                                            "CloseDate": "2026-01-01", "AccountId": account,
                                            "Amount": float(i)})
            tx.create("OpportunityContactRole", {"OpportunityId": opp, "IsPrimary": True,
                                                 "ContactId": contacts[i % len(contacts)]})


async def test_an_interrupted_backfill_resumes_from_its_checkpoint_without_duplicates(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    sf, it = sf_emulator, iterable_emulator
    many_won(sf, 450)
    config = _config(sf, it, tmp_path, event_delivery={"batch_max_events": 50},
                     backfill={"page_size": 200, "parallel": 1})
    await backfill(config)
    want = expected_events(sf)
    # Salesforce and trackBulk calls are slow; the run is cancelled (as Ctrl-C or SIGTERM
    # do) once a page is checkpointed and events sent, while the window goes on.
    sf.faults.set_latency(300.0)
    it.faults.add("slow", TRACK_BULK, 10_000, delay_s=0.2)
    task = asyncio.create_task(backfill_with_events(config, BackfillOptions()))
    store = await Store.open(config.queue.path)
    kinds: set[str] = set()
    try:
        while not (_stored(it) and await _mid_window(store)):
            assert not task.done(), task
            kinds.update(d.kind for b in await store.budgets_in_use()
                         if b.budget_key.endswith(":trackBulk") for d in b.drawers)
            await asyncio.sleep(0.02)
    finally:
        await store.close()
    task.cancel()
    assert kinds == {"backfill"}  # trackBulk slots drawn from the shared budget
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert 0 < len(_stored(it)) < len(want)
    sf.faults.set_latency(0.0)
    with pytest.raises(BackfillError, match="--resume"):
        await backfill_with_events(config, BackfillOptions())
    _, resumed = await backfill_with_events(config, BackfillOptions(resume=True))
    [rule] = resumed.rules
    assert rule.resumed and 0 < rule.records_read < len(want)  # after the checkpoint only
    assert set(_stored(it)) == set(want)
    # Calls in flight when it stopped may be sent again: the same ids, one event each.
    assert sum(e.writes for e in _stored(it).values()) <= len(want) + 2 * 50
    report = compare_events(want.values(), await _read_back(it, {e.user for e in want.values()}),
                            ["opportunityWon"])
    assert report.ok, report.mismatches[:5]


async def _mid_window(store: Store) -> bool:
    """An events run has a window checkpointed after a page and not done."""
    for run in await store.runs(limit=5):
        if run.run_id.startswith("bfe-"):
            return any(w.last_id and not w.done for w in await store.windows(run.run_id))
    return False


def _toml(sf: SalesforceEmulator, it: IterableEmulator, tmp_path: Path, rules: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"""
[salesforce]
login_url = "{sf.instance_url}"
auth = "client_credentials"
client_id = "{sf.client_id}"
api_version = "{sf.config.api_version}"

[iterable]
base_url = "{it.base_url}"
project_type = "email"

[queue]
path = "{tmp_path / 'store.db'}"

[health]
enabled = false

[objects.Lead]
[objects.Contact]
{rules}
""")
    return path


@pytest.mark.parametrize(("rules", "args", "message"), [
    ("", ["--events"], "no [[events]] rules"),
    ('[[events]]\nname = "won"\nobject = "Opportunity"\ntrigger = "update"\n'
     'condition = "StageName = \'Closed Won\'"\nevent_name = "won"\n'
     'profile = "primary_contact_role"\n', ["--events", "--objects", "Lead"],
     "no [[events]] rule has object Lead"),
    ('[[events]]\nname = "gone"\nobject = "Lead"\ntrigger = "delete"\nevent_name = "gone"\n',
     ["--events"], "a deleted record has no current state"),
    ('[[events]]\nname = "touched"\nobject = "Lead"\ntrigger = "update"\n'
     'event_name = "touched"\n', ["--events"], "a change without a condition"),
    ("", ["--events", "--lists"], "--lists and --events exclude each other"),
    ("", ["--events", "--dry-run", "out.jsonl"], "--events does not take --dry-run"),
])
async def test_bad_input_is_a_usage_error(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        rules: str, args: list[str], message: str) -> None:
    config = _toml(sf_emulator, iterable_emulator, tmp_path, rules)
    env = {**os.environ, "STREAMSYNC_SF_CLIENT_SECRET": sf_emulator.client_secret,
           "STREAMSYNC_ITERABLE_API_KEY": iterable_emulator.api_key}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamsync.backfill", "--config", str(config), *args,
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2, err.decode()
    assert message in " ".join(err.decode().split())
    assert _stored(iterable_emulator) == {}


async def test_the_command_sends_them_and_prints_a_summary(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    sf, it = sf_emulator, iterable_emulator
    win(sf, 2)
    rule = ('[[events]]\nname = "opportunity-won"\nobject = "Opportunity"\ntrigger = "update"\n'
            'condition = "StageName = \'Closed Won\'"\nevent_name = "opportunityWon"\n'
            'profile = "primary_contact_role"\n[events.mapping]\n'
            '"Name" = "dataFields.opportunityName"\n"Amount" = "dataFields.amount"\n'
            '[[events]]\nname = "lead-gone"\nobject = "Lead"\ntrigger = "delete"\n'
            'event_name = "leadGone"\n')
    config = _toml(sf, it, tmp_path, rule)
    env = {**os.environ, "STREAMSYNC_SF_CLIENT_SECRET": sf.client_secret,
           "STREAMSYNC_ITERABLE_API_KEY": it.api_key}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamsync.backfill", "--config", str(config), "--events",
        "--json", cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    doc = orjson.loads(out.decode().strip().splitlines()[-1])
    want = expected_events(sf)
    assert doc["records_written"] > 0  # the profiles
    assert doc["events"]["sent"] == len(want) and doc["events"]["left_queued"] == 0
    assert doc["events"]["not_judged"] == {"lead-gone": "its trigger is delete: a deleted "
                                                        "record has no current state to judge"}
    assert set(_stored(it)) == set(want)
    again = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamsync.backfill", "--config", str(config), "--events",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    text, err = await again.communicate()
    assert again.returncode == 0, err.decode()
    assert text.decode().splitlines() == [
        "events rule opportunity-won (Opportunity): already finished (--restart to judge again)",
        "events rule lead-gone: not judged: its trigger is delete: a deleted record has no "
        "current state to judge",
        "events: 0 sent in 0 trackBulk calls, 0 refused"]


CREATED = {"name": "lead-created", "object": "Lead", "trigger": "create",
           "event_name": "leadCreated", "mapping": {"Company": "dataFields.company"}}


async def test_a_create_rule_fires_for_every_record_once_and_not_for_one_cdc_fired(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    sf, it = sf_emulator, iterable_emulator
    config = build_config(sf, it, tmp_path, events=[CREATED], ingest=FAST_INGEST)
    await backfill(config)
    service = InProcessService(config)
    await service.start()
    try:
        with sf.state.transaction(user_id=sf.state.sales_user_id) as tx:
            fresh = tx.create("Lead", {"LastName": "Fresh", "Company": "Acme",
                                       "Email": "fresh@example.com"})

        async def fired() -> bool:
            return any(i.startswith(f"lead-created-{fresh}-") for i in _stored(it))

        await wait_for(fired, 15.0, "the CDC create event", poll_s=0.1)
    finally:
        await service.abandon()
    _, summary = await backfill_with_events(config, BackfillOptions(objects=("Lead",)))
    leads = [r for r in (sf.state.record("Lead", i) for i in sf.select_ids("Lead"))
             if r is not None]
    with_email = {r["Id"]: r for r in leads if r.get("Email")}
    [rule] = summary.rules
    assert rule.known == 1  # the CDC-fired Lead
    ours = {i: e for i, e in _stored(it).items() if "-bf-" in i}
    assert set(ours) == {f"lead-created-{i}-bf-{_ms(r['CreatedDate'])}"
                         for i, r in with_email.items() if i != fresh}
    for event_id, event in ours.items():
        record = with_email[event_id.split("-")[2]]
        assert event.created_ms == _ms(record["CreatedDate"])
        assert event.data == {"company": record["Company"]}
        assert event.email == str(record["Email"]).lower()
    _, again = await backfill_with_events(config, BackfillOptions(objects=("Lead",),
                                                                  restart=True))
    assert again.rules[0].fired == 0 and again.sent == 0
    assert all(e.writes == 1 for e in _stored(it).values())
