"""CometD server over real HTTP, driven by a raw aiohttp Bayeux client (Salesforce's shapes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from streamsync.emulators.salesforce.bus import EventBus, schema_id
from streamsync.emulators.salesforce.cometd import CometdServer

INVALID_TAIL = (" you provided was invalid.  Please provide a valid ID, -2 to replay all "
                "events, or -1 to replay only new events.")


class Clock:
    """A settable clock for retention, expiry and delivery-window tests."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Tokens:
    """A token checker standing in for the emulator's sessions."""

    status: dict[str, str] = field(default_factory=lambda: {"tok": "ok"})
    issued: int = 0

    def check(self, token: str) -> str:
        return self.status.get(token, "invalid")

    def issue(self) -> str:
        self.issued += 1
        token = f"00D000000000001!tok{self.issued}"
        self.status[token] = "ok"
        return token


@dataclass
class Harness:
    """An aiohttp server with the bus, the CometD endpoint and a token endpoint."""

    bus: EventBus
    server: CometdServer
    tokens: Tokens
    clock: Clock
    bus_clock: Clock
    base_url: str
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"{self.base_url}/cometd/66.0"

    def publish(self, entity: str = "Lead", **fields: Any) -> int:
        rid = f"00Q00000000000{self.bus.latest_replay_id + 1:04d}"
        header = {"entityName": entity, "recordIds": [rid], "changeType": "UPDATE",
                  "changeOrigin": "com/salesforce/api/rest/66.0;client=t",
                  "transactionKey": "0001", "sequenceNumber": 1,
                  "commitTimestamp": 1_700_000_000_000 + self.bus.latest_replay_id,
                  "commitNumber": 1, "commitUser": "005000000000001AAA",
                  "changedFields": sorted(fields) + ["LastModifiedDate"]}
        return self.bus.publish(entity, {"ChangeEventHeader": header, **fields,
                                         "LastModifiedDate": "2026-01-01T00:00:00Z"})

    def client(self, token: str = "tok") -> Bayeux:
        return Bayeux(self.http, self.url, token)


async def start_harness(**server_kw: Any) -> tuple[Harness, web.AppRunner]:
    clock, bus_clock, tokens = Clock(), Clock(1_800_000_000.0), Tokens()
    bus_kw = {k: server_kw.pop(k) for k in ("retention_s", "retention_count") if k in server_kw}
    bus = EventBus(clock=bus_clock, **bus_kw)
    server_kw.setdefault("long_poll_s", 5.0)
    server = CometdServer(bus, tokens.check, clock=clock, **server_kw)
    app = web.Application()
    server.register(app)
    base: dict[str, str] = {}

    async def token_endpoint(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("password") != "pw":
            return web.json_response({"error": "invalid_grant",
                                      "error_description": "authentication failure"}, status=400)
        return web.json_response({
            "access_token": tokens.issue(), "instance_url": base["url"],
            "id": "https://login.salesforce.com/id/00D000000000001AAA/005000000000001AAA",
            "token_type": "Bearer", "issued_at": str(int(time.time() * 1000)),
            "signature": "c2ln"})

    app.router.add_post("/services/oauth2/token", token_endpoint)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base["url"] = f"http://127.0.0.1:{port}"
    http = aiohttp.ClientSession()
    return Harness(bus, server, tokens, clock, bus_clock, base["url"], http), runner


async def stop_harness(harness: Harness, runner: web.AppRunner) -> None:
    harness.server.forget_all_clients()
    await harness.http.close()
    await runner.cleanup()


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness, runner = await start_harness()
    yield harness
    await stop_harness(harness, runner)


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Yield to the loop until `condition()` holds (server-side state, not wall time)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.002)


