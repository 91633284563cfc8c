"""CometdSubscriber against a scripted Bayeux server over real HTTP: wire format and every fault."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from streamsync.adapters.cometd import CometdSubscriber, ReplayId
from streamsync.errors import (
    FatalError,
    RateLimited,
    RetriableError,
    SessionExpired,
    TransientError,
)
from streamsync.retry import Policy

Message = dict[str, Any]
Override = Callable[[web.Request, list[Message]], Awaitable[web.StreamResponse | None]]
LEAD = "/data/LeadChangeEvent"
CONTACT = "/data/ContactChangeEvent"


def data_message(channel: str, replay_id: int, record_id: str = "00Q000000000001AAA") -> Message:
    header = {"entityName": "Lead", "recordIds": [record_id], "changeType": "UPDATE",
              "commitTimestamp": 1_700_000_000_000 + replay_id}
    return {"channel": channel,
            "data": {"schema": "s", "payload": {"ChangeEventHeader": header},
                     "event": {"replayId": replay_id}}}


@dataclass
class Seen:
    """One request as the server received it."""

    authorization: str | None
    cookie: str | None
    messages: list[Message]


@dataclass
class FakeBayeux:
    """A Salesforce-like Bayeux server with scripted faults (one override per request)."""

    token: str = "tok-1"
    url: str = ""
    require_cookie: bool = True
    seen: list[Seen] = field(default_factory=list)
    overrides: deque[Override] = field(default_factory=deque)
    clients: set[str] = field(default_factory=set)
    subscriptions: dict[str, set[str]] = field(default_factory=dict)
    subscribe_log: list[tuple[str, Any]] = field(default_factory=list)
    invalid_replay_ids: set[Any] = field(default_factory=set)
    subscribe_errors: dict[str, str] = field(default_factory=dict)
    outbox: list[Message] = field(default_factory=list)
    connect_extra: list[Any] = field(default_factory=list)
    connect_advice: dict[str, Any] | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _seq: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        messages = orjson.loads(await request.read())
        assert isinstance(messages, list), "body must be a JSON array"
        self.seen.append(Seen(request.headers.get("Authorization"),
                              request.cookies.get("BAYEUX_BROWSER"), messages))
        if self.overrides:
            response = await self.overrides.popleft()(request, messages)
            if response is not None:
                return response
        return await self.respond(request, messages)

    async def respond(self, request: web.Request, messages: list[Message]) -> web.Response:
        authorized = request.headers.get("Authorization") == f"Bearer {self.token}"
        replies: list[Any] = []
        set_cookie = None
        for message in messages:
            channel = message["channel"]
            if channel == "/meta/handshake":
                if not authorized:
                    replies.append({
                        "ext": {"sfdc": {"failureReason": "401::Authentication invalid"}},
                        "advice": {"reconnect": "none"}, "channel": channel,
                        "id": message["id"], "error": "403::Handshake denied",
                        "successful": False})
                    continue
                self._seq += 1
                client_id = f"client-{self._seq}"
                self.clients.add(client_id)
                self.subscriptions[client_id] = set()
                set_cookie = f"browser-{self._seq}"
                replies.append({"channel": channel, "id": message["id"], "clientId": client_id,
                                "successful": True, "version": "1.0",
                                "supportedConnectionTypes": ["long-polling"],
                                "ext": {"replay": True}})
                continue
            replies.extend(self._session_reply(request, message, authorized))
        response = web.Response(body=orjson.dumps(replies), content_type="application/json")
        if set_cookie:
            response.set_cookie("BAYEUX_BROWSER", set_cookie, path="/cometd")
        return response

    def _session_reply(self, request: web.Request, message: Message,
                       authorized: bool) -> list[Any]:
        channel, client_id = message["channel"], message.get("clientId")
        base = {"channel": channel, "id": message["id"], "clientId": client_id}
        if not authorized:
            return [{**base, "successful": False, "error": "401::Authentication invalid",
                     "advice": {"reconnect": "none", "interval": 0}}]
        if client_id not in self.clients:
            return [{**base, "successful": False, "error": "403::Unknown client",
                     "advice": {"reconnect": "handshake", "interval": 0}}]
        if self.require_cookie and "BAYEUX_BROWSER" not in request.cookies:
            return [{**base, "successful": False,
                     "error": f"400::Client {client_id} has established a session, but no "
                              "BAYEUX_BROWSER cookie present"}]
        if channel == "/meta/subscribe":
            sub = message["subscription"]
            replay = message.get("ext", {}).get("replay", {}).get(sub)
            self.subscribe_log.append((sub, replay))
            if sub in self.subscribe_errors:
                return [{**base, "subscription": sub, "successful": False,
                         "error": self.subscribe_errors[sub]}]
            if replay in self.invalid_replay_ids:
                return [{**base, "subscription": sub, "successful": False,
                         "error": f"400::The replayId {{{replay}}} you provided was invalid.  "
                                  "Please provide a valid ID, -2 to replay all events, or -1 "
                                  "to replay only new events."}]
            self.subscriptions[client_id].add(sub)
            return [{**base, "subscription": sub, "successful": True}]
        if channel == "/meta/connect":
            subs = self.subscriptions[client_id]
            out: list[Any] = [m for m in self.outbox if m["channel"] in subs]
            self.outbox = [m for m in self.outbox if m["channel"] not in subs]
            out.extend(self.connect_extra)
            self.connect_extra = []
            reply = {**base, "successful": True}
            if self.connect_advice is not None:
                reply["advice"] = self.connect_advice
                self.connect_advice = None
            return [*out, reply]
        if channel == "/meta/disconnect":
            self.clients.discard(client_id)
            return [{**base, "successful": True}]
        return [{**base, "successful": False, "error": "400::Unknown channel"}]

    def forget_all(self) -> None:
        self.clients.clear()

    def connects(self) -> list[Seen]:
        return [s for s in self.seen if s.messages[0]["channel"] == "/meta/connect"]


@dataclass
class Harness:
    """Token provider, replay store and recorded callbacks around one subscriber."""

    server: FakeBayeux
    session: aiohttp.ClientSession
    store: dict[str, ReplayId | None] = field(default_factory=dict)
    invalid_calls: list[tuple[str, ReplayId]] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    cached_token: str | None = None
    token_fetches: int = 0
    invalidations: int = 0
    now: float = 1000.0

    async def get_token(self) -> str:
        if self.cached_token is None:
            self.cached_token = self.server.token
            self.token_fetches += 1
        return self.cached_token

    def invalidate(self) -> None:
        self.invalidations += 1
        self.cached_token = None

    async def replay_from(self, channel: str) -> ReplayId | None:
        return self.store.get(channel)

    async def on_invalid(self, channel: str, replay_id: ReplayId) -> None:
        self.invalid_calls.append((channel, replay_id))
        self.store[channel] = None

    async def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now

    def subscriber(self, channels: tuple[str, ...] = (LEAD,), **kw: Any) -> CometdSubscriber:
        options: dict[str, Any] = {
            "watchdog_s": 30.0, "long_poll_timeout_s": 5.0, "request_timeout_s": 5.0,
            "min_handshake_interval_s": 0.0, "sleep": self.sleep, "clock": self.clock,
            "rng": lambda: 1.0,
        }
        options.update(kw)
        return CometdSubscriber(
            self.session, instance_url=self.server.url, api_version="66.0",
            get_token=self.get_token, invalidate_token=self.invalidate, channels=channels,
            replay_from=self.replay_from, on_replay_invalid=self.on_invalid, **options)


@pytest.fixture
async def server() -> AsyncIterator[FakeBayeux]:
    fake = FakeBayeux()
    app = web.Application()
    app.router.add_post("/cometd/{version}", fake.handle)
    test_server = TestServer(app, host="127.0.0.1", port=0)
    await test_server.start_server()
    fake.url = str(test_server.make_url("/")).rstrip("/")
    yield fake
    fake.release.set()
    await test_server.close()


@pytest.fixture
async def harness(server: FakeBayeux) -> AsyncIterator[Harness]:
    async with aiohttp.ClientSession() as session:
        yield Harness(server, session)


async def test_handshake_subscribe_connect_on_the_wire(harness: Harness,
                                                       server: FakeBayeux) -> None:
    harness.store = {LEAD: 41, CONTACT: "57"}
    sub = harness.subscriber((LEAD, CONTACT))
    server.outbox = [data_message(LEAD, 42), data_message(CONTACT, 58)]
    batch = await sub.poll_once()
    assert [m["data"]["event"]["replayId"] for m in batch] == [42, 58]
    handshake, subscribe, connect = server.seen
    assert handshake.messages == [{
        "channel": "/meta/handshake", "version": "1.0", "minimumVersion": "1.0",
        "supportedConnectionTypes": ["long-polling"], "id": "1"}]
    assert handshake.authorization == "Bearer tok-1"
    # Both channels in one POST, each with its own replay entry rebuilt from the store.
    assert [(m["subscription"], m["ext"]) for m in subscribe.messages] == [
        (LEAD, {"replay": {LEAD: 41}}), (CONTACT, {"replay": {CONTACT: 57}})]
    assert connect.messages[0]["connectionType"] == "long-polling"
    # The cookie set by 127.0.0.1 at handshake comes back on every later request.
    assert subscribe.cookie == connect.cookie == "browser-1"
    assert sub.subscribed_channels == {LEAD, CONTACT}
    assert sub.client_id == "client-1"
    assert sub.stats.handshakes == 1 and sub.stats.messages == 2
    assert sub.stats.last_message_at is not None


async def test_nothing_stored_uses_initial_replay(harness: Harness, server: FakeBayeux) -> None:
    await harness.subscriber((LEAD,)).poll_once()
    await harness.subscriber((CONTACT,), initial_replay=-2).poll_once()
    assert server.subscribe_log == [(LEAD, -1), (CONTACT, -2)]


async def test_generator_waits_for_the_caller_and_resubscribes_from_the_store(
        harness: Harness, server: FakeBayeux) -> None:
    sub = harness.subscriber()
    server.outbox = [data_message(LEAD, 5), data_message(LEAD, 6)]
    stream = sub.messages()
    first = await anext(stream)
    # Nothing more is fetched until the caller pulls again.
    assert len(server.connects()) == 1 and first["data"]["event"]["replayId"] == 5
    harness.store[LEAD] = 5
    second = await anext(stream)
    harness.store[LEAD] = 6
    assert second["data"]["event"]["replayId"] == 6
    server.forget_all()
    server.outbox = [data_message(LEAD, 7)]
    third = await anext(stream)
    assert third["data"]["event"]["replayId"] == 7
    # Re-handshake AND resubscribe, with the replay id read from the store at that moment.
    assert server.subscribe_log == [(LEAD, -1), (LEAD, 6)]
    assert sub.stats.unknown_clients == 1 and sub.stats.resubscribes == 1
    assert sub.stats.handshakes == 2
    await stream.aclose()


async def test_unknown_client_then_next_event_arrives(harness: Harness,
                                                      server: FakeBayeux) -> None:
    sub = harness.subscriber()
    await sub.poll_once()
    server.forget_all()
    assert await sub.poll_once() == []
    assert sub.client_id is None and sub.subscribed_channels == frozenset()
    assert sub.next_poll_delay_s == 0.0
    server.outbox = [data_message(LEAD, 9)]
    batch = await sub.poll_once()
    assert [m["data"]["event"]["replayId"] for m in batch] == [9]
    assert sub.subscribed_channels == {LEAD} and sub.client_id == "client-2"


async def test_invalid_replay_id_reports_then_subscribes_new_events(
        harness: Harness, server: FakeBayeux) -> None:
    harness.store = {LEAD: 12, CONTACT: 30}
    server.invalid_replay_ids = {12}
    sub = harness.subscriber((LEAD, CONTACT))
    server.outbox = [data_message(LEAD, 100)]
    batch = await sub.poll_once()
    assert harness.invalid_calls == [(LEAD, 12)]
    assert server.subscribe_log == [(LEAD, 12), (CONTACT, 30), (LEAD, -1)]
    assert sub.subscribed_channels == {LEAD, CONTACT}
    assert sub.stats.replay_fallbacks == 1
    assert [m["data"]["event"]["replayId"] for m in batch] == [100]


async def test_invalid_replay_id_with_string_ids(harness: Harness, server: FakeBayeux) -> None:
    harness.store = {LEAD: "abc-opaque"}
    server.invalid_replay_ids = {"abc-opaque"}
    sub = harness.subscriber()
    await sub.poll_once()
    assert harness.invalid_calls == [(LEAD, "abc-opaque")]
    assert sub.subscribed_channels == {LEAD}


async def test_failed_subscribe_raises_and_never_stays_deaf(harness: Harness,
                                                            server: FakeBayeux) -> None:
    sub = harness.subscriber((LEAD, CONTACT))
    server.subscribe_errors[CONTACT] = "403::Organization total events daily limit exceeded"
    with pytest.raises(TransientError, match="daily limit"):
        await sub.poll_once()
    assert sub.client_id is None and sub.subscribed_channels == frozenset()
    assert server.connects() == []
    del server.subscribe_errors[CONTACT]
    await sub.poll_once()
    assert sub.subscribed_channels == {LEAD, CONTACT}
    # The failed attempt and the retry each sent both channels.
    assert [c for c, _ in server.subscribe_log] == [LEAD, CONTACT, LEAD, CONTACT]


async def test_fallback_subscribe_that_fails_again_raises(harness: Harness,
                                                          server: FakeBayeux) -> None:
    harness.store = {LEAD: 3}
    server.invalid_replay_ids = {3, -1}
    sub = harness.subscriber()
    with pytest.raises(TransientError, match="replay -1 rejected"):
        await sub.poll_once()
    assert sub.subscribed_channels == frozenset()


async def test_missing_subscribe_reply_raises(harness: Harness, server: FakeBayeux) -> None:
    async def swallow(_: web.Request, messages: list[Message]) -> web.StreamResponse:
        return web.json_response([])

    sub = harness.subscriber()
    await sub.poll_once()
    server.forget_all()
    await sub.poll_once()
    server.overrides.extend([_passthrough, swallow])
    with pytest.raises(TransientError, match="no reply"):
        await sub.poll_once()
    assert sub.subscribed_channels == frozenset()


async def _passthrough(_: web.Request, __: list[Message]) -> None:
    return None


@pytest.mark.parametrize("error", [
    "400::The channel you requested to subscribe to doesn't exist {/data/NopeChangeEvent}",
    "403::User not allowed to subscribe CDC without View All Data permissions",
])
async def test_configuration_errors_on_subscribe_are_fatal(
        harness: Harness, server: FakeBayeux, error: str) -> None:
    server.subscribe_errors[LEAD] = error
    sub = harness.subscriber()
    with pytest.raises(FatalError, match="cannot subscribe"):
        await sub.poll_once()
    stream = sub.messages()
    with pytest.raises(FatalError):
        await anext(stream)


async def test_token_revoked_while_connected_reauthenticates(harness: Harness,
                                                             server: FakeBayeux) -> None:
    sub = harness.subscriber()
    await sub.poll_once()
    server.token = "tok-2"
    assert await sub.poll_once() == []
    assert harness.invalidations == 1 and sub.client_id is None
    server.outbox = [data_message(LEAD, 3)]
    assert len(await sub.poll_once()) == 1
    assert server.seen[-1].authorization == "Bearer tok-2"
    assert harness.token_fetches == 2 and sub.stats.reauths == 1 and sub.stats.handshakes == 2


async def test_handshake_denied_with_401_reason_reauthenticates(harness: Harness,
                                                                server: FakeBayeux) -> None:
    harness.cached_token = "stale"
    sub = harness.subscriber()
    with pytest.raises(SessionExpired, match="Authentication invalid"):
        await sub.poll_once()
    assert harness.invalidations == 1
    await sub.poll_once()
    assert sub.subscribed_channels == {LEAD}
    assert server.seen[-1].authorization == "Bearer tok-1"


async def test_http_401_reauthenticates(harness: Harness, server: FakeBayeux) -> None:
    async def unauthorized(_: web.Request, __: list[Message]) -> web.StreamResponse:
        return web.json_response([{"errorCode": "INVALID_SESSION_ID"}], status=401)

    sub = harness.subscriber()
    await sub.poll_once()
    server.overrides.append(unauthorized)
    with pytest.raises(SessionExpired):
        await sub.poll_once()
    assert harness.invalidations == 1 and sub.client_id is None
    await sub.poll_once()
    assert sub.subscribed_channels == {LEAD} and harness.token_fetches == 2


async def test_fatal_handshake_refusal(harness: Harness, server: FakeBayeux) -> None:
    async def refuse(_: web.Request, messages: list[Message]) -> web.StreamResponse:
        return web.json_response([{
            "channel": "/meta/handshake", "id": messages[0]["id"], "successful": False,
            "error": "403::Handshake denied",
            "ext": {"sfdc": {"failureReason": "400::Unsupported API version. Only API versions "
                                              "'37.0' and later are supported."}}}])

    server.overrides.append(refuse)
    with pytest.raises(FatalError, match="Unsupported API version"):
        await harness.subscriber().poll_once()


async def test_server_pushed_disconnect_reconnects(harness: Harness,
                                                   server: FakeBayeux) -> None:
    sub = harness.subscriber()
    await sub.poll_once()
    harness.store[LEAD] = 8
    server.connect_extra = [{"channel": "/meta/disconnect", "successful": True}]
    server.outbox = [data_message(LEAD, 9)]
    batch = await sub.poll_once()
    # Data delivered alongside the disconnect is still handed over before reconnecting.
    assert len(batch) == 1 and sub.client_id is None
    assert sub.stats.server_disconnects == 1
    server.outbox = [data_message(LEAD, 10)]
    assert len(await sub.poll_once()) == 1
    assert server.subscribe_log[-1] == (LEAD, 8) and sub.stats.handshakes == 2


async def test_advice_interval_and_reconnect_handshake(harness: Harness,
                                                       server: FakeBayeux) -> None:
    sub = harness.subscriber()
    server.connect_advice = {"interval": 1500, "timeout": 110000, "reconnect": "retry"}
    await sub.poll_once()
    assert sub.next_poll_delay_s == 1.5 and sub.client_id == "client-1"
    server.connect_advice = {"interval": 0, "reconnect": "handshake"}
    await sub.poll_once()
    assert sub.next_poll_delay_s == 0.0 and sub.client_id is None
    await sub.poll_once()
    assert sub.client_id == "client-2"


async def test_failed_connect_with_retry_advice_backs_off(harness: Harness,
                                                          server: FakeBayeux) -> None:
    async def busy(_: web.Request, messages: list[Message]) -> web.StreamResponse:
        return web.json_response([{
            "channel": "/meta/connect", "id": messages[0]["id"], "successful": False,
            "error": "503::Server is too busy", "advice": {"reconnect": "retry"}}])

    sub = harness.subscriber(backoff_base_s=0.5)
    await sub.poll_once()
    server.overrides.extend([busy, busy])
    await sub.poll_once()
    assert sub.next_poll_delay_s == 0.5 and sub.client_id == "client-1"
    await sub.poll_once()
    assert sub.next_poll_delay_s == 1.0
    await sub.poll_once()
    assert sub.next_poll_delay_s == 0.0 and sub.stats.handshakes == 1


async def test_watchdog_tears_down_a_silent_connect(harness: Harness,
                                                    server: FakeBayeux) -> None:
    async def hang(_: web.Request, __: list[Message]) -> None:
        await server.release.wait()
        return None

    # A real clock here: the hung connect must time out by the watchdog deadline.
    loop = asyncio.get_running_loop()
    sub = harness.subscriber(watchdog_s=0.3, long_poll_timeout_s=0.3, clock=loop.time)
    await sub.poll_once()
    server.overrides.append(hang)
    with pytest.raises(TransientError, match="cometd/connect: no reply in time"):
        await sub.poll_once()
    assert sub.client_id == "client-1"
    server.outbox = [data_message(LEAD, 4)]
    batch = await sub.poll_once()
    assert sub.stats.watchdog_trips == 1 and sub.stats.handshakes == 2
    assert sub.subscribed_channels == {LEAD} and len(batch) == 1


async def test_idle_refresh_resubscribes_from_the_store(harness: Harness,
                                                        server: FakeBayeux) -> None:
    sub = harness.subscriber(idle_resubscribe_s=10.0)
    await sub.poll_once()
    harness.store[LEAD] = 77
    harness.now += 11.0
    await sub.poll_once()
    assert sub.stats.idle_refreshes == 1 and server.subscribe_log[-1] == (LEAD, 77)


def _status(status: int, body: bytes = b"oops", headers: dict[str, str] | None = None
                  ) -> Override:
    async def respond(_: web.Request, __: list[Message]) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)
    return respond


async def _drop(request: web.Request, _: list[Message]) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.close()
    return web.Response()


async def test_transport_errors_back_off_and_recover(harness: Harness,
                                                     server: FakeBayeux) -> None:
    sub = harness.subscriber(backoff_base_s=1.0, backoff_max_s=4.0)
    await sub.poll_once()
    server.overrides.extend([
        _status(500), _status(200, b"<html>not json</html>"), _drop,
        _status(502), _status(429, b"", {"Retry-After": "3"}),
        _status(200, b'"a string"'),
    ])
    errors = []
    kinds: list[RetriableError] = []
    delays = []
    for _ in range(6):  # 429 is RateLimited, the rest TransientError (one mapping for all)
        with pytest.raises(RetriableError) as info:
            await sub.poll_once()
        errors.append(str(info.value))
        kinds.append(info.value)
        delays.append(sub.next_poll_delay_s)
    assert "HTTP 500" in errors[0] and "not JSON" in errors[1] and "HTTP 429" in errors[4]
    assert "not a JSON array" in errors[5]
    assert isinstance(kinds[4], RateLimited) and kinds[4].retry_after_s == 3.0
    # Exponential, capped, and at least Retry-After (jitter pinned to its top by rng=1.0).
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    server.outbox = [data_message(LEAD, 2)]
    assert len(await sub.poll_once()) == 1
    assert sub.next_poll_delay_s == 0.0 and sub.stats.handshakes == 1


async def test_jitter_spreads_delays(harness: Harness, server: FakeBayeux) -> None:
    sub = harness.subscriber(backoff_base_s=2.0, rng=lambda: 0.0)
    await sub.poll_once()
    server.overrides.append(_status(503))
    with pytest.raises(TransientError):
        await sub.poll_once()
    assert sub.next_poll_delay_s == 1.0


async def test_messages_never_crashes_on_transport_errors(harness: Harness,
                                                          server: FakeBayeux) -> None:
    sub = harness.subscriber(backoff_base_s=0.25)
    server.overrides.extend([_status(503), _drop, _status(500)])
    server.outbox = [data_message(LEAD, 1)]
    stream = sub.messages()
    message = await anext(stream)
    assert message["data"]["event"]["replayId"] == 1
    # Handshake errors are bounded by the handshake gate, not the poll backoff.
    assert sub.stats.failures == 3 and sub.stats.handshakes == 4
    assert harness.delays == [0.25, 0.5, 1.0]
    await stream.aclose()


async def test_handshake_rate_is_bounded(harness: Harness, server: FakeBayeux) -> None:
    async def unknown(_: web.Request, messages: list[Message]) -> web.StreamResponse:
        return web.json_response([{"channel": "/meta/connect", "id": messages[0]["id"],
                                   "successful": False, "error": "403::Unknown client",
                                   "advice": {"reconnect": "handshake", "interval": 0}}])

    sub = harness.subscriber(min_handshake_interval_s=1.0, backoff_base_s=1.0,
                             handshake_backoff_max_s=8.0)
    for _ in range(6):
        # handshake, subscribe pass through; the connect always says "Unknown client".
        server.overrides.extend([_passthrough, _passthrough, unknown])
        await sub.poll_once()
    assert sub.stats.handshakes == 6 and sub.stats.unknown_clients == 6
    assert harness.delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    # A successful connect resets the streak: the next handshake waits only the minimum.
    await sub.poll_once()
    await sub.poll_once()
    server.forget_all()
    await sub.poll_once()
    await sub.poll_once()
    assert harness.delays[-1] == 1.0


async def test_protocol_garbage_is_survived_and_bad_data_yielded(harness: Harness,
                                                                 server: FakeBayeux) -> None:
    sub = harness.subscriber()
    await sub.poll_once()
    malformed = {"channel": LEAD, "data": "not-an-object"}
    server.connect_extra = [17, "x", None, {"no": "channel"}, {"channel": "/meta/weird"},
                            malformed]
    batch = await sub.poll_once()
    assert batch == [malformed]
    assert sub.stats.protocol_garbage == 5 and sub.client_id == "client-1"


async def test_reply_without_connect_answer_backs_off(harness: Harness,
                                                      server: FakeBayeux) -> None:
    async def only_data(_: web.Request, __: list[Message]) -> web.StreamResponse:
        return web.json_response([data_message(LEAD, 5)])

    sub = harness.subscriber(backoff_base_s=0.5)
    await sub.poll_once()
    server.overrides.append(only_data)
    batch = await sub.poll_once()
    assert len(batch) == 1 and sub.next_poll_delay_s == 0.5 and sub.client_id == "client-1"


async def test_unknown_client_without_channel_field(harness: Harness,
                                                    server: FakeBayeux) -> None:
    async def bare(_: web.Request, __: list[Message]) -> web.StreamResponse:
        return web.json_response({"error": "403::Unknown client", "successful": False,
                                  "advice": {"interval": 0, "reconnect": "none"}})

    sub = harness.subscriber()
    await sub.poll_once()
    server.overrides.append(bare)
    await sub.poll_once()
    assert sub.client_id is None and sub.stats.unknown_clients == 1
    await sub.poll_once()
    assert sub.subscribed_channels == {LEAD}


async def test_missing_cookie_is_reported(harness: Harness, server: FakeBayeux) -> None:
    async def strip_cookie(request: web.Request, messages: list[Message]) -> web.StreamResponse:
        response = await server.respond(request, messages)
        del response.cookies["BAYEUX_BROWSER"]
        return response

    sub = harness.subscriber()
    server.overrides.append(strip_cookie)
    with pytest.raises(TransientError, match="no BAYEUX_BROWSER cookie"):
        await sub.poll_once()


async def test_close_sends_disconnect_and_stops_messages(harness: Harness,
                                                         server: FakeBayeux) -> None:
    sub = harness.subscriber()
    await sub.poll_once()
    await sub.close()
    assert server.seen[-1].messages[0]["channel"] == "/meta/disconnect"
    assert server.seen[-1].messages[0]["clientId"] == "client-1"
    assert server.clients == set() and sub.client_id is None
    assert [m async for m in sub.messages()] == []
    with pytest.raises(RuntimeError, match="closed"):
        await sub.poll_once()
    await sub.close()


async def test_close_is_best_effort(harness: Harness, server: FakeBayeux) -> None:
    sub = harness.subscriber()
    await sub.poll_once()
    server.overrides.append(_drop)
    await sub.close()
    assert sub.client_id is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"channels": []}, "at least one channel"),
    ({"channels": ["data/Lead"]}, "invalid CometD channel"),
    ({"channels": [LEAD, LEAD]}, "duplicate"),
    ({"initial_replay": 5}, "initial_replay"),
    ({"watchdog_s": 10.0, "long_poll_timeout_s": 20.0}, "watchdog_s"),
    ({"idle_resubscribe_s": 0.0}, "idle_resubscribe_s"),
])
async def test_constructor_validates(harness: Harness, kwargs: dict[str, Any],
                                     message: str) -> None:
    options: dict[str, Any] = {"channels": [LEAD], **kwargs}
    with pytest.raises(ValueError, match=message):
        CometdSubscriber(
            harness.session, instance_url="http://127.0.0.1:1", api_version="66.0",
            get_token=harness.get_token, invalidate_token=harness.invalidate,
            replay_from=harness.replay_from, on_replay_invalid=harness.on_invalid, **options)


async def test_stopping_mid_batch_keeps_the_rest_for_the_next_stream(
        harness: Harness, server: FakeBayeux) -> None:
    sub = harness.subscriber()
    server.outbox = [data_message(LEAD, 1), data_message(LEAD, 2), data_message(LEAD, 3)]
    stream = sub.messages()
    assert (await anext(stream))["data"]["event"]["replayId"] == 1
    await stream.aclose()
    again = sub.messages()
    assert (await anext(again))["data"]["event"]["replayId"] == 2
    assert (await anext(again))["data"]["event"]["replayId"] == 3
    assert len(server.connects()) == 1
    await again.aclose()


async def test_data_delivered_with_a_subscribe_reply_is_not_lost(
        harness: Harness, server: FakeBayeux) -> None:
    async def subscribe_with_data(request: web.Request,
                                  messages: list[Message]) -> web.StreamResponse:
        response = await server.respond(request, messages)
        assert isinstance(response.body, bytes)
        replies = [data_message(LEAD, 50), *orjson.loads(response.body)]
        return web.json_response(replies)

    sub = harness.subscriber()
    server.overrides.extend([_passthrough, subscribe_with_data])
    batch = await sub.poll_once()
    assert [m["data"]["event"]["replayId"] for m in batch] == [50]
    assert server.connects() == [] and sub.subscribed_channels == {LEAD}


async def test_a_session_that_raises_for_status_is_handled(server: FakeBayeux) -> None:
    async def unauthorized(_: web.Request, __: list[Message]) -> web.StreamResponse:
        return web.json_response([], status=401)

    async with aiohttp.ClientSession(raise_for_status=True) as session:
        sub = Harness(server, session).subscriber()
        await sub.poll_once()
        server.overrides.append(unauthorized)
        with pytest.raises(SessionExpired):
            await sub.poll_once()


async def test_the_long_poll_loop_needs_what_stamina_cannot_express(
        harness: Harness, server: FakeBayeux, retry_waits: list[float]) -> None:
    """Why the connect loop keeps its own delay instead of a `streamsync.retry.Policy`
    (docs/design.md, "One retry mechanism"): stamina waits only after a raised error and repeats
    the same call; Bayeux asks for a wait after a *successful* reply (advice.interval) and for a
    different next request (advice.reconnect = "handshake")."""
    # 1. A successful connect that delivered data still asks for 1.5 s before the next poll.
    server.outbox = [data_message(LEAD, 1)]
    server.connect_advice = {"interval": 1500, "reconnect": "retry"}
    sub = harness.subscriber()
    stream = sub.messages()
    assert (await anext(stream))["data"]["event"]["replayId"] == 1
    server.outbox = [data_message(LEAD, 2)]
    assert (await anext(stream))["data"]["event"]["replayId"] == 2
    assert harness.delays == [1.5]
    # 2. A successful reply whose advice says "handshake": the next request is not the connect
    # again but a handshake (then a subscribe from the stored replay id).
    server.connect_advice = {"interval": 0, "reconnect": "handshake"}
    server.outbox = [data_message(LEAD, 3)]
    assert (await anext(stream))["data"]["event"]["replayId"] == 3
    server.outbox = [data_message(LEAD, 4)]
    assert (await anext(stream))["data"]["event"]["replayId"] == 4
    after = [s.messages[0]["channel"] for s in server.seen[-3:]]
    assert after == ["/meta/handshake", "/meta/subscribe", "/meta/connect"]
    await stream.aclose()

    # The same two replies through stamina: a success ends the call with no wait, and a retry
    # can only repeat the one callable it was given.
    calls: list[str] = []

    async def connect_once() -> dict[str, Any]:
        calls.append("/meta/connect")
        return {"successful": True, "advice": {"interval": 1500, "reconnect": "handshake"}}

    reply = await Policy(name="cometd").call(connect_once)
    assert reply["advice"]["interval"] == 1500
    assert calls == ["/meta/connect"] and retry_waits == []
