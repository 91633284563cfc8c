"""The compiled mapping: paths, targets, dates, types, nulls, identity rules, properties."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsync.core.ids import to_18
from streamsync.core.mapping import (
    DATE_TYPES,
    MANAGED_FIELDS,
    MAX_VALUE_CHARS,
    RESERVED_TARGETS,
    CompiledMapping,
    clean_text,
    iterable_date,
    mapping_problems,
    normalize_email,
    payload_hash,
    target_problem,
)
from streamsync.errors import ConfigError, RecordError

CONTACT_ID = to_18("003000000000001")
ITERABLE_DATE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \+00:00")

CLASSIC = {
    "Email": "email",
    "Id": "dataFields.sfContactId",
    "FirstName": "dataFields.firstName",
    "LastName": "dataFields.lastName",
    "LeadSource": "dataFields.leadSource",
    "Account.Id": "dataFields.Company.Id",
    "Account.Name": "dataFields.Company.Name",
    "Owner.Email": "dataFields.Owner.Email",
    "Owner.Name": "dataFields.Owner.Name",
    "Owner.IsActive": "dataFields.Owner.IsActive",
    "Owner.Id": "dataFields.Owner.Id",
}


# Describe types of the Contact fields these tests map (as a real org's describe reports them).
TYPES: dict[str, str] = {
    "Email": "email", "Id": "id", "FirstName": "string", "LastName": "string",
    "Title": "string", "LeadSource": "picklist", "Account.Id": "id", "Account.Name": "string",
    "account.name": "string", "Owner.Email": "email", "Owner.Name": "string",
    "Owner.IsActive": "boolean", "Owner.Id": "id", "Account.Owner.Name": "string",
    "Owner.Manager.Email": "email", "MailingAddress.city": "string",
    "MailingAddress.PostalCode": "string", "BillingAddress": "address", "Name": "string",
    "CreatedDate": "datetime", "Birthdate": "date", "Description": "textarea",
    "Addr": "address", "Personal_Email__c": "email", "External_Id__c": "string",
}
TEXT_TYPES = ("string", "textarea", "picklist", "multipicklist", "email", "phone", "url",
              "combobox", "id", "reference", "encryptedstring", "time")


def compiled(mapping: dict[str, str], types: dict[str, str] | None = None,
             **options: Any) -> CompiledMapping:
    """A Contact mapping compiled with TYPES (and `types` for fields of the test's own)."""
    known = {**TYPES, **(types or {})}
    return CompiledMapping("Contact", mapping, source_types={s: known[s] for s in mapping},
                           **options)


def _record(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "attributes": {"type": "Contact",
                       "url": f"/services/data/v66.0/sobjects/Contact/{CONTACT_ID}"},
        "Id": CONTACT_ID,
        "Email": "Ada@Example.com",
        "FirstName": "Ada",
        "LastName": "Lovelace",
        "LeadSource": "Web",
        "Account": {"attributes": {"type": "Account"}, "Id": to_18("001000000000001"),
                    "Name": "Analytical Engines"},
        "Owner": {"attributes": {"type": "User"}, "Email": "owner@example.com",
                  "Name": "Olive Owner", "IsActive": True, "Id": to_18("005000000000001")},
    }
    base.update(fields)
    return base


def test_classic_recipe() -> None:
    m = compiled(CLASSIC)
    user = m.map(_record())
    assert user.sf_id == CONTACT_ID and user.email == "ada@example.com" and user.user_id is None
    assert user.payload == {
        "email": "ada@example.com",
        "dataFields": {
            "sfContactId": CONTACT_ID,
            "firstName": "Ada",
            "lastName": "Lovelace",
            "leadSource": "Web",
            "Company": {"Id": to_18("001000000000001"), "Name": "Analytical Engines"},
            "Owner": {"Email": "owner@example.com", "Name": "Olive Owner", "IsActive": True,
                      "Id": to_18("005000000000001")},
        },
    }
    assert user.payload_hash == payload_hash(user.payload)
    assert m.soql_fields() == ["Id", "Email", "FirstName", "LastName", "LeadSource",
                               "Account.Id", "Account.Name", "Owner.Email", "Owner.Name",
                               "Owner.IsActive", "Owner.Id"]


def test_null_parent_yields_null_and_policies() -> None:
    rec = _record(Account=None, LeadSource=None)
    cleared = compiled(CLASSIC, null_policy="clear").map(rec)
    assert cleared.payload["dataFields"]["Company"] == {"Id": None, "Name": None}
    assert cleared.payload["dataFields"]["leadSource"] is None
    assert b'"leadSource":null' in orjson.dumps(cleared.payload)
    omitted = compiled(CLASSIC, null_policy="omit").map(rec)
    assert "Company" not in omitted.payload["dataFields"]
    assert "leadSource" not in omitted.payload["dataFields"]


def test_deep_parent_paths_and_case_insensitive_keys() -> None:
    m = compiled({"Account.Owner.Name": "dataFields.accountOwner",
                                    "account.name": "dataFields.company"})
    rec = _record(Account={"Name": "Acme", "Owner": {"Name": "Bob"}})
    assert m.map(rec).payload["dataFields"] == {"accountOwner": "Bob", "company": "Acme"}
    rec = _record(Account={"Name": "Acme", "Owner": None})
    assert m.map(rec).payload["dataFields"] == {"accountOwner": None, "company": "Acme"}
    assert m.soql_fields() == ["Id", "Email", "Account.Owner.Name", "account.name"]


def test_compound_fields() -> None:
    m = compiled({"MailingAddress.city": "dataFields.address.city",
                                    "MailingAddress.PostalCode": "dataFields.address.zip",
                                    "BillingAddress": "dataFields.billing",
                                    "Name": "dataFields.fullName"})
    rec = _record(MailingAddress={"city": "London", "postalCode": "N1"}, Name="Ada Lovelace",
                  BillingAddress={"street": "1 Main St", "city": None, "latitude": 51.5})
    data = m.map(rec).payload["dataFields"]
    assert data["address"] == {"city": "London", "zip": "N1"}
    assert data["fullName"] == "Ada Lovelace"
    assert data["billing"] == {"street": "1 Main St", "city": None, "latitude": 51.5}
    assert "MailingAddress" in m.soql_fields() and "BillingAddress" in m.soql_fields()
    assert "MailingAddress.city" not in m.soql_fields()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-05-01T12:34:56.000+0000", "2024-05-01 12:34:56 +00:00"),   # REST
        ("2024-05-01T12:34:56Z", "2024-05-01 12:34:56 +00:00"),           # CometD
        ("2024-05-01T12:34:56.123Z", "2024-05-01 12:34:56 +00:00"),       # Bulk CSV
        ("2024-05-01T14:34:56.000+0200", "2024-05-01 12:34:56 +00:00"),
        ("2024-05-01T01:00:00-05:30", "2024-05-01 06:30:00 +00:00"),
        ("2024-12-31T23:30:00.000-0100", "2025-01-01 00:30:00 +00:00"),
        ("2024-05-01", "2024-05-01 00:00:00 +00:00"),                      # date
        ("2024-02-29", "2024-02-29 00:00:00 +00:00"),
        ("0001-01-01T00:00:00Z", "0001-01-01 00:00:00 +00:00"),
    ],
)
def test_salesforce_dates_become_iterable_dates(raw: str, expected: str) -> None:
    assert iterable_date(raw) == expected
    m = compiled({"CreatedDate": "dataFields.created"})
    assert m.map(_record(CreatedDate=raw)).payload["dataFields"]["created"] == expected


