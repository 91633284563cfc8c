"""`SalesforceClient.update_records` (PATCH /composite/sobjects) against the Salesforce emulator
over real HTTP: one result per record in order, our client name on the change events, the
200-record cap."""

from __future__ import annotations

from typing import Any

import pytest

from streamsync.adapters.salesforce import MAX_COLLECTION, SaveResult
from streamsync.emulators.salesforce import SalesforceEmulator
from tests.conftest import Clients


def _opt_out(sobject: str, record_id: str) -> dict[str, Any]:
    return {"attributes": {"type": sobject}, "id": record_id, "HasOptedOutOfEmail": True}


async def test_results_come_one_per_record_in_order_and_one_bad_record_holds_none_back(
        sf_emulator: SalesforceEmulator, clients: Clients) -> None:
    lead, contact = sf_emulator.select_ids("Lead", limit=1)[0], sf_emulator.select_ids(
        "Contact", limit=1)[0]
    gone = sf_emulator.select_ids("Lead", limit=2)[1]
    sf_emulator.state.delete("Lead", gone)
    before = len(sf_emulator.state.event_log)
    results = await clients.salesforce.update_records(
        [_opt_out("Lead", lead), _opt_out("Lead", gone), _opt_out("Contact", contact)])
    assert [(r.record_id, r.success) for r in results] == [
        (lead, True), (gone, False), (contact, True)]
    assert results[1].errors and results[1].describe().startswith(results[1].errors[0][0])
    for sobject, sf_id in (("Lead", lead), ("Contact", contact)):
        assert sf_emulator.state.record(sobject, sf_id)["HasOptedOutOfEmail"] is True  # type: ignore[index]
    events = list(sf_emulator.state.event_log)[before:]
    assert {e["ChangeEventHeader"]["changeOrigin"] for e in events} == {
        f"com/salesforce/api/rest/{sf_emulator.config.api_version};client=streamsync"}
    assert clients.counter.total("salesforce", endpoint="composite_sobjects") == 1


async def test_the_collection_cap_is_checked_before_sending(clients: Clients) -> None:
    with pytest.raises(ValueError, match="1..200"):
        await clients.salesforce.update_records([])
    with pytest.raises(ValueError, match="1..200"):
        await clients.salesforce.update_records(
            [_opt_out("Lead", "00Q000000000001AAA")] * (MAX_COLLECTION + 1))


def test_a_save_result_describes_its_errors() -> None:
    assert SaveResult(None, False, (("MALFORMED_ID", "bad id"),)).describe() == (
        "MALFORMED_ID: bad id")
