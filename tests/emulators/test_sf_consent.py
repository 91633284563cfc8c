"""Opt-out fields on Lead and Contact over real HTTP: describe, SOQL, seed data, and the change
origin their CDC events carry on every write path (received through aiosfstream-ng)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator

import aiohttp
import pytest

from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig
from tests.emulators.sf_clients import cdc_events, json_of
from tests.emulators.test_sf_soap_convert import convert, results, soap

V = "/services/data/v66.0"
CONSENT = ("HasOptedOutOfEmail", "HasOptedOutOfFax", "DoNotCall")
CLIENT = "streamsync-consent"


@pytest.fixture
async def emu() -> AsyncIterator[SalesforceEmulator]:
    e = SalesforceEmulator(SalesforceEmulatorConfig(seed_accounts=20, seed_contacts=1000,
                                                    seed_leads=2000))
    await e.start()
    yield e
    await e.stop()


async def _count(http: aiohttp.ClientSession, soql: str) -> int:
    async with http.get(f"{V}/query", params={"q": soql}) as r:
        return int((await json_of(r))["totalSize"])


async def test_describe_soql_and_seeded_share(emu: SalesforceEmulator,
                                              http: aiohttp.ClientSession) -> None:
    for sobject in ("Lead", "Contact"):
        async with http.get(f"{V}/sobjects/{sobject}/describe") as r:
            fields = {f["name"]: f for f in (await json_of(r))["fields"]}
        for name in CONSENT:
            f = fields[name]
            assert (f["type"], f["soapType"], f["nillable"], f["createable"], f["updateable"],
                    f["defaultedOnCreate"], f["filterable"]) == (
                "boolean", "xsd:boolean", False, True, True, True, True), (sobject, f)
        assert fields["HasOptedOutOfEmail"]["label"] == "Email Opt Out"
        total = await _count(http, f"SELECT COUNT() FROM {sobject}")
        for name, low, high in (("HasOptedOutOfEmail", 0.03, 0.08),
                                ("HasOptedOutOfFax", 0.005, 0.04),
                                ("DoNotCall", 0.01, 0.05)):
            share = await _count(http, f"SELECT COUNT() FROM {sobject} WHERE {name} = true")
            assert low * total < share < high * total, (sobject, name, share, total)
        async with http.get(f"{V}/query", params={
                "q": f"SELECT Id, HasOptedOutOfEmail, HasOptedOutOfFax, DoNotCall FROM {sobject} "
                     "WHERE HasOptedOutOfEmail = true AND DoNotCall = false LIMIT 3"}) as r:
            records = (await json_of(r))["records"]
        assert len(records) == 3
        assert all(rec["HasOptedOutOfEmail"] is True and rec["DoNotCall"] is False
                   for rec in records)
    async with http.post(f"{V}/sobjects/Lead", json={"LastName": "New", "Company": "C"}) as r:
        new = (await json_of(r, 201))["id"]
    assert {k: emu.state.record("Lead", new)[k] for k in CONSENT} == dict.fromkeys(  # type: ignore[index]
        CONSENT, False)
    async with http.patch(f"{V}/sobjects/Lead/{new}", json={"DoNotCall": None}) as r:
        (err,) = await json_of(r, 400)
    assert err["errorCode"] == "INVALID_TYPE_ON_FIELD_IN_RECORD"


def test_the_seeded_consent_flags_leave_the_other_seeded_values_alone() -> None:
    """The new flags come from a random stream of their own: every other seeded value is what
    the seed produced before they existed (Lead 7 and Contact 3 with seed 42, as recorded)."""
    emu = SalesforceEmulator(SalesforceEmulatorConfig(seed_accounts=5, seed_contacts=10,
                                                      seed_leads=10))
    lead = emu.state.record("Lead", emu.state.tables["Lead"].ids[7])
    contact = emu.state.record("Contact", emu.state.tables["Contact"].ids[3])
    assert lead is not None and contact is not None
    assert (lead["FirstName"], lead["LastName"], lead["Company"], lead["HasOptedOutOfEmail"],
            lead["Lead_Score__c"], lead["OwnerId"]) == (
        "Mateo", "Garcia", "Cyberdyne LLC", True, 56.0, "00G8W0000000003UAA")
    assert (contact["Email"], contact["AccountId"], contact["Title"]) == (
        "fatima.hernandez.c3@example.com", "0018W0000000002QAA", "Director of Sales")


async def _ingest_update(http: aiohttp.ClientSession, emu: SalesforceEmulator, rows: str,
                         headers: dict[str, str]) -> None:
    async with http.post(f"{V}/jobs/ingest", json={"object": "Contact", "operation": "update",
                                                   "lineEnding": "LF"}, headers=headers) as r:
        job = (await json_of(r))["id"]
    async with http.put(f"{V}/jobs/ingest/{job}/batches", data=rows.encode(),
                        headers={"Content-Type": "text/csv"}) as r:
        assert r.status == 201
    async with http.patch(f"{V}/jobs/ingest/{job}", json={"state": "UploadComplete"}) as r:
        await json_of(r)
    await emu.ingest.wait_idle()
    async with http.get(f"{V}/jobs/ingest/{job}/successfulResults") as r:
        ok = list(csv.DictReader(io.StringIO(await r.text())))
    assert len(ok) == rows.count("\n") - 1


async def test_every_write_path_stamps_the_client_in_the_change_origin(
        emu: SalesforceEmulator, http: aiohttp.ClientSession) -> None:
    leads = emu.state.tables["Lead"].ids
    contacts = emu.state.tables["Contact"].ids
    tagged = {"Sforce-Call-Options": f"client={CLIENT}"}
    start = emu.bus.latest_replay_id
    # 1 REST sObject create, 2 update, 3 upsert by external id, 4 delete.
    async with http.post(f"{V}/sobjects/Lead", json={"LastName": "Opt", "Company": "C",
                                                     "HasOptedOutOfEmail": True},
                         headers=tagged) as r:
        created = (await json_of(r, 201))["id"]
    async with http.patch(f"{V}/sobjects/Lead/{leads[0]}", json={"HasOptedOutOfEmail": True},
                          headers=tagged) as r:
        assert r.status == 204
    external = emu.state.record("Contact", contacts[0])["External_Id__c"]  # type: ignore[index]
    async with http.patch(f"{V}/sobjects/Contact/External_Id__c/{external}",
                          json={"DoNotCall": True}, headers=tagged) as r:
        await json_of(r)
    async with http.delete(f"{V}/sobjects/Lead/{created}", headers=tagged) as r:
        assert r.status == 204
    # 5 sObject Collections: one PATCH of a Lead and a Contact (one transaction).
    async with http.patch(f"{V}/composite/sobjects", headers=tagged, json={
            "allOrNone": False, "records": [
                {"attributes": {"type": "Lead"}, "id": leads[1], "HasOptedOutOfEmail": True},
                {"attributes": {"type": "Contact"}, "id": contacts[1],
                 "HasOptedOutOfEmail": True}]}) as r:
        assert [x["success"] for x in await json_of(r)] == [True, True]
    # 6 Composite: one subrequest per transaction (allOrNone false).
    async with http.post(f"{V}/composite", headers=tagged, json={"compositeRequest": [
            {"method": "PATCH", "url": f"{V}/sobjects/Contact/{contacts[4]}",
             "referenceId": "optOut", "body": {"HasOptedOutOfEmail": True}}]}) as r:
        (sub,) = (await json_of(r))["compositeResponse"]
    assert sub["httpStatusCode"] == 204
    # 7 Bulk API 2.0 ingest: the client of the job creation call.
    await _ingest_update(http, emu, f"Id,HasOptedOutOfFax\n{contacts[2]},true\n", tagged)
    # 8 SOAP convertLead: CallOptions/client.
    status, text = await soap(emu, convert(emu, [{"leadId": leads[2], "convertedStatus":
                                                  "Closed - Converted",
                                                  "doNotCreateOpportunity": True}],
                                           client=CLIENT))
    assert status == 200 and results(text)[0]["success"] == "true"
    # Untagged REST write: the origin has no client part.
    async with http.patch(f"{V}/sobjects/Contact/{contacts[3]}",
                          json={"HasOptedOutOfEmail": True}) as r:
        assert r.status == 204

    count = emu.bus.latest_replay_id - start
    events = (await cdc_events(emu, "/data/ChangeEvents", emu.bus.latest_replay_id))[start:]
    assert len(events) == count == 12
    seen = [(e["ChangeEventHeader"]["entityName"], e["ChangeEventHeader"]["changeType"],
             e["ChangeEventHeader"]["changeOrigin"]) for e in events]
    rest = f"com/salesforce/api/rest/66.0;client={CLIENT}"
    bulk = f"com/salesforce/api/bulkapi/66.0;client={CLIENT}"
    soap_origin = f"com/salesforce/api/soap/66.0;client={CLIENT}"
    assert seen == [
        ("Lead", "CREATE", rest), ("Lead", "UPDATE", rest), ("Contact", "UPDATE", rest),
        ("Lead", "DELETE", rest), ("Lead", "UPDATE", rest), ("Contact", "UPDATE", rest),
        ("Contact", "UPDATE", rest), ("Contact", "UPDATE", bulk),
        ("Account", "CREATE", soap_origin),
        ("Contact", "CREATE", soap_origin), ("Lead", "UPDATE", soap_origin),
        ("Contact", "UPDATE", "com/salesforce/api/rest/66.0")]
    by_record = {(e["ChangeEventHeader"]["changeType"],
                  e["ChangeEventHeader"]["recordIds"][0]): e for e in events}
    assert by_record[("CREATE", created)]["HasOptedOutOfEmail"] is True
    update = by_record[("UPDATE", leads[0])]
    assert update["ChangeEventHeader"]["changedFields"] == [  # a seeded record: new modifier
        "HasOptedOutOfEmail", "LastModifiedDate", "LastModifiedById"]
    assert update["HasOptedOutOfEmail"] is True
    assert by_record[("UPDATE", contacts[2])]["HasOptedOutOfFax"] is True
    assert {e["ChangeEventHeader"]["commitUser"] for e in events} == {
        emu.state.integration_user_id}