class Bayeux:
    """A minimal raw Bayeux client: exact messages in, exact messages out."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str | None) -> None:
        self.http, self.url, self.token = http, url, token
        self.client_id = ""
        self._n = 0

    def next_id(self) -> str:
        self._n += 1
        return format(self._n, "x")

    async def raw(self, body: bytes, *, url: str | None = None,
                  headers: dict[str, str] | None = None) -> tuple[int, Any]:
        hdrs = {"Content-Type": "application/json"}
        if self.token is not None:
            hdrs["Authorization"] = f"Bearer {self.token}"
        hdrs.update(headers or {})
        async with self.http.post(url or self.url, data=body, headers=hdrs) as resp:
            text = await resp.read()
            try:
                return resp.status, orjson.loads(text)
            except orjson.JSONDecodeError:
                return resp.status, text.decode()

    async def send(self, *messages: dict[str, Any], url: str | None = None) -> list[Any]:
        status, body = await self.raw(orjson.dumps(list(messages)), url=url)
        assert status == 200, body
        assert isinstance(body, list)
        return body

    async def handshake(self, **extra: Any) -> dict[str, Any]:
        (reply,) = await self.send({"channel": "/meta/handshake", "version": "1.0",
                                    "supportedConnectionTypes": ["long-polling"],
                                    "id": self.next_id(), **extra})
        if reply.get("successful"):
            self.client_id = reply["clientId"]
        return dict(reply)

    def connect_msg(self) -> dict[str, Any]:
        return {"channel": "/meta/connect", "clientId": self.client_id,
                "connectionType": "long-polling", "id": self.next_id()}

    def subscribe_msg(self, channel: str, replay: Any = None) -> dict[str, Any]:
        msg: dict[str, Any] = {"channel": "/meta/subscribe", "clientId": self.client_id,
                               "subscription": channel, "id": self.next_id()}
        if replay is not None:
            msg["ext"] = {"replay": replay}
        return msg

    async def connect(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One connect: (the connect reply, the data messages delivered with it)."""
        body = await self.send(self.connect_msg())
        (reply,) = [m for m in body if m.get("channel") == "/meta/connect"]
        return reply, [m for m in body if "data" in m]

    async def subscribe(self, channel: str, replay: Any = None) -> dict[str, Any]:
        (reply,) = await self.send(self.subscribe_msg(channel, replay))
        return dict(reply)

    async def open(self, channel: str = "/data/ChangeEvents", replay: Any = -1) -> None:
        assert (await self.handshake())["successful"]
        first, _ = await self.connect()
        assert first["successful"]
        sub = await self.subscribe(channel, {channel: replay})
        assert sub["successful"], sub


# --------------------------------------------------------------------------- handshake


async def test_handshake_reply_shape_and_cookie(h: Harness) -> None:
    c = h.client()
    status, body = await c.raw(orjson.dumps([{
        "channel": "/meta/handshake", "version": "1.0", "minimumVersion": "1.0",
        "supportedConnectionTypes": ["websocket", "long-polling"], "id": "0"}]))
    assert status == 200
    (reply,) = body
    assert reply["successful"] is True and reply["id"] == "0"
    assert reply["channel"] == "/meta/handshake"
    assert reply["ext"] == {"replay": True, "payload.format": True}
    assert reply["supportedConnectionTypes"] == ["long-polling"]
    assert reply["version"] == "1.0" and reply["minimumVersion"] == "1.0"
    assert isinstance(reply["clientId"], str) and len(reply["clientId"]) >= 20
    async with h.http.post(h.url, data=orjson.dumps([{"channel": "/meta/handshake",
                                                       "version": "1.0", "id": "1"}]),
                           headers={"Authorization": "Bearer tok"}) as resp:
        assert "BAYEUX_BROWSER=" in resp.headers["Set-Cookie"]


async def test_handshake_denied_without_or_with_a_bad_token(h: Harness) -> None:
    for token, reason in ((None, "401::Request requires authentication"),
                          ("nope", "401::Authentication invalid")):
        reply = await Bayeux(h.http, h.url, token).handshake()
        assert reply == {"channel": "/meta/handshake", "id": reply["id"], "successful": False,
                         "error": "403::Handshake denied",
                         "ext": {"sfdc": {"failureReason": reason}},
                         "advice": {"reconnect": "none"}}
    h.tokens.status["old"] = "expired"
    reply = await Bayeux(h.http, h.url, "old").handshake()
    assert reply["ext"]["sfdc"]["failureReason"] == "401::Authentication invalid"


