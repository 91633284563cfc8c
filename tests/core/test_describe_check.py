"""Mapped paths, relationships and filter fields checked against describe results."""

from __future__ import annotations

from typing import Any

import pytest

from streamsync.core.describe_check import DescribeChecker, check_objects
from streamsync.errors import ConfigError


def _f(name: str, ftype: str = "string", *, rel: str | None = None,
       to: tuple[str, ...] = (), filterable: bool = True) -> dict[str, Any]:
    return {"name": name, "type": ftype, "relationshipName": rel, "referenceTo": list(to),
            "filterable": filterable}


DESCRIBES: dict[str, dict[str, Any]] = {
    "Contact": {"name": "Contact", "fields": [
        _f("Id", "id"), _f("Email", "email"), _f("FirstName"), _f("LastName"),
        _f("AccountId", "reference", rel="Account", to=("Account",)),
        _f("OwnerId", "reference", rel="Owner", to=("User",)),
        _f("MailingAddress", "address", filterable=False), _f("MailingCity"),
        _f("Description", "textarea", filterable=False), _f("Phone", "phone"),
        _f("HomeAddress"),
    ]},
    "Lead": {"name": "Lead", "fields": [
        _f("Id", "id"), _f("Email", "email"), _f("IsConverted", "boolean"), _f("Status"),
        _f("OwnerId", "reference", rel="Owner", to=("User", "Group")),
    ]},
    "Account": {"name": "Account", "fields": [
        _f("Id", "id"), _f("Name"),
        _f("OwnerId", "reference", rel="Owner", to=("User",)),
        _f("ParentId", "reference", rel="Parent", to=("Account",)),
    ]},
    "User": {"name": "User", "fields": [
        _f("Id", "id"), _f("Email", "email"), _f("Name"), _f("IsActive", "boolean"),
        _f("ManagerId", "reference", rel="Manager", to=("User",)),
    ]},
}


def test_valid_paths_pass() -> None:
    checker = DescribeChecker(DESCRIBES)
    assert checker.check_object("Contact", key="objects.Contact", mapping={
        "Email": "email", "account.name": "dataFields.a", "Account.Owner.Manager.Email": "x",
        "Account.Parent.Parent.Name": "y", "MailingAddress.city": "z", "Owner.IsActive": "w",
    }, filter_fields={"Account.Name", "Email"}, email_field="Email") == []
    assert checker.check_object("Lead", key="objects.Lead", mapping={
        "Owner.Email": "a", "Owner.IsActive": "b", "Owner.Name": "c"}) == []


def test_every_problem_is_reported_at_once() -> None:
    problems = DescribeChecker(DESCRIBES).check_object(
        "Contact", key="objects.Contact",
        mapping={
            "Emial": "email",                       # typo
            "Account.Nmae": "dataFields.a",         # typo in parent field
            "Acount.Name": "dataFields.b",          # typo in relationship
            "FirstName.Foo": "dataFields.c",        # a field used as a relationship
            "Account.Owner.Manager.Salary": "d",    # deep miss
            "Phone.city": "dataFields.e",           # component of a non-compound field
            "Owner.Profile.Name": "dataFields.f",   # relationship to an undescribed object
        },
        filter_fields={"Description", "Nope"},
        email_field="FirstName")
    text = [str(p) for p in problems]
    assert text == [
        "objects.Contact.mapping.Emial: Contact has no field 'Emial' (did you mean Email?)",
        "objects.Contact.mapping.\"Account.Nmae\": Account has no field 'Nmae' "
        "(did you mean Name?)",
        "objects.Contact.mapping.\"Acount.Name\": Contact has no relationship 'Acount' "
        "(did you mean Account?)",
        "objects.Contact.mapping.\"FirstName.Foo\": Contact.FirstName is a field, not a "
        "relationship",
        "objects.Contact.mapping.\"Account.Owner.Manager.Salary\": User has no field 'Salary'",
        "objects.Contact.mapping.\"Phone.city\": Contact.Phone is a field, not a relationship",
        "objects.Contact.mapping.\"Owner.Profile.Name\": User has no relationship 'Profile'",
        "objects.Contact.filter: Description is not filterable",
        "objects.Contact.filter: Contact has no field 'Nope'",
    ]  # FirstName is a string field, which may hold emails: no email_field problem
    wrong_type = DescribeChecker(DESCRIBES).check_object(
        "Contact", key="objects.Contact", mapping={}, email_field="AccountId")
    assert [str(p) for p in wrong_type] == [
        "objects.Contact.email_field: AccountId is of type 'reference', not an email or string "
        "field: every record would be dead-lettered as invalid_email"]


