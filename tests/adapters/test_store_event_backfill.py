"""The backfill's event rows, on SQLite and on PostgreSQL: judged events stored once, the
condition state seeded, what the store knows left alone (docs/events.md §7)."""

from __future__ import annotations

import pytest

from streamsync.adapters.store import StoreAPI
from streamsync.adapters.store.event_backfill import BackfillEvent
from streamsync.adapters.store.events import StoredCondition
from streamsync.models import EventCandidate

T0 = 1_700_000_000.0
CHANNEL = "/data/OpportunityChangeEvent"
WON = {"stagename": "Closed Won"}


@pytest.fixture
async def store(any_store: StoreAPI) -> StoreAPI:
    return any_store


def rid(n: int) -> str:
    return f"006{n:015d}"


def judged(n: int, version_ms: int = 5000, *, condition: bool = True,
           dead: tuple[str, str] | None = None) -> BackfillEvent:
    event_id = f"won-{rid(n)}-bf-{version_ms}"
    payload = None if dead else {"id": event_id, "eventName": "won", "email": f"u{n}@x.io",
                                 "createdAt": version_ms // 1000, "dataFields": {}}
    return BackfillEvent(event_id, "won", "Opportunity", rid(n), version_ms, condition,
                         dict(WON) if condition else {}, payload, dead)


async def test_judged_events_are_stored_once_and_seed_the_condition(store: StoreAPI) -> None:
    first = await store.add_backfill_events([judged(1), judged(2)], T0)
    assert sorted(first.added) == [judged(1).event_id, judged(2).event_id]
    states = await store.conditions([("won", rid(1)), ("won", rid(2))])
    assert states[("won", rid(1))] == StoredCondition(True, WON, 5000)
    # Again, and again judged on a later version (an unrelated update): known both times.
    again = await store.add_backfill_events([judged(1), judged(2, 9000)], T0 + 1)
    assert again.added == [] and sorted(again.known) == [judged(1).event_id,
                                                         judged(2, 9000).event_id]
    leased = await store.lease_backfill_events(10, 60, T0 + 2)
    assert [p.payload for p in leased] == [judged(1).payload, judged(2).payload]
    assert await store.event_counts() == {"ready": 2}
    assert await store.backfill_events_waiting(["won"]) == (2, 0.0)  # leased: being sent


async def test_what_the_store_knows_is_left_alone(store: StoreAPI) -> None:
    # Record 1: CDC decided it holds; record 2: a CDC change is undecided; record 3: a newer
    # stored state says it does not hold; record 4: an older one says so (judged again).
    await store.record_event(CHANNEL, 1, [], 1000, T0, [EventCandidate(
        f"won-{rid(2)}-tx", "won", "Opportunity", rid(2), "UPDATE", 4000, True, WON, True)])
    lease = await store.lease_events("new", 10, 60, T0)
    await store.release_events(lease[0].token, T0)
    await store.record_event(CHANNEL, 2, [], 1000, T0, [EventCandidate(
        f"won-{rid(1)}-tx", "won", "Opportunity", rid(1), "UPDATE", 4000, True, WON, True)])
    decided = [p for p in await store.lease_events("new", 10, 60, T0 + 1)
               if p.candidate.record_id == rid(1)]
    await store.settle_decisions(
        decided[0].token, ready={}, skipped=[decided[0].candidate.event_id], dead={}, later={},
        states={("won", rid(1)): StoredCondition(True, WON, 4000),
                ("won", rid(3)): StoredCondition(False, {"stagename": "Lost"}, 9000),
                ("won", rid(4)): StoredCondition(False, {"stagename": "Lost"}, 100)}, now=T0)
    out = await store.add_backfill_events([judged(n) for n in (1, 2, 3, 4)], T0 + 2)
    assert out.known == [judged(1).event_id, judged(3).event_id]
    assert out.pending == [judged(2).event_id]
    assert out.added == [judged(4).event_id]
    assert (await store.conditions([("won", rid(4))]))[("won", rid(4))].met


async def test_a_rule_without_a_condition_knows_any_row_and_dead_ones_seed_nothing(
        store: StoreAPI) -> None:
    out = await store.add_backfill_events(
        [judged(1, condition=False), judged(2, dead=("no_profile", "no contact role"))], T0)
    assert len(out.added) == 2
    assert await store.event_counts() == {"ready": 1, "dead": 1}
    assert await store.conditions([("won", rid(2))]) == {}
    assert await store.dead_events() == [(judged(2).event_id, "no_profile", "no contact role")]
    again = await store.add_backfill_events([judged(1, 7000, condition=False)], T0 + 1)
    assert again.known == [judged(1, 7000).event_id]
    assert await store.lease_events("ready", 10, 60, T0 + 2) != []  # the service may send it
    assert await store.lease_backfill_events(10, 60, T0 + 2) == []  # leased already