async def test_oauth_authorization_prefix_is_accepted(h: Harness) -> None:
    status, body = await Bayeux(h.http, h.url, None).raw(
        orjson.dumps([{"channel": "/meta/handshake", "version": "1.0", "id": "1"}]),
        headers={"Authorization": "OAuth tok"})
    assert status == 200 and body[0]["successful"] is True


async def test_api_version_errors(h: Harness) -> None:
    c = h.client()
    (old,) = await c.send({"channel": "/meta/handshake", "version": "1.0", "id": "1"},
                          url=f"{h.base_url}/cometd/36.0")
    assert old["error"] == "403::Handshake denied"
    assert old["ext"]["sfdc"]["failureReason"].startswith(
        "400::Unsupported API version. Only API versions '37.0' and later are supported.")
    (missing,) = await c.send({"channel": "/meta/handshake", "version": "1.0", "id": "1"},
                              url=f"{h.base_url}/cometd")
    assert missing["ext"]["sfdc"]["failureReason"] == \
        "400::API version in the URI is mandatory. URI format: '/cometd/66.0'"
    (ok,) = await c.send({"channel": "/meta/handshake", "version": "1.0", "id": "1"},
                         url=f"{h.base_url}/cometd/37.0")
    assert ok["successful"] is True


async def test_handshake_offering_no_long_polling_is_denied(h: Harness) -> None:
    reply = await h.client().handshake(supportedConnectionTypes=["websocket"])
    assert reply["error"] == "403::Handshake denied"
    assert reply["ext"]["sfdc"]["failureReason"] == "400::Invalid connection type websocket"


async def test_concurrent_client_cap() -> None:
    harness, runner = await start_harness(max_clients=2)
    try:
        assert (await harness.client().handshake())["successful"]
        assert (await harness.client().handshake())["successful"]
        third = await harness.client().handshake()
        assert third["error"] == "403::Handshake denied"
        assert third["ext"]["sfdc"]["failureReason"] == \
            "403::Organization concurrent user limit exceeded"
    finally:
        await stop_harness(harness, runner)


# --------------------------------------------------------------------------- connect


async def test_first_connect_carries_advice_later_ones_do_not(h: Harness) -> None:
    c = h.client()
    await c.handshake()
    first, _ = await c.connect()
    assert first == {"channel": "/meta/connect", "id": first["id"], "clientId": c.client_id,
                     "successful": True,
                     "advice": {"interval": 0, "timeout": 5000, "reconnect": "retry"}}
    (later,) = await c.send({**c.connect_msg(), "advice": {"timeout": 0}})
    assert later == {"channel": "/meta/connect", "id": later["id"], "clientId": c.client_id,
                     "successful": True}


async def test_idle_long_poll_returns_after_the_configured_timeout() -> None:
    harness, runner = await start_harness(long_poll_s=0.2)
    try:
        c = harness.client()
        await c.open()
        started = asyncio.get_running_loop().time()
        reply, data = await c.connect()
        waited = asyncio.get_running_loop().time() - started
        assert reply["successful"] is True and data == [] and "advice" not in reply
        assert 0.15 <= waited < 3.0
    finally:
        await stop_harness(harness, runner)


async def test_a_waiting_connect_returns_as_soon_as_an_event_is_published(h: Harness) -> None:
    c = h.client()
    await c.open("/data/LeadChangeEvent")
    poll = asyncio.create_task(c.connect())
    await until(lambda: h.server.stats()["polling"] == 1)
    rid = h.publish(Email="new@example.com")
    reply, data = await asyncio.wait_for(poll, 2.0)
    assert reply["successful"] is True
    assert data == [{"data": {"schema": schema_id("Lead"),
                              "payload": {**data[0]["data"]["payload"]},
                              "event": {"replayId": rid}},
                     "channel": "/data/LeadChangeEvent"}]
    payload = data[0]["data"]["payload"]
    assert payload["Email"] == "new@example.com"
    assert payload["ChangeEventHeader"]["changeType"] == "UPDATE"
    assert set(data[0]) == {"data", "channel"}


