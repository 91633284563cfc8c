"""core/verify_events.py: the final-state check of custom events finds each kind of mismatch."""

from __future__ import annotations

from typing import Any

from streamsync.core.verify_events import (
    ExpectedEvent,
    QualifyingChange,
    cdc_field_names,
    compare_events,
    iterable_time,
    mark_data_moved,
    mark_lost_to_cdc,
    value_transitions,
)

T = 1_796_000_000


def event(eid: str, **kw: Any) -> dict[str, Any]:
    return {"_id": eid, "eventName": "won", "email": "a@x.com", "createdAt": iterable_time(T),
            "dataFields": {"name": "Deal"}, **kw}


def expect(eid: str) -> ExpectedEvent:
    return ExpectedEvent(eid, "won", "a@x.com", T, {"name": "Deal"})


def test_every_kind_of_mismatch_is_reported_and_a_match_is_clean() -> None:
    assert compare_events([expect("e1")], [event("e1"), event("x", eventName="other")],
                          {"won"}).ok
    report = compare_events(
        [expect("e1"), expect("e2"), expect("e3"), expect("e4"), expect("e5")],
        [event("e2"), event("e2"), event("e3", email="b@x.com"),
         event("e4", createdAt=iterable_time(T + 5)), event("e5", dataFields={"name": "Old"}),
         event("e9")], {"won"})
    assert sorted((m.event_id, m.problem) for m in report.mismatches) == [
        ("e1", "missing"), ("e2", "duplicate"), ("e3", "wrong_user"), ("e4", "wrong_time"),
        ("e5", "wrong_data"), ("e9", "unexpected")]
    assert report.summary() == {"events_expected": 5, "events_found": 6, "event_mismatches": 6,
                                "events_lost_to_cdc": 0}


def test_a_change_lost_to_cdc_may_lack_its_event_but_never_has_two() -> None:
    lost = ExpectedEvent("e1", "won", "a@x.com", T, {"name": "Deal"}, may_be_absent=True)
    absent = compare_events([lost], [], {"won"})
    assert absent.ok and absent.lost_to_cdc == 1
    assert compare_events([lost], [event("e1")], {"won"}).ok
    doubled = compare_events([lost], [event("e1"), event("e1")], {"won"})
    assert [(m.event_id, m.problem) for m in doubled.mismatches] == [("e1", "duplicate")]
    wrong = compare_events([lost], [event("e1", dataFields={"name": "Old"})], {"won"})
    assert [m.problem for m in wrong.mismatches] == ["wrong_data"]


def test_only_changes_of_the_rules_entity_inside_a_window_are_marked_lost() -> None:
    changes = [QualifyingChange("won", "o1", "t1", 1_000), QualifyingChange("won", "o2", "t2",
                                                                            2_000),
               QualifyingChange("won", "o3", "t3", 3_001),
               QualifyingChange("working", "l1", "t4", 2_000)]
    marked = mark_lost_to_cdc(changes, [("Opportunity", 2_000, 3_000)],
                              {"won": "Opportunity", "working": "Lead"})
    assert [(c.record_id, c.lost_to_cdc) for c in marked] == [
        ("o1", False), ("o2", True), ("o3", False), ("l1", False)]


def test_transitions_are_the_updates_that_set_the_value() -> None:
    def body(kind: str, changed: list[str], ids: list[str], **values: Any) -> dict[str, Any]:
        return {"ChangeEventHeader": {"entityName": "Opportunity", "changeType": kind,
                                      "changedFields": changed, "recordIds": ids,
                                      "transactionKey": "tx", "commitTimestamp": 5}, **values}

    log = [body("UPDATE", ["StageName"], ["o1", "o2"], StageName="Closed Won"),
           body("UPDATE", ["StageName"], ["o3"], StageName="Prospecting"),
           body("UPDATE", ["Amount"], ["o4"], Amount=1.0),
           body("CREATE", ["StageName"], ["o5"], StageName="Closed Won")]
    found = value_transitions(log, rule="won", entity="Opportunity", field_name="StageName",
                              value="Closed Won")
    assert [(c.record_id, c.transaction_key, c.commit_ts_ms) for c in found] == [
        ("o1", "tx", 5), ("o2", "tx", 5)]


def test_a_later_change_of_a_data_field_leaves_the_data_uncompared() -> None:
    """The event carries the record as read when it was decided: after a later change of a
    field its data reads, Salesforce now cannot tell what that was."""
    def update(changed: list[str], tx: str, ts: int, rid: str = "l1") -> dict[str, Any]:
        return {"ChangeEventHeader": {"entityName": "Lead", "changeType": "UPDATE",
                                      "changedFields": changed, "recordIds": [rid],
                                      "transactionKey": tx, "commitTimestamp": ts}}

    changes = [QualifyingChange("working", rid, "tx1", 10) for rid in ("l1", "l2", "l3", "l4")]
    log = [update(["Status", "LeadSource"], "tx1", 10),                  # its own change
           update(["LeadSource", "LastModifiedDate"], "tx0", 5),         # earlier
           update(["Title", "LastModifiedDate"], "tx2", 20),             # not a data field
           update(["LeadSource", "LastModifiedDate"], "tx3", 30, "l2"),  # later: moved
           update(["OwnerId"], "tx4", 10, "l3"),                         # same ms, other tx
           update(["Name.LastName"], "tx5", 40, "l4")]                   # a compound's part
    marked = mark_data_moved(changes, log, {"working": ["LeadSource", "Owner.Email", "Name"]})
    assert [(c.record_id, c.data_moved) for c in marked] == [
        ("l1", False), ("l2", True), ("l3", True), ("l4", True)]
    assert cdc_field_names(["Account.Name", "Partner__r.Name", "Email"]) == {
        "accountid", "partner__c", "email"}
