"""Every id the Salesforce emulator hands out carries a correct 18-character case checksum.

The checksum is computed here independently of the emulator's ids module (the algorithm and the
test vectors are Salesforce's), and every reply of a session that touches each surface (OAuth,
REST, collections, upsert, Bulk 2.0 query and ingest, SOAP convertLead, CometD events, the
control API) is scanned for ids of every key prefix the emulator uses."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig
from tests.emulators.sf_clients import cdc_events
from tests.emulators.test_sf_soap_convert import SOAP_URL, jsforce_envelope

V = "/services/data/v66.0"
PREFIXES = ("001", "003", "005", "006", "00D", "00G", "00Q", "750", "01g")
_ALNUM = "[0-9A-Za-z]"
ID_RE = re.compile(f"(?<!{_ALNUM})((?:{'|'.join(PREFIXES)}){_ALNUM}{{15}})(?!{_ALNUM})")


def case_checksum(id15: str) -> str:
    out = ""
    for chunk in (id15[0:5], id15[5:10], id15[10:15]):
        bits = sum(1 << i for i, ch in enumerate(chunk) if "A" <= ch <= "Z")
        out += "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"[bits]
    return out


def test_the_independent_checksum_matches_salesforce_vectors() -> None:
    assert case_checksum("a0RE000000IJmcN") == "MAT"
    assert case_checksum("001M000000qfPyS") == "IAU"
    assert case_checksum("aaaaaaaaaaaaaaa") == "AAA"
    assert case_checksum("aBcDEfgHIJKLMNO") == "025"
    assert case_checksum("00D8W0000000001") == "UAA"


@pytest.fixture
async def emu() -> AsyncIterator[SalesforceEmulator]:
    e = SalesforceEmulator(SalesforceEmulatorConfig(
        seed_accounts=30, seed_contacts=60, seed_leads=300, seed_users=5, seed_queues=2))
    await e.start()
    yield e
    await e.stop()


async def _collect(emu: SalesforceEmulator) -> list[str]:
    """The text of every reply of a session that uses each surface of the emulator."""
    texts: list[str] = []
    async with aiohttp.ClientSession(base_url=emu.instance_url) as s:
        async with s.post("/services/oauth2/token", data={
                "grant_type": "password", "client_id": emu.client_id,
                "client_secret": emu.client_secret, "username": emu.username,
                "password": emu.password}) as r:
            grant = await r.json()
        token = grant.pop("access_token")
        assert token.split("!")[0] == grant["id"].split("/")[-2][:15]
        texts.append(orjson.dumps(grant).decode())
        s.headers["Authorization"] = f"Bearer {token}"

        async def text(method: str, url: str, **kw: Any) -> str:
            async with s.request(method, url, **kw) as r:
                assert r.status < 300, (url, r.status, await r.text())
                body = await r.text()
                texts.append(body)
                texts.extend(f"{k}: {v}" for k, v in r.headers.items())
                return body

        for obj, fields in (("Lead", "Id, OwnerId, CreatedById, LastModifiedById, "
                                     "ConvertedAccountId, ConvertedContactId"),
                            ("Contact", "Id, AccountId, OwnerId, CreatedById"),
                            ("Account", "Id, OwnerId, LastModifiedById"),
                            ("User", "Id"), ("Group", "Id")):
            await text("GET", f"{V}/query", params={"q": f"SELECT {fields} FROM {obj}"},
                       headers={"Sforce-Query-Options": "batchSize=200"})
        page = orjson.loads(await text("GET", f"{V}/query", params={
            "q": "SELECT Id FROM Lead"}, headers={"Sforce-Query-Options": "batchSize=200"}))
        await text("GET", page["nextRecordsUrl"])
        created = orjson.loads(await text("POST", f"{V}/sobjects/Contact", json={
            "LastName": "Hopper", "Email": "grace@example.com"}))
        await text("GET", f"{V}/sobjects/Contact/{created['id']}")
        await text("POST", f"{V}/composite/sobjects", json={"records": [
            {"attributes": {"type": "Account"}, "Name": "A1"},
            {"attributes": {"type": "Lead"}, "LastName": "L1", "Company": "C1"}]})
        await text("PATCH", f"{V}/sobjects/Lead/External_Id__c/ID-CHECK",
                   json={"LastName": "Upserted", "Company": "U"})
        job = orjson.loads(await text("POST", f"{V}/jobs/query", json={
            "operation": "query", "query": "SELECT Id, OwnerId, Owner.Id FROM Lead"}))
        for _ in range(3):
            await text("GET", f"{V}/jobs/query/{job['id']}")
        await text("GET", f"{V}/jobs/query/{job['id']}/results")
        await text("GET", f"{V}/jobs/query")
        ingest = orjson.loads(await text("POST", f"{V}/jobs/ingest", json={
            "object": "Lead", "operation": "insert"}))
        await text("PUT", f"{V}/jobs/ingest/{ingest['id']}/batches",
                   data="LastName,Company\nBulk,Co\nBulk2,Co\n",
                   headers={"Content-Type": "text/csv"})
        await text("PATCH", f"{V}/jobs/ingest/{ingest['id']}", json={"state": "UploadComplete"})
        await emu.ingest.wait_idle()
        await text("GET", f"{V}/jobs/ingest/{ingest['id']}")
        await text("GET", f"{V}/jobs/ingest/{ingest['id']}/successfulResults")
        await text("GET", f"{V}/jobs/ingest")
        lead = emu.state.tables["Lead"].ids[5]
        await text("POST", SOAP_URL, data=jsforce_envelope(token, {"convertLead": {
            "leadConverts": {"leadId": lead, "convertedStatus": "Closed - Converted"}}}),
                   headers={"Content-Type": "text/xml", "SOAPAction": '""'})
        await text("GET", f"{V}/sobjects/Lead/{lead}")
        converted = orjson.loads(await text("POST", "/__emulator__/convert-lead", json={
            "leadId": emu.state.tables["Lead"].ids[6]}))
        await text("GET", f"/__emulator__/records/Contact/{converted['contactId']}")
        await text("POST", "/__emulator__/records/Account", json={"Name": "Ctl"})
        await text("GET", "/__emulator__/events", params={"limit": "1000"})
    events = await cdc_events(emu, "/data/ChangeEvents", len(emu.state.event_log))
    texts.extend(orjson.dumps(e).decode() for e in events)
    return texts


async def test_every_id_handed_out_has_a_correct_checksum(emu: SalesforceEmulator) -> None:
    texts = await _collect(emu)
    found: dict[str, set[str]] = {p: set() for p in PREFIXES}
    for text in texts:
        for sf_id in ID_RE.findall(text):
            found[sf_id[:3]].add(sf_id)
    assert all(found.values()), {p: len(v) for p, v in found.items()}  # each surface seen
    bad = sorted(i for ids in found.values() for i in ids if case_checksum(i[:15]) != i[15:])
    assert bad == []
    assert found["00D"] == {"00D8W0000000001UAA"}
    stored = [value for table in emu.state.tables.values() for row in table.rows.values()
              for value in row if isinstance(value, str) and ID_RE.fullmatch(value)]
    assert len(stored) > 1000
    assert [i for i in stored if case_checksum(i[:15]) != i[15:]] == []

