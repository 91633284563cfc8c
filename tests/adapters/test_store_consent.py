"""The consent state table: read, save, and store-only-if-it-prevails (the conflict rule)."""

from __future__ import annotations

import pytest

from streamsync.adapters.store import ConsentRow, Failure, QueueInput, StoreAPI, UnsyncedChange

T0 = 1_700_000_000.0
LEAD = "00Q000000000001AAA"


@pytest.fixture
async def store(any_store: StoreAPI) -> StoreAPI:
    return any_store


def row(out: bool, at: int, origin: str = "salesforce", record_id: str = LEAD) -> ConsentRow:
    return ConsentRow("Lead", record_id, out, at, origin)


async def test_saved_states_read_back_by_object_and_id(store: StoreAPI) -> None:
    assert await store.consent_states("Lead", [LEAD]) == {}
    await store.save_consent_states([row(True, 10), row(False, 5, "iterable", "00Q2")], T0)
    got = await store.consent_states("Lead", [LEAD, "00Q2", "00Q3"])
    assert got == {LEAD: row(True, 10), "00Q2": row(False, 5, "iterable", "00Q2")}
    assert await store.consent_states("Contact", [LEAD]) == {}
    await store.save_consent_states([row(False, 3)], T0)  # saved as told, even if older
    assert (await store.consent_states("Lead", [LEAD]))[LEAD] == row(False, 3)


async def test_noting_stores_only_a_state_that_supersedes(store: StoreAPI) -> None:
    assert await store.note_consent_states([row(False, 10)], T0) == 1
    assert await store.note_consent_states([row(True, 9, "iterable")], T0) == 0   # older
    assert await store.note_consent_states([row(False, 10, "iterable")], T0) == 0  # same instant
    assert await store.note_consent_states([row(True, 10, "iterable")], T0) == 1   # tie: opt-out
    assert await store.note_consent_states([row(False, 10)], T0) == 0
    assert (await store.consent_states("Lead", [LEAD]))[LEAD] == row(True, 10, "iterable")
    assert await store.note_consent_states([row(False, 11)], T0) == 1              # later
    assert (await store.consent_states("Lead", [LEAD]))[LEAD] == row(False, 11)
    # The same side again within the same second (Salesforce stamps whole seconds): replaced.
    assert await store.note_consent_states([row(True, 11)], T0) == 1
    assert await store.note_consent_states([row(False, 11)], T0) == 1
    assert (await store.consent_states("Lead", [LEAD]))[LEAD] == row(False, 11)


async def test_many_ids_are_read_in_chunks(store: StoreAPI) -> None:
    ids = [f"00Q{n:015d}" for n in range(1200)]
    await store.save_consent_states([row(n % 2 == 0, n, record_id=i)
                                     for n, i in enumerate(ids)], T0)
    got = await store.consent_states("Lead", ids)
    assert len(got) == 1200 and got[ids[1199]].opted_out is False


def test_a_row_names_its_side() -> None:
    with pytest.raises(ValueError, match="origin"):
        row(True, 1, "hubspot")


async def test_unsynced_changes_are_the_queue_rows_and_dead_letters_of_the_records(
        store: StoreAPI) -> None:
    other, dead = "00Q000000000002AAA", "00Q000000000003AAA"
    assert await store.unsynced_changes("Lead", [LEAD, other]) == {}
    await store.enqueue([QueueInput("Lead", LEAD)], T0, "cdc", 5_000)
    assert await store.unsynced_changes("Lead", [LEAD, other]) == {
        LEAD: UnsyncedChange(1, 5_000, False)}
    await store.enqueue([QueueInput("Lead", LEAD)], T0 + 1, "cdc", 6_000)  # a second change
    assert await store.unsynced_changes("Lead", [LEAD]) == {LEAD: UnsyncedChange(2, 5_000, False)}
    assert await store.unsynced_changes("Contact", [LEAD]) == {}
    await store.enqueue([QueueInput("Lead", dead)], T0, "cdc", 7_000)
    [lease] = [x for x in await store.lease("t", 10, 30.0, T0 + 2) if x.record_id == dead]
    await store.dead_letter_each([Failure(lease, "consent_rejected", "refused")], T0 + 2)
    got = await store.unsynced_changes("Lead", [dead, LEAD, dead])
    assert got[dead] == UnsyncedChange(0, None, True) and got[LEAD].version == 2
