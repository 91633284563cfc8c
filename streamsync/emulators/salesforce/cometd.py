"""The CometD/Bayeux long-polling endpoint as Salesforce runs it for Change Data Capture."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson
from aiohttp import web

from .bus import ALL_CHANGE_EVENTS, EventBus, RetainedEvent, entity_channel

Message = dict[str, Any]

MAX_BODY_BYTES = 32_768
MIN_API_VERSION = 37.0
LONG_POLLING = "long-polling"
COOKIE_NAME = "BAYEUX_BROWSER"
DAY_S = 86_400.0
_BUCKET_S = 3_600.0

ERR_UNKNOWN_CLIENT = "403::Unknown client"
ERR_AUTH_INVALID = "401::Authentication invalid"
ERR_AUTH_MISSING = "401::Request requires authentication"
ERR_HANDSHAKE_DENIED = "403::Handshake denied"
ERR_DAILY_LIMIT = "403::Organization total events daily limit exceeded"
ERR_CONCURRENT = "403::Organization concurrent user limit exceeded"
ERR_NO_CHANNEL = "400::Channel name not specified"
ERR_NO_SLASH = "400::Channel subscriptions must start with a leading '/'"
ERR_RESTRICTED = "403::Restricted channel"
ERR_VERSION_MISSING = "400::API version in the URI is mandatory. URI format: '/cometd/66.0'"
ERR_VERSION_OLD = (
    "400::Unsupported API version. Only API versions '37.0' and later are supported. "
    "URI format: '/cometd/66.0'"
)

_CHANNEL_RE = re.compile(r"^/data/(?:[A-Za-z][A-Za-z0-9_]*__|[A-Z][A-Za-z0-9]*)ChangeEvent$")
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def invalid_replay_error(replay_id: object) -> str:
    """Salesforce's error for a replay id outside retention (two spaces after "invalid.")."""
    return (f"400::The replayId {{{replay_id}}} you provided was invalid.  Please provide a valid "
            "ID, -2 to replay all events, or -1 to replay only new events.")


