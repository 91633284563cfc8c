"""core/verify_lists: a list matches its Campaign only with exactly the counted members' emails."""

from __future__ import annotations

from typing import Any

from streamsync.core.verify_lists import ListExpectation, compare_lists, expected_emails

CAMPAIGN = "701000000000001AAA"


def member(status: str = "Sent", lead: str | None = None, contact: str | None = None,
           deleted: bool = False) -> dict[str, Any]:
    return {"Status": status, "IsDeleted": deleted,
            "LeadId": "00Q000000000001AAA" if lead is not None else None,
            "ContactId": "003000000000001AAA" if contact is not None else None,
            "Lead": {"Email": lead} if lead is not None else None,
            "Contact": {"Email": contact} if contact is not None else None}


def test_the_contact_email_wins_once_a_lead_is_converted_and_statuses_filter() -> None:
    rows = [member(lead="Old@Example.com", contact="new@example.com"),
            member(lead="lead@example.com"),
            member(status="Responded", contact="r@example.com"),
            member(contact="gone@example.com", deleted=True),
            member(lead=None, contact=None),
            member(lead="  ")]
    assert expected_emails(rows, None) == {"new@example.com", "lead@example.com",
                                           "r@example.com"}
    assert expected_emails(rows, frozenset({"Responded"})) == {"r@example.com"}


def test_missing_and_unexpected_emails_are_reported_per_list() -> None:
    expectations = [ListExpectation(1, CAMPAIGN), ListExpectation(2, "701000000000002AAA")]
    members = {CAMPAIGN: [member(lead="a@example.com"), member(contact="b@example.com")]}
    ok = compare_lists(expectations, members, {1: ["A@example.com", "b@example.com"], 2: []})
    assert ok.ok and (ok.lists, ok.members) == (2, 2)
    bad = compare_lists(expectations, members, {1: ["a@example.com", "x@example.com"],
                                                2: ["y@example.com"]})
    assert [(m.list_id, m.missing, m.unexpected) for m in bad.mismatches] == [
        (1, ["b@example.com"], ["x@example.com"]), (2, [], ["y@example.com"])]
    assert bad.summary()["list_mismatches"] == 2
