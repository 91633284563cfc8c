"""simple-salesforce, unchanged, against the emulator over HTTPS (self-signed certificate)."""

from __future__ import annotations

import asyncio
import csv
import io
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
import requests
from requests.adapters import HTTPAdapter
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import SalesforceExpiredSession, SalesforceMalformedRequest

from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig


class _ToEmulator(HTTPAdapter):
    """Sends https://*.salesforce.com/... (OAuth login URLs) to the emulator instead."""

    def __init__(self, target: str) -> None:
        self.target = target
        super().__init__()

    def send(self, request: requests.PreparedRequest,  # type: ignore[override]
             **kwargs: Any) -> requests.Response:
        u = urlsplit(str(request.url))
        request.url = urlunsplit(("https", self.target, u.path, u.query, u.fragment))
        return super().send(request, **kwargs)


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[SalesforceEmulator]:
    e = SalesforceEmulator(SalesforceEmulatorConfig(
        seed_accounts=20, seed_contacts=50, seed_leads=2600, tls=True, tls_dir=str(tmp_path)))
    await e.start()
    yield e
    await e.stop()


def _session(emu: SalesforceEmulator) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override `verify`
    assert emu.cert_path is not None
    s.verify = str(emu.cert_path)
    return s


async def test_tls_certificate_verifies(emu: SalesforceEmulator) -> None:
    assert emu.instance_url.startswith("https://127.0.0.1:")
    assert emu.info()["cert_path"] == str(emu.cert_path)
    ctx = ssl.create_default_context(cafile=str(emu.cert_path))
    async with aiohttp.ClientSession() as s, s.get(emu.instance_url + "/services/data/",
                                                   ssl=ctx) as r:
        assert r.status == 200
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        async with aiohttp.ClientSession() as s, s.get(emu.instance_url + "/services/data/"):
            pass


async def test_query_query_all_and_crud(emu: SalesforceEmulator) -> None:
    sf: Any = Salesforce(instance_url=emu.instance_url, session_id=emu.issue_token(),
                    session=_session(emu), version="66.0")
    first = await asyncio.to_thread(sf.query, "SELECT Id, Email, Owner.Email FROM Lead")
    assert first["totalSize"] == 2600 and not first["done"] and len(first["records"]) == 2000
    everything = await asyncio.to_thread(
        sf.query_all, "SELECT Id, Name, Account.Name FROM Contact WHERE Email != null")
    assert everything["totalSize"] == 50
    leads = await asyncio.to_thread(sf.query_all, "SELECT Id FROM Lead")
    assert [r["Id"] for r in leads["records"]] == emu.state.tables["Lead"].ids
    created = await asyncio.to_thread(sf.Contact.create, {"LastName": "Turing",
                                                          "Email": "alan@example.com"})
    assert created["success"] and created["id"].startswith("003")
    status = await asyncio.to_thread(sf.Contact.update, created["id"], {"Title": "Dr"})
    assert status == 204
    rec = await asyncio.to_thread(sf.Contact.get, created["id"])
    assert rec["Title"] == "Dr" and rec["attributes"]["type"] == "Contact"
    assert await asyncio.to_thread(sf.Contact.delete, created["id"]) == 204
    deleted = await asyncio.to_thread(
        sf.query_all, f"SELECT Id, IsDeleted FROM Contact WHERE Id = '{created['id']}'",
        include_deleted=True)
    assert deleted["records"][0]["IsDeleted"] is True
    with pytest.raises(SalesforceMalformedRequest) as exc:
        await asyncio.to_thread(sf.query, "SELECT Bogus__c FROM Lead")
    content: Any = exc.value.content
    assert content[0]["errorCode"] == "INVALID_FIELD"
    emu.sessions.expire_all()
    with pytest.raises(SalesforceExpiredSession):
        await asyncio.to_thread(sf.query, "SELECT Id FROM Lead LIMIT 1")


async def test_password_and_client_credentials_login(emu: SalesforceEmulator) -> None:
    s = _session(emu)
    s.mount("https://", _ToEmulator(urlsplit(emu.instance_url).netloc))
    sf: Any = await asyncio.to_thread(lambda: Salesforce(
        username=emu.username, password=emu.password, consumer_key=emu.client_id,
        consumer_secret=emu.client_secret, session=s, version="66.0"))
    res = await asyncio.to_thread(sf.query, "SELECT COUNT() FROM Account")
    assert res["totalSize"] == 20
    sf2: Any = await asyncio.to_thread(lambda: Salesforce(
        consumer_key=emu.client_id, consumer_secret=emu.client_secret, domain="acme.my",
        session=s, version="66.0"))
    assert (await asyncio.to_thread(sf2.query, "SELECT Id FROM User LIMIT 1"))["totalSize"] == 1
    assert emu.token_endpoint.calls == {"password": 1, "client_credentials": 1}


async def test_bulk2_query(emu: SalesforceEmulator) -> None:
    sf: Any = Salesforce(instance_url=emu.instance_url, session_id=emu.issue_token(),
                    session=_session(emu), version="66.0")
    q = "SELECT Id, Email, Owner.Email, IsConverted FROM Lead ORDER BY Id"
    pages = await asyncio.to_thread(
        lambda: list(sf.bulk2.Lead.query(q, max_records=1000, wait=0.05)))
    assert len(pages) == 3
    rows = [row for page in pages for row in csv.DictReader(io.StringIO(page))]
    assert [r["Id"] for r in rows] == emu.state.tables["Lead"].ids
    assert set(rows[0]) == {"Id", "Email", "Owner.Email", "IsConverted"}
    assert rows[0]["IsConverted"] == "false"
    no_email = [r for r in rows if r["Email"] == ""]
    lead = emu.state.tables["Lead"]
    assert len(no_email) == sum(1 for r in lead.rows.values()
                                if r[lead.obj.slot("Email")] is None)


async def test_upsert_by_external_id(emu: SalesforceEmulator) -> None:
    sf: Any = Salesforce(instance_url=emu.instance_url, session_id=emu.issue_token(),
                         session=_session(emu), version="66.0")
    created = await asyncio.to_thread(sf.Contact.upsert, "External_Id__c/X-1",
                                      {"LastName": "Knuth"}, raw_response=True)
    assert created.status_code == 201 and created.json()["created"] is True
    updated = await asyncio.to_thread(sf.Contact.upsert, "External_Id__c/X-1",
                                      {"Title": "Prof"}, raw_response=True)
    assert updated.status_code == 200 and updated.json()["id"] == created.json()["id"]
    rec = await asyncio.to_thread(sf.Contact.get_by_custom_id, "External_Id__c", "X-1")
    assert rec["Title"] == "Prof" and rec["LastName"] == "Knuth"
    assert await asyncio.to_thread(sf.Contact.delete, created.json()["id"]) == 204