@pytest.mark.parametrize(
    "raw",
    ["2023-02-29", "2024-13-01", "2024-05-01T25:00:00Z", "2024-05-01 12:34:56",
     "12:34:56.000Z", "2024-05-01T12:34:56+2500", "May 1, 2024", "20240501",
     "0001-01-01T00:00:00+0100", "2024-05-01T12:34:56.000+0000 "],
)
def test_non_dates_stay_text(raw: str) -> None:
    assert iterable_date(raw) is None
    m = compiled({"Description": "dataFields.d"})
    assert m.map(_record(Description=raw)).payload["dataFields"]["d"] == raw


def test_dates_can_be_kept_as_text() -> None:
    m = compiled({"CreatedDate": "dataFields.c"}, convert_dates=False)
    assert m.map(_record(CreatedDate="2024-05-01")).payload["dataFields"]["c"] == "2024-05-01"


def test_types_kept() -> None:
    m = compiled({"A__c": "dataFields.a", "B__c": "dataFields.b",
                  "C__c": "dataFields.c", "D__c": "dataFields.d"},
                 {"A__c": "boolean", "B__c": "int", "C__c": "double", "D__c": "boolean"})
    data = m.map(_record(A__c=True, B__c=42, C__c=3.5, D__c=False)).payload["dataFields"]
    assert data == {"a": True, "b": 42, "c": 3.5, "d": False}
    assert type(data["a"]) is bool and type(data["b"]) is int and type(data["c"]) is float


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2**63, -(2**63) - 1, object()])
def test_unsendable_values(value: Any) -> None:
    m = compiled({"A__c": "dataFields.a"}, {"A__c": "double"})
    with pytest.raises(RecordError) as exc:
        m.map(_record(A__c=value))
    assert exc.value.reason == "invalid_value"


