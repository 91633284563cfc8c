"""The Iterable system-webhook receiver over real HTTP on loopback, with a real SQLite store and
the Iterable emulator delivering: auth (401), size (413), shape (400), duplicates, and the
event committed before the 200."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from streamsync.adapters.store import Store
from streamsync.config import ConsentWebhookConfig
from streamsync.emulators.iterable import IterableEmulator, IterableEmulatorConfig
from streamsync.runtime.consent_webhook import ConsentWebhook

SECRET = "w3bhook-secret-for-tests"
MARKETING, NEWSLETTER = 39581, 48921
UNSUB = {"email": "Docs@Example.com", "eventName": "emailUnSubscribe", "dataFields": {
    "email": "Docs@Example.com", "createdAt": "2026-12-05 07:00:01 +00:00",
    "unsubSource": "EmailLink", "channelIds": [MARKETING], "messageTypeIds": [],
    "emailListIds": [], "campaignId": 1089024}}


class Rig:
    def __init__(self, store: Store, hook: ConsentWebhook, http: aiohttp.ClientSession) -> None:
        self.store, self.hook, self.http = store, hook, http
        self.stored_calls = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.hook.port}{self.hook.conf.path}"

    async def post(self, body: Any, headers: dict[str, str] | None = None,
                   auth: str | None = f"Basic {SECRET}") -> tuple[int, Any]:
        sent = {"Content-Type": "application/json", **(headers or {})}
        if auth is not None:
            sent["Authorization"] = auth
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        async with self.http.post(self.url, data=data, headers=sent) as resp:
            return resp.status, orjson.loads(await resp.read())


async def _rig(tmp_path: Path, **conf: Any) -> AsyncIterator[Rig]:
    store = await Store.open(tmp_path / "s.db", busy_timeout_s=0.2)
    hook = ConsentWebhook(ConsentWebhookConfig(port=0, **conf), lambda: SECRET, store,
                          clock=time.time)
    await hook.start()
    async with aiohttp.ClientSession() as http:
        rig = Rig(store, hook, http)
        hook.on_stored = lambda: setattr(rig, "stored_calls", rig.stored_calls + 1)
        try:
            yield rig
        finally:
            await hook.stop()
            await store.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async for r in _rig(tmp_path, max_body_bytes=4096):
        yield r


def _rows_seen_by_another_connection(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT event_name, email, created_ms, source, channel_ids, via, "
                            "deliveries, state FROM consent_inbox").fetchall()


async def test_an_event_is_committed_before_its_200_and_a_repeat_is_a_duplicate(
        rig: Rig) -> None:
    assert await rig.post(UNSUB) == (200, {"status": "stored"})
    # Another connection sees the row as soon as the 200 is in: it was committed first.
    assert _rows_seen_by_another_connection(rig.store.path) == [
        ("emailUnSubscribe", "docs@example.com", 1_796_454_001_000, "EmailLink", "39581",
         "webhook", 1, "pending")]
    assert await rig.post(UNSUB) == (200, {"status": "duplicate"})
    rows = _rows_seen_by_another_connection(rig.store.path)
    assert len(rows) == 1 and rows[0][6] == 2
    assert rig.stored_calls == 1  # the drain is woken once, for the new event only


async def test_a_busy_store_answers_503_so_iterable_delivers_again(rig: Rig) -> None:
    blocker = sqlite3.connect(rig.store.path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        status, body = await rig.post(UNSUB)
        assert status == 503 and "deliver again" in body["error"]
        assert rig.stored_calls == 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert await rig.post(UNSUB) == (200, {"status": "stored"})


@pytest.mark.parametrize("auth", [None, "Basic wrong-secret-of-some-length", "Bearer x",
                                  f"Basic {SECRET}x", ""])
async def test_a_missing_or_wrong_secret_is_refused_with_401(rig: Rig, auth: str | None) -> None:
    status, body = await rig.post(UNSUB, auth=auth)
    assert (status, body) == (401, {"error": "unauthorized"})
    assert _rows_seen_by_another_connection(rig.store.path) == []


async def test_the_bare_token_form_of_iterables_docs_is_accepted(rig: Rig) -> None:
    assert (await rig.post(UNSUB, auth=SECRET))[0] == 200


async def test_header_auth_reads_the_configured_header(tmp_path: Path) -> None:
    async for rig in _rig(tmp_path, auth="header", header="X-Hook-Secret"):
        assert (await rig.post(UNSUB, auth=f"Basic {SECRET}"))[0] == 401
        assert (await rig.post(UNSUB, {"X-Hook-Secret": "nope"}, auth=None))[0] == 401
        assert (await rig.post(UNSUB, {"X-Hook-Secret": SECRET}, auth=None))[0] == 200


async def test_an_oversized_body_is_refused_with_413_before_it_is_read(rig: Rig) -> None:
    big = {**UNSUB, "dataFields": {**UNSUB["dataFields"], "pad": "x" * 5000}}
    assert (await rig.post(big))[0] == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: aiohttp's own cap
        data = orjson.dumps(big)
        for i in range(0, len(data), 1000):
            yield data[i:i + 1000]

    async with rig.http.post(rig.url, data=chunks(), headers={
            "Authorization": f"Basic {SECRET}"}) as resp:
        assert resp.status == 413
    assert rig.hook.counts["too_large"] == 2
    assert _rows_seen_by_another_connection(rig.store.path) == []


@pytest.mark.parametrize(("body", "error"), [
    (b"{not json", "the body is not JSON"),
    ([1, 2], "the body must be a JSON object"),
    ({"dataFields": {}}, "eventName is missing"),
    ({"eventName": "emailUnSubscribe", "dataFields": "x"}, "dataFields must be a JSON object"),
    ({"eventName": "emailUnSubscribe", "dataFields": {"email": "a@b.co"}},
     "createdAt must be a date string, got None"),
    ({"eventName": "emailSubscribe", "dataFields": {"createdAt": "2026-12-05 07:00:01 +00:00"}},
     "the event names no user (no email, no userId)"),
    ({"eventName": "emailUnSubscribe", "dataFields": {
        "email": "a@b.co", "createdAt": "2026-12-05 07:00:01 +00:00", "channelIds": ["x"]}},
     "channelIds must be a list of integer ids"),
])
async def test_a_malformed_body_is_refused_with_400_naming_the_problem(
        rig: Rig, body: Any, error: str) -> None:
    assert await rig.post(body) == (400, {"error": error})
    assert _rows_seen_by_another_connection(rig.store.path) == []


async def test_events_that_change_no_subscription_are_acknowledged_and_dropped(rig: Rig) -> None:
    for name in ("hostedUnsubscribeClick", "emailSend", "emailOpen"):
        body = {"email": "a@b.co", "eventName": name, "dataFields": {"url": "https://x"}}
        assert await rig.post(body) == (200, {"status": "ignored"})
    assert _rows_seen_by_another_connection(rig.store.path) == []


async def test_the_emulator_delivers_clicks_with_basic_auth_duplicates_are_stored_once(
        rig: Rig) -> None:
    emu = IterableEmulator(IterableEmulatorConfig(latency_ms=0.0, rate_limits=False,
                                                  project_type="email", webhook_url=rig.url))
    await emu.start("127.0.0.1", 0)
    try:
        settings = emu.webhooks.settings
        settings.auth_type, settings.auth_token, settings.backoff_s = "Basic", SECRET, 0.01
        emu.project.create("a@example.com", None, emu.state.wall_clock())
        emu.webhooks.set_faults(duplicate_next=2)  # the hosted click and the unsubscribe
        async with rig.http.post(emu.control_url + "/click", json={
                "email": "a@example.com", "messageTypeId": NEWSLETTER, "hosted": True}) as r:
            assert r.status == 200
        await emu.webhooks.wait_idle()
        assert emu.webhooks.counts() == {"delivered": 4}
        rows = _rows_seen_by_another_connection(rig.store.path)
        assert [(r[0], r[1], r[3], r[6]) for r in rows] == [
            ("emailUnSubscribe", "a@example.com", "EmailLink", 2)]
        settings.auth_token = "wrong-token-of-enough-length"
        settings.retries = 1
        async with rig.http.post(emu.control_url + "/signup", json={
                "email": "a@example.com", "messageTypeId": NEWSLETTER}) as r:
            assert r.status == 200
        await emu.webhooks.wait_idle()
        assert emu.webhooks.deliveries[-1].outcome == "failed"
        assert [a["status"] for a in emu.webhooks.deliveries[-1].attempts] == [401, 401]
    finally:
        await emu.stop()
    await asyncio.sleep(0)