async def test_several_events_per_reply_and_the_per_object_filter(h: Harness) -> None:
    c = h.client()
    await c.open("/data/ContactChangeEvent")
    h.publish("Lead", Email="a@example.com")
    contact_ids = [h.publish("Contact", Email=f"c{i}@example.com") for i in range(3)]
    h.publish("Account", Name="Acme")
    _, data = await c.connect()
    assert [m["data"]["event"]["replayId"] for m in data] == contact_ids
    assert {m["channel"] for m in data} == {"/data/ContactChangeEvent"}


async def test_custom_object_channel(h: Harness) -> None:
    c = h.client()
    await c.open("/data/Invoice__ChangeEvent")
    rid = h.publish("Invoice__c", Amount__c=3)
    _, data = await c.connect()
    assert [(m["channel"], m["data"]["event"]["replayId"]) for m in data] == \
        [("/data/Invoice__ChangeEvent", rid)]


async def test_connect_with_another_connection_type_is_refused(h: Harness) -> None:
    c = h.client()
    await c.handshake()
    (reply,) = await c.send({**c.connect_msg(), "connectionType": "websocket"})
    assert reply["successful"] is False
    assert reply["error"] == "400::Invalid connection type websocket"


async def test_a_newer_connect_releases_the_older_one(h: Harness) -> None:
    c = h.client()
    await c.open()
    old = asyncio.create_task(c.connect())
    await until(lambda: h.server.stats()["polling"] == 1)
    newer = asyncio.create_task(c.connect())
    old_reply, old_data = await asyncio.wait_for(old, 2.0)
    assert old_reply["successful"] is True and old_data == []
    await until(lambda: h.server.stats()["polling"] == 1)
    rid = h.publish()
    _, data = await asyncio.wait_for(newer, 2.0)
    assert [m["data"]["event"]["replayId"] for m in data] == [rid]


# --------------------------------------------------------------------------- batches and ids


async def test_several_messages_per_post_with_string_ids_in_any_order(h: Harness) -> None:
    c = h.client()
    await c.handshake()
    await c.connect()
    h.publish()
    h.publish()
    body = await c.send(
        {"channel": "/meta/subscribe", "clientId": c.client_id, "id": "z9",
         "subscription": "/data/LeadChangeEvent", "ext": {"replay": {"/data/LeadChangeEvent": -2}}},
        {"channel": "/meta/connect", "clientId": c.client_id, "id": "3",
         "connectionType": "long-polling"},
        {"channel": "/meta/subscribe", "clientId": c.client_id, "id": "a",
         "subscription": "/data/AccountChangeEvent",
         "ext": {"replay": {"/data/AccountChangeEvent": -1}}})
    replies = [m for m in body if "data" not in m]
    assert [(m["channel"], m["id"], m["successful"]) for m in replies] == [
        ("/meta/subscribe", "z9", True), ("/meta/connect", "3", True),
        ("/meta/subscribe", "a", True)]
    assert replies[0]["subscription"] == "/data/LeadChangeEvent"
    assert [m["data"]["event"]["replayId"] for m in body if "data" in m] == [1, 2]


async def test_connect_and_resubscribe_in_one_post_like_a_rehandshaking_client(
        h: Harness) -> None:
    first = h.publish()
    c = h.client()
    await c.handshake()
    body = await c.send(c.connect_msg(),
                        c.subscribe_msg("/data/ChangeEvents", {"/data/ChangeEvents": first}))
    second = h.publish()
    assert [m["successful"] for m in body if "data" not in m] == [True, True]
    _, data = await c.connect()
    assert [m["data"]["event"]["replayId"] for m in data] == [second]


async def test_a_stale_resubscribe_in_a_connect_batch_fails_alone(h: Harness) -> None:
    stale = h.publish()
    h.bus.purge()
    c = h.client()
    await c.handshake()
    connect, subscribe = await c.send(
        c.connect_msg(), c.subscribe_msg("/data/ChangeEvents", {"/data/ChangeEvents": stale}))
    assert connect["successful"] is True
    assert subscribe["successful"] is False
    assert subscribe["error"] == f"400::The replayId {{{stale}}}{INVALID_TAIL}"
    assert h.server.stats()["subscriptions"] == 0


