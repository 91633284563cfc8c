"""Custom-event rows of the store, on SQLite and on PostgreSQL: candidates stored with the
replay id, a replayed change ignored, leases in arrival order, settling (docs/events.md §4)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from streamsync.adapters.store import QueueInput, Store, StoreAPI
from streamsync.adapters.store.events import (
    DELETE_SKIPPED_SQL,
    LEASE_NEW_SQL,
    LEASE_READY_SQL,
    SETTLE_SENT_SQL,
    StoredCondition,
)
from streamsync.adapters.store.postgres import PostgresStore
from streamsync.adapters.store.postgres.events import LEASE_NEW_SQL as LEASE_NEW_PG
from streamsync.adapters.store.postgres.events import LEASE_READY_SQL as LEASE_READY_PG
from streamsync.models import EventCandidate
from tests.store_backends import StoreSpace

T0 = 1_700_000_000.0
CHANNEL = "/data/OpportunityChangeEvent"


@pytest.fixture
async def store(any_store: StoreAPI) -> StoreAPI:
    return any_store


def cand(n: int, tx: str = "tx-1", fires: bool = True) -> EventCandidate:
    rid = f"006{n:015d}"
    return EventCandidate(f"won-{rid}-{tx}", "won", "Opportunity", rid, "UPDATE", 1000 + n,
                          fires, {"stagename": "Closed Won"}, True)


async def test_candidates_commit_with_the_replay_id_and_a_replay_is_ignored(
        store: StoreAPI, store_space: StoreSpace) -> None:
    await store.record_event(CHANNEL, 7, [QueueInput("Lead", "00Q000000000000001")], 1000, T0,
                             [cand(1), cand(2)])
    await store.record_event(CHANNEL, 7, [], 1000, T0 + 1, [cand(1)])  # replayed
    assert await store.event_counts() == {"new": 2}
    reopened = await store_space.open()
    try:
        assert (await reopened.get_replay(CHANNEL)).replay_id == 7  # type: ignore[union-attr]
        leased = await reopened.lease_events("new", 10, 60, T0 + 2)
    finally:
        await reopened.close()
    assert [p.candidate for p in leased] == [cand(1), cand(2)]  # in arrival order
    assert await store.lease_events("new", 10, 60, T0 + 3) == []  # leased


async def test_settling_saves_states_and_moves_rows_new_ready_sent_or_dead(
        store: StoreAPI) -> None:
    await store.record_event(CHANNEL, 1, [], 1000, T0, [cand(1), cand(2), cand(3), cand(4)])
    leased = await store.lease_events("new", 10, 60, T0)
    token = leased[0].token
    ids = [p.candidate.event_id for p in leased]
    state = StoredCondition(True, {"stagename": "Closed Won"}, 1001)
    await store.settle_decisions(
        token, ready={ids[0]: {"id": ids[0], "eventName": "won"}}, skipped=[ids[1]],
        dead={ids[2]: ("no_profile", "no contact")}, later={ids[3]: ("later", 30.0)},
        states={("won", cand(1).record_id): state}, now=T0 + 1)
    assert await store.conditions([("won", cand(1).record_id), ("won", "x")]) == {
        ("won", cand(1).record_id): state}
    # An older state never replaces a newer one.
    await store.record_event(CHANNEL, 2, [], 900, T0, [cand(9, "tx-old")])
    [old] = await store.lease_events("new", 10, 60, T0 + 2)
    await store.settle_decisions(old.token, ready={}, skipped=[old.candidate.event_id],
                                 dead={}, later={},
                                 states={("won", cand(1).record_id): StoredCondition(
                                     False, {}, 500)}, now=T0 + 2)
    assert (await store.conditions([("won", cand(1).record_id)]))[
        ("won", cand(1).record_id)] == state
    assert await store.event_counts() == {"ready": 1, "dead": 1, "new": 1}
    assert await store.dead_events() == [(ids[2], "no_profile", "no contact")]
    [ready] = await store.lease_events("ready", 10, 60, T0 + 2)
    assert ready.payload == {"id": ids[0], "eventName": "won"}
    await store.settle_sent(ready.token, sent=[ids[0]], dead={}, later={}, waiting={},
                            now=T0 + 3)
    assert await store.lease_events("new", 10, 60, T0 + 10) == []  # due at T0 + 31
    [again] = await store.lease_events("new", 10, 60, T0 + 32)
    assert again.attempts == 1
    await store.record_event(CHANNEL, 3, [], 1000, T0 + 40, [cand(1)])  # sent: ignored
    assert (await store.event_counts())["sent"] == 1
    assert await store.prune_sent_events(T0 + 4) == 1
    assert "sent" not in await store.event_counts()



async def test_ready_rows_handed_to_a_send_loop_stay_leased_to_its_token(
        store: StoreAPI) -> None:
    await store.record_event(CHANNEL, 1, [], 1000, T0, [cand(1), cand(2)])
    leased = await store.lease_events("new", 10, 60, T0)
    first, second = (p.candidate.event_id for p in leased)
    await store.settle_decisions(
        leased[0].token, ready={first: {"id": first}, second: {"id": second}}, skipped=[],
        dead={}, later={}, states={}, now=T0 + 1, held={first: "send-1"}, held_until=T0 + 61)
    [due] = await store.lease_events("ready", 10, 60, T0 + 2)
    assert due.candidate.event_id == second
    await store.settle_sent("send-1", sent=[first], dead={}, later={}, waiting={}, now=T0 + 3)
    assert await store.event_counts() == {"ready": 1, "sent": 1}

async def test_a_released_or_expired_lease_makes_rows_due_again(store: StoreAPI) -> None:
    await store.record_event(CHANNEL, 1, [], 1000, T0, [cand(1)])
    [first] = await store.lease_events("new", 10, 60, T0)
    await store.release_events(first.token, T0 + 1)
    [second] = await store.lease_events("new", 10, 60, T0 + 1)
    assert second.token != first.token
    assert await store.next_event_due("new") == T0 + 61
    assert await store.next_event_due("ready") is None
    [third] = await store.lease_events("new", 10, 60, T0 + 62)  # the holder crashed
    await store.settle_decisions(second.token, ready={}, skipped=[second.candidate.event_id],
                                 dead={}, later={}, states={}, now=T0 + 63)
    assert await store.event_counts() == {"new": 1}  # the stale token settled nothing
    assert third.candidate == cand(1)


async def test_two_workers_never_hold_changes_of_one_record_at_once_on_postgresql(
        pg_url: str) -> None:
    """Worker B leases past the change worker A holds: it skips the record's later changes
    (they wait for A's decision) but takes other records; after A settles, B gets them in
    commit order."""
    first, second = cand(1, "tx-1"), cand(1, "tx-2")
    other = cand(2, "tx-3")
    async with await PostgresStore.open(pg_url) as a, await PostgresStore.open(pg_url) as b:
        await a.record_event(CHANNEL, 1, [], 1000, T0, [first])
        await a.record_event(CHANNEL, 2, [], 1001, T0, [second, other])
        [held] = await a.lease_events("new", 1, 60, T0)
        assert held.candidate == first
        taken = await b.lease_events("new", 10, 60, T0)
        assert [p.candidate for p in taken] == [other]  # not tx-2 of the record A decides
        assert await b.lease_events("new", 10, 60, T0) == []
        await a.settle_decisions(held.token, ready={}, skipped=[first.event_id], dead={},
                                 later={}, states={}, now=T0 + 1)
        [after] = await b.lease_events("new", 10, 60, T0 + 1)
        assert after.candidate == second


async def test_concurrent_leases_of_one_store_keep_a_records_changes_in_order(
        store: StoreAPI) -> None:
    """Two decide loops of one worker: the second lease skips the record the first holds."""
    first, second, other = cand(1, "tx-1"), cand(1, "tx-2"), cand(2, "tx-3")
    await store.record_event(CHANNEL, 1, [], 1000, T0, [first, second, other])
    [held] = await store.lease_events("new", 1, 60, T0)
    assert [p.candidate for p in await store.lease_events("new", 10, 60, T0)] == [other]
    await store.settle_decisions(held.token, ready={}, skipped=[], dead={},
                                 later={first.event_id: ("no profile", 30.0)}, states={},
                                 now=T0)
    # Put off after its decision (its state saved): it holds the record's next change no more.
    [after] = await store.lease_events("new", 10, 60, T0)
    assert after.candidate == second


@pytest.mark.parametrize("sql", [LEASE_NEW_SQL, LEASE_READY_SQL], ids=["new", "ready"])
async def test_a_sqlite_lease_neither_sorts_nor_scans_the_backlog(tmp_path: Path,
                                                                   sql: str) -> None:
    """A lease walks the state index in arrival order and looks a record's rows up by index:
    the earlier lease sorted every due row and joined the picked rows against all of a
    record's later ones, 0.2 s a lease with 100,000 candidates waiting (the events burst)."""
    store = await Store.open(str(tmp_path / "s.db"))
    await store.close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        plan = [str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql,
                                                     (0.0, 1, "t", 0.0))]
    costly = [step for step in plan if "TEMP B-TREE" in step
              or (step.startswith("SCAN") and step not in ("SCAN p", "SCAN picked"))]
    assert not costly, plan
    assert any("USING INDEX event_pending_by_state" in step for step in plan), plan


