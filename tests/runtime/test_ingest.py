"""Ingest against the Salesforce emulator's CometD over real HTTP and a real SQLite store."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from streamsync.adapters.cometd import CometdSubscriber
from streamsync.adapters.store import IdentityUpdate, Lease, PendingReconcile, Store
from streamsync.config import Config
from streamsync.core.ids import to_18
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.errors import FatalError, RetriableError, TransientError
from streamsync.runtime.generations import RecordGate
from streamsync.runtime.ingest import Ingest, ReplayCallbacks, ingest_channels
from streamsync.runtime.ingest_parts import ChangeRelevance
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.reconcile import Reconciler
from tests.conftest import Clients, MakeConfig

LEAD = "/data/LeadChangeEvent"
CONTACT = "/data/ContactChangeEvent"
Message = dict[str, Any]

pytestmark = pytest.mark.salesforce(long_poll_s=0.2, seed_users=2, seed_queues=0)


async def _no_sleep(_seconds: float) -> None:
    return None


@dataclass
class Rig:
    """One emulator, one config, one store; builds subscribers and ingests on demand."""

    emu: SalesforceEmulator
    config: Config
    store: Store
    clients: Clients
    metrics: Metrics = field(default_factory=Metrics)
    opened: list[Ingest] = field(default_factory=list)

    def ingest(self, *, store: Store | None = None, config: Config | None = None,
               channels: tuple[str, ...] = (LEAD,), max_concurrent_reconciles: int = 2,
               retry_base_s: float = 0.5, ingest_clock: Callable[[], float] = time.time,
               relevance: ChangeRelevance | None = None, gate: RecordGate | None = None,
               **sub_kw: Any) -> Ingest:
        """An Ingest and its Reconciler on `ingest_clock`; `sub_kw` go to the subscriber."""
        store = store or self.store
        config = config or self.config
        callbacks = ReplayCallbacks(store)
        options: dict[str, Any] = {"watchdog_s": 5.0, "long_poll_timeout_s": 2.0,
                                   "request_timeout_s": 2.0, "min_handshake_interval_s": 0.0,
                                   "backoff_base_s": 0.01, "sleep": _no_sleep}
        options.update(sub_kw)
        subscriber = CometdSubscriber(
            self.clients.session, instance_url=self.emu.instance_url,
            api_version=config.salesforce.api_version,
            get_token=self.clients.auth.access_token, invalidate_token=self.clients.auth.invalidate,
            channels=channels, replay_from=callbacks.replay_from,
            on_replay_invalid=callbacks.on_replay_invalid, **options)
        reconciler = Reconciler(config=config, store=store, salesforce=self.clients.salesforce,
                                metrics=self.metrics, clock=ingest_clock)
        ingest = Ingest(config=config, store=store, subscriber=subscriber, reconciler=reconciler,
                        metrics=self.metrics, clock=ingest_clock, callbacks=callbacks,
                        max_concurrent_reconciles=max_concurrent_reconciles,
                        retry_base_s=retry_base_s, retry_max_s=max(retry_base_s, 30.0),
                        relevance=relevance, gate=gate)
        self.opened.append(ingest)
        return ingest

    def lead(self, name: str, **values: Any) -> str:
        return self.emu.state.create("Lead", {"LastName": name, "Company": "Acme",
                                              "Email": f"{name.lower()}@example.com", **values})

    def publish(self, entity: str, change_type: str, record_ids: list[str], *,
                origin: str = "") -> int:
        """A raw CDC event on the emulator's bus (shapes no ordinary write produces)."""
        header = {"entityName": entity, "recordIds": record_ids, "changeType": change_type,
                  "changeOrigin": origin, "transactionKey": str(uuid.uuid4()),
                  "sequenceNumber": 1, "commitTimestamp": int(time.time() * 1000),
                  "commitNumber": 1, "commitUser": "", "changedFields": []}
        return self.emu.bus.publish(entity, {"ChangeEventHeader": header})


@pytest.fixture
async def rig(sf_emulator: SalesforceEmulator, config: Config, store: Store,
              clients: Clients) -> AsyncIterator[Rig]:
    r = Rig(sf_emulator, config, store, clients)
    try:
        yield r
    finally:
        for ingest in r.opened:
            await ingest.aclose()


def sub(ingest: Ingest) -> CometdSubscriber:
    return ingest._subscriber


async def pump(ingest: Ingest, want: int = 1, max_polls: int = 30) -> list[Message]:
    """Connect round trips (each at most the emulator's 0.2 s long poll), every data message
    handled as `run` would, until `want` messages arrived."""
    got: list[Message] = []
    for _ in range(max_polls):
        try:
            batch = await sub(ingest).poll_once()
        except RetriableError:
            continue
        for message in batch:
            await ingest.handle_message(message)
            got.append(message)
        if len(got) >= want:
            return got
    raise AssertionError(f"{len(got)} of {want} messages after {max_polls} polls; "
                         f"stats={sub(ingest).stats}")


async def subscribe(ingest: Ingest) -> None:
    """First poll: handshake and subscribe (then one empty long poll)."""
    assert await sub(ingest).poll_once() == []
    assert ingest.subscribed


async def queued(store: Store, later_s: float = 0.0) -> dict[str, Lease]:
    """Every queued row (due by now + `later_s`), by record id; left queued."""
    leases = await store.lease("test", 100_000, 60.0, time.time() + later_s + 1)
    await store.release(leases)
    return {lease.record_id: lease for lease in leases}