async def test_bare_object_body_is_http_400(h: Harness) -> None:
    c = h.client()
    status, _ = await c.raw(orjson.dumps({"channel": "/meta/handshake", "version": "1.0"}))
    assert status == 400
    status, _ = await c.raw(b"not json")
    assert status == 400
    status, _ = await c.raw(b"[]")
    assert status == 400
    status, _ = await c.raw(b"[1, 2]")
    assert status == 400


async def test_form_encoded_body_is_accepted(h: Harness) -> None:
    form = aiohttp.FormData({"message": orjson.dumps([{"channel": "/meta/handshake",
                                                       "version": "1.0", "id": "1"}]).decode()})
    async with h.http.post(h.url, data=form, headers={"Authorization": "Bearer tok"}) as resp:
        body = await resp.json()
    assert resp.status == 200 and body[0]["successful"] is True


async def test_body_over_32768_bytes_is_413(h: Harness) -> None:
    c = h.client()
    big = orjson.dumps([{"channel": "/meta/handshake", "version": "1.0", "id": "1",
                         "pad": "x" * 32_768}])
    status, _ = await c.raw(big)
    assert status == 413
    fits = orjson.dumps([{"channel": "/meta/handshake", "version": "1.0", "id": "1",
                          "pad": "x" * 32_000}])
    status, _ = await c.raw(fits)
    assert status == 200


async def test_get_probe_is_not_upgraded(h: Harness) -> None:
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    async with h.http.get(h.url, headers=headers) as resp:
        assert resp.status != 101 and resp.status == 400


async def test_publishing_and_unknown_meta_channels_are_refused(h: Harness) -> None:
    c = h.client()
    await c.handshake()
    publish, meta, nochannel = await c.send(
        {"channel": "/data/ChangeEvents", "clientId": c.client_id, "data": {}, "id": "1"},
        {"channel": "/meta/bogus", "clientId": c.client_id, "id": "2"},
        {"clientId": c.client_id, "id": "3"})
    assert publish["error"] == "403::Restricted channel" and publish["successful"] is False
    assert meta["error"].startswith("400::") and nochannel["error"] == \
        "400::Channel name not specified"


# --------------------------------------------------------------------------- subscribe


async def test_subscribe_reply_shape_and_channel_errors(h: Harness) -> None:
    c = h.client()
    await c.handshake()
    ok = await c.subscribe("/data/LeadChangeEvent", {"/data/LeadChangeEvent": -1})
    assert ok == {"channel": "/meta/subscribe", "id": ok["id"], "clientId": c.client_id,
                  "subscription": "/data/LeadChangeEvent", "successful": True}
    nope = await c.subscribe("/data/Nope", {"/data/Nope": -1})
    assert nope["successful"] is False and nope["subscription"] == "/data/Nope"
    assert nope["error"] == \
        "400::The channel you requested to subscribe to doesn't exist /data/Nope"
    assert (await c.subscribe("data/ChangeEvents"))["error"] == \
        "400::Channel subscriptions must start with a leading '/'"
    (missing,) = await c.send({"channel": "/meta/subscribe", "clientId": c.client_id, "id": "9"})
    assert missing["error"] == "400::Channel name not specified"
    assert (await c.subscribe("/meta/connect"))["error"] == "403::Restricted channel"


async def test_known_entities_restrict_the_channels() -> None:
    harness, runner = await start_harness(entities=["Lead", "Contact", "Account"])
    try:
        c = harness.client()
        await c.handshake()
        assert (await c.subscribe("/data/LeadChangeEvent"))["successful"] is True
        bad = await c.subscribe("/data/OpportunityChangeEvent")
        assert bad["error"].startswith("400::The channel you requested to subscribe to")
    finally:
        await stop_harness(harness, runner)


async def test_subscribe_without_replay_ext_means_new_events_only(h: Harness) -> None:
    h.publish()
    c = h.client()
    await c.handshake()
    await c.connect()
    assert (await c.subscribe("/data/ChangeEvents"))["successful"] is True
    rid = h.publish()
    _, data = await c.connect()
    assert [m["data"]["event"]["replayId"] for m in data] == [rid]


