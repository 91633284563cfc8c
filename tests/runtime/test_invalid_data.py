"""The dead letter of a user Iterable reports as invalidData names the field and the type
Iterable expects (both emulators over real HTTP, a real SQLite queue)."""

from __future__ import annotations

import pytest

from streamsync.adapters.iterable import describe_mismatches
from streamsync.core.ids import to_18
from tests.conftest import SyncRig

SINGLE = "POST /api/users/update"


def test_describe_mismatches_names_field_expected_and_sent_types_never_the_value() -> None:
    text = describe_mismatches({
        "title": {"incomingTypes": ["string", "keyword"], "expectedType": "date",
                  "offendingValue": "CEO of 2024-01-15", "_type": "UnexpectedType"},
        "age": {"expectedType": "long"},
        "odd": {"detail": "?"},
    })
    assert text == ("field age: Iterable expects long; field odd; "
                    "field title: Iterable expects date, the record sends string")
    assert "CEO" not in text


@pytest.mark.iterable(type_mismatch="per_user")
async def test_an_invalid_data_dead_letter_names_the_field_and_the_expected_type(
        sync_rig: SyncRig) -> None:
    rig = sync_rig
    # leadSource becomes a date field in Iterable, so a picklist text value no longer fits.
    await rig.clients.iterable.update_user({"email": "seed@example.com",
                                            "dataFields": {"leadSource": "2020-01-01"}})
    fine = [to_18(rig.sf.state.create("Contact", {
        "LastName": f"Fine{i}", "Email": f"fine{i}@example.com"})) for i in range(3)]
    bad = to_18(rig.sf.state.create("Contact", {
        "LastName": "Bad", "Email": "bad@example.com", "LeadSource": "Web"}))
    await rig.enqueue("Contact", [*fine, bad])
    result = await rig.drain()
    assert (result.synced, result.dead) == (3, 1)
    assert rig.it.state.count("POST /api/users/bulkUpdate", 200) >= 1
    [dead] = await rig.store.dead_letters()
    assert (dead.record_id, dead.reason) == (bad, "invalid_data")
    assert "field leadSource: Iterable expects date, the record sends string" in dead.last_error
    assert "bad@example.com" in dead.last_error  # the user bulkUpdate reported
    assert rig.it.state.count(SINGLE, 400) == 1  # the one single update that named the field
    assert "bad@example.com" not in rig.profiles()