async def flushed(store: Store) -> None:
    """Empty the queue as a flusher would: lease every row and ack it."""
    leases = await store.lease("test", 100_000, 60.0, time.time() + 1)
    result = await store.ack(leases)
    assert result.deleted == len(leases)


def replay_id_of(message: Message) -> int:
    value = message["data"]["event"]["replayId"]
    assert isinstance(value, int)
    return value


async def next_message(ingest: Ingest) -> Message:
    """The next data message, polled but not handled."""
    for _ in range(30):
        batch = await sub(ingest).poll_once()
        if batch:
            [message] = batch
            return message
    raise AssertionError("no message after 30 polls")


@contextlib.contextmanager
def refused_inserts(path: Path, table: str, when: str = "1") -> Iterator[None]:
    """A real SQLite fault: inserts (and upserts) into `table` for which `when` holds abort,
    through a trigger created by another connection to the store's file, until the block ends."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"CREATE TRIGGER injected_fault BEFORE INSERT ON {table} WHEN {when} "
                     "BEGIN SELECT RAISE(ABORT, 'injected fault'); END")
        try:
            yield
        finally:
            conn.execute("DROP TRIGGER injected_fault")
    finally:
        conn.close()


async def anchor_state(store: Store, channel: str) -> str | None:
    anchor = await store.channel_anchor(channel)
    return None if anchor is None else anchor.state


# ---- docs/design.md invariant 1: ids and replay id together; resume after restart -------------


async def test_ids_and_replay_id_stored_together_and_resumed_after_restart(
    rig: Rig, tmp_path: Path
) -> None:
    first = rig.ingest()
    await subscribe(first)
    assert await anchor_state(rig.store, LEAD) in ("unanchored", "earliest")  # not anchored
    l1 = rig.lead("First")
    [m1] = await pump(first)

    state = await rig.store.get_replay(LEAD)
    assert state is not None and state.replay_id == replay_id_of(m1)
    assert state.last_commit_ts_ms == m1["data"]["payload"]["ChangeEventHeader"][
        "commitTimestamp"]
    rows = await queued(rig.store)
    assert set(rows) == {l1} and rows[l1].source == "cdc" and rows[l1].change_type == "CREATE"
    assert rows[l1].commit_ts_ms == state.last_commit_ts_ms

    # "Crash": the subscriber and the store go away; changes happen meanwhile.
    await first.aclose()
    await rig.store.close()
    l2 = rig.lead("WhileDown")

    reopened = await Store.open(tmp_path / "streamsync.db")
    try:
        second = rig.ingest(store=reopened)
        got = await pump(second)  # resumes from the stored replay id
        ids = [i for m in got for i in m["data"]["payload"]["ChangeEventHeader"]["recordIds"]]
        assert ids == [l2]  # only the later event, not the one already stored
        assert await anchor_state(reopened, LEAD) == "anchored"  # by the id
        assert set(await queued(reopened)) == {l1, l2}
        after = await reopened.get_replay(LEAD)
        assert after is not None and after.replay_id == replay_id_of(got[-1])
    finally:
        await second.aclose()
        await reopened.close()


async def test_merged_event_queues_every_record_id(rig: Rig) -> None:
    ingest = rig.ingest()
    await subscribe(ingest)
    leads = rig.emu.select_ids("Lead", limit=8)
    rig.emu.state.mass_update("Lead", leads, {"Title": "Mass-updated"})

    [message] = await pump(ingest)

    assert len(message["data"]["payload"]["ChangeEventHeader"]["recordIds"]) == 8
    rows = await queued(rig.store)
    assert set(rows) == set(leads)
    assert {row.change_type for row in rows.values()} == {"UPDATE"}
    assert rig.metrics.registry.get_sample_value(
        "streamsync_events_received_total", {"channel": LEAD}) == 1.0
    last = rig.metrics.registry.get_sample_value(
        "streamsync_last_event_timestamp_seconds", {"channel": LEAD})
    assert last is not None and abs(last - time.time()) < 60


async def test_delete_and_undelete_are_queued(rig: Rig) -> None:
    ingest = rig.ingest()
    await subscribe(ingest)
    lead = rig.emu.select_ids("Lead", limit=1)[0]
    rig.emu.state.delete("Lead", lead)
    [_] = await pump(ingest)
    assert (await queued(rig.store))[lead].change_type == "DELETE"
    rig.emu.state.undelete("Lead", lead)
    [_] = await pump(ingest)
    assert (await queued(rig.store))[lead].change_type == "UNDELETE"


async def test_gap_event_ids_are_requeued(rig: Rig) -> None:
    ingest = rig.ingest()
    await subscribe(ingest)
    leads = rig.emu.select_ids("Lead", limit=3)
    rig.emu.publish_gap("Lead", "GAP_UPDATE", leads)

    [message] = await pump(ingest)

    rows = await queued(rig.store)
    assert set(rows) == set(leads)
    assert {row.change_type for row in rows.values()} == {"GAP_UPDATE"}
    assert await ingest.pending_reconciles() == {}  # ids are enough: no reconciliation
    state = await rig.store.get_replay(LEAD)
    assert state is not None and state.replay_id == replay_id_of(message)


# ---- docs/design.md invariant 6: overflow, wildcard, expired replay id ------------------------


async def test_overflow_reconciles_every_modified_record_of_the_object(rig: Rig) -> None:
    ingest = rig.ingest(max_concurrent_reconciles=1)
    await subscribe(ingest)
    gate = ingest.reconciles._gate  # held by the test: reconciliations wait until it lets go
    await gate.acquire()
    leads = rig.emu.select_ids("Lead", limit=6)
    # This org overflows past 9 changes per transaction: an update of one field changes three
    # (with LastModifiedDate and LastModifiedById), so the fourth record overflows.
    rig.emu.state.overflow_changes = 9
    rig.emu.state.mass_update("Lead", leads, {"Title": "Overflowing"})

    got = await pump(ingest, want=2)

    types = [m["data"]["payload"]["ChangeEventHeader"]["changeType"] for m in got]
    assert types == ["UPDATE", "GAP_OVERFLOW"]
    # Before the reconciliation ran: it is owed durably, and the replay id is past the event.
    pending = await ingest.pending_reconciles()
    assert set(pending) == {"Lead"} and pending["Lead"].trigger == "gap_overflow"
    state = await rig.store.get_replay(LEAD)
    assert state is not None and state.replay_id == replay_id_of(got[-1])
    assert set(await queued(rig.store)) == set(leads[:3])  # what the events themselves named

    gate.release()
    await ingest.drain_reconciles()

    rows = await queued(rig.store)
    assert set(rows) == set(leads)  # the three the overflow hid are found; old seeds are not
    assert {rows[i].source for i in leads[3:]} == {"reconcile"}
    assert await ingest.pending_reconciles() == {}
    assert rig.metrics.registry.get_sample_value(
        "streamsync_reconciliations_total", {"trigger": "gap_overflow"}) == 1.0


async def test_owed_reconciliation_survives_a_crash(rig: Rig) -> None:
    ingest = rig.ingest()
    await subscribe(ingest)
    lead = rig.emu.select_ids("Lead", limit=1)[0]
    rig.emu.state.update("Lead", lead, {"Rating": "Warm"})
    rig.emu.publish_gap("Lead", "GAP_OVERFLOW", [])
    got = await pump(ingest, want=2)
    await ingest.aclose()  # "crash" before the reconciliation could run
    assert got[-1]["data"]["payload"]["ChangeEventHeader"]["changeType"] == "GAP_OVERFLOW"
    assert await rig.store.reconcile_pending("Lead") is not None
    await flushed(rig.store)  # the event's own id was synced meanwhile

    restarted = rig.ingest()
    assert await restarted.resume_pending() == 1
    await restarted.drain_reconciles()

    rows = await queued(rig.store)
    assert rows[lead].source == "reconcile"
    assert await restarted.pending_reconciles() == {}


async def test_failed_reconciliation_is_retried_and_its_marker_kept_until_done(rig: Rig) -> None:
    ingest = rig.ingest(retry_base_s=0.001)
    lead = rig.lead("Reconciled")
    rig.emu.faults.fail_next("/services/data/v66.0/queryAll", 2, status=503)

    await ingest.on_replay_invalid(LEAD, 12345)  # no commit time stored: everything
    assert set(await ingest.pending_reconciles()) == {"Lead"}
    await ingest.drain_reconciles()

    assert ingest.stats.reconcile_failures == 2 and ingest.stats.reconciles_done == 1
    assert lead in await queued(rig.store)
    assert await ingest.pending_reconciles() == {}


async def test_wildcard_ids_reconcile_the_object(rig: Rig) -> None:
    ingest = rig.ingest()
    await subscribe(ingest)
    since_ms = int(time.time() * 1000)
    touched = rig.emu.select_ids("Lead", limit=2)
    for lead in touched:
        rig.emu.state.update("Lead", lead, {"Rating": "Cold"})
    await pump(ingest, want=2)
    await flushed(rig.store)

    rig.publish("Lead", "UPDATE", ["00Q*"])
    [_] = await pump(ingest)
    pending = await ingest.pending_reconciles()
    assert pending["Lead"].trigger == "wildcard"
    assert pending["Lead"].since_ms is not None and pending["Lead"].since_ms >= since_ms
    await ingest.drain_reconciles()

    assert set(await queued(rig.store)) == set(touched)

    # A wildcard of another configured object reconciles that object; an unknown one is dropped.
    await flushed(rig.store)
    contact = rig.emu.select_ids("Contact", limit=1)[0]
    rig.emu.state.update("Contact", contact, {"Title": "Touched"})
    rig.publish("Lead", "UPDATE", ["003*", "006*"])
    [_] = await pump(ingest)  # the Contact's own event is on a channel not subscribed here
    assert set(await ingest.pending_reconciles()) == {"Contact"}
    await ingest.drain_reconciles()
    assert set(await queued(rig.store)) == {contact}
    assert ingest.stats.ids_dropped == 1


async def test_expired_replay_id_after_downtime_reconciles_and_new_events_flow(
    rig: Rig, tmp_path: Path
) -> None:
    first = rig.ingest()
    await subscribe(first)
    before = rig.lead("BeforeDowntime")
    await pump(first)
    await flushed(rig.store)
    await first.aclose()

    # Downtime: changes happen and the bus loses them (retention passed).
    created = rig.lead("DuringDowntime")
    old = rig.emu.select_ids("Lead", limit=3)
    rig.emu.state.update("Lead", old[0], {"Title": "Changed while down"})
    rig.emu.state.delete("Lead", old[1])
    rig.emu.bus.purge()

    second = rig.ingest()
    await subscribe(second)  # the stored id is refused; falls back to -1
    assert sub(second).stats.replay_fallbacks == 1 and second.stats.replay_invalid == 1
    state = await rig.store.get_replay(LEAD)
    assert state is not None and state.replay_id is None  # cleared: no stale id resent
    await second.drain_reconciles()

    rows = await queued(rig.store)
    # Downtime changes, plus the last record seen (inside the overlap margin); no old seed.
    assert set(rows) == {before, created, old[0], old[1]}
    assert {row.source for row in rows.values()} == {"reconcile"}
    assert rows[old[1]].change_type == "DELETE"
    assert any("no longer retained" in e.message for e in await rig.store.recent_errors())
    assert rig.metrics.registry.get_sample_value(
        "streamsync_reconciliations_total", {"trigger": "replay_invalid"}) == 1.0

    after = rig.lead("AfterRestart")
    [message] = await pump(second)
    assert (await queued(rig.store))[after].source == "cdc"
    state = await rig.store.get_replay(LEAD)
    assert state is not None and state.replay_id == replay_id_of(message)


async def test_replay_expired_after_downtime_beyond_the_margin_reconciles_from_last_commit(
        rig: Rig) -> None:
    """The reconciliation starts at the last commit time stored for the channel (minus the
    margin), not at "now minus the margin": with a downtime longer than the margin (the clock
    of the restarted ingest is moved on) the latter would miss every change made meanwhile."""
    first = rig.ingest()
    await subscribe(first)
    before = rig.lead("BeforeLongDowntime")
    [message] = await pump(first)
    await flushed(rig.store)
    await first.aclose()
    stored = await rig.store.get_replay(LEAD)
    commit_ms = message["data"]["payload"]["ChangeEventHeader"]["commitTimestamp"]
    assert stored is not None and stored.last_commit_ts_ms == commit_ms

    created = rig.lead("DuringLongDowntime")
    old = rig.emu.select_ids("Lead", limit=3)
    rig.emu.state.update("Lead", old[0], {"Title": "Changed while down for long"})
    rig.emu.state.delete("Lead", old[1])
    rig.emu.bus.purge()
    downtime_s = rig.config.ingest.reconcile_overlap_s + 3600.0

    second = rig.ingest(ingest_clock=lambda: time.time() + downtime_s)
    await subscribe(second)
    assert second.stats.replay_invalid == 1
    await second.drain_reconciles()

    rows = await queued(rig.store, later_s=downtime_s)  # queued at the moved-on clock
    assert set(rows) == {before, created, old[0], old[1]}
    assert rows[old[1]].change_type == "DELETE"
    assert any(f"commit time {commit_ms} ms" in e.message
               for e in await rig.store.recent_errors())


async def test_expired_replay_id_without_commit_time_reconciles_everything(rig: Rig) -> None:
    rig.lead("Retained")
    rig.emu.bus.purge()
    await rig.store.set_replay(LEAD, 1, time.time())  # e.g. set by `replay`, no commit time
    ingest = rig.ingest()

    await subscribe(ingest)
    await ingest.drain_reconciles()

    every = rig.emu.select_ids("Lead")
    assert set(await queued(rig.store)) == set(every)
    assert rig.metrics.registry.get_sample_value(
        "streamsync_reconciliations_total", {"trigger": "replay_invalid"}) == 1.0


# ---- echoes, unexpected ids and entities, malformed messages -----------------------------------


@pytest.mark.parametrize("suppress", [True, False])
async def test_echo_suppression_by_change_origin_client(
    rig: Rig, sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
    tmp_path: Path, make_config: MakeConfig, suppress: bool
) -> None:
    cfg = make_config(sf_emulator, iterable_emulator, tmp_path,
                      salesforce={"suppress_echoes": suppress, "client_name": "streamsync"})
    ingest = rig.ingest(config=cfg)
    await subscribe(ingest)
    ours, theirs = rig.emu.select_ids("Lead", limit=2)
    rig.emu.state.update("Lead", ours, {"Title": "Written by us"},
                         origin="com/salesforce/api/rest/66.0;client=streamsync")
    rig.emu.state.update("Lead", theirs, {"Title": "Written by a user"},
                         origin="com/salesforce/api/rest/66.0;client=SfdcInternalAPI")

    got = await pump(ingest, want=2)

    rows = await queued(rig.store)
    assert set(rows) == ({theirs} if suppress else {ours, theirs})
    assert ingest.stats.echoes == (1 if suppress else 0)
    state = await rig.store.get_replay(LEAD)
    assert state is not None and state.replay_id == replay_id_of(got[-1])


async def test_ids_of_other_objects_are_queued_under_their_object_or_dropped(rig: Rig) -> None:
    ingest = rig.ingest()
    await subscribe(ingest)
    lead = rig.emu.select_ids("Lead", limit=1)[0]
    contact = rig.emu.select_ids("Contact", limit=1)[0]
    opportunity = to_18("006000000000001")
    rig.publish("Lead", "UPDATE", [lead, contact, opportunity])

    [_] = await pump(ingest)

    rows = await queued(rig.store)
    assert set(rows) == {lead, contact}
    assert rows[lead].object_name == "Lead" and rows[contact].object_name == "Contact"
    assert ingest.stats.ids_dropped == 1


async def test_malformed_message_advances_and_does_not_block_the_next(rig: Rig) -> None:
    ingest = rig.ingest()
    await subscribe(ingest)
    rig.publish("Lead", "UPDATE", ["definitely-not-an-id"])
    good = rig.lead("AfterPoison")

    got = await pump(ingest, want=2)

    assert set(await queued(rig.store)) == {good}
    state = await rig.store.get_replay(LEAD)
    assert state is not None and state.replay_id == replay_id_of(got[-1])
    assert ingest.stats.malformed == 1
    errors = await rig.store.recent_errors()
    assert any("malformed CDC message" in e.message for e in errors)


async def test_malformed_message_with_unreadable_replay_id_leaves_the_stored_id(
    rig: Rig
) -> None:
    ingest = rig.ingest()
    await rig.store.set_replay(LEAD, 41, time.time(), commit_ts_ms=5)
    await ingest.handle_message({"channel": LEAD, "data": {"event": {"replayId": "x"}}})
    await ingest.handle_message({"channel": LEAD, "data": "garbage"})
    await ingest.handle_message("not even a dict")  # type: ignore[arg-type]

    state = await rig.store.get_replay(LEAD)
    assert state is not None and state.replay_id == 41 and state.last_commit_ts_ms == 5
    assert ingest.stats.malformed == 3
    assert len(await rig.store.recent_errors()) == 3


async def test_event_of_an_unconfigured_object_moves_the_replay_id(rig: Rig) -> None:
    ingest = rig.ingest()
    header = {"entityName": "Opportunity", "recordIds": [to_18("006000000000001")],
              "changeType": "UPDATE", "commitTimestamp": 1_700_000_000_000}
    await ingest.handle_message({"channel": "/data/ChangeEvents",
                                 "data": {"payload": {"ChangeEventHeader": header},
                                          "event": {"replayId": 77}}})
    assert await queued(rig.store) == {}
    state = await rig.store.get_replay("/data/ChangeEvents")
    assert state is not None and state.replay_id == 77
    assert ingest.stats.unexpected_entity == 1


# ---- session faults ---------------------------------------------------------------------------


async def test_unknown_client_rehandshakes_resubscribes_and_receives_the_next_event(
    rig: Rig
) -> None:
    ingest = rig.ingest()
    await subscribe(ingest)
    rig.lead("Primer")
    await pump(ingest)  # a replay id is stored: the resubscribe replays from it
    assert rig.emu.forget_cometd_clients() == 1
    lead = rig.lead("AfterForget")

    [message] = await pump(ingest)

    assert message["data"]["payload"]["ChangeEventHeader"]["recordIds"] == [lead]
    assert (await queued(rig.store))[lead].source == "cdc"
    assert sub(ingest).stats.unknown_clients >= 1 and sub(ingest).stats.handshakes == 2
    assert ingest.subscribed
    assert await ingest.pending_reconciles() == {}


@pytest.mark.parametrize("preset", [-1, "-1"])
async def test_resubscribe_before_any_event_was_stored_reconciles_the_blind_spot(
    rig: Rig, preset: int | str, caplog: pytest.LogCaptureFixture
) -> None:
    await rig.store.set_replay(LEAD, preset, time.time())  # what `replay --from new` stores
    ingest = rig.ingest()
    await subscribe(ingest)  # -1: nothing stored yet, nothing to replay from
    assert rig.emu.forget_cometd_clients() == 1
    lead = rig.lead("InTheBlindSpot")  # published while the server knows no subscriber

    assert await sub(ingest).poll_once() == []  # 403::Unknown client
    with caplog.at_level("INFO"):
        assert await sub(ingest).poll_once() == []  # re-handshake, resubscribe with -1 again
    # A channel that simply had no events yet is routine, not a warning.
    [line] = [r for r in caplog.records if "ingest.resubscribe_without_replay_id" in r.getMessage()]
    assert line.levelname == "INFO"
    assert ingest.subscribed and sub(ingest).stats.handshakes == 2
    await ingest.drain_reconciles()

    rows = await queued(rig.store)
    assert set(rows) == {lead} and rows[lead].source == "reconcile"
    assert rig.metrics.registry.get_sample_value(
        "streamsync_reconciliations_total", {"trigger": "resubscribe"}) == 1.0
    after = rig.lead("Streamed")
    [_] = await pump(ingest)
    assert (await queued(rig.store))[after].source == "cdc"


@pytest.mark.parametrize("fault", ["revoke", "expire"])
async def test_revoked_or_expired_token_reauthenticates(rig: Rig, fault: str) -> None:
    ingest = rig.ingest()
    await subscribe(ingest)
    rig.lead("Primer")
    await pump(ingest)
    before = rig.clients.counter.total(endpoint="oauth2/token")
    if fault == "revoke":
        rig.emu.sessions.revoke_all()
    else:
        rig.emu.sessions.expire_all()
    lead = rig.lead("AfterRevoke")

    [_] = await pump(ingest)

    assert (await queued(rig.store))[lead].source == "cdc"
    assert sub(ingest).stats.reauths >= 1
    assert rig.clients.counter.total(endpoint="oauth2/token") > before


async def test_silent_subscription_is_caught_by_the_idle_refresh(rig: Rig) -> None:
    now = [1000.0]
    ingest = rig.ingest(idle_resubscribe_s=60.0, watchdog_s=300.0, clock=lambda: now[0])
    await subscribe(ingest)
    rig.lead("Primer")
    await pump(ingest)
    # The server keeps answering connects but has lost the subscription (docs/salesforce.md §9.1).
    for client in rig.emu.cometd._clients.values():
        client.subscriptions.clear()
    lead = rig.lead("Unheard")
    assert await sub(ingest).poll_once() == []

    now[0] += 61.0
    [_] = await pump(ingest)  # re-handshake, resubscribe from the stored replay id

    assert (await queued(rig.store))[lead].source == "cdc"
    assert sub(ingest).stats.idle_refreshes == 1


# ---- the loop ---------------------------------------------------------------------------------


class _StopAfterOne(Ingest):
    """Sets the stop event once one message was handled (so `run` can be tested sleep-free)."""

    stop: asyncio.Event

    async def handle_messages(self, messages: Sequence[Message]) -> None:
        await super().handle_messages(messages)
        self.stop.set()


async def test_run_consumes_until_stop_and_closes_the_subscriber(rig: Rig) -> None:
    store, config = rig.store, rig.config
    callbacks = ReplayCallbacks(store)
    subscriber = CometdSubscriber(
        rig.clients.session, instance_url=rig.emu.instance_url, api_version="66.0",
        get_token=rig.clients.auth.access_token, invalidate_token=rig.clients.auth.invalidate,
        channels=[LEAD], replay_from=callbacks.replay_from,
        on_replay_invalid=callbacks.on_replay_invalid, watchdog_s=5.0, long_poll_timeout_s=2.0,
        request_timeout_s=2.0, min_handshake_interval_s=0.0)
    reconciler = Reconciler(config=config, store=store, salesforce=rig.clients.salesforce,
                            metrics=rig.metrics)
    ingest = _StopAfterOne(config=config, store=store, subscriber=subscriber,
                           reconciler=reconciler, metrics=rig.metrics, callbacks=callbacks)
    ingest.stop = asyncio.Event()
    await store.set_replay(LEAD, -1, time.time())  # `replay --from new`
    rig.lead("Primer")  # published before subscribing with -1: not delivered
    task = asyncio.create_task(ingest.run(ingest.stop))
    # Wake-up without sleeping on a timer: publish once the subscription is confirmed.
    while not ingest.subscribed:
        await asyncio.sleep(0)
        assert not task.done(), task
    lead = rig.lead("Streamed")

    await asyncio.wait_for(task, 10.0)

    assert set(await queued(store)) == {lead}
    assert not ingest.subscribed and sub(ingest).client_id is None


def test_ingest_channels_each_once(config: Config) -> None:
    assert ingest_channels(config) == [LEAD, CONTACT, "/data/AccountChangeEvent"]


async def test_pending_marker_round_trip_and_merge() -> None:
    a = PendingReconcile(5_000, "gap_overflow", 1)
    b = PendingReconcile(3_000, "replay_invalid", 1)
    merged = a.merge(b)
    assert merged == PendingReconcile(3_000, "gap_overflow+replay_invalid", 2)
    assert a.merge(PendingReconcile(None, "x", 4)).since_ms is None


async def test_store_failure_commits_neither_ids_nor_replay_id(rig: Rig, tmp_path: Path) -> None:
    busy_store = await Store.open(tmp_path / "busy.db", busy_timeout_s=0.05)
    blocker = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    try:
        ingest = rig.ingest(store=busy_store)
        await subscribe(ingest)
        lead = rig.lead("Contended")
        batch: list[Message] = []
        while not batch:
            batch = await sub(ingest).poll_once()
        [message] = batch

        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(TransientError):
            await ingest.handle_message(message)
        blocker.execute("ROLLBACK")

        assert await busy_store.get_replay(LEAD) is None  # nothing half-written
        assert await queued(busy_store) == {}
        await ingest.handle_message(message)  # what `run` does next: the same message again
        state = await busy_store.get_replay(LEAD)
        assert state is not None and state.replay_id == replay_id_of(message)
        assert set(await queued(busy_store)) == {lead}
    finally:
        blocker.close()
        await busy_store.close()


@pytest.mark.parametrize("failing", ["queue", "replay"])
async def test_a_failed_write_of_ids_or_replay_id_commits_neither(rig: Rig, failing: str) -> None:
    """Invariant 1 through `handle_message`: the record ids and the replay id are one
    transaction. A queue insert refused after the replay id was written (or the replay write
    refused after the ids were) leaves the stored replay id where it was and queues nothing."""
    ingest = rig.ingest()
    await subscribe(ingest)
    rig.lead("Stored")
    [stored] = await pump(ingest)
    before = await rig.store.get_replay(LEAD)
    assert before is not None and before.replay_id == replay_id_of(stored)
    await flushed(rig.store)
    lead = rig.lead("Refused")
    message = await next_message(ingest)

    with refused_inserts(rig.store.path, failing), pytest.raises(FatalError, match="injected"):
        await ingest.handle_message(message)

    assert await rig.store.get_replay(LEAD) == before  # the replay id did not move
    assert await queued(rig.store) == {}
    await ingest.handle_message(message)  # once the store takes writes again: both
    after = await rig.store.get_replay(LEAD)
    assert after is not None and after.replay_id == replay_id_of(message)
    assert set(await queued(rig.store)) == {lead}


async def test_overflow_marker_is_stored_before_the_replay_id_moves_past_the_event(
        rig: Rig) -> None:
    """A `GAP_OVERFLOW` owes a reconciliation: its marker is written before the replay id moves
    past the event, so a failure between the two writes cannot lose the reconciliation."""
    ingest = rig.ingest()
    await subscribe(ingest)
    rig.lead("BeforeTheGap")
    await pump(ingest)
    before = await rig.store.get_replay(LEAD)
    assert before is not None
    rig.emu.publish_gap("Lead", "GAP_OVERFLOW", [])
    message = await next_message(ingest)
    assert message["data"]["payload"]["ChangeEventHeader"]["changeType"] == "GAP_OVERFLOW"

    marker = "NEW.object_name = 'Lead'"
    with refused_inserts(rig.store.path, "reconcile_pending", marker), \
            pytest.raises(FatalError, match="injected"):
        await ingest.handle_message(message)

    assert await ingest.pending_reconciles() == {}  # the marker could not be written ...
    assert await rig.store.get_replay(LEAD) == before  # ... so the event is not passed either
    await ingest.handle_message(message)
    assert (await ingest.pending_reconciles())["Lead"].trigger == "gap_overflow"
    after = await rig.store.get_replay(LEAD)
    assert after is not None and after.replay_id == replay_id_of(message)
    await ingest.drain_reconciles()


class _StopWhenBusy(Ingest):
    """Sets the stop event when the store reports a transient fault (an operator's SIGTERM
    arriving while the store is locked)."""

    stop: asyncio.Event

    async def handle_messages(self, messages: Sequence[Message]) -> None:
        try:
            await super().handle_messages(messages)
        except TransientError:
            self.stop.set()
            raise


async def test_stop_while_the_store_is_busy_stores_nothing_after_the_unstored_message(
    rig: Rig, tmp_path: Path
) -> None:
    busy_store = await Store.open(tmp_path / "busy.db", busy_timeout_s=0.05)
    blocker = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    try:
        callbacks = ReplayCallbacks(busy_store)
        subscriber = CometdSubscriber(
            rig.clients.session, instance_url=rig.emu.instance_url, api_version="66.0",
            get_token=rig.clients.auth.access_token,
            invalidate_token=rig.clients.auth.invalidate, channels=[LEAD],
            replay_from=callbacks.replay_from, on_replay_invalid=callbacks.on_replay_invalid,
            watchdog_s=5.0, long_poll_timeout_s=2.0, request_timeout_s=2.0,
            min_handshake_interval_s=0.0)
        reconciler = Reconciler(config=rig.config, store=busy_store,
                                salesforce=rig.clients.salesforce, metrics=rig.metrics)
        ingest = _StopWhenBusy(config=rig.config, store=busy_store, subscriber=subscriber,
                               reconciler=reconciler, metrics=rig.metrics, callbacks=callbacks,
                               retry_base_s=0.001)
        ingest.stop = asyncio.Event()
        task = asyncio.create_task(ingest.run(ingest.stop))
        while not ingest.subscribed:
            await asyncio.sleep(0)
            assert not task.done(), task
        blocker.execute("BEGIN IMMEDIATE")
        first, second = rig.lead("Locked1"), rig.lead("Locked2")

        await asyncio.wait_for(task, 10.0)
        blocker.execute("ROLLBACK")

        assert ingest.stats.store_retries == 1
        assert await busy_store.get_replay(LEAD) is None  # neither message moved the position
        assert await queued(busy_store) == {}

        # The next start finds no replay id stored since the first subscription, which
        # started from the oldest retained event: it starts there again, so neither change
        # is lost.
        again = rig.ingest(store=busy_store)
        await pump(again, want=2)
        assert set(await queued(busy_store)) == {first, second}
    finally:
        blocker.close()
        await busy_store.close()


# ---- the first subscription after a backfill -------------------------------------------------


async def _record_backfill(store: Store, objects: list[str], started_at: float) -> None:
    """A finished backfill run as `streamsync backfill` stores it (scope and start time)."""
    run_id = f"bf-test-{uuid.uuid4().hex[:6]}"
    await store.start_run(run_id, [], {"scope": {"objects": objects}}, started_at,
                          objects=objects)
    await store.finish_run(run_id, started_at + 1.0)


async def test_first_subscription_reconciles_what_changed_since_the_latest_backfill(
    rig: Rig,
) -> None:
    real_clock = rig.emu.state.clock
    rig.emu.state.clock = lambda: real_clock() - 3600.0
    before = rig.lead("LoadedByTheBackfill")  # modified an hour before the backfill
    rig.emu.state.clock = real_clock
    await _record_backfill(rig.store, ["Contact"], time.time() - 7200.0)
    await _record_backfill(rig.store, ["Lead", "Contact"], time.time() - 600.0)
    await _record_backfill(rig.store, ["Contact"], time.time() - 60.0)  # not a Lead backfill
    between = rig.lead("ChangedBeforeTheFirstRun")  # no subscriber yet: its event is missed

    ingest = rig.ingest()
    await subscribe(ingest)  # -1, nothing stored: a first subscription
    await ingest.drain_reconciles()

    rows = await queued(rig.store)
    assert set(rows) == {between} and before not in rows
    assert rows[between].source == "reconcile"
    assert rig.metrics.registry.get_sample_value(
        "streamsync_reconciliations_total", {"trigger": "first_subscription"}) == 1.0
    assert await ingest.pending_reconciles() == {}
    assert await anchor_state(rig.store, LEAD) == "unanchored"  # later resubscribes: as before


async def test_first_subscription_owes_its_reconciliation_durably(rig: Rig) -> None:
    await _record_backfill(rig.store, ["Lead"], 1_700_000_000.0)
    ingest = rig.ingest()
    assert await ingest.replay_from(LEAD) is None
    await ingest.aclose()  # the worker is cancelled before it ran: the marker stays
    owed = (await ingest.pending_reconciles())["Lead"]
    assert (owed.since_ms, owed.trigger) == (1_700_000_000_000, "first_subscription")


async def test_first_subscription_after_replay_new_reconciles_nothing(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """`replay --from new`: the operator chose to start from now."""
    await _record_backfill(rig.store, ["Lead"], time.time() - 600.0)
    await rig.store.set_replay(LEAD, -1, time.time())
    rig.lead("NeverBackfilled")
    ingest = rig.ingest()
    with caplog.at_level("INFO"):
        await subscribe(ingest)
    await ingest.drain_reconciles()
    assert await queued(rig.store) == {}
    assert await ingest.pending_reconciles() == {}
    assert ingest.stats.reconciles_scheduled == 0
    assert "ingest.first_subscription_from_earliest" not in caplog.text


async def test_first_subscription_without_a_backfill_replays_every_retained_event(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """A first run, or a store lost while stopped: what changed while nothing ran (and is
    still retained) is replayed, loudly, and a resubscribe before any event was stored
    starts from the oldest retained event again."""
    while_down = to_18(rig.lead("ChangedWhileDown"))
    ingest = rig.ingest()
    with caplog.at_level("INFO"):
        [message] = await pump(ingest)
    assert message["data"]["payload"]["ChangeEventHeader"]["recordIds"] == [while_down]
    [warning] = [r for r in caplog.records
                 if "ingest.first_subscription_from_earliest" in r.getMessage()]
    assert warning.levelname == "WARNING"
    [noted] = await rig.store.recent_errors()
    assert "replaying every change event" in noted.message and LEAD in noted.message
    assert "replay --channel /data/LeadChangeEvent --from new" in noted.message
    assert set(await queued(rig.store)) == {while_down}
    assert ingest.stats.reconciles_scheduled == 0

    fresh = rig.ingest(store=await Store.open(rig.store.path.with_name("other.db")))
    try:
        assert await fresh.replay_from(LEAD) == -2
        assert await fresh.replay_from(LEAD) == -2  # nothing stored yet: from there again
        assert len(await fresh._store.recent_errors()) == 1  # warned once
        await fresh.handle_message(message)
        state = await fresh._store.get_replay(LEAD)
        assert state is not None and state.replay_id == replay_id_of(message)
        assert await fresh.replay_from(LEAD) == replay_id_of(message)
    finally:
        await fresh._store.close()


# ---- lead conversion -------------------------------------------------------------------------


async def test_lead_conversion_event_hands_the_leads_identity_to_its_contact(rig: Rig) -> None:
    lead = to_18(rig.lead("Converted"))
    await rig.store.save_identities(
        [IdentityUpdate("Lead", lead, "converted@example.com", None, "hash")], time.time())
    await rig.store.set_replay(LEAD, -1, time.time())  # not the Lead's CREATE: new events only
    ingest = rig.ingest()
    await subscribe(ingest)
    contact = to_18(rig.emu.state.convert_lead(lead)["contactId"])
    [message] = await pump(ingest)  # the Lead's UPDATE (the Contact's CREATE is on its channel)
    assert message["data"]["payload"]["ConvertedContactId"] == contact

    assert await rig.store.identities("Lead", [lead]) == {}
    ident = (await rig.store.identities("Contact", [contact]))[contact]
    assert (ident.iterable_email, ident.payload_hash) == ("converted@example.com", None)
    rows = await queued(rig.store)
    assert rows[contact].source == "fanout" and rows[lead].source == "cdc"


async def test_a_conversion_waits_for_a_call_that_holds_its_lead(rig: Rig) -> None:
    """A call that read the Lead before the conversion (a re-sync page, a flush) holds it in the
    pipeline's gate: the hand-over waits for its write, so the Contact's writes come after."""
    lead = to_18(rig.lead("Converted"))
    await rig.store.save_identities(
        [IdentityUpdate("Lead", lead, "converted@example.com", None, "hash")], time.time())
    await rig.store.set_replay(LEAD, -1, time.time())
    gate = RecordGate()
    ingest = rig.ingest(gate=gate)
    await subscribe(ingest)
    rig.emu.state.convert_lead(lead)
    async with gate.hold("Lead", [lead]):
        pumping = asyncio.create_task(pump(ingest))
        await asyncio.sleep(1.0)
        assert not pumping.done()
        assert lead in await rig.store.identities("Lead", [lead])  # not handed over yet
    await asyncio.wait_for(pumping, 10.0)
    assert await rig.store.identities("Lead", [lead]) == {}
