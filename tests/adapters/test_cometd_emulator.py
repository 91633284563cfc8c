"""CometdSubscriber against the Salesforce emulator's CometD server over real HTTP."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streamsync.adapters.cometd import CometdSubscriber, ReplayId
from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig
from streamsync.errors import SessionExpired, TransientError

LEAD = "/data/LeadChangeEvent"
CONTACT = "/data/ContactChangeEvent"
Message = dict[str, Any]


class ReplayStore:
    """The caller's side of the contract: replay id per channel in a real SQLite file."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE replay (channel TEXT PRIMARY KEY, replay_id TEXT)")
        self.db.execute("CREATE TABLE seen (replay_id INTEGER, record_id TEXT)")
        self.invalid_calls: list[tuple[str, ReplayId]] = []

    def commit(self, message: Message) -> None:
        """Record ids and the channel's replay id in ONE transaction."""
        data = message["data"]
        replay_id = data["event"]["replayId"]
        with self.db:
            self.db.executemany(
                "INSERT INTO seen VALUES (?, ?)",
                [(replay_id, rid) for rid in data["payload"]["ChangeEventHeader"]["recordIds"]])
            self.db.execute("INSERT OR REPLACE INTO replay VALUES (?, ?)",
                            (message["channel"], str(replay_id)))

    def set(self, channel: str, replay_id: ReplayId | None) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO replay VALUES (?, ?)",
                            (channel, None if replay_id is None else str(replay_id)))

    async def replay_from(self, channel: str) -> ReplayId | None:
        row = self.db.execute("SELECT replay_id FROM replay WHERE channel = ?",
                              (channel,)).fetchone()
        return None if row is None else row[0]

    async def on_replay_invalid(self, channel: str, replay_id: ReplayId) -> None:
        self.invalid_calls.append((channel, replay_id))
        self.set(channel, None)

    def seen(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT record_id FROM seen ORDER BY replay_id")]


class Tokens:
    """Fetches access tokens from the emulator's OAuth endpoint (password flow), cached."""

    def __init__(self, emu: SalesforceEmulator, session: aiohttp.ClientSession) -> None:
        self.emu, self.session = emu, session
        self.cached: str | None = None
        self.fetches = 0

    async def get(self) -> str:
        if self.cached is None:
            form = {"grant_type": "password", "client_id": self.emu.client_id,
                    "client_secret": self.emu.client_secret, "username": self.emu.username,
                    "password": self.emu.password}
            async with self.session.post(self.emu.token_url, data=form) as resp:
                assert resp.status == 200, await resp.text()
                self.cached = (await resp.json())["access_token"]
                self.fetches += 1
        assert self.cached is not None
        return self.cached

    def invalidate(self) -> None:
        self.cached = None


class Env:
    def __init__(self, emu: SalesforceEmulator, session: aiohttp.ClientSession,
                 store: ReplayStore) -> None:
        self.emu, self.session, self.store = emu, session, store
        self.tokens = Tokens(emu, session)
        self.delays: list[float] = []

    async def record_sleep(self, seconds: float) -> None:
        self.delays.append(seconds)

    def subscriber(self, channels: tuple[str, ...] = (LEAD,), **kw: Any) -> CometdSubscriber:
        options: dict[str, Any] = {"watchdog_s": 2.0, "long_poll_timeout_s": 2.0,
                                   "request_timeout_s": 2.0, "min_handshake_interval_s": 0.0,
                                   "backoff_base_s": 0.01, "sleep": self.record_sleep}
        options.update(kw)
        options.setdefault("on_replay_invalid", self.store.on_replay_invalid)
        return CometdSubscriber(
            self.session, instance_url=self.emu.instance_url, api_version="66.0",
            get_token=self.tokens.get, invalidate_token=self.tokens.invalidate,
            channels=channels, replay_from=self.store.replay_from, **options)

    def lead(self, name: str) -> str:
        return self.emu.state.create("Lead", {"LastName": name, "Company": "Acme",
                                              "Email": f"{name.lower()}@example.com"})


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    emu = SalesforceEmulator(SalesforceEmulatorConfig(long_poll_s=0.2, seed_users=2,
                                                      seed_queues=0))
    await emu.start(host="127.0.0.1", port=0)
    store = ReplayStore(tmp_path / "queue.sqlite")
    try:
        async with aiohttp.ClientSession() as session:
            yield Env(emu, session, store)
    finally:
        store.db.close()
        await emu.stop()


async def poll_until_data(sub: CometdSubscriber, max_polls: int = 20) -> list[Message]:
    """Connect round trips (each at most the server's 0.2 s long poll) until data arrives."""
    for _ in range(max_polls):
        batch = await sub.poll_once()
        if batch:
            return batch
    raise AssertionError(f"no data after {max_polls} polls; stats={sub.stats}")


async def prime(env: Env, sub: CometdSubscriber) -> None:
    """Subscribe, then receive and store one event, so the store holds a retained replay id."""
    await sub.poll_once()
    env.lead("Primer")
    for message in await poll_until_data(sub):
        env.store.commit(message)


async def next_message(stream: AsyncIterator[Message]) -> Message:
    """The next message, or a clear failure instead of a hung test."""
    return await asyncio.wait_for(anext(stream), timeout=10.0)


def record_ids(batch: list[Message]) -> list[str]:
    return [rid for m in batch for rid in m["data"]["payload"]["ChangeEventHeader"]["recordIds"]]


async def test_delivers_cdc_and_a_new_subscriber_resumes_from_the_stored_id(env: Env) -> None:
    sub = env.subscriber((LEAD, CONTACT))
    assert await sub.poll_once() == []
    assert sub.subscribed_channels == {LEAD, CONTACT}
    first, second = env.lead("First"), env.lead("Second")
    batch = await poll_until_data(sub)
    assert record_ids(batch) == [first, second]
    assert batch[0]["channel"] == LEAD and batch[0]["data"]["event"]["replayId"] >= 1
    env.store.commit(batch[0])
    await sub.close()
    third = env.lead("Third")
    # A restart: the new subscriber replays everything after the stored id, nothing before.
    fresh = env.subscriber((LEAD, CONTACT))
    batch = await poll_until_data(fresh)
    assert record_ids(batch) == [second, third]
    await fresh.close()


async def test_unknown_client_rehandshakes_and_resubscribes_from_the_store(env: Env) -> None:
    sub = env.subscriber()
    await sub.poll_once()  # subscribe (-1) before the first event exists
    first = env.lead("First")
    stream = sub.messages()
    message = await next_message(stream)
    env.store.commit(message)
    assert record_ids([message]) == [first]
    assert env.emu.forget_cometd_clients() == 1
    # Published while the client is forgotten: only a replay from the stored id delivers it.
    during = env.lead("During")
    message = await next_message(stream)
    env.store.commit(message)
    after = env.lead("After")
    message = await next_message(stream)
    env.store.commit(message)
    assert env.store.seen() == [first, during, after]
    assert sub.stats.unknown_clients == 1 and sub.stats.handshakes == 2
    assert sub.stats.resubscribes == 1 and sub.subscribed_channels == {LEAD}
    await stream.aclose()
    await sub.close()


async def test_expired_replay_id_reports_and_falls_back_to_new_events(env: Env) -> None:
    env.lead("Old")
    env.store.set(LEAD, env.emu.bus.latest_replay_id)
    stale = env.emu.bus.latest_replay_id
    env.emu.bus.purge()
    sub = env.subscriber((LEAD, CONTACT))
    assert await sub.poll_once() == []
    assert env.store.invalid_calls == [(LEAD, str(stale))]
    assert sub.subscribed_channels == {LEAD, CONTACT} and sub.stats.replay_fallbacks == 1
    new = env.lead("New")
    assert record_ids(await poll_until_data(sub)) == [new]
    await sub.close()


async def test_the_new_events_subscription_is_in_place_before_the_caller_hears_of_the_gap(
        env: Env) -> None:
    """The caller's catch-up (`on_replay_invalid`) reads Salesforce up to its own now; a change
    committed while it runs must come on the -1 subscription, so that subscription is made
    first (made after it, a change committed in between reached neither)."""
    env.store.set(LEAD, env.emu.bus.latest_replay_id)
    env.lead("Old")
    env.store.set(LEAD, env.emu.bus.latest_replay_id)
    env.emu.bus.purge()
    during: list[str] = []

    async def catch_up(channel: str, replay_id: ReplayId) -> None:
        await env.store.on_replay_invalid(channel, replay_id)
        during.append(env.lead("During"))  # committed while the catch-up runs

    sub = env.subscriber(on_replay_invalid=catch_up)
    batch = await sub.poll_once() or await poll_until_data(sub)
    assert during and record_ids(batch) == during
    await sub.close()


async def test_server_pushed_disconnect_reconnects(env: Env) -> None:
    sub = env.subscriber()
    await prime(env, sub)
    assert env.emu.push_cometd_disconnect() == 1
    assert await sub.poll_once() == []
    assert sub.stats.server_disconnects == 1 and sub.client_id is None
    new = env.lead("Next")
    assert record_ids(await poll_until_data(sub)) == [new]
    assert sub.stats.handshakes == 2 and sub.subscribed_channels == {LEAD}
    await sub.close()


async def test_expired_session_reauthenticates(env: Env) -> None:
    sub = env.subscriber()
    await prime(env, sub)
    assert env.emu.sessions.expire_all() == 1
    assert await sub.poll_once() == []
    assert sub.stats.reauths == 1 and sub.client_id is None
    new = env.lead("Next")
    assert record_ids(await poll_until_data(sub)) == [new]
    assert env.tokens.fetches == 2 and sub.stats.handshakes == 2
    await sub.close()


async def test_revoked_token_at_handshake_reauthenticates(env: Env) -> None:
    await env.tokens.get()
    env.emu.sessions.revoke_all()
    sub = env.subscriber()
    with pytest.raises(SessionExpired, match="401::Authentication invalid"):
        await sub.poll_once()
    await sub.poll_once()
    assert sub.subscribed_channels == {LEAD} and env.tokens.fetches == 2
    await sub.close()


async def test_watchdog_recovers_from_a_hung_connect(env: Env) -> None:
    sub = env.subscriber(watchdog_s=0.5, long_poll_timeout_s=0.5)
    await prime(env, sub)
    env.emu.faults.hang_next("/cometd")
    with pytest.raises(TransientError, match="cometd/connect: no reply in time"):
        await sub.poll_once()
    during = env.lead("During")
    assert record_ids(await poll_until_data(sub)) == [during]
    assert sub.stats.watchdog_trips == 1 and sub.stats.handshakes == 2
    await sub.close()


async def test_transport_faults_are_retried_by_the_stream(env: Env) -> None:
    sub = env.subscriber()
    await sub.poll_once()
    env.emu.faults.fail_next("/cometd", 2, status=503)
    env.emu.faults.fail_next("/cometd", 1, status=200, body=b"<html>maintenance</html>",
                             content_type="text/html")
    env.emu.faults.drop_next("/cometd")
    new = env.lead("Next")
    stream = sub.messages()
    message = await next_message(stream)
    assert record_ids([message]) == [new]
    assert sub.stats.failures == 4 and sub.stats.handshakes == 1
    assert len(env.delays) == 4 and env.delays == sorted(env.delays)
    await stream.aclose()
    await sub.close()


async def test_close_disconnects_the_client(env: Env) -> None:
    sub = env.subscriber()
    await sub.poll_once()
    assert env.emu.cometd.stats()["clients"] == 1
    await sub.close()
    assert env.emu.cometd.stats()["clients"] == 0


async def test_daily_delivery_limit_backs_off_handshakes_instead_of_storming(env: Env) -> None:
    env.emu.cometd.daily_delivery_limit = 1
    sub = env.subscriber(min_handshake_interval_s=1.0, backoff_base_s=1.0,
                         handshake_backoff_max_s=8.0, rng=lambda: 1.0)
    await prime(env, sub)
    failures = 0
    for _ in range(7):
        try:
            assert await sub.poll_once() == []
        except TransientError as exc:
            assert "daily limit exceeded" in str(exc)
            failures += 1
        # Never connected-but-deaf: either subscribed, or no session at all.
        assert sub.client_id is None or sub.subscribed_channels == {LEAD}
    assert failures == 6 and sub.subscribed_channels == frozenset()
    # Exponential between handshakes (less the few ms each attempt took), capped.
    assert [round(d) for d in env.delays] == [1, 1, 2, 4, 8, 8]
    assert env.emu.cometd.stats()["handshakes"] == sub.stats.handshakes == 7
