"""Bulk API 2.0 query jobs over HTTP, and the emulator's command line as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig

V = "/services/data/v66.0"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def http() -> AsyncIterator[tuple[SalesforceEmulator, aiohttp.ClientSession]]:
    emu = SalesforceEmulator(SalesforceEmulatorConfig(seed_accounts=10, seed_contacts=40,
                                                      seed_leads=250))
    await emu.start()
    async with aiohttp.ClientSession(base_url=emu.instance_url, headers={
            "Authorization": f"Bearer {emu.issue_token()}"}) as s:
        yield emu, s
    await emu.stop()


async def test_job_lifecycle_and_results(
        http: tuple[SalesforceEmulator, aiohttp.ClientSession]) -> None:
    emu, s = http
    lead_id = emu.state.tables["Lead"].ids[0]
    emu.state.update("Lead", lead_id, {"Title": 'He said "hi", twice'})
    emu.state.delete("Lead", emu.state.tables["Lead"].ids[1])
    body = {"operation": "queryAll", "query": "SELECT Id, Title, Owner.Name, IsDeleted "
            "FROM Lead ORDER BY Id", "columnDelimiter": "PIPE", "lineEnding": "CRLF"}
    async with s.post(f"{V}/jobs/query", json=body,
                      headers={"Accept": "text/csv; charset=UTF-8"}) as r:
        assert r.status == 200 and r.content_type == "application/json"
        job = await r.json()
    assert job["id"].startswith("750") and job["state"] == "UploadComplete"
    assert job["object"] == "Lead" and job["operation"] == "queryAll"
    states: list[str] = []
    while not states or states[-1] != "JobComplete":
        async with s.get(f"{V}/jobs/query/{job['id']}") as r:
            info = await r.json()
        states.append(info["state"])
    assert states == ["InProgress", "JobComplete"]
    assert info["numberRecordsProcessed"] == 250 and info["jobType"] == "V2Query"
    lines: list[str] = []
    locator = ""
    pages = 0
    while True:
        params = {"maxRecords": "100"}
        if locator:
            params["locator"] = locator
        async with s.get(f"{V}/jobs/query/{job['id']}/results", params=params) as r:
            text = await r.text()
            locator = r.headers["Sforce-Locator"]
            n = int(r.headers["Sforce-NumberOfRecords"])
        page = text.split("\r\n")
        assert page[0] == '"Id"|"Title"|"Owner.Name"|"IsDeleted"' and page[-1] == ""
        assert len(page) - 2 == n
        lines += page[1:-1]
        pages += 1
        if locator == "null":
            break
    assert pages == 3 and len(lines) == 250
    assert lines[0].startswith(f'"{lead_id}"|"He said ""hi"", twice"|')
    assert lines[1].endswith('|"true"')
    async with s.delete(f"{V}/jobs/query/{job['id']}") as r:
        assert r.status == 204
    async with s.get(f"{V}/jobs/query/{job['id']}") as r:
        assert r.status == 404
        assert (await r.json())[0]["errorCode"] == "NOT_FOUND"
    assert emu.counters()["bulk_jobs_created"] == 1


async def test_abort_and_errors(http: tuple[SalesforceEmulator, aiohttp.ClientSession]) -> None:
    emu, s = http
    async with s.post(f"{V}/jobs/query", json={"operation": "query",
                                               "query": "SELECT Id FROM Contact"}) as r:
        job = await r.json()
    async with s.get(f"{V}/jobs/query/{job['id']}/results") as r:
        assert r.status == 400
    async with s.patch(f"{V}/jobs/query/{job['id']}", json={"state": "Aborted"}) as r:
        assert (await r.json())["state"] == "Aborted"
    async with s.get(f"{V}/jobs/query/{job['id']}") as r:
        assert (await r.json())["state"] == "Aborted"
    async with s.post(f"{V}/jobs/query", json={"operation": "query",
                                               "query": "SELECT Nope FROM Contact"}) as r:
        assert r.status == 400 and (await r.json())[0]["errorCode"] == "INVALID_FIELD"
    async with s.post(f"{V}/jobs/query", json={"operation": "query",
                                               "query": "SELECT COUNT() FROM Contact"}) as r:
        assert r.status == 400
    async with s.post(f"{V}/jobs/query", json={"operation": "query",
                                               "query": "SELECT Id FROM Account"}) as r:
        job = await r.json()
    for _ in range(2):
        async with s.get(f"{V}/jobs/query/{job['id']}") as r:
            await r.read()
    async with s.get(f"/services/data/v60.0/jobs/query/{job['id']}/results") as r:
        assert r.status == 409
    async with s.get(f"{V}/jobs/query/{job['id']}/results") as r:
        assert r.headers["Sforce-Locator"] == "null"
        assert r.headers["Sforce-NumberOfRecords"] == "10"
    async with s.get(f"{V}/limits") as r:
        limits = await r.json()
    assert limits["DailyBulkV2QueryJobs"]["Remaining"] == 10_000 - 2


async def test_command_line_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamsync.emulators.salesforce", "--host", "127.0.0.1",
        "--port", "0", "--seed-leads", "10", "--client-id", "ck", "--tls",
        "--tls-dir", str(tmp_path), stdout=asyncio.subprocess.PIPE, env=env, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        info = json.loads(line)
        assert set(info) >= {"instance_url", "login_url", "token_url", "client_id",
                             "client_secret", "username", "password", "cert_path"}
        assert info["login_url"] == info["instance_url"]  # what [salesforce].login_url takes
        assert info["client_id"] == "ck" and not info["instance_url"].endswith(":0")
        ctx = ssl.create_default_context(cafile=info["cert_path"])
        async with aiohttp.ClientSession() as s:
            async with s.post(info["token_url"], ssl=ctx, data={
                    "grant_type": "password", "client_id": "ck",
                    "client_secret": info["client_secret"], "username": info["username"],
                    "password": info["password"]}) as r:
                token = (await r.json())["access_token"]
            async with s.get(info["instance_url"] + f"{V}/query", ssl=ctx,
                             params={"q": "SELECT COUNT() FROM Lead"},
                             headers={"Authorization": f"Bearer {token}"}) as r:
                assert (await r.json())["totalSize"] == 10
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
