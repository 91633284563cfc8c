"""Salesforce emulator over real HTTP: OAuth, query paging, sObjects, limits, faults."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig

V = "/services/data/v66.0"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def emu(rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[SalesforceEmulator]:
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    e = SalesforceEmulator(SalesforceEmulatorConfig(
        seed_accounts=30, seed_contacts=120, seed_leads=4500, jwt_public_key_pem=pem))
    await e.start()
    yield e
    await e.stop()


async def _token(emu: SalesforceEmulator, data: dict[str, str],
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.post(emu.token_url, data=data,
                                                    headers=headers or {}) as r:
        assert r.content_type == "application/json"
        return r.status, await r.json()


async def test_oauth_grants(emu: SalesforceEmulator, rsa_key: rsa.RSAPrivateKey) -> None:
    status, body = await _token(emu, {"grant_type": "password", "client_id": emu.client_id,
                                      "client_secret": emu.client_secret,
                                      "username": emu.username, "password": emu.password})
    assert status == 200 and "expires_in" not in body
    assert set(body) >= {"access_token", "instance_url", "id", "token_type", "issued_at",
                         "signature"}
    assert body["instance_url"] == emu.instance_url and body["token_type"] == "Bearer"
    status, body = await _token(emu, {"grant_type": "password", "client_id": emu.client_id,
                                      "client_secret": emu.client_secret,
                                      "username": emu.username, "password": "wrong"})
    assert (status, body) == (400, {"error": "invalid_grant",
                                    "error_description": "authentication failure"})
    basic = base64.b64encode(f"{emu.client_id}:{emu.client_secret}".encode()).decode()
    status, body = await _token(emu, {"grant_type": "client_credentials"},
                                {"Authorization": f"Basic {basic}"})
    assert status == 200 and body["api_instance_url"] == emu.instance_url
    status, body = await _token(emu, {"grant_type": "client_credentials",
                                      "client_id": emu.client_id, "client_secret": "x"})
    assert status == 400 and body["error"] == "invalid_client"
    status, body = await _token(emu, {"grant_type": "refresh_token", "client_id": emu.client_id,
                                      "refresh_token": emu.config.refresh_token})
    assert status == 200
    status, body = await _token(emu, {"grant_type": "refresh_token", "client_id": emu.client_id,
                                      "refresh_token": "stale"})
    assert body == {"error": "invalid_grant", "error_description": "expired access/refresh token"}
    status, body = await _token(emu, {"grant_type": "authorization_code"})
    assert body == {"error": "unsupported_grant_type",
                    "error_description": "grant type not supported"}

    def assertion(**over: Any) -> str:
        claims = {"iss": emu.client_id, "sub": emu.username,
                  "aud": "https://login.salesforce.com", "exp": int(time.time()) + 180, **over}
        return jwt.encode(claims, rsa_key, algorithm="RS256")
    grant = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    status, body = await _token(emu, {"grant_type": grant, "assertion": assertion()})
    assert status == 200 and "refresh_token" not in body
    checks: list[tuple[dict[str, Any], str]] = [
        ({"aud": "https://evil.example"}, "audience is invalid"),
        ({"exp": int(time.time()) - 10}, "expired assertion"),
        ({"sub": "someone@else"}, "user hasn't approved this consumer")]
    for over, description in checks:
        status, body = await _token(emu, {"grant_type": grant, "assertion": assertion(**over)})
        assert (status, body["error_description"]) == (400, description)
    status, body = await _token(emu, {"grant_type": grant, "assertion": assertion(iss="x")})
    assert body["error"] == "invalid_client_id"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode({"iss": emu.client_id, "sub": emu.username,
                         "aud": "https://login.salesforce.com", "exp": int(time.time()) + 60},
                        other, algorithm="RS256")
    status, body = await _token(emu, {"grant_type": grant, "assertion": forged})
    assert body == {"error": "invalid_grant", "error_description": "invalid assertion"}


async def test_expired_and_revoked_sessions(emu: SalesforceEmulator,
                                            http: aiohttp.ClientSession) -> None:
    async with http.get(f"{V}/limits") as r:
        assert r.status == 200
    emu.sessions.expire_all()
    expected = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    async with http.get(f"{V}/limits") as r:
        assert r.status == 401 and await r.json() == expected
    token = emu.issue_token()
    async with aiohttp.ClientSession() as s:
        async with s.post(emu.instance_url + "/services/oauth2/revoke",
                          data={"token": token}) as r:
            assert r.status == 200
        async with s.get(emu.instance_url + f"{V}/limits",
                         headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 401
        token = emu.issue_token()
        async with s.post(emu.instance_url + "/__emulator__/sessions/revoke") as r:
            assert (await r.json())["revoked"] >= 1
        async with s.get(emu.instance_url + f"{V}/limits",
                         headers={"Authorization": f"OAuth {token}"}) as r:
            assert r.status == 401 and await r.json() == expected


async def test_query_paging_batch_size_and_locator(emu: SalesforceEmulator,
                                                   http: aiohttp.ClientSession) -> None:
    q = "SELECT Id, Name, Owner.Email FROM Lead ORDER BY Id"
    async with http.get(f"{V}/query/", params={"q": q}) as r:
        page = await r.json()
        assert r.headers["Sforce-Limit-Info"].startswith("api-usage=")
    assert page["totalSize"] == 4500 and page["done"] is False
    assert len(page["records"]) == 2000
    nxt = page["nextRecordsUrl"]
    assert nxt.startswith(f"{V}/query/01g") and nxt.endswith("-2000")
    seen = [rec["Id"] for rec in page["records"]]
    while not page["done"]:
        async with http.get(page["nextRecordsUrl"]) as r:
            page = await r.json()
        assert page["totalSize"] == 4500
        seen += [rec["Id"] for rec in page["records"]]
    assert seen == emu.state.tables["Lead"].ids and "nextRecordsUrl" not in page
    async with http.get(f"{V}/query", params={"q": q},
                        headers={"Sforce-Query-Options": "batchSize=500"}) as r:
        page = await r.json()
    assert len(page["records"]) == 500 and page["nextRecordsUrl"].endswith("-500")
    async with http.get(f"{V}/query", params={"q": q},
                        headers={"Sforce-Query-Options": "batchSize=10"}) as r:
        assert len((await r.json())["records"]) == 200
    async with http.get(f"{V}/query/01g000000000000AAA-2000") as r:
        assert r.status == 400
        assert (await r.json())[0]["errorCode"] == "INVALID_QUERY_LOCATOR"
    kinds = emu.counters()["api"]["by_kind"]
    assert kinds["query"] == 3 and kinds["queryMore"] == 3


async def test_query_errors_count_and_uri_limit(emu: SalesforceEmulator,
                                                http: aiohttp.ClientSession) -> None:
    async with http.get(f"{V}/query", params={"q": "SELECT Id FROM Lead WHERE"}) as r:
        assert r.status == 400
        body = await r.json()
        assert body[0]["errorCode"] == "MALFORMED_QUERY" and set(body[0]) == {"message",
                                                                            "errorCode"}
    async with http.get(f"{V}/query", params={"q": "SELECT Nope__c FROM Lead"}) as r:
        assert r.status == 400 and (await r.json())[0]["errorCode"] == "INVALID_FIELD"
    async with http.get(f"{V}/query", params={"q": "SELECT COUNT() FROM Contact"}) as r:
        assert await r.json() == {"totalSize": 120, "done": True, "records": []}
    ids = emu.state.tables["Lead"].ids
    chunk = ids[:700]
    q = "SELECT Id FROM Lead WHERE Id IN ('" + "','".join(chunk) + "')"
    async with http.get(f"{V}/query", params={"q": q}) as r:
        assert r.status == 200 and (await r.json())["totalSize"] == 700
    q = "SELECT Id FROM Lead WHERE Id IN ('" + "','".join(ids[:1000]) + "')"
    async with http.get(f"{V}/query", params={"q": q}) as r:
        assert r.status == 414
    q = "SELECT Id FROM Lead WHERE Id IN ('" + "','".join(ids[:600]) + "')"
    async with http.get(f"{V}/query", params={"q": q}, headers={"X-Big": "x" * 4000}) as r:
        assert r.status == 431


async def test_query_all_sees_deleted(emu: SalesforceEmulator,
                                      http: aiohttp.ClientSession) -> None:
    lead_id = emu.state.tables["Lead"].ids[7]
    async with http.delete(f"{V}/sobjects/Lead/{lead_id}") as r:
        assert r.status == 204
    q = f"SELECT Id, IsDeleted FROM Lead WHERE Id = '{lead_id}'"
    async with http.get(f"{V}/query", params={"q": q}) as r:
        assert (await r.json())["totalSize"] == 0
    async with http.get(f"{V}/queryAll/", params={"q": q}) as r:
        assert (await r.json())["records"][0]["IsDeleted"] is True
    async with http.get(f"{V}/sobjects/Lead/{lead_id}") as r:
        assert r.status == 404


async def test_sobject_crud_and_cdc(emu: SalesforceEmulator,
                                    http: aiohttp.ClientSession) -> None:
    before = emu.bus.latest_replay_id
    hdr = {"Sforce-Call-Options": "client=streamsync-test"}
    async with http.post(f"{V}/sobjects/Contact/", json={"LastName": "Hopper", "FirstName":
                         "Grace", "Email": "grace@example.com"}, headers=hdr) as r:
        assert r.status == 201
        created = await r.json()
    cid = created["id"]
    assert created == {"id": cid, "success": True, "errors": []} and cid.startswith("003")
    async with http.patch(f"{V}/sobjects/Contact/{cid}", json={"Title": "RADM"},
                          headers=hdr) as r:
        assert r.status == 204
    async with http.get(f"{V}/sobjects/Contact/{cid}", params={"fields": "Title,Name"}) as r:
        rec = await r.json()
    assert rec["Title"] == "RADM" and rec["Name"] == "Grace Hopper"
    async with http.post(f"{V}/sobjects/Contact", json={"Id": cid, "LastName": "x"}) as r:
        assert r.status == 400 and await r.json() == [{
            "message": "The Id field should not be specified in the sobject data.",
            "errorCode": "INVALID_FIELD"}]
    async with http.patch(f"{V}/sobjects/Contact/003000000000000AAA", json={"Title": "x"}) as r:
        assert r.status == 404 and (await r.json())[0]["errorCode"] == "NOT_FOUND"
    async with http.delete(f"{V}/sobjects/Contact/{cid}/") as r:
        assert r.status == 204
    async with http.post(f"/__emulator__/records/Contact/{cid}/undelete") as r:
        assert r.status == 204
    assert emu.bus.latest_replay_id == before + 4
    async with http.get("/__emulator__/events", params={"limit": "4"}) as r:
        events = await r.json()
    assert [e["ChangeEventHeader"]["changeType"] for e in events] == [
        "CREATE", "UPDATE", "DELETE", "UNDELETE"]
    assert events[0]["ChangeEventHeader"]["changeOrigin"] == (
        "com/salesforce/api/rest/66.0;client=streamsync-test")
    assert events[1]["ChangeEventHeader"]["changedFields"] == ["Title", "LastModifiedDate"]


async def test_collections(emu: SalesforceEmulator, http: aiohttp.ClientSession) -> None:
    acc = emu.state.tables["Account"].ids[0]
    records = [{"attributes": {"type": "Contact"}, "LastName": "A", "AccountId": acc},
               {"attributes": {"type": "Lead"}, "LastName": "B", "Company": "C"},
               {"attributes": {"type": "Lead"}, "LastName": "D"}]
    async with http.post(f"{V}/composite/sobjects/", json={"allOrNone": False,
                                                          "records": records}) as r:
        assert r.status == 200
        res = await r.json()
    assert [x["success"] for x in res] == [True, True, False]
    assert res[2]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    n_leads = len(emu.state.tables["Lead"].ids)
    async with http.post(f"{V}/composite/sobjects", json={"allOrNone": True,
                                                         "records": records}) as r:
        res = await r.json()
    assert res[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert len(emu.state.tables["Lead"].ids) == n_leads
    ids = emu.state.tables["Lead"].ids[:3]
    before = emu.bus.latest_replay_id
    upd = [{"attributes": {"type": "Lead"}, "id": i, "Rating": "Hot"} for i in ids]
    async with http.patch(f"{V}/composite/sobjects", json={"records": upd}) as r:
        assert all(x["success"] for x in await r.json())
    assert emu.bus.latest_replay_id == before + 1  # identical changes merged into one event
    assert emu.state.event_log[-1]["ChangeEventHeader"]["recordIds"] == ids
    async with http.delete(f"{V}/composite/sobjects", params={"ids": ",".join(ids)}) as r:
        assert [x["id"] for x in await r.json()] == ids
    big = [{"attributes": {"type": "Lead"}, "LastName": "x", "Company": "y"}] * 201
    async with http.post(f"{V}/composite/sobjects", json={"records": big}) as r:
        assert r.status == 400 and (await r.json())[0]["errorCode"] == "EXCEEDED_ID_LIMIT"


async def test_describe_limits_and_allocation(emu: SalesforceEmulator,
                                              http: aiohttp.ClientSession) -> None:
    async with http.get(f"{V}/sobjects/Lead/describe/") as r:
        d = await r.json()
    fields = {f["name"]: f for f in d["fields"]}
    assert d["keyPrefix"] == "00Q" and fields["OwnerId"]["referenceTo"] == ["User", "Group"]
    assert fields["Address"]["type"] == "address" and fields["Lead_Score__c"]["custom"]
    async with http.get(f"{V}/limits/") as r:
        limits = await r.json()
    for key in ("DailyApiRequests", "DailyBulkV2QueryJobs", "DailyBulkV2QueryFileStorageMB",
                "DailyDeliveredPlatformEvents", "StreamingApiConcurrentClients"):
        assert set(limits[key]) == {"Max", "Remaining"}
    emu.state.usage.daily_max = emu.state.usage.used + 1
    async with http.get(f"{V}/limits") as r:
        assert r.status == 200
    async with http.get(f"{V}/limits") as r:
        assert r.status == 403
        assert await r.json() == [{"message": "TotalRequests Limit exceeded.",
                                   "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
        used, mx = r.headers["Sforce-Limit-Info"].split("=")[1].split("/")
        assert used == mx


async def test_faults_fail_drop_hang_and_latency(emu: SalesforceEmulator,
                                                 http: aiohttp.ClientSession) -> None:
    q = {"q": "SELECT Id FROM Account LIMIT 1"}
    async with http.post("/__emulator__/faults", json={
            "action": "fail", "path": f"{V}/query", "count": 2, "status": 503,
            "body": [{"errorCode": "SERVER_UNAVAILABLE", "message": "down"}]}) as r:
        assert r.status == 201
    for _ in range(2):
        async with http.get(f"{V}/query", params=q) as r:
            assert r.status == 503 and (await r.json())[0]["errorCode"] == "SERVER_UNAVAILABLE"
    async with http.get(f"{V}/query", params=q) as r:
        assert r.status == 200
    emu.faults.drop_next(f"{V}/query", 2)  # aiohttp retries once on a dropped keep-alive
    with pytest.raises(aiohttp.ClientError):
        async with http.get(f"{V}/query", params=q) as r:
            await r.read()
    emu.faults.hang_next(f"{V}/query")
    with pytest.raises(asyncio.TimeoutError):
        async with http.get(f"{V}/query", params=q,
                            timeout=aiohttp.ClientTimeout(total=0.3)) as r:
            await r.read()
    async with http.post("/__emulator__/latency", json={"latency_ms": 50,
                                                        "per_record_ms": 0.05}) as r:
        assert r.status == 200
    t0 = time.monotonic()
    async with http.get(f"{V}/query", params={"q": "SELECT Id FROM Lead LIMIT 2000"}) as r:
        assert r.status == 200
    assert time.monotonic() - t0 >= 0.15  # 50 ms + 2000 x 0.05 ms
    emu.faults.clear()


async def test_control_api_mass_update_burst_gap(emu: SalesforceEmulator,
                                                 http: aiohttp.ClientSession) -> None:
    before = emu.bus.latest_replay_id
    async with http.post("/__emulator__/mass-update", json={
            "sobject": "Lead", "where": "Status = 'Working - Contacted'",
            "values": {"Rating": "Warm"}, "limit": 50}) as r:
        assert (await r.json())["updated"] == 50
    assert emu.bus.latest_replay_id == before + 1
    assert len(emu.state.event_log[-1]["ChangeEventHeader"]["recordIds"]) == 50
    lead = emu.state.tables["Lead"].ids[11]
    async with http.post("/__emulator__/convert-lead", json={"leadId": lead}) as r:
        out = await r.json()
    assert out["contactId"].startswith("003") and out["accountId"].startswith("001")
    result = await emu.burst("Contact", 30, 3000.0, per_transaction=10)
    assert result["done"] == 30
    async with http.post("/__emulator__/bus/gap", json={
            "entity": "Lead", "changeType": "GAP_OVERFLOW", "recordIds": []}) as r:
        assert r.status == 201
    async with http.get("/__emulator__/state") as r:
        state = await r.json()
    assert state["counts"]["Lead"]["total"] == 4500
    assert state["latest_replay_id"] == emu.bus.latest_replay_id
    async with http.post("/__emulator__/bus/purge") as r:
        assert r.status == 200
    async with http.post("/__emulator__/cometd/forget") as r:
        assert (await r.json())["forgotten"] == 0


async def test_a_second_burst_over_the_same_records_changes_each_of_them_again(
        emu: SalesforceEmulator) -> None:
    """Each burst sets values of its own: one changing records an earlier burst set (the
    events bench runs two over the same Leads) yields a CDC change for every record."""
    before = len(emu.state.event_log)
    await emu.burst("Lead", 20, 1e6, per_transaction=10, field="Title")
    await emu.burst("Lead", 20, 1e6, per_transaction=10, field="Title")
    changed = [rid for body in list(emu.state.event_log)[before:]
               if "Title" in body["ChangeEventHeader"]["changedFields"]
               for rid in body["ChangeEventHeader"]["recordIds"]]
    assert len(changed) == 40 and len(set(changed)) == 20


async def test_concurrent_long_running_requests_are_limited() -> None:
    emu = SalesforceEmulator(SalesforceEmulatorConfig(seed_leads=5, long_running_s=0.0,
                                                      max_long_running=2))
    await emu.start()
    try:
        emu.faults.hang_next(f"{V}/limits", 2)
        async with aiohttp.ClientSession(base_url=emu.instance_url, headers={
                "Authorization": f"Bearer {emu.issue_token()}"}) as s:
            async def hung() -> None:
                async with s.get(f"{V}/limits") as r:
                    await r.read()
            tasks = [asyncio.create_task(hung()) for _ in range(2)]
            for _ in range(500):
                if emu.inflight() == 2:
                    break
                await asyncio.sleep(0.01)
            async with s.get(f"{V}/query", params={"q": "SELECT Id FROM Lead"}) as r:
                assert r.status == 403
                assert await r.json() == [{"message": "ConcurrentPerOrgLongTxn Limit exceeded.",
                                           "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await emu.stop()
