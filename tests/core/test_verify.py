"""The final-state comparison: it must catch every kind of drift, and accept a correct sync."""

from __future__ import annotations

from typing import Any

from streamsync.core.ids import to_18
from streamsync.core.mapping import CompiledMapping
from streamsync.core.verify import ObjectPolicy, compare

LEAD = CompiledMapping(
    "Lead",
    {"Email": "email", "FirstName": "dataFields.firstName", "Company": "dataFields.Company.Name"},
    extra_fields=("IsConverted",),
    source_types={"Email": "email", "FirstName": "string", "Company": "string"},
)
CONTACT = CompiledMapping(
    "Contact", {"Email": "email", "FirstName": "dataFields.firstName",
                "Account.Name": "dataFields.Company.Name"},
    source_types={"Email": "email", "FirstName": "string", "Account.Name": "string"},
)
POLICIES = {
    "Lead": ObjectPolicy(LEAD, defers_when_converted=True),
    "Contact": ObjectPolicy(CONTACT, delete_policy="delete"),
}
L1 = to_18("00Q000000000001")
L2 = to_18("00Q000000000002")
C1 = to_18("003000000000001")


def lead(rid: str, email: str | None, name: str, **extra: Any) -> dict[str, Any]:
    return {"Id": rid, "Email": email, "FirstName": name, "Company": "Acme", **extra}


def contact(rid: str, email: str, name: str, account: str | None, **extra: Any) -> dict[str, Any]:
    acct = None if account is None else {"Name": account}
    return {"Id": rid, "Email": email, "FirstName": name, "Account": acct, **extra}


def test_matching_state_is_ok() -> None:
    records = {"Lead": [lead(L1, "a@x.com", "Ann")],
               "Contact": [contact(C1, "c@x.com", "Cy", "Globex")]}
    profiles = {
        "a@x.com": {"dataFields": {"firstName": "Ann", "Company": {"Name": "Acme"}}},
        "c@x.com": {"dataFields": {"firstName": "Cy", "Company": {"Name": "Globex"},
                                   "signupDate": "x"}},
    }
    report = compare(POLICIES, records, profiles)
    assert report.ok and report.matched == 2 and report.compared == 2


def test_stale_value_missing_profile_and_leftover_field_are_caught() -> None:
    records = {"Lead": [lead(L1, "a@x.com", "Ann"), lead(L2, "b@x.com", "Bo")],
               "Contact": [contact(C1, "c@x.com", "Cy", None)]}
    profiles = {
        "a@x.com": {"dataFields": {"firstName": "Anne", "Company": {"Name": "Acme"}}},
        "c@x.com": {"dataFields": {"firstName": "Cy", "Company": {"Name": "Old Co"}}},
    }
    report = compare(POLICIES, records, profiles)
    problems = {m.key: m.problem for m in report.mismatches}
    assert problems == {"a@x.com": "fields differ", "b@x.com": "missing in Iterable",
                        "c@x.com": "fields differ"}
    assert not report.ok


def test_deletes_follow_the_policy_and_flags_must_not_linger() -> None:
    records = {"Lead": [lead(L1, "a@x.com", "Ann", IsDeleted=True)],
               "Contact": [contact(C1, "c@x.com", "Cy", "G", IsDeleted=True)]}
    good = {"a@x.com": {"dataFields": {"salesforceDeleted": True, "firstName": "Ann"}}}
    assert compare(POLICIES, records, good).ok
    unflagged = {"a@x.com": {"dataFields": {"firstName": "Ann"}}}
    assert not compare(POLICIES, records, unflagged).ok
    not_deleted = {**good, "c@x.com": {"dataFields": {"firstName": "Cy"}}}
    report = compare(POLICIES, records, not_deleted)
    assert [m.problem for m in report.mismatches] == ["deleted record still in Iterable"]
    live_but_flagged = {"Lead": [lead(L1, "a@x.com", "Ann")]}
    flagged = {"a@x.com": {"dataFields": {"salesforceDeleted": True, "firstName": "Ann",
                                          "Company": {"Name": "Acme"}}}}
    assert not compare(POLICIES, live_but_flagged, flagged).ok


def test_bad_records_expect_dead_letters_and_converted_leads_defer() -> None:
    records = {"Lead": [lead(L1, "not-an-email", "Ann"),
                        lead(L2, "c@x.com", "Stale", IsConverted=True)],
               "Contact": [contact(C1, "c@x.com", "Cy", "G")]}
    profiles = {"c@x.com": {"dataFields": {"firstName": "Cy", "Company": {"Name": "G"}}}}
    missing = compare(POLICIES, records, profiles, dead_letter_ids=[])
    assert missing.missing_dead_letters == {L1} and not missing.ok
    report = compare(POLICIES, records, profiles, dead_letter_ids=[L1])
    assert report.ok and report.matched == 1


def test_ambiguous_and_unexpected_keys_are_reported() -> None:
    records = {"Lead": [lead(L1, "a@x.com", "Ann"), lead(L2, "A@x.com", "Bo")]}
    profiles = {"a@x.com": {"dataFields": {"firstName": "Bo"}},
                "old@x.com": {"dataFields": {"firstName": "Ann"}}}
    report = compare(POLICIES, records, profiles)
    assert report.ambiguous_keys == {"a@x.com"}
    assert report.unexpected_profiles == {"old@x.com"}