def _pg_plan_nodes(plan_json: str) -> list[tuple[str, str | None, str | None]]:
    """(node type, table, index) of every node of an `EXPLAIN (FORMAT JSON)` plan."""
    found: list[tuple[str, str | None, str | None]] = []
    nodes = [orjson.loads(plan_json)[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        found.append((node["Node Type"], node.get("Relation Name"), node.get("Index Name")))
        nodes.extend(node.get("Plans", []))
    return found


@pytest.mark.parametrize("state", ["new", "ready"])
async def test_a_postgres_lease_neither_sorts_nor_scans_the_backlog(pg_url: str,
                                                                    state: str) -> None:
    """As on SQLite: with 20,000 candidates waiting, a lease of 2,000 walks the state index in
    arrival order and looks each picked record's earlier undecided rows up by index; the
    earlier statement sorted every due row by seq and grouped every undecided row of the
    picked records (a scan of the backlog)."""
    async with await PostgresStore.open(pg_url, pool_size=1) as store:
        for tx in range(20):
            await store.record_event(CHANNEL, tx + 1, [], 1000 + tx, T0, [
                cand(n, f"tx-{tx}") for n in range(1000)])
        if state == "ready":
            leased = await store.lease_events("new", 20_000, 60, T0)
            await store.settle_decisions(leased[0].token, ready={
                p.candidate.event_id: {"id": p.candidate.event_id} for p in leased},
                skipped=[], dead={}, later={}, states={}, now=T0)
        sql = (LEASE_NEW_PG if state == "new" else LEASE_READY_PG).format(
            returning="e.event_id")
        async with store._read("test") as conn:
            await conn.execute("ANALYZE event_pending")
            plan = _pg_plan_nodes(await conn.fetchval(
                f"EXPLAIN (FORMAT JSON) {sql}", "t", T0 + 60, T0 + 1, 2000))
    costly = [n for n in plan if n[0] == "Sort"
              or (n[0] in ("Seq Scan", "Bitmap Heap Scan") and n[1] == "event_pending")]
    assert not costly, plan
    assert ("Index Scan", "event_pending", "event_pending_by_state") in plan, plan


@pytest.mark.parametrize("sql", [SETTLE_SENT_SQL, DELETE_SKIPPED_SQL], ids=["sent", "skipped"])
async def test_a_sqlite_settle_finds_a_batchs_rows_by_their_ids(tmp_path: Path, sql: str) -> None:
    store = await Store.open(str(tmp_path / "s.db"))
    await store.close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        plan = [str(row[3]) for row in conn.execute(
            "EXPLAIN QUERY PLAN " + sql, (0.0, "[]", "t")[-sql.count("?"):])]
    assert not [step for step in plan if step.startswith("SCAN event_pending")], plan
    assert any(step.startswith("SEARCH event_pending USING INDEX sqlite_autoindex")
               for step in plan), plan
