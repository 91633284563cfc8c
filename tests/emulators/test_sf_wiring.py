"""The whole emulator wired together: REST writes reach CometD subscribers; sessions gate both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig
from streamsync.emulators.salesforce.oauth import Sessions

V = "/services/data/v66.0"


@pytest.fixture
async def emu() -> AsyncIterator[SalesforceEmulator]:
    e = SalesforceEmulator(SalesforceEmulatorConfig(seed_leads=20, long_poll_s=0.5))
    await e.start()
    yield e
    await e.stop()


async def _bayeux(s: aiohttp.ClientSession, token: str, msgs: list[dict[str, Any]]
                  ) -> list[dict[str, Any]]:
    async with s.post("/cometd/66.0", json=msgs,
                      headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200
        out: list[dict[str, Any]] = await r.json()
        return out


async def test_rest_patch_reaches_cometd_subscriber(emu: SalesforceEmulator) -> None:
    token = emu.issue_token()
    lead_id = emu.state.tables["Lead"].ids[0]
    async with aiohttp.ClientSession(base_url=emu.instance_url) as s:
        hs = await _bayeux(s, token, [{"channel": "/meta/handshake", "version": "1.0",
                                       "supportedConnectionTypes": ["long-polling"], "id": "1"}])
        client_id = hs[0]["clientId"]
        sub = await _bayeux(s, token, [
            {"channel": "/meta/connect", "clientId": client_id,
             "connectionType": "long-polling", "id": "2", "advice": {"timeout": 0}},
            {"channel": "/meta/subscribe", "clientId": client_id, "id": "3",
             "subscription": "/data/LeadChangeEvent",
             "ext": {"replay": {"/data/LeadChangeEvent": -1}}}])
        assert any(m.get("channel") == "/meta/subscribe" and m["successful"] for m in sub)
        async with s.patch(f"{V}/sobjects/Lead/{lead_id}", json={"Title": "CTO"}, headers={
                "Authorization": f"Bearer {token}", "Sforce-Call-Options": "client=sync"}) as r:
            assert r.status == 204
        got = await _bayeux(s, token, [{"channel": "/meta/connect", "clientId": client_id,
                                        "connectionType": "long-polling", "id": "4"}])
        data = [m for m in got if m.get("channel") == "/data/LeadChangeEvent"]
        assert len(data) == 1
        payload = data[0]["data"]["payload"]
        assert payload["Title"] == "CTO"
        header = payload["ChangeEventHeader"]
        assert header["recordIds"] == [lead_id] and header["changeType"] == "UPDATE"
        assert header["changeOrigin"] == "com/salesforce/api/rest/66.0;client=sync"
        assert data[0]["data"]["event"]["replayId"] == emu.bus.latest_replay_id
        emu.sessions.revoke_all()
        got = await _bayeux(s, token, [{"channel": "/meta/connect", "clientId": client_id,
                                        "connectionType": "long-polling", "id": "5"}])
        assert got[0]["error"] == "401::Authentication invalid"


def test_session_lifetime_is_inactivity_based() -> None:
    now = [1000.0]
    sessions = Sessions("00D8W0000000001UAA", lifetime_s=60, clock=lambda: now[0])
    s = sessions.issue("0058W0000000001QAA", "ck")
    now[0] += 59
    assert sessions.check(s.token) == "ok"
    now[0] += 59
    assert sessions.check(s.token) == "ok"
    now[0] += 61
    assert sessions.check(s.token) == "expired"
    assert sessions.check("unknown") == "invalid"


async def test_control_api_forgets_and_disconnects_cometd_clients(emu: SalesforceEmulator
                                                                  ) -> None:
    token = emu.issue_token()
    async with aiohttp.ClientSession(base_url=emu.instance_url) as s:
        async def handshake() -> str:
            hs = await _bayeux(s, token, [{"channel": "/meta/handshake", "version": "1.0",
                                           "supportedConnectionTypes": ["long-polling"],
                                           "id": "1"}])
            return str(hs[0]["clientId"])

        client_id = await handshake()
        async with s.post("/__emulator__/cometd/forget") as r:
            assert (await r.json())["forgotten"] == 1
        got = await _bayeux(s, token, [{"channel": "/meta/connect", "clientId": client_id,
                                        "connectionType": "long-polling", "id": "2"}])
        assert got[0]["error"] == "403::Unknown client"
        assert got[0]["advice"]["reconnect"] == "handshake"
        client_id = await handshake()
        async with s.post("/__emulator__/cometd/disconnect") as r:
            assert (await r.json())["disconnected"] == 1
        got = await _bayeux(s, token, [{"channel": "/meta/connect", "clientId": client_id,
                                        "connectionType": "long-polling", "id": "3"}])
        assert any(m.get("channel") == "/meta/disconnect" for m in got)


async def test_burst_through_control_api_is_paced(emu: SalesforceEmulator) -> None:
    before = emu.bus.latest_replay_id
    async with aiohttp.ClientSession(base_url=emu.instance_url) as s:
        async with s.post("/__emulator__/burst", json={"sobject": "Lead", "count": 40,
                                                       "rate_per_s": 400}) as r:
            assert r.status == 202
        async with s.post("/__emulator__/burst", json={"sobject": "Lead", "count": 1}) as r:
            assert r.status == 400  # one burst at a time
        await emu.wait_burst()
        async with s.get("/__emulator__/burst") as r:
            status = await r.json()
    assert status["running"] is False and status["done"] == 40
    assert status["elapsed_s"] >= 0.09  # 40 changes at 400/s cannot finish sooner
    assert emu.bus.latest_replay_id == before + 40
