"""Dead-letter tools, identities, backfill checkpoints, replay ids and the error ring."""

from __future__ import annotations

import pytest

from streamsync.adapters.store import (
    BackfillWindow,
    IdentityUpdate,
    QueueInput,
    StoreAPI,
)
from streamsync.errors import FatalError
from streamsync.logs import REDACTED, redactor
from tests.store_backends import StoreSpace

T0 = 1_700_000_000.0


@pytest.fixture
async def store(any_store: StoreAPI) -> StoreAPI:
    return any_store


def lead(n: int, change: str = "UPDATE") -> QueueInput:
    return QueueInput("Lead", f"00Q{n:015d}", change)


async def _dead_letter(store: StoreAPI, items: list[QueueInput], reason: str, now: float) -> None:
    await store.enqueue(items, now, "cdc")
    leases = await store.lease("f", len(items), 30, now)
    assert (await store.dead_letter(leases, reason, f"{reason} detail", now)).dead_lettered == len(
        items
    )


async def test_dlq_list_counts_retry_and_purge(store: StoreAPI) -> None:
    await _dead_letter(store, [lead(1), lead(2, "DELETE")], "invalid_email", T0)
    await _dead_letter(store, [lead(3)], "type_conflict", T0 + 1)
    await _dead_letter(store, [lead(4)], "no_email", T0 + 2)

    assert await store.dead_letter_counts() == {
        "invalid_email": 2,
        "no_email": 1,
        "type_conflict": 1,
    }
    newest = await store.dead_letters(limit=2)
    assert [d.record_id for d in newest] == [lead(4).record_id, lead(3).record_id]
    invalid = await store.dead_letters("invalid_email")
    assert {d.record_id for d in invalid} == {lead(1).record_id, lead(2).record_id}
    assert all(d.last_error == "invalid_email detail" for d in invalid)

    # lead(1) changed again in Salesforce and is queued; the retry coalesces with it.
    await store.enqueue([lead(1)], T0 + 3, "cdc")
    assert await store.retry_dead_letters("invalid_email", T0 + 4) == 2
    assert await store.dead_letter_counts() == {"no_email": 1, "type_conflict": 1}
    leases = {lease.record_id: lease for lease in await store.lease("f", 10, 30, T0 + 5)}
    assert set(leases) == {lead(1).record_id, lead(2).record_id}
    assert leases[lead(2).record_id].source == "retry"
    assert leases[lead(2).record_id].change_type == "DELETE"  # the kind of change survives
    assert leases[lead(1).record_id].version == 2

    assert await store.purge_dead_letters("no_email") == 1
    assert await store.retry_dead_letters(None, T0 + 6) == 1
    assert await store.dead_letter_counts() == {}
    assert await store.purge_dead_letters(None) == 0


async def test_dead_letter_again_updates_in_place(store: StoreAPI) -> None:
    await _dead_letter(store, [lead(1)], "invalid_email", T0)
    # A newer change of the same record fails too while the first failure is still listed.
    await _dead_letter(store, [lead(1)], "no_email", T0 + 20)
    [dead] = await store.dead_letters()
    assert (dead.reason, dead.first_failed_at, dead.last_failed_at) == ("no_email", T0, T0 + 20)
    # Once retried, a later failure starts a new entry.
    await store.retry_dead_letters(None, T0 + 30)
    leases = await store.lease("f", 1, 30, T0 + 30)
    await store.dead_letter(leases, "invalid_email", "still bad", T0 + 40)
    [dead] = await store.dead_letters()
    assert (dead.reason, dead.first_failed_at, dead.last_error) == (
        "invalid_email",
        T0 + 40,
        "still bad",
    )


async def test_a_record_that_syncs_leaves_the_dead_letter_table(store: StoreAPI) -> None:
    await _dead_letter(store, [lead(1), lead(2)], "invalid_email", T0)
    # The email of lead(1) is fixed in Salesforce: a new change syncs fine.
    await store.record_event("/data/LeadChangeEvent", 5, [lead(1)], 1_000, T0 + 1)
    leases = await store.lease("f", 10, 30, T0 + 1)
    result = await store.ack(leases)
    assert (result.deleted, result.dead_letters_cleared) == (1, 1)
    assert [d.record_id for d in await store.dead_letters()] == [lead(2).record_id]


async def test_stored_errors_never_carry_known_secrets(store: StoreAPI) -> None:
    redactor().add("sk-live-very-secret-key")
    await store.enqueue([lead(1)], T0, "cdc")
    leases = await store.lease("f", 1, 30, T0)
    await store.dead_letter(leases, "rejected", "api_key=sk-live-very-secret-key said no", T0)
    await store.note_error("iterable", "401 for sk-live-very-secret-key " + "x" * 5000, T0)
    [dead] = await store.dead_letters()
    assert "sk-live" not in dead.last_error and REDACTED in dead.last_error
    [entry] = await store.recent_errors()
    assert "sk-live" not in entry.message and len(entry.message) <= 1000


