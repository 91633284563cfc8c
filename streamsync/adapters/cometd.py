"""A thin Bayeux long-polling client for Salesforce CDC channels that always replays from the store.

Why our own client instead of aiosfstream-ng (docs/design.md §4, docs/salesforce.md §9): on
Python >= 3.10 its reconnect path calls `asyncio.wait_for(loop=...)`, so any transport error ends
`receive()` (docs/design.md §4.1); a subscribe that fails after a re-handshake is dropped silently
and leaves the client connected but deaf (docs/design.md §4.2, docs/salesforce.md §9.1, §9.5); its
aiohttp session drops cookies from 127.0.0.1 (docs/design.md §4.3); and its AUTOMATIC replay
storage commits a replay id before the message is processed (docs/design.md §4.4,
docs/salesforce.md §9.7). The protocol we need is small (docs/salesforce.md §1):
handshake, subscribe with an `ext.replay` map, a connect loop that honours advice, and disconnect.

Contract with the caller: `messages()` yields one data message at a time and fetches more only
when the caller pulls again, so the caller persists each message's ids and replay id (one SQLite
transaction) before the next pull. Every (re)subscribe rebuilds the replay map from the store via
`replay_from(channel)`, never from an id held in memory (docs/salesforce.md §9.3, §9.4). A subscribe
that fails is never ignored: an invalid replay id calls `on_replay_invalid(channel, id)` and
resubscribes that channel with -1; any other failure tears the session down and raises.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

from streamsync.adapters.http import UsageCounter, send, status_error
from streamsync.adapters.salesforce import API, error_for
from streamsync.errors import (
    FatalError,
    RetriableError,
    SessionExpired,
    StreamsyncError,
    TransientError,
    describe_error,
)
from streamsync.logs import get_logger
from streamsync.retry import jitter

log = get_logger(__name__)

ReplayId = str | int
Message = dict[str, Any]

NEW_EVENTS = -1
ALL_RETAINED_EVENTS = -2

_INVALID_REPLAY = re.compile(r"^400::The replayId \{[^}]*\} you provided was invalid")
_INTEGER = re.compile(r"-?\d+")
# Failures that no retry can fix: the configuration or the org's permissions must change.
_FATAL_HANDSHAKE = (
    "400::API version in the URI is mandatory",
    "400::Unsupported API version",
    "400::Invalid connection type",
)
_FATAL_SUBSCRIBE = (
    "400::The channel you requested to subscribe to doesn't exist",
    "400::Channel name not specified",
    "400::Channel subscriptions must start with a leading '/'",
    "403::Restricted channel",
    "403::User not allowed to subscribe",
    "403::Cannot create channel",
)


@dataclass
class SubscriberStats:
    """Counters and timestamps of one subscriber (wall-clock times in epoch seconds)."""

    handshakes: int = 0
    subscribes: int = 0
    resubscribes: int = 0
    reauths: int = 0
    replay_fallbacks: int = 0
    unknown_clients: int = 0
    server_disconnects: int = 0
    watchdog_trips: int = 0
    idle_refreshes: int = 0
    connects: int = 0
    failures: int = 0
    messages: int = 0
    protocol_garbage: int = 0
    last_message_at: float | None = None
    last_connect_ok_at: float | None = None


class CometdSubscriber:
    """Subscribes to CDC channels over CometD and yields data messages, surviving every fault.

    Wiring sketch (one task owns the subscriber; poll_once/messages are not re-entrant):

        sub = CometdSubscriber(http, instance_url=url, api_version="66.0",
                               get_token=auth.access_token, invalidate_token=auth.invalidate,
                               channels=["/data/LeadChangeEvent"], replay_from=store.replay_id,
                               on_replay_invalid=start_reconciliation)
        async for message in sub.messages():
            await store.commit(message)   # record ids + replay id in ONE transaction
        # on shutdown, cancel the consuming task, then:
        await sub.close()                 # after cancelling the consuming task
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        instance_url: str,
        api_version: str,
        get_token: Callable[[], Awaitable[str]],
        invalidate_token: Callable[[], None],
        channels: Sequence[str],
        replay_from: Callable[[str], Awaitable[ReplayId | None]],
        on_replay_invalid: Callable[[str, ReplayId], Awaitable[None]],
        watchdog_s: float = 150.0,
        long_poll_timeout_s: float = 130.0,
        request_timeout_s: float = 30.0,
        initial_replay: int = NEW_EVENTS,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 60.0,
        min_handshake_interval_s: float = 1.0,
        handshake_backoff_max_s: float = 120.0,
        idle_resubscribe_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        counter: UsageCounter | None = None,
    ) -> None:
        """`replay_from(channel)` returns the stored replay id or None (then `initial_replay`,
        -1 or -2, applies). `idle_resubscribe_s`, when set, re-handshakes and resubscribes from
        the store after that long without a data message, catching a server that still answers
        connects but lost the subscriptions (docs/salesforce.md §9.1)."""
        channel_list = list(channels)
        if not channel_list:
            raise ValueError("CometdSubscriber needs at least one channel")
        bad = [c for c in channel_list if not c.startswith("/") or c.startswith("/meta/")]
        if bad:
            raise ValueError(f"invalid CometD channel names: {bad}")
        if len(set(channel_list)) != len(channel_list):
            raise ValueError(f"duplicate CometD channels: {channel_list}")
        if initial_replay not in (NEW_EVENTS, ALL_RETAINED_EVENTS):
            raise ValueError(f"initial_replay must be -1 or -2, got {initial_replay}")
        if long_poll_timeout_s <= 0 or request_timeout_s <= 0:
            raise ValueError("long_poll_timeout_s and request_timeout_s must be positive")
        if watchdog_s < long_poll_timeout_s:
            raise ValueError(
                f"watchdog_s ({watchdog_s}) must be >= long_poll_timeout_s ({long_poll_timeout_s})"
            )
        if idle_resubscribe_s is not None and idle_resubscribe_s <= 0:
            raise ValueError("idle_resubscribe_s must be positive when set")
        self._session = session
        self._url = URL(f"{instance_url.rstrip('/')}/cometd/{api_version.lstrip('v')}")
        self._get_token = get_token
        self._invalidate_token = invalidate_token
        self._channels = channel_list
        self._replay_from = replay_from
        self._on_replay_invalid = on_replay_invalid
        self._watchdog_s = watchdog_s
        self._long_poll_timeout_s = long_poll_timeout_s
        self._request_timeout_s = request_timeout_s
        self._initial_replay = initial_replay
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._min_handshake_interval_s = min_handshake_interval_s
        self._handshake_backoff_max_s = handshake_backoff_max_s
        self._idle_resubscribe_s = idle_resubscribe_s
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._counter = counter
        # Our own jar: unsafe=True keeps cookies set by an IP host such as 127.0.0.1
        # (docs/design.md §4.3; the cookies are required, docs/salesforce.md §1.1).
        self._jar = aiohttp.CookieJar(unsafe=True)
        self._client_id: str | None = None
        self._subscribed: set[str] = set()
        self._buffer: deque[Message] = deque()
        self._next_message_id = 0
        self._last_ok = 0.0
        self._established_at = 0.0
        self._last_data = 0.0
        self._last_handshake_at: float | None = None
        self._handshakes_since_ok = 0
        self._connect_failures = 0
        self._advice_interval_s = 0.0
        self._delay_s = 0.0
        self._closed = False
        self.stats = SubscriberStats()

    # ---- public API ------------------------------------------------------------------------

    @property
    def client_id(self) -> str | None:
        """The Bayeux clientId of the current session, None when not handshaken."""
        return self._client_id

    @property
    def subscribed_channels(self) -> frozenset[str]:
        """Channels the server confirmed for the current session."""
        return frozenset(self._subscribed)

    @property
    def next_poll_delay_s(self) -> float:
        """How long `messages()` waits before the next poll: advice interval or backoff."""
        return self._delay_s

    async def messages(self) -> AsyncGenerator[Message, None]:
        """Yields data messages (raw dicts, as delivered) until `close()`, handling the
        protocol; retriable faults are logged and retried, a FatalError propagates.

        A message leaves the buffer as it is yielded; if the caller stops iterating mid-batch,
        the rest stay buffered for its next `messages()` (the server will not resend them)."""
        while not self._closed:
            if not self._buffer:
                try:
                    self._buffer.extend(await self.poll_once())
                except RetriableError:
                    pass
            while self._buffer and not self._closed:
                yield self._buffer.popleft()
            if self._delay_s > 0 and not self._closed:
                await self._sleep(self._delay_s)

    def take_buffered(self, limit: int) -> list[Message]:
        """Up to `limit` data messages already received and not yet yielded (no I/O): the
        caller stores them together with the one `messages()` just gave it."""
        out: list[Message] = []
        while self._buffer and len(out) < limit:
            out.append(self._buffer.popleft())
        return out

    async def poll_once(self) -> list[Message]:
        """One step: handshake and subscribe if needed, then one connect round trip.

        Returns the data messages received. Raises RetriableError on transport faults and
        failed handshakes or subscribes (the session is then rebuilt on the next call), and
        FatalError when only an operator can fix the cause."""
        if self._closed:
            raise RuntimeError("CometdSubscriber is closed")
        try:
            if self._client_id is not None:
                self._check_watchdog()
            if self._client_id is None:
                await self._establish()
            if self._buffer:
                batch = list(self._buffer)
                self._buffer.clear()
                self._delay_s = 0.0
                return batch
            return await self._connect()
        except RetriableError as exc:
            self.stats.failures += 1
            if self._client_id is None:
                # The handshake gate bounds the rate of the re-handshake that follows; a
                # Retry-After the server sent is waited out first.
                self._delay_s = min(exc.retry_after_s or 0.0, self._backoff_max_s)
            else:
                self._connect_failures += 1
                self._delay_s = self._backoff_s(self._connect_failures, exc.retry_after_s)
            log.warning("cometd.poll_failed", next_delay_s=round(self._delay_s, 3),
                        **describe_error(exc))
            raise

    async def close(self) -> None:
        """Stops `messages()` and sends /meta/disconnect, best effort."""
        self._closed = True
        client_id = self._client_id
        self._teardown("closed")
        if client_id is None:
            return
        message = {"channel": "/meta/disconnect", "clientId": client_id, "id": self._new_id()}
        try:
            await self._post([message], min(self._request_timeout_s, 5.0))
        except StreamsyncError as exc:
            log.info("cometd.disconnect_failed", **describe_error(exc))

    # ---- session lifecycle -----------------------------------------------------------------

    def _teardown(self, reason: str) -> None:
        if self._client_id is not None:
            log.info("cometd.session_dropped", reason=reason, client_id=self._client_id)
        self._client_id = None
        self._subscribed.clear()

    def _check_watchdog(self) -> None:
        now = self._clock()
        if now - self._last_ok >= self._watchdog_s:
            self.stats.watchdog_trips += 1
            log.warning("cometd.watchdog", silent_s=round(now - self._last_ok, 3))
            self._teardown("watchdog")
        elif (
            self._idle_resubscribe_s is not None
            and now - max(self._last_data, self._established_at) >= self._idle_resubscribe_s
        ):
            self.stats.idle_refreshes += 1
            self._teardown("idle_refresh")

    async def _establish(self) -> None:
        try:
            await self._handshake()
            await self._subscribe_all()
        except BaseException:
            self._teardown("establish_failed")
            raise

    async def _handshake(self) -> None:
        delay_s = self._handshake_delay_s()
        if delay_s > 0:
            log.info("cometd.handshake_delayed", delay_s=round(delay_s, 3))
            await self._sleep(delay_s)
        self._last_handshake_at = self._clock()
        self._handshakes_since_ok += 1
        self.stats.handshakes += 1
        message_id = self._new_id()
        replies = await self._post(
            [{
                "channel": "/meta/handshake",
                "version": "1.0",
                "minimumVersion": "1.0",
                "supportedConnectionTypes": ["long-polling"],
                "id": message_id,
            }],
            self._request_timeout_s,
        )
        reply = self._meta_reply(replies, "/meta/handshake", message_id)
        if reply is None:
            raise TransientError("CometD handshake: no handshake reply in the response")
        if reply.get("successful") is not True:
            raise self._handshake_error(reply)
        client_id = reply.get("clientId")
        if not isinstance(client_id, str) or not client_id:
            raise TransientError("CometD handshake: successful reply without a clientId")
        self._client_id = client_id
        self._take_advice(reply)
        now = self._clock()
        self._last_ok = now
        self._established_at = now
        log.info("cometd.handshake_ok", client_id=client_id)

    def _handshake_delay_s(self) -> float:
        """Bounded handshake rate (docs/salesforce.md §9.2): a minimum interval, and exponential
        backoff while handshakes are not followed by a successful connect."""
        if self._last_handshake_at is None:
            return 0.0
        since_s = self._clock() - self._last_handshake_at
        wait_s = self._min_handshake_interval_s
        if self._handshakes_since_ok > 0:
            base_s = max(self._min_handshake_interval_s, self._backoff_base_s)
            wait_s = max(
                wait_s,
                self._jittered(base_s, self._handshakes_since_ok, self._handshake_backoff_max_s),
            )
        return max(0.0, wait_s - since_s)

    def _handshake_error(self, reply: Message) -> StreamsyncError:
        error = str(reply.get("error") or "")
        ext = reply.get("ext")
        sfdc = ext.get("sfdc") if isinstance(ext, dict) else None
        reason = sfdc.get("failureReason") if isinstance(sfdc, dict) else None
        detail = f"{error} ({reason})" if reason else error
        why = str(reason or error)
        if why.startswith("401::"):
            self._reauthenticate()
            return SessionExpired(f"CometD handshake denied: {detail}")
        if why.startswith(_FATAL_HANDSHAKE):
            return FatalError(f"CometD handshake refused at {self._url}: {detail}")
        return TransientError(f"CometD handshake failed: {detail or 'no error given'}")

    def _reauthenticate(self) -> None:
        self.stats.reauths += 1
        self._invalidate_token()

    # ---- subscribe -------------------------------------------------------------------------

    async def _subscribe_all(self) -> None:
        self.stats.subscribes += 1
        if self.stats.subscribes > 1:
            self.stats.resubscribes += 1
        stored = {channel: await self._replay_from(channel) for channel in self._channels}
        replay = {
            channel: _wire_replay(value, self._initial_replay) for channel, value in stored.items()
        }
        rejected = await self._subscribe(replay)
        if rejected:
            # Subscribe with -1 first, then report: a change committed meanwhile is either
            # delivered on the new subscription or seen by the catch-up the caller starts in
            # `on_replay_invalid` (its events are handled only after this method returns).
            again = await self._subscribe({channel: NEW_EVENTS for channel in rejected})
            if again:
                raise TransientError(f"CometD subscribe with replay -1 rejected for {list(again)}")
            for channel, sent in rejected.items():
                self.stats.replay_fallbacks += 1
                log.warning("cometd.replay_invalid", channel=channel, replay_id=str(sent))
                # The caller gets the id as its store holds it, to compare or clear it.
                original = stored[channel]
                await self._on_replay_invalid(channel, sent if original is None else original)
        log.info("cometd.subscribed", channels=sorted(self._subscribed), replay=str(replay))

    async def _subscribe(self, replay: dict[str, ReplayId]) -> dict[str, ReplayId]:
        """Subscribes the channels in one POST; returns those whose replay id was rejected."""
        client_id = self._require_client()
        by_id: dict[str, str] = {}
        messages: list[Message] = []
        for channel, replay_id in replay.items():
            message_id = self._new_id()
            by_id[message_id] = channel
            messages.append({
                "channel": "/meta/subscribe",
                "clientId": client_id,
                "subscription": channel,
                "id": message_id,
                "ext": {"replay": {channel: replay_id}},
            })
        replies = await self._post(messages, self._request_timeout_s)
        answers: dict[str, Message] = {}
        for reply in replies:
            channel_name = reply.get("channel")
            if isinstance(channel_name, str) and not channel_name.startswith("/meta/"):
                self._buffer.append(reply)
                continue
            if channel_name not in ("/meta/subscribe", None):
                continue
            target = by_id.get(str(reply.get("id")), reply.get("subscription"))
            if isinstance(target, str) and target in replay:
                answers[target] = reply
        rejected: dict[str, ReplayId] = {}
        for channel, replay_id in replay.items():
            answer = answers.get(channel)
            if answer is None:
                raise TransientError(f"CometD subscribe to {channel}: no reply in the response")
            if answer.get("successful") is True:
                self._subscribed.add(channel)
                continue
            error = str(answer.get("error") or "")
            if _INVALID_REPLAY.match(error):
                rejected[channel] = replay_id
                continue
            raise self._subscribe_error(channel, error)
        return rejected

    def _subscribe_error(self, channel: str, error: str) -> StreamsyncError:
        if error.startswith("401::"):
            self._reauthenticate()
            return SessionExpired(f"CometD subscribe to {channel} denied: {error}")
        if error.startswith(_FATAL_SUBSCRIBE):
            return FatalError(f"cannot subscribe to CometD channel {channel}: {error}")
        if "Unknown client" in error:
            self.stats.unknown_clients += 1
        return TransientError(f"CometD subscribe to {channel} failed: {error or 'no error given'}")

    # ---- connect ---------------------------------------------------------------------------

    async def _connect(self) -> list[Message]:
        client_id = self._require_client()
        message_id = self._new_id()
        remaining_s = self._last_ok + self._watchdog_s - self._clock()
        timeout_s = min(self._long_poll_timeout_s, max(remaining_s, 0.001))
        replies = await self._post(
            [{
                "channel": "/meta/connect",
                "clientId": client_id,
                "connectionType": "long-polling",
                "id": message_id,
            }],
            timeout_s,
        )
        self.stats.connects += 1
        data: list[Message] = []
        reply: Message | None = None
        pushed_disconnect = False
        for message in replies:
            channel = message.get("channel")
            if isinstance(channel, str) and not channel.startswith("/meta/"):
                data.append(message)
            elif channel == "/meta/disconnect":
                pushed_disconnect = True
            elif channel == "/meta/connect" or (channel is None and "successful" in message):
                if reply is None or str(message.get("id")) == message_id:
                    reply = message
            else:
                self.stats.protocol_garbage += 1
                log.debug("cometd.unexpected_message", channel=str(channel))
        if data:
            self.stats.messages += len(data)
            self.stats.last_message_at = time.time()
            self._last_data = self._clock()
        self._after_connect(reply, pushed_disconnect)
        return data

    def _after_connect(self, reply: Message | None, pushed_disconnect: bool) -> None:
        """Acts on the connect reply: keep going, back off, re-authenticate or re-handshake."""
        if reply is not None and reply.get("successful") is True:
            self._last_ok = self._clock()
            self.stats.last_connect_ok_at = time.time()
            self._handshakes_since_ok = 0
            self._connect_failures = 0
            reconnect = self._take_advice(reply)
            self._delay_s = self._advice_interval_s
            if pushed_disconnect or reconnect in ("handshake", "none"):
                self._server_dropped(pushed_disconnect, reconnect)
            return
        if pushed_disconnect:
            self._server_dropped(True, None)
            return
        self.stats.failures += 1
        if reply is None:
            self.stats.protocol_garbage += 1
            self._connect_failures += 1
            self._delay_s = self._backoff_s(self._connect_failures, None)
            log.warning("cometd.connect_no_reply", next_delay_s=round(self._delay_s, 3))
            return
        error = str(reply.get("error") or "")
        reconnect = self._take_advice(reply)
        log.warning("cometd.connect_failed", error=error, reconnect=str(reconnect))
        if error.startswith("401::"):
            self._reauthenticate()
            self._teardown("session_expired")
            self._delay_s = 0.0
        elif "Unknown client" in error or "not completed handshake" in error:
            self.stats.unknown_clients += 1
            self._teardown("unknown_client")
            self._delay_s = 0.0
        elif reconnect in ("handshake", "none"):
            # A service never gives up; the handshake gate keeps this from becoming a storm.
            self._teardown(f"advice_{reconnect}")
            self._delay_s = 0.0
        else:
            self._connect_failures += 1
            self._delay_s = max(
                self._advice_interval_s, self._backoff_s(self._connect_failures, None)
            )

    def _server_dropped(self, pushed_disconnect: bool, reconnect: object) -> None:
        if pushed_disconnect:
            self.stats.server_disconnects += 1
        self._teardown("server_disconnect" if pushed_disconnect else f"advice_{reconnect}")
        self._delay_s = 0.0

    def _take_advice(self, reply: Message) -> object:
        """Stores advice.interval; returns advice.reconnect (None when absent)."""
        advice = reply.get("advice")
        if not isinstance(advice, dict):
            return None
        interval_ms = advice.get("interval")
        if isinstance(interval_ms, int | float) and not isinstance(interval_ms, bool):
            self._advice_interval_s = min(max(float(interval_ms) / 1000.0, 0.0),
                                          self._backoff_max_s)
        return advice.get("reconnect")

    # ---- transport -------------------------------------------------------------------------

    async def _post(self, messages: list[Message], timeout_s: float) -> list[Message]:
        """POSTs a JSON array of messages; returns the reply messages (dicts only)."""
        token = await self._get_token()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        resp = await send(self._session, "POST", str(self._url), api=API,
                          endpoint=_endpoint(messages),
                          counter=self._counter, headers=headers, data=orjson.dumps(messages),
                          timeout_s=timeout_s, cookie_jar=self._jar)
        status = resp.status
        if status in (401, 408, 429) or status >= 500:
            error = status_error(resp, error_for)
            if isinstance(error, SessionExpired):
                self._reauthenticate()
                self._teardown("http_401")
            raise error
        decoded = resp.json()
        if isinstance(decoded, dict):
            decoded = [decoded]
        if not isinstance(decoded, list):
            raise TransientError(f"CometD reply (HTTP {status}) is not a JSON array of messages")
        replies = [m for m in decoded if isinstance(m, dict)]
        self.stats.protocol_garbage += len(decoded) - len(replies)
        if status != 200 and not replies:
            raise TransientError(f"CometD request to {self._url} answered HTTP {status}")
        return replies

    # ---- helpers ---------------------------------------------------------------------------

    def _require_client(self) -> str:
        if self._client_id is None:
            raise RuntimeError("CometD operation needs a handshaken session")
        return self._client_id

    def _new_id(self) -> str:
        self._next_message_id += 1
        return str(self._next_message_id)

    @staticmethod
    def _meta_reply(replies: list[Message], channel: str, message_id: str) -> Message | None:
        candidates = [
            m for m in replies
            if m.get("channel") == channel or (m.get("channel") is None and "successful" in m)
        ]
        for message in candidates:
            if str(message.get("id")) == message_id:
                return message
        return candidates[0] if candidates else None

    def _jittered(self, base_s: float, attempt: int, cap_s: float) -> float:
        """Exponential backoff with jitter: between half and all of min(cap, base * 2^(n-1))."""
        ceiling_s = min(cap_s, base_s * 2.0 ** min(max(attempt - 1, 0), 32))
        return jitter(ceiling_s, floor_s=ceiling_s / 2, rand=self._rng)

    def _backoff_s(self, attempt: int, retry_after_s: float | None) -> float:
        delay_s = self._jittered(self._backoff_base_s, attempt, self._backoff_max_s)
        if retry_after_s is not None:
            delay_s = max(delay_s, min(retry_after_s, self._backoff_max_s))
        return delay_s


def _wire_replay(stored: ReplayId | None, default: int) -> ReplayId:
    """The replay id to put in `ext.replay`: the stored one (numbers as JSON numbers, as
    Salesforce delivers them in `event.replayId`), or the default when nothing is stored."""
    if stored is None or isinstance(stored, bool):
        return default
    if isinstance(stored, int):
        return stored
    text = stored.strip()
    if not text:
        return default
    return int(text) if _INTEGER.fullmatch(text) else text


def _endpoint(messages: list[Message]) -> str:
    """The call's kind for the call counter: `cometd/<meta channel>` (`cometd/handshake`,
    `cometd/subscribe`, `cometd/connect`, `cometd/disconnect`); each POST carries one kind."""
    channel = messages[0].get("channel") if messages else None
    if isinstance(channel, str) and channel.startswith("/meta/"):
        return f"cometd/{channel.removeprefix('/meta/')}"
    return "cometd"
