"""Which updates the profile sync can see (core/change_relevance.py), against the describes the
Salesforce emulator serves."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from streamsync.core.change_relevance import read_fields, touches
from tests.conftest import emulator_describes

LEAD_PATHS = ["Id", "Email", "FirstName", "Company", "Owner.Email", "Owner.Name",
              "IsConverted", "ConvertedContactId", "HasOptedOutOfEmail"]


@pytest.fixture(scope="module")
def describes() -> dict[str, dict[str, Any]]:
    return emulator_describes()


def test_the_fields_read_include_lookups_of_relationship_paths_and_compounds(
        describes: dict[str, dict[str, Any]]) -> None:
    fields = read_fields("Lead", LEAD_PATHS, describes)
    assert fields == frozenset({
        "id", "email", "firstname", "name", "company", "ownerid", "isconverted",
        "convertedcontactid", "hasoptedoutofemail"})


@pytest.mark.parametrize(("changed", "seen"), [
    (["Title", "LastModifiedDate"], False),
    (["LastModifiedDate"], False),
    (["Email", "LastModifiedDate"], True),
    (["OwnerId", "LastModifiedDate"], True),          # Owner.Email read through it
    (["Name.FirstName", "LastModifiedDate"], True),   # a compound's component, as CDC names it
    (["Name.LastName", "LastModifiedDate"], True),    # the same compound: read again, to be safe
    (["company"], True),                              # names compared without case
    (["HasOptedOutOfEmail"], True),
    ([], True),                                       # nothing to go by
])
def test_an_update_is_seen_when_it_changed_a_field_read(
        describes: dict[str, dict[str, Any]], changed: list[str], seen: bool) -> None:
    assert touches(changed, read_fields("Lead", LEAD_PATHS, describes)) is seen


def test_an_address_component_counts_for_the_compound_field_read(
        describes: dict[str, dict[str, Any]]) -> None:
    fields = read_fields("Contact", ["Id", "Email", "MailingCity"], describes)
    assert touches(["MailingAddress.City"], fields)
    assert touches(["MailingAddress.Street"], fields)  # the compound, not the component
    assert not touches(["OtherAddress.City", "LastModifiedDate"], fields)


def test_a_calculated_field_makes_every_update_count(
        describes: dict[str, dict[str, Any]]) -> None:
    """CDC does not report a formula's changes: any update may have changed its inputs."""
    changed = copy.deepcopy(describes)
    for entry in changed["Lead"]["fields"]:
        if entry["name"] == "Company":
            entry["calculated"] = True
    assert read_fields("Lead", LEAD_PATHS, changed) is None
    assert touches(["Title"], None)


@pytest.mark.parametrize("paths", [["Id", "NoSuchField__c"], ["Id", "NoSuchRel__r.Name"]])
def test_a_path_the_describe_does_not_resolve_makes_every_update_count(
        describes: dict[str, dict[str, Any]], paths: list[str]) -> None:
    assert read_fields("Lead", paths, describes) is None


def test_an_object_without_a_describe_makes_every_update_count(
        describes: dict[str, dict[str, Any]]) -> None:
    assert read_fields("Custom__c", ["Id"], describes) is None