async def test_identity_round_trip_and_email_lookup(store: StoreAPI) -> None:
    rows = [
        IdentityUpdate("Contact", "003A", "Ann@Example.com", None, "h1"),
        IdentityUpdate("Lead", "00QB", "ann@example.com", "00QB", "h2"),
        IdentityUpdate("Contact", "003C", None, "003C", "h3"),
    ]
    await store.save_identities(rows, T0)
    found = await store.identities("Contact", ["003A", "003C", "003Z"])
    assert set(found) == {"003A", "003C"}
    assert found["003A"].iterable_email == "Ann@Example.com"
    assert found["003A"].payload_hash == "h1" and found["003A"].synced_at == T0

    # Duplicate identifiers: two records hold the same email, whatever its case.
    assert {(i.object_name, i.record_id) for i in await store.find_by_email("ANN@example.com")} == {
        ("Contact", "003A"),
        ("Lead", "00QB"),
    }

    # Email change: the row is updated in place, the old email no longer resolves.
    await store.save_identities(
        [IdentityUpdate("Contact", "003A", "ann.new@example.com", None, "h4")], T0 + 1
    )
    assert [i.record_id for i in await store.find_by_email("ann@example.com")] == ["00QB"]
    assert (await store.identities("Contact", ["003A"]))["003A"].payload_hash == "h4"

    assert await store.forget_identity("Contact", ["003A", "003Z"]) == 1
    assert await store.identities("Contact", ["003A"]) == {}
    assert await store.identities("Contact", []) == {}


async def test_identity_lookup_of_many_ids_is_chunked(store: StoreAPI) -> None:
    ids = [f"003{n:015d}" for n in range(1_234)]
    await store.save_identities(
        [IdentityUpdate("Contact", i, f"{i}@example.com", None, "h") for i in ids], T0
    )
    assert len(await store.identities("Contact", ids + ids[:10])) == 1_234


async def test_backfill_checkpoints_resume(store: StoreAPI) -> None:
    assert await store.latest_run() is None
    windows = [
        BackfillWindow("Lead", "2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z"),
        BackfillWindow("Lead", "2025-01-01T00:00:00Z", ""),
        BackfillWindow("Contact"),
    ]
    run = await store.start_run("run-1", windows, {"objects": ["Lead", "Contact"]}, T0)
    assert run.options == {"objects": ["Lead", "Contact"]} and not run.finished
    with pytest.raises(ValueError, match="already exists"):
        await store.start_run("run-1", [], {}, T0)

    await store.save_checkpoint("run-1", windows[0], "00Q000000000000200", 2_000, T0 + 1)
    await store.save_checkpoint("run-1", windows[0], "00Q000000000000400", 4_000, T0 + 2)
    await store.finish_window("run-1", windows[2], T0 + 3, records_done=17)

    progress = {cp.window: cp for cp in await store.windows("run-1")}
    assert progress[windows[0]].last_id == "00Q000000000000400"
    assert progress[windows[0]].records_done == 4_000 and not progress[windows[0]].done
    assert progress[windows[1]].last_id is None and progress[windows[1]].records_done == 0
    assert progress[windows[2]].done and progress[windows[2]].finished_at == T0 + 3
    assert progress[windows[2]].records_done == 17

    await store.add_windows("run-1", [BackfillWindow("Account")], T0 + 4)
    assert len(await store.windows("run-1")) == 4
    with pytest.raises(ValueError, match="no window"):
        await store.finish_window("run-1", BackfillWindow("Opportunity"), T0)
    with pytest.raises(FatalError):  # a checkpoint needs its run
        await store.save_checkpoint("no-such-run", windows[0], "x", 1, T0)

    await store.start_run("run-2", [], {"restart": True}, T0 + 10)
    latest = await store.latest_run()
    assert latest is not None and latest.run_id == "run-2"
    await store.finish_run("run-1", T0 + 20)
    finished = await store.get_run("run-1")
    assert finished is not None and finished.finished and finished.finished_at == T0 + 20
    assert [r.run_id for r in await store.runs()] == ["run-2", "run-1"]
    with pytest.raises(ValueError, match="no backfill run"):
        await store.finish_run("missing", T0)