def test_control_characters_and_non_ascii() -> None:
    m = compiled({"A__c": "dataFields.a"}, {"A__c": "textarea"})
    raw = "Zoë\x00 東京\x1b[31m\ttab\nline\r\x7f\ud800!"
    value = m.map(_record(A__c=raw)).payload["dataFields"]["a"]
    assert value == "Zoë 東京[31m\ttab\nline\r\ufffd!"
    orjson.dumps(value)  # encodable


def test_value_length_limit() -> None:
    m = compiled({"Description": "dataFields.d", "Addr": "dataFields.addr"})
    ok = "x" * MAX_VALUE_CHARS
    assert m.map(_record(Description=ok)).payload["dataFields"]["d"] == ok
    with pytest.raises(RecordError) as exc:
        m.map(_record(Description=ok + "y"))
    assert exc.value.reason == "value_too_long" and "dataFields.d" in exc.value.detail
    with pytest.raises(RecordError) as exc:
        m.map(_record(Addr={"street": "x" * 20_000, "city": "y" * 20_000}))
    assert exc.value.reason == "value_too_long"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("Ada@Example.COM", "ada@example.com"), ("  ada@example.com \n", "ada@example.com"),
     ("first.last+tag@sub.example.co.uk", "first.last+tag@sub.example.co.uk"),
     ("o'brien@example.ie", "o'brien@example.ie"),
     ("x@xn--80ak6aa92e.com", "x@xn--80ak6aa92e.com"), ("zoë@example.com", "zoë@example.com"),
     ("Ada@Bücher.DE", "ada@bücher.de"), ("ada@[192.168.0.1]", "ada@[192.168.0.1]"),
     ("a{b}|c~d@example.museum", "a{b}|c~d@example.museum")],
)
def test_valid_emails(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(None, "missing_email"), ("", "missing_email"), ("   ", "missing_email"),
     ("ada", "invalid_email"), ("ada@", "invalid_email"), ("@example.com", "invalid_email"),
     ("ada @example.com", "invalid_email"), ("ada@example", "invalid_email"),
     ("ada@example.c", "invalid_email"), ("ada@example.123", "invalid_email"),
     ("ada..b@example.com", "invalid_email"), (".ada@example.com", "invalid_email"),
     ("ada@-example.com", "invalid_email"), ("ada@example..com", "invalid_email"),
     ("ada@exa_mple.com", "invalid_email"), ("ada@example.test", "invalid_email"),
     ("ada@localhost", "invalid_email"), ("ada@[256.1.1.1]", "invalid_email"),
     ("a(b)@example.com", "invalid_email"), ("a\"b@example.com", "invalid_email"),
     ("ada.@example.com", "invalid_email"), ("ada@example.com.", "invalid_email"),
     ("ada@-bücher.de", "invalid_email"), ("ada@bü_cher.de", "invalid_email"),
     ("ada\t@example.com", "invalid_email"),
     ("ada@example.com\x00", "invalid_email"), ("a" * 65 + "@example.com", "invalid_email"),
     ("a@" + "b" * 250 + ".com", "invalid_email"), ("a@b@example.com", "invalid_email"),
     (42, "invalid_email")],
)
def test_invalid_emails(raw: Any, reason: str) -> None:
    with pytest.raises(RecordError) as exc:
        normalize_email(raw)
    assert exc.value.reason == reason


