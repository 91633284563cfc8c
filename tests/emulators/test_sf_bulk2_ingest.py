"""Bulk API 2.0 ingest jobs: simple-salesforce's bulk2 API unchanged, the wire details, and the
CDC events each record change publishes (received through aiosfstream-ng)."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig
from streamsync.emulators.salesforce.ingest import BulkIngestApi, IngestJob
from streamsync.emulators.salesforce.seed import seed
from streamsync.emulators.salesforce.state import OrgState
from tests.emulators.sf_clients import cdc_events, simple_salesforce

JOBS = "/services/data/v66.0/jobs/ingest"
BULK_ORIGIN = "com/salesforce/api/bulkapi/66.0"


@pytest.fixture
async def emu() -> AsyncIterator[SalesforceEmulator]:
    e = SalesforceEmulator(SalesforceEmulatorConfig(seed_leads=10, seed_contacts=5,
                                                    seed_accounts=2))
    await e.start()
    yield e
    await e.stop()


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _lead(emu: SalesforceEmulator, sf_id: str) -> dict[str, Any]:
    rec = emu.state.record("Lead", sf_id)
    assert rec is not None
    return rec


async def test_simple_salesforce_insert_upsert_update_delete_publish_cdc(
        emu: SalesforceEmulator) -> None:
    sf = simple_salesforce(emu)
    bulk = sf.bulk2.Lead
    new = [{"LastName": f"Bulk{i}", "Company": "Acme", "Email": f"bulk{i}@example.com",
            "External_Id__c": f"B-{i}"} for i in range(3)]
    new.append({"LastName": "NoCompany", "Company": "", "Email": "x@example.com",
                "External_Id__c": "B-9"})
    (inserted,) = await asyncio.to_thread(bulk.insert, records=new, wait=0)
    assert inserted["numberRecordsProcessed"] == 4 and inserted["numberRecordsFailed"] == 1
    results = await asyncio.to_thread(bulk.get_all_ingest_records, inserted["job_id"])
    ok = results["successfulRecords"]
    assert [r["LastName"] for r in ok] == ["Bulk0", "Bulk1", "Bulk2"]
    assert all(r["sf__Created"] == "true" for r in ok)
    created = [r["sf__Id"] for r in ok]
    assert [_lead(emu, i)["Email"] for i in created] == [f"bulk{i}@example.com"
                                                         for i in range(3)]
    (failed,) = results["failedRecords"]
    assert failed["sf__Id"] == "" and failed["LastName"] == "NoCompany"
    assert failed["sf__Error"].startswith("REQUIRED_FIELD_MISSING:Required fields are missing")
    assert results["unprocessedRecords"] == []

    (upserted,) = await asyncio.to_thread(
        bulk.upsert, records=[{"External_Id__c": "B-1", "Title": "CTO"},
                              {"External_Id__c": "B-5", "LastName": "Fresh", "Company": "X"}],
        external_id_field="External_Id__c", wait=0)
    assert upserted["numberRecordsFailed"] == 0
    up = _rows(await asyncio.to_thread(bulk.get_successful_records, upserted["job_id"]))
    assert [(r["sf__Id"] == created[1], r["sf__Created"]) for r in up] == [
        (True, "false"), (False, "true")]
    fresh = up[1]["sf__Id"]
    assert _lead(emu, created[1])["Title"] == "CTO"

    (updated,) = await asyncio.to_thread(
        bulk.update, records=[{"Id": i, "Rating": "Hot"} for i in created[:2]], wait=0)
    assert updated["numberRecordsProcessed"] == 2 and updated["numberRecordsFailed"] == 0
    assert [_lead(emu, i)["Rating"] for i in created] == ["Hot", "Hot", None]

    (deleted,) = await asyncio.to_thread(bulk.delete, records=[{"Id": created[2]}], wait=0)
    assert deleted["numberRecordsProcessed"] == 1
    assert _lead(emu, created[2])["IsDeleted"] is True

    events = await cdc_events(emu, "/data/LeadChangeEvent", 7)
    headers = [e["ChangeEventHeader"] for e in events]
    assert [(h["changeType"], h["recordIds"]) for h in headers] == [
        ("CREATE", [created[0]]), ("CREATE", [created[1]]), ("CREATE", [created[2]]),
        ("UPDATE", [created[1]]), ("CREATE", [fresh]),
        ("UPDATE", created[:2]),  # one merged event: same change, same transaction
        ("DELETE", [created[2]])]
    assert {h["changeOrigin"] for h in headers} == {BULK_ORIGIN}
    keys = [h["transactionKey"] for h in headers]
    assert len(set(keys[:3])) == 1 and keys[3] == keys[4]
    assert len({keys[0], keys[3], keys[5], keys[6]}) == 4
    assert events[0]["Email"] == "bulk0@example.com"
    assert events[3]["Title"] == "CTO" and "Title" in headers[3]["changedFields"]
    assert {h["commitUser"] for h in headers} == {emu.state.integration_user_id}


async def test_job_lifecycle_and_reply_shapes(emu: SalesforceEmulator,
                                              http: aiohttp.ClientSession) -> None:
    async with http.post(JOBS, json={"object": "Contact", "operation": "insert",
                                     "lineEnding": "LF"}) as r:
        assert r.status == 200
        job = await r.json()
    assert job["state"] == "Open" and job["id"].startswith("750")
    assert job["object"] == "Contact" and job["apiVersion"] == 66.0
    assert job["contentUrl"] == f"services/data/v66.0/jobs/ingest/{job['id']}/batches"
    assert job["columnDelimiter"] == "COMMA" and job["contentType"] == "CSV"
    assert "jobType" not in job and "externalIdFieldName" not in job
    url = f"{JOBS}/{job['id']}"
    async with http.get(url + "/successfulResults") as r:
        assert r.status == 409 and (await r.json())[0]["errorCode"] == "INVALIDJOBSTATE"
    body = "LastName,Email,Birthdate\nTuring,alan@example.com,1912-06-23\n"
    async with http.put("/" + job["contentUrl"], data=body,
                        headers={"Content-Type": "text/csv"}) as r:
        assert r.status == 201 and await r.read() == b""
    async with http.put(url + "/batches", data=body,
                        headers={"Content-Type": "text/csv"}) as r:
        assert r.status == 400
        assert "Found multiple contents for job" in (await r.json())[0]["message"]
    async with http.patch(url, json={"state": "UploadComplete"}) as r:
        closed = await r.json()
    assert closed["state"] == "UploadComplete" and "contentUrl" not in closed
    await emu.ingest.wait_idle()
    async with http.get(url) as r:
        info = await r.json()
    assert info["state"] == "JobComplete" and info["jobType"] == "V2Ingest"
    assert info["numberRecordsProcessed"] == 1 and info["numberRecordsFailed"] == 0
    assert {"retries", "totalProcessingTime", "apiActiveProcessingTime",
            "apexProcessingTime"} <= set(info)
    async with http.get(url + "/successfulResults/") as r:
        assert r.content_type == "text/csv"
        (row,) = _rows(await r.text())
    assert row["sf__Created"] == "true" and row["Birthdate"] == "1912-06-23"
    contact = emu.state.record("Contact", row["sf__Id"])
    assert contact is not None and contact["Birthdate"] == "1912-06-23"
    for path in ("/failedResults", "/unprocessedrecords"):
        async with http.get(url + path) as r:
            assert r.status == 200 and len((await r.text()).splitlines()) == 1
    async with http.get(JOBS) as r:
        listed = await r.json()
    assert listed["done"] is True and [j["id"] for j in listed["records"]] == [job["id"]]
    async with http.get(JOBS, params={"jobType": "Classic"}) as r:
        assert (await r.json())["records"] == []
    async with http.patch(url, json={"state": "Aborted"}) as r:
        assert r.status == 409
    async with http.delete(url) as r:
        assert r.status == 204
    async with http.get(url) as r:
        assert r.status == 404 and (await r.json())[0]["errorCode"] == "NOT_FOUND"
    assert emu.counters()["bulk_ingest_jobs_created"] == 1
    async with http.get("/services/data/v66.0/limits") as r:
        assert (await r.json())["DailyBulkApiBatches"]["Remaining"] == 14_999


async def _job(http: aiohttp.ClientSession, body: dict[str, Any], data: str | None,
               *, close: bool = True) -> str:
    async with http.post(JOBS, json=body) as r:
        assert r.status == 200, await r.text()
        job_id: str = (await r.json())["id"]
    if data is not None:
        async with http.put(f"{JOBS}/{job_id}/batches", data=data.encode(),
                            headers={"Content-Type": "text/csv"}) as r:
            assert r.status == 201
    if close:
        async with http.patch(f"{JOBS}/{job_id}", json={"state": "UploadComplete"}) as r:
            assert r.status == 200
    return job_id


async def _info(emu: SalesforceEmulator, http: aiohttp.ClientSession,
                job_id: str) -> dict[str, Any]:
    await emu.ingest.wait_idle()
    async with http.get(f"{JOBS}/{job_id}") as r:
        info: dict[str, Any] = await r.json()
        return info


async def test_bad_job_data_fails_the_job_and_keeps_the_records_unprocessed(
        emu: SalesforceEmulator, http: aiohttp.ClientSession) -> None:
    bogus = "LastName,Company,Bogus__c\nA,B,C\n"
    job = await _job(http, {"object": "Lead", "operation": "insert"}, bogus)
    info = await _info(emu, http, job)
    assert info["state"] == "Failed"
    assert info["errorMessage"] == "InvalidBatch : Field name not found : Bogus__c"
    async with http.get(f"{JOBS}/{job}/unprocessedrecords") as r:
        assert await r.text() == bogus
    crlf = await _job(http, {"object": "Lead", "operation": "insert"},
                      "LastName,Company\r\nA,B\r\n")
    info = await _info(emu, http, crlf)
    assert info["state"] == "Failed" and "LineEnding is invalid" in info["errorMessage"]
    empty = await _job(http, {"object": "Lead", "operation": "insert"}, None)
    assert (await _info(emu, http, empty))["state"] == "Failed"
    delete = await _job(http, {"object": "Lead", "operation": "delete"},
                        "Id,LastName\n00Q8W0000000001UAA,X\n")
    assert (await _info(emu, http, delete))["state"] == "Failed"
    assert emu.state.record("Lead", "00Q8W0000000001UAA")["IsDeleted"] is False  # type: ignore[index]


async def test_create_job_errors(emu: SalesforceEmulator, http: aiohttp.ClientSession) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"object": "Lead", "operation": "merge"}, "Invalid operation"),
        ({"object": "Nope", "operation": "insert"}, "Invalid object"),
        ({"object": "Lead", "operation": "upsert"}, "External ID field"),
        ({"object": "Lead", "operation": "upsert", "externalIdFieldName": "Email"},
         "External ID field"),
        ({"object": "Lead", "operation": "insert", "columnDelimiter": "COLON"},
         "columnDelimiter"),
        ({"object": "Lead", "operation": "hardDelete"}, "Hard Delete"),
    ]
    for body, needle in cases:
        async with http.post(JOBS, json=body) as r:
            assert r.status == 400, body
            (err,) = await r.json()
        assert err["errorCode"] == "INVALIDJOB" and needle in err["message"], body
    async with aiohttp.ClientSession(base_url=emu.instance_url) as anonymous, \
            anonymous.post(JOBS, json={"object": "Lead", "operation": "insert"}) as r:
        assert r.status == 401 and (await r.json())[0]["errorCode"] == "INVALID_SESSION_ID"


async def test_values_nulls_delimiters_and_client_origin(emu: SalesforceEmulator,
                                                         http: aiohttp.ClientSession) -> None:
    lead = emu.state.tables["Lead"].ids[0]
    before = emu.state.record("Lead", lead)
    assert before is not None and before["Title"] is not None
    data = (f'Id|Title|Phone|NumberOfEmployees|Lead_Score__c|Marketing_Opt_In__c\n'
            f'{lead}|#N/A||250|7.5|true\n'
            f'{lead[:15]}|"Head | of ""Ops"""||x||\n')
    http.headers["Sforce-Call-Options"] = "client=loader"
    job = await _job(http, {"object": "Lead", "operation": "update", "columnDelimiter": "PIPE"},
                     data)
    info = await _info(emu, http, job)
    assert info["numberRecordsProcessed"] == 2 and info["numberRecordsFailed"] == 1
    after = emu.state.record("Lead", lead)
    assert after is not None
    assert after["Title"] is None and after["Phone"] == before["Phone"]  # empty = unchanged
    assert after["NumberOfEmployees"] == 250 and after["Lead_Score__c"] == 7.5
    async with http.get(f"{JOBS}/{job}/failedResults") as r:
        text = await r.text()
    (bad,) = list(csv.DictReader(io.StringIO(text), delimiter="|"))
    assert bad["sf__Error"].startswith("INVALID_TYPE_ON_FIELD_IN_RECORD:")
    assert bad["Title"] == 'Head | of "Ops"'
    event = emu.state.event_log[-1]["ChangeEventHeader"]
    assert event["changeOrigin"] == BULK_ORIGIN + ";client=loader"
    assert event["nulledFields"] == ["Title"]


