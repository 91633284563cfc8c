"""The drain against the Salesforce emulator over real HTTP with a real store: Salesforce down
leaves events pending (never failed), a record Salesforce refuses fails its event visibly, the
identity table finds a record whose email moved, and many writes go 200 per call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from streamsync.adapters.store import ConsentEventRow, IdentityUpdate
from streamsync.adapters.store.postgres import PostgresStore
from streamsync.core.consent_inbound import ConsentGroups
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.retry import Policy
from streamsync.runtime.consent_drain import ConsentDrain
from streamsync.runtime.consent_match import Target
from streamsync.testing.pg_server import PgServer
from tests.conftest import Clients

MARKETING = 39581
GROUPS = ConsentGroups(channel_ids=frozenset({MARKETING}))
TARGETS = [Target("Lead", ("HasOptedOutOfEmail",), GROUPS, "Email"),
           Target("Contact", ("HasOptedOutOfEmail",), GROUPS, "Email")]
COMPOSITE = "/services/data/v66.0/composite/sobjects"


@pytest.fixture(autouse=True)
def _no_waits(no_retry_waits: None) -> Iterator[None]:
    yield


def _unsub(key: str, email: str, at_ms: int | None = None) -> ConsentEventRow:
    return ConsentEventRow(key, "emailUnSubscribe", email, None,
                           at_ms or int(time.time()) * 1000, "EmailLink", (MARKETING,))


def _drain(clients: Clients) -> ConsentDrain:
    return ConsentDrain(targets=TARGETS, store=clients.components.store,
                        salesforce=clients.salesforce,
                        policy=Policy(attempts=2, timeout_s=5, name="test"))


def _people(sf: SalesforceEmulator, n: int) -> list[tuple[str, str]]:
    ids = sf.select_ids("Lead", "IsDeleted = false AND Email != null AND IsConverted = false "
                        "AND HasOptedOutOfEmail = false", n)
    return [(i, str(sf.state.record("Lead", i)["Email"]).lower()) for i in ids]  # type: ignore[index]


async def test_salesforce_down_leaves_the_events_pending_then_they_apply(
        sf_emulator: SalesforceEmulator, clients: Clients) -> None:
    store = clients.components.store
    ((lead, email),) = _people(sf_emulator, 1)
    await store.add_consent_events([_unsub("k1", email)], "webhook", time.time())
    sf_emulator.faults.fail_next(COMPOSITE, 2, status=503)
    drain = _drain(clients)
    result = await drain.drain_once()
    assert (result.written, result.failed) == (0, 0)
    (row,) = (await store.consent_events(["k1"])).values()
    assert (row.state, row.attempts) == ("pending", 1) and "503" in (row.outcome or "")
    assert sf_emulator.state.record("Lead", lead)["HasOptedOutOfEmail"] is False  # type: ignore[index]
    assert await store.due_consent_events(time.time()) == []  # due again in a few seconds
    drain.clock = lambda: time.time() + 10
    assert (await drain.drain_once()).written == 1
    assert sf_emulator.state.record("Lead", lead)["HasOptedOutOfEmail"] is True  # type: ignore[index]
    assert (await store.consent_events(["k1"]))["k1"].state == "done"


async def test_a_record_salesforce_refuses_fails_its_event_and_holds_back_no_other(
        sf_emulator: SalesforceEmulator, clients: Clients) -> None:
    store = clients.components.store
    (a, email_a), (b, email_b) = _people(sf_emulator, 2)
    await store.add_consent_events([_unsub("ka", email_a), _unsub("kb", email_b)], "webhook",
                                   time.time())
    refused = {"success": False, "errors": [{"statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                                             "message": "Leads in review are locked",
                                             "fields": []}]}
    # Salesforce's answer to the call (a validation rule refuses the first record).
    sf_emulator.faults.fail_next(COMPOSITE, 1, status=200, body=[
        refused, {"id": b, "success": True, "errors": []}])
    result = await _drain(clients).drain_once()
    assert result.failed == 1
    rows = await store.consent_events(["ka", "kb"])
    assert rows["ka"].state == "failed" and "Leads in review are locked" in rows["ka"].outcome  # type: ignore[operator]
    assert rows["kb"].state == "done"
    errors = await store.recent_errors(5)
    assert any("Leads in review are locked" in e.message for e in errors)


async def test_the_identity_table_finds_a_record_whose_email_moved_and_writes_go_200_a_call(
        sf_emulator: SalesforceEmulator, clients: Clients) -> None:
    store = clients.components.store
    people = _people(sf_emulator, 6)
    moved, old_email = people[0]
    sf_emulator.state.update("Lead", moved, {"Email": "moved-away@example.com"})
    await store.save_identities([IdentityUpdate("Lead", moved, old_email, None, None)],
                                time.time())
    await store.add_consent_events([_unsub(f"k{i}", e) for i, (_, e) in enumerate(people)],
                                   "webhook", time.time())
    calls = clients.counter.total("salesforce", endpoint="composite_sobjects")
    import streamsync.runtime.consent_drain as drain_module
    original = drain_module.MAX_COLLECTION
    drain_module.MAX_COLLECTION = 4  # the 200 cap, scaled down for the test
    try:
        result = await _drain(clients).drain_once()
    finally:
        drain_module.MAX_COLLECTION = original
    assert result.written == 6
    assert all(sf_emulator.state.record("Lead", i)["HasOptedOutOfEmail"] for i, _ in people)  # type: ignore[index]
    assert clients.counter.total("salesforce", endpoint="composite_sobjects") - calls == 2


async def test_an_older_event_retried_after_a_newer_one_does_not_undo_it(
        sf_emulator: SalesforceEmulator, clients: Clients) -> None:
    store = clients.components.store
    ((lead, email),) = _people(sf_emulator, 1)
    t1 = int(time.time()) * 1000
    await store.add_consent_events([_unsub("k1", email, t1)], "webhook", time.time())
    sf_emulator.faults.fail_next(COMPOSITE, 2, status=503)
    drain = _drain(clients)
    await drain.drain_once()  # Salesforce down: the unsubscribe waits for a retry
    back = ConsentEventRow("k2", "emailSubscribe", email, None, t1 + 2000, "WebForm",
                           (MARKETING,))
    await store.add_consent_events([back], "webhook", time.time())
    assert (await drain.drain_once()).written == 0  # already opted in: nothing to write
    drain.clock = lambda: time.time() + 10
    assert (await drain.drain_once()).written == 0  # the older unsubscribe comes due now
    assert sf_emulator.state.record("Lead", lead)["HasOptedOutOfEmail"] is False  # type: ignore[index]
    rows = await store.consent_events(["k1", "k2"])
    assert "stored_state_later" in (rows["k1"].outcome or "")
    assert "already" in (rows["k2"].outcome or "")


def test_email_lists_are_cut_to_fit_the_uri() -> None:
    from streamsync.core.soql import encoded_len, quote
    from streamsync.runtime.consent_match import email_chunks
    emails = [f"{'x' * 200}{i}@example.com" for i in range(100)] + ["a@b.co"] * 5
    chunks = list(email_chunks(emails))
    assert [e for c in chunks for e in c] == emails
    assert all(sum(encoded_len(quote(e)) + 3 for e in c) <= 12_000 for c in chunks)
    assert len(list(email_chunks([f"p{i}@x.co" for i in range(700)]))) == 3  # 300 a query


async def test_a_subscribe_back_is_written_only_with_apply_subscribes(
        sf_emulator: SalesforceEmulator, clients: Clients) -> None:
    store = clients.components.store
    ((lead, email),) = _people(sf_emulator, 1)
    sf_emulator.state.update("Lead", lead, {"HasOptedOutOfEmail": True})
    back = ConsentEventRow("k1", "emailSubscribe", email, None, int(time.time()) * 1000 + 5000,
                           "WebForm", (MARKETING,))
    await store.add_consent_events([back], "webhook", time.time())
    drain = ConsentDrain(targets=TARGETS, store=store, salesforce=clients.salesforce,
                         apply_subscribes=False, policy=Policy(attempts=2, timeout_s=5))
    assert (await drain.drain_once()).written == 0
    assert sf_emulator.state.record("Lead", lead)["HasOptedOutOfEmail"] is True  # type: ignore[index]
    again = ConsentEventRow("k2", "emailSubscribe", email, None, int(time.time()) * 1000 + 6000,
                            "WebForm", (MARKETING,))
    await store.add_consent_events([again], "webhook", time.time())
    drain.apply_subscribes = True
    assert (await drain.drain_once()).written == 1
    assert sf_emulator.state.record("Lead", lead)["HasOptedOutOfEmail"] is False  # type: ignore[index]


async def test_a_database_down_is_waited_out_not_a_crash(clients: Clients) -> None:
    """A PostgreSQL store whose server is down (restarting: every connection dropped, new
    ones refused) is a transient fault: the drain goes on, it does not end the service."""
    server = await asyncio.to_thread(PgServer.start)
    try:
        store = await PostgresStore.open(server.url())
        drain = ConsentDrain(targets=TARGETS, store=store, salesforce=clients.salesforce,
                             policy=Policy(attempts=2, timeout_s=5, name="test"))
        stop = asyncio.Event()
        task = asyncio.create_task(drain.run(stop))
        try:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(server.stop)  # connections dropped, new ones refused
            await asyncio.sleep(2.5)  # at least two passes while it is down
            assert not task.done(), task.exception()
        finally:
            stop.set()
            drain.wake()
            await asyncio.wait_for(task, 10)
            await store.close()
    finally:
        await asyncio.to_thread(server.destroy)