def test_identity_rules() -> None:
    email_only = compiled(CLASSIC, identity="email")
    with pytest.raises(RecordError) as exc:
        email_only.map(_record(Email=None))
    assert exc.value.reason == "missing_email"
    with pytest.raises(RecordError) as exc:
        email_only.map(_record(Email="not an email"))
    assert exc.value.reason == "invalid_email"

    by_id = compiled({"FirstName": "dataFields.firstName"}, identity="userId")
    user = by_id.map(_record(Email="bad email", Id="003000000000001"))
    assert user.payload == {"userId": CONTACT_ID, "dataFields": {"firstName": "Ada"}}
    assert user.key == CONTACT_ID
    with_email = compiled(CLASSIC, identity="userId").map(_record())
    assert with_email.payload["email"] == "ada@example.com"
    assert with_email.payload["userId"] == CONTACT_ID

    both = compiled({}, identity="both")
    assert both.map(_record()).payload == {"email": "ada@example.com", "userId": CONTACT_ID}
    with pytest.raises(RecordError):
        both.map(_record(Email=None))


def test_user_id_from_another_field() -> None:
    m = compiled({}, identity="userId", user_id_field="External_Id__c")
    assert m.map(_record(External_Id__c="ext-1")).user_id == "ext-1"
    for bad, reason in [(None, "missing_user_id"), ("x" * 53, "invalid_user_id"),
                        ("trailing ", "invalid_user_id"), ("naïve", "invalid_user_id"),
                        ("tab\tin", "invalid_user_id")]:
        with pytest.raises(RecordError) as exc:
            m.map(_record(External_Id__c=bad))
        assert exc.value.reason == reason


def test_mapped_email_target_overrides_email_field() -> None:
    m = compiled({"Personal_Email__c": "email"}, email_field="Email")
    assert m.map(_record(Personal_Email__c="Me@Home.org")).email == "me@home.org"
    assert "Personal_Email__c" in m.soql_fields()


def test_bad_record_id() -> None:
    m = compiled(CLASSIC)
    for bad in [None, "nope", "003000000000001AAB"]:
        with pytest.raises(RecordError) as exc:
            m.map(_record(Id=bad))
        assert exc.value.reason == "invalid_id"
    assert isinstance(m.map_or_error(_record(Id=None)), RecordError)


def test_hash_is_stable_and_order_free() -> None:
    assert payload_hash({"a": 1, "b": {"c": 2, "d": 3}}) == payload_hash(
        {"b": {"d": 3, "c": 2}, "a": 1})
    assert payload_hash({"a": 1}) != payload_hash({"a": 2})
    assert payload_hash({"a": None}) != payload_hash({})


# ---------------------------------------------------------------- config-time target checks


@pytest.mark.parametrize(
    "target",
    ["dataFields.", "dataFields..x", "dataFields.x.", "dataFields. x", "dataFields.x ",
     "dataFields.email", "dataFields.userId", "dataFields.emailListIds",
     "dataFields.itblInternal.x",
     "dataFields.signupDate", "dataFields." + "x" * 129, "dataFields.a\x00b", "dataFields.a\nb",
     "Company.Name", "Email", "datafields.x", "dataFields" + ".a" * 9, ""],
)
def test_targets_iterable_cannot_take(target: str) -> None:
    assert target_problem(target) is not None
    with pytest.raises(ConfigError):
        compiled({"FirstName": target})


@pytest.mark.parametrize("target", ["email", "userId", "dataFields.x", "dataFields.Email",
                                    "dataFields.Company.Name", "dataFields.Ünïcode name",
                                    "dataFields.a_geo_location"])
def test_targets_iterable_takes(target: str) -> None:
    assert target_problem(target) is None


def test_mapping_problems_reported_together() -> None:
    problems = mapping_problems({
        "Bad Path": "dataFields.x",
        "FirstName": "dataFields.name",
        "LastName": "dataFields.name",
        "Company": "dataFields.org",
        "Account.Name": "dataFields.org.name",
        "Account;Drop": "dataFields.y",
        "Title": "dataFields. t",
    })
    keys = [k for k, _ in problems]
    assert keys == ["Bad Path", "LastName", "Account;Drop", "Title", "Account.Name"]
    msgs = dict(problems)
    assert "also mapped from 'FirstName'" in msgs["LastName"]
    assert "nested inside 'dataFields.org'" in msgs["Account.Name"]