async def test_replay_ids_keep_their_type_and_the_command_can_set_them(store: StoreAPI) -> None:
    assert await store.get_replay("/data/LeadChangeEvent") is None
    await store.record_event("/data/LeadChangeEvent", 6421, [], 1_000, T0)
    await store.record_event("/data/ContactChangeEvent", "AAAAAAAAB/c=", [], None, T0)
    lead_state = await store.get_replay("/data/LeadChangeEvent")
    assert lead_state is not None
    assert (lead_state.replay_id, lead_state.last_commit_ts_ms) == (6421, 1_000)

    # An event without a commit time keeps the last one seen (the reconcile point).
    await store.record_event("/data/LeadChangeEvent", 6422, [], None, T0 + 1)
    lead_state = await store.get_replay("/data/LeadChangeEvent")
    assert lead_state is not None
    assert (lead_state.replay_id, lead_state.last_commit_ts_ms) == (6422, 1_000)

    await store.set_replay("/data/LeadChangeEvent", -2, T0 + 2)  # `replay --from earliest`
    lead_state = await store.get_replay("/data/LeadChangeEvent")
    assert lead_state is not None
    assert (lead_state.replay_id, lead_state.last_commit_ts_ms) == (-2, 1_000)
    await store.set_replay("/data/LeadChangeEvent", None, T0 + 3, commit_ts_ms=500)
    lead_state = await store.get_replay("/data/LeadChangeEvent")
    assert lead_state is not None
    assert (lead_state.replay_id, lead_state.last_commit_ts_ms) == (None, 500)

    states = await store.replays()
    assert [(s.channel, s.replay_id) for s in states] == [
        ("/data/ContactChangeEvent", "AAAAAAAAB/c="),
        ("/data/LeadChangeEvent", None),
    ]


async def test_error_ring_keeps_the_newest(store: StoreAPI) -> None:
    for n in range(205):
        await store.note_error("flusher", f"error {n}", T0 + n)
    recent = await store.recent_errors(limit=3)
    assert [e.message for e in recent] == ["error 204", "error 203", "error 202"]
    assert recent[0].at == T0 + 204 and recent[0].component == "flusher"
    assert len(await store.recent_errors(limit=1_000)) == 200


async def test_meta_values(store: StoreAPI) -> None:
    assert await store.get_meta("client_id") is None
    await store.set_meta("client_id", "abc", T0)
    await store.set_meta("client_id", "def", T0 + 1)
    assert await store.get_meta("client_id") == "def"


async def test_status_snapshot_for_the_cli(store_space: StoreSpace) -> None:
    service = await store_space.open()
    try:
        await _dead_letter(service, [QueueInput("Contact", "003X")], "invalid_email", T0)
        await service.record_event("/data/LeadChangeEvent", 77, [lead(1), lead(2)], 1_000, T0)
        await service.note_error("iterable", "HTTP 503", T0 + 1)
        window = BackfillWindow("Lead")
        await service.start_run("run-9", [window], {"objects": ["Lead"]}, T0)
        await service.save_checkpoint("run-9", window, "00Q9", 9, T0 + 2)

        cli = await store_space.open()
        try:
            status = await cli.status(T0 + 10)
        finally:
            await cli.close()
        assert status.queue.depth == 2 and status.queue.oldest_age_s == 10.0
        assert status.queue_by_object == {"Lead": 2}
        assert [(r.channel, r.replay_id) for r in status.replays] == [("/data/LeadChangeEvent", 77)]
        assert status.dead_letters_by_reason == {"invalid_email": 1}
        assert [e.message for e in status.recent_errors] == ["HTTP 503"]
        assert status.backfill_run is not None and status.backfill_run.run_id == "run-9"
        assert [(w.window, w.last_id) for w in status.backfill_windows] == [(window, "00Q9")]
    finally:
        await service.close()


async def test_lease_free_dead_letters_for_the_backfill(store_space: StoreSpace) -> None:
    store = await store_space.open()
    try:
        ids = [f"00Q00000000{n:04d}AAA" for n in range(3)]
        added = await store.add_dead_letters(
            "Lead", {ids[0]: ("missing_email", "no email"), ids[1]: ("invalid_email", "x@y")}, 10.0)
        again = await store.add_dead_letters("Lead", {ids[0]: ("missing_email", "still")}, 20.0)
        assert (added, again) == (2, 1)
        assert await store.dead_letter_counts() == {"missing_email": 1, "invalid_email": 1}
        first = [d for d in await store.dead_letters() if d.record_id == ids[0]][0]
        assert first.attempts == 2 and first.last_error == "still"
        assert await store.clear_dead_letters("Lead", [ids[0], ids[2]]) == 1
        assert await store.clear_dead_letters("Lead", []) == 0
        assert await store.dead_letter_counts() == {"invalid_email": 1}
    finally:
        await store.close()