async def test_replay_map_without_the_channel_is_the_documented_400(h: Harness) -> None:
    c = h.client()
    await c.handshake()
    empty = await c.subscribe("/data/LeadChangeEvent", {})
    assert empty["successful"] is False
    assert empty["error"] == (
        "400::The replayId for channel {/data/LeadChangeEvent} wasn't found using the provided "
        "replay ID map {{}}. Ensure that the channel name you provided in the replay map is "
        "valid and matches the channel name used for subscribing.")
    other = await c.subscribe("/data/LeadChangeEvent", {"/data/ContactChangeEvent": -2})
    assert "replay ID map {{/data/ContactChangeEvent=-2}}" in other["error"]


async def test_replay_minus_two_minus_one_and_a_stored_id(h: Harness) -> None:
    ids = [h.publish() for _ in range(5)]
    everything, newer, after, as_string = h.client(), h.client(), h.client(), h.client()
    await everything.open(replay=-2)
    await newer.open(replay=-1)
    await after.open(replay=ids[1])
    await as_string.open(replay=str(ids[2]))
    assert [m["data"]["event"]["replayId"] for m in (await everything.connect())[1]] == ids
    assert [m["data"]["event"]["replayId"] for m in (await after.connect())[1]] == ids[2:]
    assert [m["data"]["event"]["replayId"] for m in (await as_string.connect())[1]] == ids[3:]
    late = h.publish()
    assert [m["data"]["event"]["replayId"] for m in (await newer.connect())[1]] == [late]
    minus_two_string = h.client()
    await minus_two_string.open(replay="-2")
    assert len((await minus_two_string.connect())[1]) == 6


async def test_replay_id_outside_retention_gets_the_exact_error(h: Harness) -> None:
    ids = [h.publish() for _ in range(3)]
    c = h.client()
    await c.handshake()
    for bad in (ids[-1] + 10, 0, "abc", -3):
        reply = await c.subscribe("/data/ChangeEvents", {"/data/ChangeEvents": bad})
        assert reply == {"channel": "/meta/subscribe", "id": reply["id"],
                         "clientId": c.client_id, "subscription": "/data/ChangeEvents",
                         "successful": False,
                         "error": "400::The replayId {" + str(bad) + "}" + INVALID_TAIL}
    h.bus.purge()
    reply = await c.subscribe("/data/ChangeEvents", {"/data/ChangeEvents": ids[1]})
    assert reply["error"] == f"400::The replayId {{{ids[1]}}}{INVALID_TAIL}"
    assert reply["error"] == (
        f"400::The replayId {{{ids[1]}}} you provided was invalid.  Please provide a valid ID, "
        "-2 to replay all events, or -1 to replay only new events.")


async def test_retention_by_count() -> None:
    harness, runner = await start_harness(retention_count=3)
    try:
        ids = [harness.publish() for _ in range(5)]
        c = harness.client()
        await c.handshake()
        gone = await c.subscribe("/data/ChangeEvents", {"/data/ChangeEvents": ids[1]})
        assert gone["error"] == f"400::The replayId {{{ids[1]}}}{INVALID_TAIL}"
        kept = await c.subscribe("/data/ChangeEvents", {"/data/ChangeEvents": ids[2]})
        assert kept["successful"] is True
        _, data = await c.connect()
        assert [m["data"]["event"]["replayId"] for m in data] == ids[3:]
        everything = harness.client()
        await everything.open(replay=-2)
        assert [m["data"]["event"]["replayId"] for m in (await everything.connect())[1]] == \
            ids[2:]
    finally:
        await stop_harness(harness, runner)


async def test_retention_by_age_with_an_injected_clock() -> None:
    harness, runner = await start_harness(retention_s=3600.0)
    try:
        old = harness.publish()
        harness.bus_clock.now += 1800
        young = harness.publish()
        harness.bus_clock.now += 1801
        c = harness.client()
        await c.handshake()
        gone = await c.subscribe("/data/ChangeEvents", {"/data/ChangeEvents": old})
        assert gone["error"] == f"400::The replayId {{{old}}}{INVALID_TAIL}"
        assert (await c.subscribe("/data/ChangeEvents",
                                  {"/data/ChangeEvents": young}))["successful"] is True
        everything = harness.client()
        await everything.open(replay=-2)
        assert [m["data"]["event"]["replayId"] for m in (await everything.connect())[1]] == \
            [young]
    finally:
        await stop_harness(harness, runner)


