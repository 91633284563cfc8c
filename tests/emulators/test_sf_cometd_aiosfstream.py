"""The third-party client aiosfstream-ng (on aiocometd-ng) works unchanged against the emulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiosfstream_ng.auth import PasswordAuthenticator
from aiosfstream_ng.client import Client, ReplayMarkerStoragePolicy
from aiosfstream_ng.replay import ReplayMarker, ReplayOption

from tests.emulators.test_sf_cometd_wire import Harness, start_harness, stop_harness, until

LEADS = "/data/LeadChangeEvent"


class LocalPasswordAuthenticator(PasswordAuthenticator):
    """The library's password authenticator, pointed at the emulator's token endpoint."""

    def __init__(self, token_url: str, **kw: Any) -> None:
        super().__init__(**kw)
        self._local_token_url = token_url

    @property
    def _token_url(self) -> str:
        return self._local_token_url


def make_client(h: Harness, replay: Any, **kw: Any) -> Client:
    auth = LocalPasswordAuthenticator(f"{h.base_url}/services/oauth2/token",
                                      consumer_key="ck", consumer_secret="cs",
                                      username="u@example.com", password="pw")
    return Client(auth, replay=replay, connection_timeout=0, **kw)


async def receive(client: Client, count: int) -> list[dict[str, Any]]:
    return [await asyncio.wait_for(client.receive(), 5.0) for _ in range(count)]


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness, runner = await start_harness(long_poll_s=2.0)
    yield harness
    await stop_harness(harness, runner)


async def test_subscribe_and_receive_an_event(h: Harness) -> None:
    client = make_client(h, ReplayOption.NEW_EVENTS)
    await client.open()
    try:
        await client.subscribe(LEADS)
        assert client.subscriptions == {LEADS}
        await until(lambda: h.server.stats()["polling"] == 1)
        rid = h.publish(Email="lead@example.com")
        (message,) = await receive(client, 1)
    finally:
        await client.close()
    assert message["channel"] == LEADS
    assert message["data"]["event"]["replayId"] == rid
    assert message["data"]["payload"]["Email"] == "lead@example.com"
    assert message["data"]["payload"]["ChangeEventHeader"]["entityName"] == "Lead"
    assert h.tokens.issued == 1


async def test_resume_from_a_stored_replay_id(h: Harness) -> None:
    ids = [h.publish(Email=f"l{i}@example.com") for i in range(5)]
    store = {LEADS: ReplayMarker(date="1700000000001", replay_id=ids[1])}
    client = make_client(h, store, replay_storage_policy=ReplayMarkerStoragePolicy.MANUAL)
    await client.open()
    try:
        await client.subscribe(LEADS)
        messages = await receive(client, 3)
        for message in messages:
            async with client.replay_storage(message):
                pass
    finally:
        await client.close()
    assert [m["data"]["event"]["replayId"] for m in messages] == ids[2:]
    assert store[LEADS].replay_id == ids[-1]


async def test_fallback_on_an_expired_replay_id(h: Harness) -> None:
    for _ in range(3):
        h.publish()
    stale = h.bus.latest_replay_id
    h.bus.purge()
    retained = [h.publish(Email=f"r{i}@example.com") for i in range(2)]
    store = {LEADS: ReplayMarker(date="1700000000000", replay_id=stale)}
    client = make_client(h, store, replay_fallback=ReplayOption.ALL_EVENTS)
    await client.open()
    try:
        await client.subscribe(LEADS)
        messages = await receive(client, 2)
    finally:
        await client.close()
    assert [m["data"]["event"]["replayId"] for m in messages] == retained
    assert store[LEADS].replay_id == retained[-1]


async def test_without_fallback_the_expired_replay_id_is_raised(h: Harness) -> None:
    h.publish()
    stale = h.bus.latest_replay_id
    h.bus.purge()
    store = {LEADS: ReplayMarker(date="1700000000000", replay_id=stale)}
    client = make_client(h, store)
    await client.open()
    try:
        with pytest.raises(Exception, match="you provided was invalid"):
            await client.subscribe(LEADS)
    finally:
        await client.close()


async def test_recovers_after_unknown_client_by_rehandshaking(h: Harness) -> None:
    store: dict[str, ReplayMarker] = {}
    client = make_client(h, store)
    await client.open()
    try:
        await client.subscribe(LEADS)
        await until(lambda: h.server.stats()["polling"] == 1)
        first = h.publish(Email="before@example.com")
        await receive(client, 1)
        await until(lambda: h.server.stats()["polling"] == 1)
        assert h.server.forget_all_clients() == 1
        await until(lambda: h.server.stats()["polling"] == 1)
        second = h.publish(Email="after@example.com")
        (message,) = await receive(client, 1)
    finally:
        await client.close()
    assert message["data"]["event"]["replayId"] == second > first
    assert h.server.stats()["handshakes"] == 2
    assert h.tokens.issued == 2


async def test_a_rest_patch_arrives_as_an_update_event_through_the_full_emulator() -> None:
    from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig

    emu = SalesforceEmulator(SalesforceEmulatorConfig(seed_leads=3, long_poll_s=2.0))
    await emu.start(host="127.0.0.1", port=0)
    try:
        auth = LocalPasswordAuthenticator(emu.token_url, consumer_key=emu.client_id,
                                          consumer_secret=emu.client_secret,
                                          username=emu.username, password=emu.password)
        client = Client(auth, replay=ReplayOption.NEW_EVENTS, connection_timeout=0)
        await client.open()
        try:
            await client.subscribe(LEADS)
            await until(lambda: emu.cometd.stats()["polling"] == 1)
            lead_id = emu.select_ids("Lead", limit=1)[0]
            async with aiohttp.ClientSession() as http:
                async with http.patch(
                        f"{emu.instance_url}/services/data/v66.0/sobjects/Lead/{lead_id}",
                        json={"Title": "Chief Emulation Officer"},
                        headers={"Authorization": f"Bearer {emu.issue_token()}"}) as resp:
                    assert resp.status == 204
            (message,) = await receive(client, 1)
        finally:
            await client.close()
    finally:
        await emu.stop()
    assert message["channel"] == LEADS
    payload = message["data"]["payload"]
    header = payload["ChangeEventHeader"]
    assert header["changeType"] == "UPDATE" and header["entityName"] == "Lead"
    assert header["recordIds"] == [lead_id]
    assert "Title" in header["changedFields"]
    assert payload["Title"] == "Chief Emulation Officer"
    assert message["data"]["event"]["replayId"] == emu.bus.latest_replay_id


async def test_recovers_after_its_token_is_revoked_mid_stream(h: Harness) -> None:
    client = make_client(h, {})
    await client.open()
    try:
        await client.subscribe(LEADS)
        await until(lambda: h.server.stats()["polling"] == 1)
        for token in list(h.tokens.status):
            h.tokens.status[token] = "expired"
        h.publish(Email="wakes-the-poll@example.com")
        await receive(client, 1)
        await until(lambda: h.server.stats()["handshakes"] == 2
                    and h.server.stats()["polling"] == 1)
        after = h.publish(Email="after-reauth@example.com")
        (message,) = await receive(client, 1)
    finally:
        await client.close()
    assert message["data"]["event"]["replayId"] == after
    assert h.tokens.issued == 2


async def test_survives_a_server_pushed_disconnect(h: Harness) -> None:
    client = make_client(h, {})
    await client.open()
    try:
        await client.subscribe(LEADS)
        await until(lambda: h.server.stats()["polling"] == 1)
        assert h.server.push_disconnect() == 1
        await until(lambda: h.server.stats()["handshakes"] == 2
                    and h.server.stats()["polling"] == 1)
        rid = h.publish(Email="after-push@example.com")
        (message,) = await receive(client, 1)
    finally:
        await client.close()
    assert message["data"]["event"]["replayId"] == rid