def replay_map_error(channel: str, replay_map: dict[str, Any]) -> str:
    """Salesforce's error for a replay map that lacks the subscribed channel (Java map text)."""
    shown = ", ".join(f"{key}={value}" for key, value in replay_map.items())
    return (f"400::The replayId for channel {{{channel}}} wasn't found using the provided replay "
            f"ID map {{{{{shown}}}}}. Ensure that the channel name you provided in the replay map "
            "is valid and matches the channel name used for subscribing.")


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <t>` or `OAuth <t>` header, else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() not in ("bearer", "oauth") or not token:
        return None
    return token


def _new_client_id() -> str:
    number = secrets.randbits(130)
    chars = []
    while number:
        number, digit = divmod(number, 36)
        chars.append(_ID_ALPHABET[digit])
    return "".join(chars) or "0"


@dataclass(eq=False)
class _Client:
    """Server-side state of one handshaken Bayeux client."""

    client_id: str
    last_seen: float
    subscriptions: dict[str, int] = field(default_factory=dict)
    connected_once: bool = False
    waiter: asyncio.Future[str] | None = None
    disconnect_pending: bool = False

    def wants(self, event: RetainedEvent) -> bool:
        return any(ch == ALL_CHANGE_EVENTS or ch == event.channel for ch in self.subscriptions)


class _BadRequest(Exception):
    """The HTTP request itself is malformed: answered with HTTP 400."""


class CometdServer:
    """Bayeux over long-polling at /cometd/<version>: handshake, connect, subscribe, replay."""

    def __init__(self, bus: EventBus, check_token: Callable[[str], str], *,
                 long_poll_s: float = 110.0, reconnect_timeout_s: float = 40.0,
                 daily_delivery_limit: int = 50_000, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 2_000, max_batch: int = 1_000,
                 entities: Iterable[str] | None = None) -> None:
        if long_poll_s < 0 or reconnect_timeout_s <= 0:
            raise ValueError("long_poll_s must be >= 0 and reconnect_timeout_s > 0")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch!r}")
        self.bus = bus
        self.check_token = check_token
        self.long_poll_s = long_poll_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self.daily_delivery_limit = daily_delivery_limit
        self.max_clients = max_clients
        self.max_batch = max_batch
        self._clock = clock
        self._channels: frozenset[str] | None = (
            None if entities is None
            else frozenset({ALL_CHANGE_EVENTS, *(entity_channel(e) for e in entities)}))
        self._clients: dict[str, _Client] = {}
        self._buckets: deque[list[float]] = deque()
        self._window_total = 0
        self.deliveries_total = 0
        self.handshakes_total = 0
        bus.add_listener(self._on_publish)

    # ------------------------------------------------------------------ public API

    def register(self, app: web.Application) -> None:
        """Add POST (and the GET upgrade probe) for /cometd/{version} to `app`."""
        app.router.add_route("POST", "/cometd/{version}", self._handle_post)
        app.router.add_route("GET", "/cometd/{version}", self._handle_get)
        app.router.add_route("POST", "/cometd", self._handle_post)
        app.router.add_route("POST", "/cometd/", self._handle_post)
        app.on_shutdown.append(self._release_on_shutdown)

    async def _release_on_shutdown(self, app: web.Application) -> None:
        """Answer every pending long poll so the server can stop without waiting them out."""
        self.forget_all_clients()

    def forget_all_clients(self) -> int:
        """Drop every client: its next call gets 403::Unknown client. Returns how many."""
        clients = list(self._clients.values())
        for client in clients:
            self._forget(client, "forgotten")
        return len(clients)

    def push_disconnect(self) -> int:
        """Send /meta/disconnect to every client (now if polling, else on its next connect)."""
        self._sweep()
        for client in self._clients.values():
            client.disconnect_pending = True
            self._wake(client, "server-disconnect")
        return len(self._clients)

    def stats(self) -> dict[str, Any]:
        """Counters for the control API and /limits."""
        self._sweep()
        return {
            "clients": len(self._clients),
            "polling": sum(1 for c in self._clients.values() if c.waiter is not None),
            "subscriptions": sum(len(c.subscriptions) for c in self._clients.values()),
            "handshakes": self.handshakes_total,
            "deliveries": self.deliveries_total,
            "deliveries_24h": self.deliveries_24h(),
            "daily_delivery_limit": self.daily_delivery_limit,
            "retained_events": len(self.bus),
            "latest_replay_id": self.bus.latest_replay_id,
        }

    def deliveries_24h(self) -> int:
        """Events delivered to subscribers over the rolling 24 hours."""
        cutoff = self._clock() - DAY_S
        while self._buckets and self._buckets[0][0] + _BUCKET_S <= cutoff:
            self._window_total -= int(self._buckets.popleft()[1])
        return self._window_total

    # ------------------------------------------------------------------ HTTP layer

    async def _handle_get(self, request: web.Request) -> web.Response:
        return web.Response(status=400, text="400::Only long-polling over POST is supported\n")

    async def _handle_post(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_body(request)
        if body is None:
            return web.Response(status=413, reason="Maximum Request Size Exceeded",
                                text="413::Maximum Request Size Exceeded\n")
        try:
            messages = self._parse(body, request.content_type)
        except _BadRequest as exc:
            reply = [{"successful": False, "error": f"400::{exc}"}]
            return web.Response(status=400, body=orjson.dumps(reply),
                                content_type="application/json")
        payload, new_client = await self._process(request, messages)
        response = web.Response(body=payload, content_type="application/json")
        if new_client is not None:
            response.set_cookie(COOKIE_NAME, new_client, path="/", httponly=True)
        return response

    @staticmethod
    async def _read_body(request: web.Request) -> bytes | None:
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.read(65_536)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _parse(body: bytes, content_type: str) -> list[Message]:
        if content_type == "application/x-www-form-urlencoded":
            fields = parse_qs(body.decode("utf-8", "replace"))
            if "message" not in fields:
                raise _BadRequest("Form body must carry a 'message' field")
            body = fields["message"][0].encode()
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _BadRequest(f"Request body is not valid JSON: {exc}") from None
        if not isinstance(parsed, list):
            raise _BadRequest("Request body must be a JSON array of Bayeux messages")
        if not parsed or not all(isinstance(m, dict) for m in parsed):
            raise _BadRequest("Request body must be a non-empty JSON array of message objects")
        return parsed

    # ------------------------------------------------------------------ Bayeux layer

    async def _process(self, request: web.Request,
                       messages: list[Message]) -> tuple[bytes, str | None]:
        version_error = self._version_error(request.match_info.get("version", ""))
        token = bearer_token(request.headers.get("Authorization"))
        auth = self.check_token(token) if token is not None else "missing"
        replies: list[Message] = []
        connected: list[_Client] = []
        new_client: str | None = None
        pushed: list[Message] = []
        for message in messages:
            if message.get("channel") == "/meta/handshake":
                reply = self._handshake(message, version_error, auth)
                if reply.get("successful"):
                    new_client = reply["clientId"]
            elif version_error is not None:
                reply = self._reply(message, successful=False, error=version_error,
                                    advice={"reconnect": "none", "interval": 0})
            else:
                reply = await self._session_message(request, message, auth,
                                                    len(messages) == 1, connected, pushed)
            replies.append(reply)
        parts: list[bytes] = [orjson.dumps(m) for m in pushed]
        transport = request.transport
        if transport is not None and not transport.is_closing():
            for client in connected:
                if self._clients.get(client.client_id) is client:
                    parts.extend(self._collect(client))
        parts.extend(orjson.dumps(r) for r in replies)
        return b"[" + b",".join(parts) + b"]", new_client

    async def _session_message(self, request: web.Request, message: Message, auth: str,
                               alone: bool, connected: list[_Client],
                               pushed: list[Message]) -> Message:
        """The reply to one message of an established session (all but handshake)."""
        channel = message.get("channel")
        if channel == "/meta/connect":
            return await self._connect(request, message, auth, alone, connected, pushed)
        if channel == "/meta/subscribe":
            return self._subscribe(message, auth)
        if channel == "/meta/unsubscribe":
            return self._unsubscribe(message, auth)
        if channel == "/meta/disconnect":
            return self._disconnect(message)
        if not isinstance(channel, str) or not channel:
            return self._reply(message, successful=False, error=ERR_NO_CHANNEL)
        if channel.startswith("/meta/"):
            return self._reply(message, successful=False,
                               error=f"400::Unknown meta channel {channel}")
        return self._reply(message, successful=False, error=ERR_RESTRICTED)

    @staticmethod
    def _reply(message: Message, **fields: Any) -> Message:
        reply: Message = {"channel": message.get("channel")}
        if "id" in message:
            reply["id"] = message["id"]
        if isinstance(message.get("clientId"), str):
            reply["clientId"] = message["clientId"]
        if message.get("channel") in ("/meta/subscribe", "/meta/unsubscribe") \
                and "subscription" in message:
            reply["subscription"] = message["subscription"]
        reply.update(fields)
        return reply

    def _unknown_client(self, message: Message) -> Message:
        return self._reply(message, successful=False, error=ERR_UNKNOWN_CLIENT,
                           advice={"interval": 0, "reconnect": "handshake"})

    @staticmethod
    def _version_error(version: str) -> str | None:
        if not version:
            return ERR_VERSION_MISSING
        try:
            number = float(version)
        except ValueError:
            return ERR_VERSION_OLD
        return ERR_VERSION_OLD if number < MIN_API_VERSION else None

    def _lookup(self, message: Message) -> _Client | None:
        client_id = message.get("clientId")
        if not isinstance(client_id, str):
            return None
        client = self._clients.get(client_id)
        if client is not None and self._expired(client):
            self._forget(client, "expired")
            return None
        return client

    def _expired(self, client: _Client) -> bool:
        return (client.waiter is None
                and self._clock() - client.last_seen > self.reconnect_timeout_s)

    def _sweep(self) -> None:
        for client in [c for c in self._clients.values() if self._expired(c)]:
            self._forget(client, "expired")

    def _forget(self, client: _Client, reason: str) -> None:
        if self._clients.get(client.client_id) is client:
            del self._clients[client.client_id]
        self._wake(client, reason)

    @staticmethod
    def _wake(client: _Client, reason: str) -> None:
        if client.waiter is not None and not client.waiter.done():
            client.waiter.set_result(reason)

    def _on_publish(self, event: RetainedEvent) -> None:
        for client in self._clients.values():
            if client.waiter is not None and client.wants(event):
                self._wake(client, "event")

    # ------------------------------------------------------------------ meta channels

    def _handshake(self, message: Message, version_error: str | None, auth: str) -> Message:
        failure: str | None = version_error
        if failure is None and auth != "ok":
            failure = ERR_AUTH_MISSING if auth == "missing" else ERR_AUTH_INVALID
        offered = message.get("supportedConnectionTypes")
        if failure is None and isinstance(offered, list) and LONG_POLLING not in offered:
            failure = f"400::Invalid connection type {','.join(map(str, offered))}"
        if failure is None:
            self._sweep()
            if len(self._clients) >= self.max_clients:
                failure = ERR_CONCURRENT
        if failure is not None:
            reply = self._reply(message, successful=False, error=ERR_HANDSHAKE_DENIED,
                                ext={"sfdc": {"failureReason": failure}},
                                advice={"reconnect": "none"})
            reply.pop("clientId", None)
            return reply
        client = _Client(_new_client_id(), last_seen=self._clock())
        self._clients[client.client_id] = client
        self.handshakes_total += 1
        reply = self._reply(message, successful=True)
        reply.update({
            "ext": {"replay": True, "payload.format": True},
            "minimumVersion": "1.0",
            "clientId": client.client_id,
            "supportedConnectionTypes": [LONG_POLLING],
            "version": "1.0",
        })
        return reply

    async def _connect(self, request: web.Request, message: Message, auth: str, alone: bool,
                       connected: list[_Client], pushed: list[Message]) -> Message:
        if auth != "ok":
            stale = self._clients.get(str(message.get("clientId")))
            if stale is not None:
                self._forget(stale, "auth")
            return self._auth_failed(message, auth)
        client = self._lookup(message)
        if client is None:
            return self._unknown_client(message)
        connection_type = message.get("connectionType", LONG_POLLING)
        if connection_type != LONG_POLLING:
            return self._reply(message, successful=False,
                               error=f"400::Invalid connection type {connection_type}",
                               advice={"reconnect": "none", "interval": 0})
        self._wake(client, "superseded")
        if not client.disconnect_pending and self.deliveries_24h() >= self.daily_delivery_limit:
            client.last_seen = self._clock()
            return self._reply(message, successful=False, error=ERR_DAILY_LIMIT,
                               advice={"reconnect": "none", "interval": 0})
        first = not client.connected_once
        client.connected_once = True
        if alone and not first and not client.disconnect_pending \
                and not self._has_pending(client):
            reason = await self._long_poll(client, self._poll_timeout(message))
            if reason == "superseded":
                return self._reply(message, successful=True)
            if reason == "disconnected":
                return self._reply(message, successful=True,
                                   advice={"reconnect": "none", "interval": 0})
            if self._clients.get(client.client_id) is not client:
                return self._unknown_client(message)
        client.last_seen = self._clock()
        if client.disconnect_pending:
            self._forget(client, "server-disconnect")
            pushed.append({"channel": "/meta/disconnect", "clientId": client.client_id,
                           "successful": True})
            return self._reply(message, successful=True,
                               advice={"reconnect": "handshake", "interval": 0})
        connected.append(client)
        if first:
            return self._reply(message, successful=True,
                               advice={"interval": 0, "timeout": int(self.long_poll_s * 1000),
                                       "reconnect": "retry"})
        return self._reply(message, successful=True)

    def _poll_timeout(self, message: Message) -> float:
        advice = message.get("advice")
        if isinstance(advice, dict):
            asked = advice.get("timeout")
            if isinstance(asked, int | float) and not isinstance(asked, bool) and asked >= 0:
                return min(self.long_poll_s, asked / 1000)
        return self.long_poll_s

    async def _long_poll(self, client: _Client, timeout_s: float) -> str:
        if timeout_s <= 0:
            return "timeout"
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[str] = loop.create_future()
        client.waiter = waiter
        handle = loop.call_later(timeout_s, self._wake, client, "timeout")
        try:
            return await waiter
        finally:
            handle.cancel()
            if client.waiter is waiter:
                client.waiter = None
            client.last_seen = self._clock()

    def _has_pending(self, client: _Client) -> bool:
        """True if some retained event awaits `client`; skips its cursors past the rest."""
        subscriptions = client.subscriptions
        if not subscriptions:
            return False
        scanned = -1
        items = list(subscriptions.items())
        for event in self.bus.events_after(min(subscriptions.values())):
            for channel, position in items:
                if event.replay_id > position and (
                        channel == ALL_CHANGE_EVENTS or channel == event.channel):
                    return True
            scanned = event.replay_id
        for channel, position in items:
            if scanned > position:
                subscriptions[channel] = scanned
        return False

    def _collect(self, client: _Client) -> list[bytes]:
        subscriptions = client.subscriptions
        if not subscriptions:
            return []
        cap = min(self.max_batch, self.daily_delivery_limit - self.deliveries_24h())
        if cap <= 0:
            return []
        out: list[bytes] = []
        scanned = -1
        items = list(subscriptions.items())
        for event in self.bus.events_after(min(subscriptions.values())):
            if len(out) >= cap:
                break
            for channel, position in items:
                if event.replay_id > position and (
                        channel == ALL_CHANGE_EVENTS or channel == event.channel):
                    out.append(event.message(channel))
            scanned = event.replay_id
        if scanned >= 0:
            for channel, position in items:
                if scanned > position:
                    subscriptions[channel] = scanned
        if out:
            self._count_deliveries(len(out))
        return out

    def _count_deliveries(self, count: int) -> None:
        self.deliveries_24h()
        now = self._clock()
        start = now - (now % _BUCKET_S)
        if self._buckets and self._buckets[-1][0] == start:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([start, float(count)])
        self._window_total += count
        self.deliveries_total += count

    def _channel_error(self, channel: object) -> str | None:
        if not isinstance(channel, str) or not channel:
            return ERR_NO_CHANNEL
        if not channel.startswith("/"):
            return ERR_NO_SLASH
        if channel.startswith("/meta/"):
            return ERR_RESTRICTED
        if self._channels is not None:
            known = channel in self._channels
        else:
            known = channel == ALL_CHANGE_EVENTS or _CHANNEL_RE.match(channel) is not None
        if not known:
            return f"400::The channel you requested to subscribe to doesn't exist {channel}"
        return None

    def _auth_failed(self, message: Message, auth: str) -> Message:
        """The reply to a call whose token is missing, expired or revoked."""
        return self._reply(message, successful=False,
                           error=ERR_AUTH_MISSING if auth == "missing" else ERR_AUTH_INVALID,
                           advice={"reconnect": "none", "interval": 0})

    def _session(self, message: Message, auth: str) -> _Client | Message:
        """The caller's client, or the error reply: auth failure or unknown client."""
        if auth != "ok":
            return self._auth_failed(message, auth)
        client = self._lookup(message)
        return self._unknown_client(message) if client is None else client

    def _subscribe(self, message: Message, auth: str) -> Message:
        client = self._session(message, auth)
        if not isinstance(client, _Client):
            return client
        channel = message.get("subscription")
        error = self._channel_error(channel)
        if error is not None:
            return self._reply(message, successful=False, error=error)
        assert isinstance(channel, str)
        if self.deliveries_24h() >= self.daily_delivery_limit:
            return self._reply(message, successful=False, error=ERR_DAILY_LIMIT)
        cursor = self._replay_cursor(message, channel)
        if isinstance(cursor, str):
            return self._reply(message, successful=False, error=cursor)
        client.subscriptions[channel] = cursor
        if client.waiter is not None and self._has_pending(client):
            self._wake(client, "event")
        return self._reply(message, successful=True)

    def _replay_cursor(self, message: Message, channel: str) -> int | str:
        """The position to deliver after, or the error text for a bad replay request."""
        ext = message.get("ext")
        replay_map = ext.get("replay") if isinstance(ext, dict) else None
        if replay_map is None:
            return self.bus.latest_replay_id
        if not isinstance(replay_map, dict) or channel not in replay_map:
            shown = replay_map if isinstance(replay_map, dict) else {}
            return replay_map_error(channel, shown)
        raw = replay_map[channel]
        replay_id: int | None = None
        if isinstance(raw, int) and not isinstance(raw, bool):
            replay_id = raw
        elif isinstance(raw, str) and re.fullmatch(r"-?\d+", raw.strip()):
            replay_id = int(raw.strip())
        if replay_id == -1:
            return self.bus.latest_replay_id
        if replay_id == -2:
            oldest = self.bus.oldest_replay_id
            return self.bus.latest_replay_id if oldest is None else oldest - 1
        if replay_id is None or replay_id < 0 or not self.bus.is_retained(replay_id):
            return invalid_replay_error(raw)
        return replay_id

    def _unsubscribe(self, message: Message, auth: str) -> Message:
        client = self._session(message, auth)
        if not isinstance(client, _Client):
            return client
        channel = message.get("subscription")
        if not isinstance(channel, str) or not channel:
            return self._reply(message, successful=False, error=ERR_NO_CHANNEL)
        client.subscriptions.pop(channel, None)
        return self._reply(message, successful=True)

    def _disconnect(self, message: Message) -> Message:
        client = self._lookup(message)
        if client is None:
            return self._unknown_client(message)
        self._forget(client, "disconnected")
        return self._reply(message, successful=True)