async def test_subscribe_with_replay_wakes_a_waiting_connect(h: Harness) -> None:
    ids = [h.publish() for _ in range(2)]
    c = h.client()
    await c.handshake()
    await c.connect()
    poll = asyncio.create_task(c.connect())
    await until(lambda: h.server.stats()["polling"] == 1)
    assert (await c.subscribe("/data/ChangeEvents", {"/data/ChangeEvents": -2}))["successful"]
    _, data = await asyncio.wait_for(poll, 2.0)
    assert [m["data"]["event"]["replayId"] for m in data] == ids


async def test_unsubscribe_stops_delivery(h: Harness) -> None:
    c = h.client()
    await c.open("/data/LeadChangeEvent")
    (reply,) = await c.send({"channel": "/meta/unsubscribe", "clientId": c.client_id,
                             "subscription": "/data/LeadChangeEvent", "id": "u1"})
    assert reply == {"channel": "/meta/unsubscribe", "id": "u1", "clientId": c.client_id,
                     "subscription": "/data/LeadChangeEvent", "successful": True}
    h.publish()
    (again,) = await c.send({**c.connect_msg(), "advice": {"timeout": 0}})
    assert again["successful"] is True
    assert h.server.stats()["subscriptions"] == 0 and h.server.deliveries_total == 0


# --------------------------------------------------------------------------- client lifecycle


async def test_a_client_that_does_not_reconnect_within_40_s_is_forgotten(h: Harness) -> None:
    c = h.client()
    await c.open()
    h.clock.now += 39
    (ok,) = await c.send({**c.connect_msg(), "advice": {"timeout": 0}})
    assert ok["successful"] is True
    h.clock.now += 40.5
    reply, _ = await c.connect()
    assert reply == {"channel": "/meta/connect", "id": reply["id"], "clientId": c.client_id,
                     "successful": False, "error": "403::Unknown client",
                     "advice": {"interval": 0, "reconnect": "handshake"}}
    assert h.server.stats()["clients"] == 0
    sub = await c.subscribe("/data/ChangeEvents")
    assert sub["error"] == "403::Unknown client"


async def test_a_polling_client_is_never_expired(h: Harness) -> None:
    c = h.client()
    await c.open()
    poll = asyncio.create_task(c.connect())
    await until(lambda: h.server.stats()["polling"] == 1)
    h.clock.now += 500
    assert h.server.stats()["clients"] == 1
    rid = h.publish()
    reply, data = await asyncio.wait_for(poll, 2.0)
    assert reply["successful"] and [m["data"]["event"]["replayId"] for m in data] == [rid]


async def test_forget_all_clients_answers_pending_polls_with_unknown_client(h: Harness) -> None:
    polling, idle = h.client(), h.client()
    await polling.open()
    await idle.open()
    poll = asyncio.create_task(polling.connect())
    await until(lambda: h.server.stats()["polling"] == 1)
    assert h.server.forget_all_clients() == 2
    reply, _ = await asyncio.wait_for(poll, 2.0)
    assert reply["error"] == "403::Unknown client"
    assert reply["advice"] == {"interval": 0, "reconnect": "handshake"}
    idle_reply, _ = await idle.connect()
    assert idle_reply["error"] == "403::Unknown client"
    assert (await idle.handshake())["successful"] is True


async def test_server_pushes_disconnect(h: Harness) -> None:
    polling, idle = h.client(), h.client()
    await polling.open()
    await idle.open()
    poll = asyncio.create_task(polling.send(polling.connect_msg()))
    await until(lambda: h.server.stats()["polling"] == 1)
    assert h.server.push_disconnect() == 2
    for body in (await asyncio.wait_for(poll, 2.0), await idle.send(idle.connect_msg())):
        disconnect, connect = body
        assert disconnect["channel"] == "/meta/disconnect" and disconnect["successful"] is True
        assert connect["channel"] == "/meta/connect"
        assert connect["advice"] == {"reconnect": "handshake", "interval": 0}
    assert h.server.stats()["clients"] == 0
    again, _ = await polling.connect()
    assert again["error"] == "403::Unknown client"