def test_the_source_mapped_to_email_must_be_text() -> None:
    checker = DescribeChecker({**DESCRIBES, "Contact": {"name": "Contact", "fields": [
        *DESCRIBES["Contact"]["fields"], _f("CreatedDate", "datetime")]}})
    problems = checker.check_object("Contact", key="objects.Contact",
                                    mapping={"CreatedDate": "email"}, email_field="Email")
    assert [str(p) for p in problems] == [
        "objects.Contact.mapping.CreatedDate: CreatedDate is of type 'datetime', not an email "
        "or string field: every record would be dead-lettered as invalid_email"]
    through_parent = checker.check_object("Contact", key="objects.Contact",
                                          mapping={"Owner.IsActive": "email"})
    assert [p.key for p in through_parent] == ['objects.Contact.mapping."Owner.IsActive"']
    assert "type 'boolean'" in through_parent[0].message
    assert checker.check_object("Contact", key="objects.Contact",
                                mapping={"Owner.Email": "email", "Phone": "dataFields.p"},
                                email_field="Phone") == []  # the mapped source wins


def test_source_types_come_from_the_describes() -> None:
    checker = DescribeChecker(DESCRIBES)
    assert checker.source_types("Contact", [
        "Email", "account.name", "Owner.IsActive", "MailingAddress.city",
        "MailingAddress.latitude", "MailingAddress"]) == {
        "Email": "email", "account.name": "string", "Owner.IsActive": "boolean",
        "MailingAddress.city": "string", "MailingAddress.latitude": "double",
        "MailingAddress": "address"}
    # Through a polymorphic relationship: the Name object's own field types.
    assert checker.source_types("Lead", ["Owner.IsActive", "Owner.Email", "Owner.Name"]) == {
        "Owner.IsActive": "boolean", "Owner.Email": "email", "Owner.Name": "string"}
    with pytest.raises(ConfigError, match="Contact mapping 'Emial': Contact has no field"):
        checker.source_types("Contact", ["Email", "Emial"])
    with pytest.raises(ConfigError, match="polymorphic"):
        checker.source_types("Lead", ["Owner.Manager.Email"])


def test_polymorphic_relationships_expose_name_fields_only() -> None:
    problems = DescribeChecker(DESCRIBES).check_object(
        "Lead", key="objects.Lead", mapping={"Owner.Manager.Email": "a", "Owner.Salary": "b"})
    assert len(problems) == 2
    assert all("polymorphic (User, Group)" in p.message for p in problems)


def test_missing_object_and_compound_misuse() -> None:
    problems = check_objects(DESCRIBES, [
        ("Nope__c", "objects.Nope__c", {"Id": "dataFields.id"}, (), None),
        ("Contact", "objects.Contact", {"HomeAddress.city": "dataFields.c"}, (), None),
    ])
    assert [p.key for p in problems] == ["objects.Nope__c",
                                         'objects.Contact.mapping."HomeAddress.city"']
    assert "does not exist" in problems[0].message
    assert "not a compound" in problems[1].message


def test_against_the_emulator_describe() -> None:
    from streamsync.emulators.salesforce.schema import SCHEMA, describe

    describes = {name: describe(obj, "66.0") for name, obj in SCHEMA.items()}
    checker = DescribeChecker(describes)
    assert checker.check_object("Contact", key="objects.Contact", mapping={
        "Email": "email", "Account.Name": "a", "Account.Id": "b", "Owner.Email": "c",
        "Owner.Name": "d", "Owner.IsActive": "e", "Owner.Id": "f", "MailingAddress.city": "g",
    }, filter_fields={"LeadSource"}, email_field="Email") == []
    problems = checker.check_object("Lead", key="objects.Lead",
                                    mapping={"Account.Name": "a", "Owner.IsActive": "b"},
                                    filter_fields={"IsConverted"}, email_field="Email")
    assert [str(p) for p in problems] == [
        "objects.Lead.mapping.\"Account.Name\": Lead has no relationship 'Account'"]
