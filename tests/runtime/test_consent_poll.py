"""The export poller against the Iterable emulator's export API over real HTTP (its 4/min limit
on), with a real SQLite store: the cursor, the lookback, gaps and the eventual consistency."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streamsync.adapters.iterable import IterableClient
from streamsync.adapters.iterable_export import EXPORT_PATH
from streamsync.adapters.store import Store
from streamsync.config import ConsentPollConfig
from streamsync.emulators.iterable import IterableEmulator, IterableEmulatorConfig
from streamsync.errors import RateLimited, TransientError
from streamsync.runtime.consent_poll import ExportPoller

T0 = 1_796_454_000.0  # 2026-12-05 07:00:00 UTC
MARKETING = 39581


class Wall:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, emu: IterableEmulator, store: Store, poller: ExportPoller,
                 http: aiohttp.ClientSession, wall: Wall) -> None:
        self.emu, self.store, self.poller, self.http, self.wall = emu, store, poller, http, wall

    async def click(self, email: str, **body: Any) -> None:
        if self.emu.project.get_by_email(email) is None:
            self.emu.project.create(email, None, self.wall())
        async with self.http.post(self.emu.control_url + "/click",
                                  json={"email": email, "channelId": MARKETING, **body}) as r:
            assert r.status == 200, await r.text()

    async def signup(self, email: str) -> None:
        async with self.http.post(self.emu.control_url + "/signup",
                                  json={"email": email, "channelId": MARKETING}) as r:
            assert r.status == 200, await r.text()

    async def stored(self) -> list[tuple[str, str | None, str]]:
        rows = await self.store.due_consent_events(T0 + 10**6)
        return [(r.event_name, r.email, r.via) for r in rows]


@pytest.fixture
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    marker = request.node.get_closest_marker("iterable")
    wall = Wall()
    kw: dict[str, Any] = {"latency_ms": 0.0, "project_type": "email", "rate_limits": False,
                          "wall_clock": wall, **(marker.kwargs if marker else {})}
    emu = IterableEmulator(IterableEmulatorConfig(**kw))
    await emu.start("127.0.0.1", 0)
    store = await Store.open(tmp_path / "s.db", busy_timeout_s=0.2)
    async with aiohttp.ClientSession() as http:
        client = IterableClient(http, emu.base_url, emu.api_key)
        poller = ExportPoller(ConsentPollConfig(interval_s=30, lookback_s=60), store, client,
                              clock=wall)
        try:
            yield Rig(emu, store, poller, http, wall)
        finally:
            await store.close()
            await emu.stop()


async def test_a_poll_stores_the_window_and_moves_the_cursor_with_it(rig: Rig) -> None:
    await rig.click("a@example.com")
    rig.wall.now += 5
    await rig.signup("a@example.com")
    rig.wall.now += 5
    result = await rig.poller.poll_once()
    assert (result.lines, result.added, result.malformed) == (2, 2, 0)
    assert await rig.stored() == [("emailUnSubscribe", "a@example.com", "export"),
                                  ("emailSubscribe", "a@example.com", "export")]
    for data_type in ("emailUnSubscribe", "emailSubscribe"):
        assert await rig.store.consent_cursor(data_type) == int(T0 + 10) * 1000
    # The next poll reads the lookback again: the same events are duplicates, not new rows.
    rig.wall.now += 30
    await rig.click("b@example.com")
    assert (await rig.poller.poll_once()).lines == 2  # the window ends before this second
    rig.wall.now += 1
    again = await rig.poller.poll_once()
    assert (again.lines, again.added) == (3, 1)
    assert len(await rig.stored()) == 3


async def test_a_failed_poll_moves_no_cursor_and_the_next_reads_the_gap(rig: Rig) -> None:
    await rig.click("a@example.com")
    rig.wall.now += 1
    rig.emu.faults.fail_next(EXPORT_PATH, times=1, status=503)
    with pytest.raises(TransientError):
        await rig.poller.poll_once()
    assert await rig.store.consent_cursor("emailUnSubscribe") is None
    assert await rig.stored() == []
    rig.emu.faults.drop_next(EXPORT_PATH, times=2)  # aiohttp repeats a GET once on a reset
    with pytest.raises(TransientError):
        await rig.poller.poll_once()
    assert await rig.stored() == []
    rig.wall.now += 1
    assert (await rig.poller.poll_once()).added == 1
    assert await rig.store.consent_cursor("emailUnSubscribe") == int(T0 + 2) * 1000


async def test_a_store_that_cannot_commit_keeps_the_cursor_where_it_was(rig: Rig) -> None:
    rig.wall.now += 1
    await rig.poller.poll_once()
    before = await rig.store.consent_cursor("emailUnSubscribe")
    await rig.click("a@example.com")
    rig.wall.now += 1
    import sqlite3
    blocker = sqlite3.connect(rig.store.path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(TransientError):
            await rig.poller.poll_once()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert await rig.store.consent_cursor("emailUnSubscribe") == before
    assert (await rig.poller.poll_once()).added == 1


@pytest.mark.iterable(export_lag_s=20.0)
async def test_an_event_that_shows_up_late_in_the_export_is_found_by_the_lookback(
        rig: Rig) -> None:
    await rig.click("late@example.com")
    rig.wall.now += 10
    assert (await rig.poller.poll_once()).added == 0  # not visible yet; the cursor moves on
    assert await rig.store.consent_cursor("emailUnSubscribe") == int(T0 + 10) * 1000
    rig.wall.now += 30
    assert (await rig.poller.poll_once()).added == 1  # 60 s lookback covers the 20 s lag


@pytest.mark.iterable(rate_limits=True)
async def test_more_than_four_exports_a_minute_are_refused_with_a_retry_after(rig: Rig) -> None:
    rig.wall.now += 1
    await rig.poller.poll_once()
    await rig.poller.poll_once()  # four requests: Iterable's limit for a minute
    with pytest.raises(RateLimited) as caught:
        await rig.poller.poll_once()
    assert caught.value.retry_after_s is None or caught.value.retry_after_s > 0