# ---------------------------------------------------------------- properties

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(
    max_size=40) | st.sampled_from(["2024-05-01", "2024-05-01T12:34:56.000+0000",
                                    "2024-05-01T12:34:56Z", "2024-02-30", "x" * 32_001])
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(st.text(max_size=5), children, max_size=3),
                           max_leaves=10)
segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_- ",
                  min_size=1, max_size=10).filter(
    lambda s: s == s.strip() and s not in MANAGED_FIELDS | RESERVED_TARGETS)


@given(st.dictionaries(st.sampled_from(["A__c", "B__c", "Account", "Owner", "Email", "Id",
                                        "MailingAddress"]), json_values, max_size=7),
       st.sampled_from(["email", "userId", "both"]), st.sampled_from(["omit", "clear"]),
       st.sampled_from([*TEXT_TYPES, *DATE_TYPES, "boolean", "int", "double", "anyType"]))
@settings(max_examples=300, deadline=None)
def test_map_never_raises_anything_but_record_error(record: dict[str, Any], identity: Any,
                                                     null_policy: Any, a_type: str) -> None:
    m = compiled({"A__c": "dataFields.a", "B__c": "dataFields.b.c",
                  "Account.Name": "dataFields.acct.name",
                  "Owner.Manager.Email": "dataFields.mgr",
                  "MailingAddress.city": "dataFields.city"},
                 {"A__c": a_type, "B__c": "datetime"}, identity=identity,
                 null_policy=null_policy)
    try:
        user = m.map(record)
    except RecordError as exc:
        assert exc.reason
        return
    body = orjson.dumps(user.payload)  # always encodable
    assert len(body) > 0
    assert user.payload_hash == payload_hash(user.payload)


@given(st.dictionaries(st.lists(segment, min_size=1, max_size=3).map(lambda p: ".".join(p)),
                       st.integers(-(2**63), 2**63 - 1) | st.booleans()
                       | st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                                 max_size=5), min_size=1,
                       max_size=8))
@settings(max_examples=200, deadline=None)
def test_nested_targets_round_trip(values: dict[str, Any]) -> None:
    """Every value lands at its dotted target path (skipping prefix-conflicting targets)."""
    names = sorted(values)
    keep = [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]
    mapping = {f"F{i}__c": "dataFields." + name for i, name in enumerate(keep)}
    kinds = {bool: "boolean", int: "int", str: "string"}
    m = compiled(mapping, {f"F{i}__c": kinds[type(values[name])] for i, name in enumerate(keep)})
    record = _record(**{f"F{i}__c": values[name] for i, name in enumerate(keep)})
    data = m.map(record).payload["dataFields"]
    for name in keep:
        node: Any = data
        for part in name.split("."):
            node = node[part]
        assert node == values[name] and type(node) is type(values[name]), name