async def test_client_disconnect(h: Harness) -> None:
    c = h.client()
    await c.open()
    (reply,) = await c.send({"channel": "/meta/disconnect", "clientId": c.client_id, "id": "d"})
    assert reply == {"channel": "/meta/disconnect", "id": "d", "clientId": c.client_id,
                     "successful": True}
    after, _ = await c.connect()
    assert after["error"] == "403::Unknown client"


async def test_revoked_token_on_connect_is_401_with_advice_none(h: Harness) -> None:
    c = h.client()
    await c.open()
    h.tokens.status["tok"] = "invalid"
    reply, _ = await c.connect()
    assert reply == {"channel": "/meta/connect", "id": reply["id"], "clientId": c.client_id,
                     "successful": False, "error": "401::Authentication invalid",
                     "advice": {"reconnect": "none", "interval": 0}}
    h.tokens.status["tok"] = "ok"
    after, _ = await c.connect()
    assert after["error"] == "403::Unknown client"


async def test_expired_token_on_subscribe_is_401(h: Harness) -> None:
    c = h.client()
    await c.handshake()
    h.tokens.status["tok"] = "expired"
    reply = await c.subscribe("/data/ChangeEvents")
    assert reply["error"] == "401::Authentication invalid" and reply["successful"] is False


# --------------------------------------------------------------------------- delivery allocation


async def test_daily_delivery_allocation() -> None:
    harness, runner = await start_harness(daily_delivery_limit=3)
    try:
        ids = [harness.publish() for _ in range(5)]
        c = harness.client()
        await c.open(replay=-2)
        _, data = await c.connect()
        assert [m["data"]["event"]["replayId"] for m in data] == ids[:3]
        assert harness.server.stats()["deliveries_24h"] == 3
        reply, data = await c.connect()
        assert data == [] and reply["successful"] is False
        assert reply["error"] == "403::Organization total events daily limit exceeded"
        assert reply["advice"] == {"reconnect": "none", "interval": 0}
        again_reply, _ = await c.connect()
        assert again_reply["error"] == "403::Organization total events daily limit exceeded"
        other = harness.client()
        await other.handshake()
        sub = await other.subscribe("/data/ChangeEvents", {"/data/ChangeEvents": -2})
        assert sub["error"] == "403::Organization total events daily limit exceeded"
        harness.clock.now += 24 * 3600 + 3600
        assert harness.server.stats()["deliveries_24h"] == 0
        again = harness.client()
        await again.open(replay=ids[2])
        _, data = await again.connect()
        assert [m["data"]["event"]["replayId"] for m in data] == ids[3:]
    finally:
        await stop_harness(harness, runner)


async def test_stats(h: Harness) -> None:
    c = h.client()
    await c.open()
    h.publish()
    await c.connect()
    stats = h.server.stats()
    assert stats["clients"] == 1 and stats["subscriptions"] == 1
    assert stats["deliveries"] == 1 and stats["handshakes"] == 1
    assert stats["latest_replay_id"] == 1 and stats["retained_events"] == 1


async def test_large_backlogs_are_delivered_in_capped_batches() -> None:
    harness, runner = await start_harness(max_batch=100)
    try:
        ids = [harness.publish() for _ in range(250)]
        c = harness.client()
        await c.open(replay=-2)
        got: list[int] = []
        for expected in (100, 100, 50):
            _, data = await c.connect()
            assert len(data) == expected
            got.extend(m["data"]["event"]["replayId"] for m in data)
        assert got == ids
    finally:
        await stop_harness(harness, runner)


async def test_server_shutdown_releases_pending_long_polls() -> None:
    harness, runner = await start_harness(long_poll_s=60.0)
    try:
        c = harness.client()
        await c.open()
        poll = asyncio.create_task(c.connect())
        await until(lambda: harness.server.stats()["polling"] == 1)
        started = asyncio.get_running_loop().time()
        await runner.shutdown()
        reply, _ = await asyncio.wait_for(poll, 5.0)
        assert reply["error"] == "403::Unknown client"
        assert asyncio.get_running_loop().time() - started < 5.0
    finally:
        await stop_harness(harness, runner)
