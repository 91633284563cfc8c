"""Campaign members as list subscribers (`list_member`) and the lists backfill's checkpoints,
on both store backends."""

from __future__ import annotations

from streamsync.adapters.store import ListBackfillState, ListMemberWant, StoreAPI

T0 = 1_700_000_000.0


def want(member: str, list_id: int, email: str) -> ListMemberWant:
    return ListMemberWant(member, list_id, email, "701A", f"00Q{member}")


async def test_a_member_is_planned_confirmed_moved_and_dropped(any_store: StoreAPI) -> None:
    store = any_store
    adding, leaving = await store.plan_list_members(["m1"], [want("m1", 7, "a@x.io")], T0)
    assert [(r.member_id, r.list_id, r.email, r.state) for r in adding] == [
        ("m1", 7, "a@x.io", "adding")] and leaving == []
    await store.confirm_list_members(adding)
    assert await store.held_emails(7, ["a@x.io", "b@x.io"]) == {"a@x.io"}
    # The same plan again keeps the confirmed row 'in': nothing to send.
    assert await store.plan_list_members(["m1"], [want("m1", 7, "a@x.io")], T0 + 1) == ([], [])
    # The member's email changed: the old row goes 'out', the new one is 'adding'.
    adding, leaving = await store.plan_list_members(["m1"], [want("m1", 7, "b@x.io")], T0 + 2)
    assert [r.email for r in adding] == ["b@x.io"] and [r.email for r in leaving] == ["a@x.io"]
    await store.drop_list_members(leaving)
    await store.drop_list_members(adding, state="out")  # not 'out': kept
    assert [(r.email, r.state) for r in await store.list_members_of(["m1"])] == [
        ("b@x.io", "adding")]
    assert [r.email for r in await store.list_member_rows(7)] == ["b@x.io"]


async def test_unseen_members_retire_and_the_backfill_checkpoint_round_trips(
        any_store: StoreAPI) -> None:
    store = any_store
    await store.plan_list_members(["m1", "m2"], [want("m1", 7, "a@x.io"),
                                                 want("m2", 7, "b@x.io")], T0)
    await store.plan_list_members(["m2"], [want("m2", 7, "b@x.io")], T0 + 10)  # m2 seen again
    out = await store.retire_unseen_list_members(7, "701A", T0 + 5, T0 + 20)
    assert [(r.member_id, r.state) for r in out] == [("m1", "out")]
    assert await store.list_backfill("701A") is None
    state = ListBackfillState("701A", 7, T0, "members", "003X", 5, 1)
    await store.save_list_backfill(state, T0 + 1)
    assert await store.list_backfill("701A") == state
    done = ListBackfillState("701A", 7, T0, "done", None, 9, 2)
    await store.save_list_backfill(done, T0 + 2)
    assert await store.list_backfill("701A") == done


async def test_rows_are_found_by_the_person_they_subscribe(any_store: StoreAPI) -> None:
    store = any_store
    await store.plan_list_members(["m1", "m2", "m3"], [
        want("m1", 7, "a@x.io"), want("m2", 8, "a@x.io"), want("m3", 7, "c@x.io")], T0)
    assert await store.list_members_of_people(["00Qm1", "00Qm2"]) == [
        r for r in await store.list_members_of(["m1", "m2"])]
    assert await store.list_members_of_people(["00Qnobody"]) == []