@given(st.datetimes(min_value=datetime(1901, 1, 1), max_value=datetime(9998, 12, 31),
                   timezones=st.integers(-14 * 60, 14 * 60).map(
                       lambda m: timezone(timedelta(minutes=m)))),
       st.sampled_from(["%Y-%m-%dT%H:%M:%S.000%z", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d"]))
@settings(max_examples=200, deadline=None)
def test_dates_always_in_iterable_format(moment: Any, fmt: str) -> None:
    raw = moment.strftime(fmt)
    if fmt.endswith("Z"):
        raw = moment.replace(tzinfo=None).strftime(fmt)
    converted = iterable_date(raw)
    assert converted is not None, raw
    assert ITERABLE_DATE.fullmatch(converted)


def test_flag_user_for_deletes() -> None:
    m = compiled(CLASSIC)
    flagged = m.flag_user("003000000000001", "ada@example.com", None,
                          "dataFields.salesforce.deleted")
    assert flagged.sf_id == CONTACT_ID
    assert flagged.payload == {"email": "ada@example.com",
                               "dataFields": {"salesforce": {"deleted": True}}}
    undeleted = m.flag_user(CONTACT_ID, None, CONTACT_ID, "dataFields.sfDeleted", deleted=False)
    assert undeleted.payload == {"userId": CONTACT_ID, "dataFields": {"sfDeleted": False}}
    assert undeleted.payload_hash != flagged.payload_hash
    with pytest.raises(RecordError) as exc:
        m.flag_user(CONTACT_ID, None, None, "dataFields.sfDeleted")
    assert exc.value.reason == "missing_email"
    with pytest.raises(ConfigError):
        m.flag_user(CONTACT_ID, "a@example.com", None, "dataFields.email")


def test_describe_types_limit_date_conversion() -> None:
    mapping = {"Notes__c": "dataFields.notes", "Birthdate": "dataFields.bday",
               "CreatedDate": "dataFields.created", "Owner.CreatedDate": "dataFields.ownerSince"}
    m = compiled(mapping, {"Notes__c": "string", "Owner.CreatedDate": "datetime"})
    data = m.map(_record(Notes__c="2024-05-01", Birthdate="2024-05-01",
                         CreatedDate="2024-05-01T12:00:00.000+0000",
                         Owner={"CreatedDate": "2020-02-03T04:05:06Z"})).payload["dataFields"]
    assert data == {"notes": "2024-05-01", "bday": "2024-05-01 00:00:00 +00:00",
                    "created": "2024-05-01 12:00:00 +00:00",
                    "ownerSince": "2020-02-03 04:05:06 +00:00"}


def test_text_that_looks_like_a_date_a_number_or_a_boolean_stays_text() -> None:
    """A Lead named `2024-01-15` with the title `2023-12-31T23:59:59.000+0000` is sent as
    text: Iterable would otherwise type the field as a date and reject every later Lead."""
    m = compiled({"LastName": "dataFields.lastName", "Title": "dataFields.title",
                  "Zip__c": "dataFields.zip", "Flag__c": "dataFields.flag",
                  "MailingAddress.PostalCode": "dataFields.postalCode"},
                 {"Zip__c": "string", "Flag__c": "picklist"})
    data = m.map(_record(LastName="2024-01-15", Title="2023-12-31T23:59:59.000+0000",
                         Zip__c="00123", Flag__c="true",
                         MailingAddress={"PostalCode": "2024-05-01"})).payload["dataFields"]
    assert data == {"lastName": "2024-01-15", "title": "2023-12-31T23:59:59.000+0000",
                    "zip": "00123", "flag": "true", "postalCode": "2024-05-01"}


def test_every_mapped_source_needs_its_describe_type() -> None:
    with pytest.raises(ConfigError, match="'Other__c': no Salesforce field type known"):
        CompiledMapping("Contact", {"Other__c": "dataFields.o", "Email": "email"},
                        source_types={"Email": "email"})


@given(st.sampled_from(TEXT_TYPES),
       st.text(max_size=40) | st.sampled_from([
           "2024-01-15", "2023-12-31T23:59:59.000+0000", "2024-05-01T12:34:56Z", "00123",
           "true", "false", "1e5", "-0", "null"]))
@settings(max_examples=300, deadline=None)
def test_text_fields_are_sent_as_their_text(sf_type: str, raw: str) -> None:
    m = compiled({"A__c": "dataFields.a"}, {"A__c": sf_type})
    assert m.map(_record(A__c=raw)).payload["dataFields"]["a"] == clean_text(raw)


@given(st.sampled_from(sorted(DATE_TYPES)),
       st.text(max_size=40) | st.dates().map(str) | st.datetimes().map(
           lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.000+0000")))
@settings(max_examples=300, deadline=None)
def test_date_fields_are_sent_as_iterable_dates(sf_type: str, raw: str) -> None:
    m = compiled({"A__c": "dataFields.a"}, {"A__c": sf_type})
    sent = m.map(_record(A__c=raw)).payload["dataFields"]["a"]
    assert sent == (iterable_date(raw) or clean_text(raw))


def test_iterable_types_follow_the_describe_types() -> None:
    m = compiled({"Email": "email", "Title": "dataFields.title", "CreatedDate": "dataFields.c",
                  "Owner.IsActive": "dataFields.Owner.IsActive", "Score__c": "dataFields.s",
                  "MailingAddress.city": "dataFields.city", "BillingAddress": "dataFields.b",
                  "MailingAddress.latitude": "dataFields.lat"},
                 {"Score__c": "double", "MailingAddress.latitude": "double"})
    assert m.iterable_types() == [("Title", "title", "string"), ("CreatedDate", "c", "date"),
                                  ("Owner.IsActive", "Owner.IsActive", "boolean"),
                                  ("MailingAddress.city", "city", "string")]
    kept = compiled({"CreatedDate": "dataFields.c"}, convert_dates=False)
    assert kept.iterable_types() == [("CreatedDate", "c", "string")]
