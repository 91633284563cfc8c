"""The sync description of an object, its fingerprint and the field diff (core/fingerprint.py),
and the null a compiled mapping sends for a target a re-sync clears."""

from __future__ import annotations

from typing import Any

from streamsync.core.fingerprint import describe_mapping, diff, fingerprint
from streamsync.core.ids import to_18
from streamsync.core.mapping import CompiledMapping

TYPES = {"Email": "email", "FirstName": "string", "LeadSource": "picklist",
         "CreatedDate": "datetime", "Owner.Name": "string"}
POLICIES: dict[str, str | None] = {"out_of_scope": "ignore"}


def compiled(mapping: dict[str, str], **kw: Any) -> CompiledMapping:
    return CompiledMapping("Lead", mapping, source_types=TYPES, **kw)


def described(mapping: dict[str, str], filter_text: str | None = None,
              **kw: Any) -> dict[str, Any]:
    return describe_mapping(compiled(mapping, **kw), filter_text=filter_text, policies=POLICIES)


BASE = {"Email": "email", "FirstName": "dataFields.firstName", "LeadSource": "dataFields.src",
        "CreatedDate": "dataFields.created"}


def test_fingerprint_is_stable_and_ignores_key_order_and_filter_spacing() -> None:
    a = described(BASE, "Status = 'Open'")
    b = described(dict(reversed(list(BASE.items()))), "Status  =  'Open'")
    assert fingerprint(a) == fingerprint(b) and len(fingerprint(a)) == 64
    assert not diff(a, b).changed


def test_each_setting_that_changes_what_is_sent_changes_the_fingerprint() -> None:
    base = fingerprint(described(BASE))
    variants = [
        described({**BASE, "Owner.Name": "dataFields.owner"}),
        described(BASE, "Status = 'Open'"),
        described(BASE, null_policy="omit"),
        described(BASE, convert_dates=False),
        described(BASE, identity="both"),
        describe_mapping(compiled(BASE), filter_text=None, policies={"out_of_scope": "flag"}),
    ]
    prints = {fingerprint(v) for v in variants}
    assert base not in prints and len(prints) == len(variants)


def test_diff_names_added_removed_renamed_and_changed_fields() -> None:
    old = described(BASE)
    new_mapping = {"Email": "email", "FirstName": "dataFields.givenName",
                   "CreatedDate": "dataFields.created", "Owner.Name": "dataFields.owner"}
    change = diff(old, described(new_mapping, convert_dates=False))
    kinds = {(c.kind, c.target, c.old_target) for c in change.fields}
    assert kinds == {("renamed", "dataFields.givenName", "dataFields.firstName"),
                     ("added", "dataFields.owner", None),
                     ("removed", "dataFields.src", None),
                     ("changed", "dataFields.created", None)}
    created = next(c for c in change.fields if c.kind == "changed")
    assert created.detail == "conversion date → as-is (datetime)"
    assert change.dropped_targets() == ["dataFields.firstName", "dataFields.src"]
    assert not change.filter_changed


def test_diff_against_nothing_applied_is_first_and_every_field_added() -> None:
    change = diff(None, described(BASE))
    assert change.first and {c.kind for c in change.fields} == {"added"}


def test_a_filter_change_is_a_setting_change() -> None:
    change = diff(described(BASE), described(BASE, "Status = 'Open'"))
    assert change.filter_changed and change.settings["filter"] == (None, "Status = 'Open'")


def test_cleared_targets_are_sent_as_null_and_covered_by_the_payload_hash() -> None:
    record = {"Id": to_18("00Q000000000001"), "Email": "a@example.com", "FirstName": "Ann",
              "LeadSource": "Web", "CreatedDate": "2026-01-02T03:04:05.000+0000"}
    plain = compiled(BASE).map(record)
    clearing = compiled(BASE).with_clears(["dataFields.old.name", "dataFields.firstName",
                                           "dataFields.old"]).map(record)
    # A clear that is still a mapped target, or nested in another clear, is not sent.
    assert clearing.payload["dataFields"]["old"] is None
    assert clearing.payload["dataFields"]["firstName"] == "Ann"
    assert clearing.payload_hash != plain.payload_hash


def test_the_verifier_expects_cleared_targets_absent_or_null() -> None:
    from streamsync.core.verify import ObjectPolicy, compare

    record = {"Id": to_18("00Q000000000001"), "Email": "a@example.com", "FirstName": "Ann",
              "LeadSource": "Web", "CreatedDate": "2026-01-02T03:04:05.000+0000"}
    policy = ObjectPolicy(compiled(BASE), "ignore", cleared=("dataFields.old",))
    good = compiled(BASE).map(record).payload
    stale = {**good, "dataFields": {**good["dataFields"], "old": "left over"}}
    assert compare({"Lead": policy}, {"Lead": [record]}, {"a@example.com": good}).ok
    assert not compare({"Lead": policy}, {"Lead": [record]}, {"a@example.com": stale}).ok
