"""Queued ids are parsed once as they leave the store (runtime/flusher.py `_key`): a row queued
in the 15-character form is read, synced and settled under its 18-character id, and an invalid
one is dead-lettered without a Salesforce read."""

from __future__ import annotations

from streamsync.core.ids import to_18
from tests.conftest import SyncRig


def _new_contact(rig: SyncRig, tag: str) -> str:
    return to_18(rig.sf.state.create("Contact", {
        "FirstName": "Id", "LastName": tag, "Email": f"{tag}@example.com"}))


async def test_a_15_character_queued_id_is_synced_and_settled(sync_rig: SyncRig) -> None:
    rig = sync_rig
    short, full = _new_contact(rig, "short")[:15], _new_contact(rig, "full")
    await rig.enqueue("Contact", [short, full])

    total = await rig.drain()

    assert (total.leased, total.synced, total.dead, total.retried) == (2, 2, 0, 0)
    assert (await rig.store.queue_stats(rig.clock())).depth == 0
    assert {"short@example.com", "full@example.com"} <= set(rig.profiles())


async def test_an_invalid_queued_id_is_dead_lettered_alone(sync_rig: SyncRig) -> None:
    rig = sync_rig
    good = _new_contact(rig, "good")
    await rig.enqueue("Contact", ["not-an-id", good])

    total = await rig.drain()

    assert (total.synced, total.dead) == (1, 1)
    dead = await rig.store.dead_letters()
    assert [(d.record_id, d.reason) for d in dead] == [("not-an-id", "invalid_id")]
    assert (await rig.store.queue_stats(rig.clock())).depth == 0