async def test_a_large_job_commits_200_records_per_transaction(
        emu: SalesforceEmulator, http: aiohttp.ClientSession) -> None:
    data = "LastName,Email\n" + "".join(f"C{i},c{i}@example.com\n" for i in range(450))
    start = len(emu.state.event_log)
    job = await _job(http, {"object": "Contact", "operation": "insert"}, data)
    assert (await _info(emu, http, job))["numberRecordsProcessed"] == 450
    events = list(emu.state.event_log)[start:]
    assert len(events) == 450
    keys = [e["ChangeEventHeader"]["transactionKey"] for e in events]
    assert [keys.count(k) for k in dict.fromkeys(keys)] == [200, 200, 50]
    assert [e["ChangeEventHeader"]["sequenceNumber"] for e in events[:3]] == [1, 2, 3]


async def test_abort_leaves_the_rest_unprocessed() -> None:
    state = OrgState()
    seed(state, leads=0)
    api = BulkIngestApi(state)
    rows = "".join(f"L{i},Co\n" for i in range(450))

    def job(name: str) -> IngestJob:
        j = IngestJob(name, "insert", "Lead", None, state.integration_user_id, "", "66.0",
                      "COMMA", "LF", BULK_ORIGIN, state="UploadComplete",
                      data=("LastName,Company\n" + rows).encode())
        api.jobs[j.id] = j
        return j

    early = job("7508W0000000001QAA")
    early.task = asyncio.create_task(api._process(early))
    early.state = "Aborted"  # before processing began
    await early.task
    assert early.processed == 0 and len(early.unprocessed) == 450
    late = job("7508W0000000002QAA")
    late.task = asyncio.create_task(api._process(late))
    while late.processed < 200:
        await asyncio.sleep(0)
    late.state = "Aborted"
    await late.task
    assert (late.processed, len(late.unprocessed), late.state) == (200, 250, "Aborted")
    assert len(state.tables["Lead"].ids) == 200
