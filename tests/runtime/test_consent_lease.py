"""The consent/inbound lease in one process (runtime/consent_inbound.py `run_led`): the poller
and the drain run only while the lease is held, stop when it runs out, and a poller whose
cursor write the store fences off follows instead of ending the service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamsync.config import WorkersConfig
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.runtime.components import Components
from streamsync.runtime.consent_inbound import LEASE, ConsentInbound, consent_roles
from streamsync.runtime.leadership import Leadership
from tests.conftest import build_config, production_components

CONF = WorkersConfig(lease_s=15.0, heartbeat_s=5.0)
CONSENT = {"unsubscribe_channel_ids": [39581]}

pytestmark = pytest.mark.timeout(60)


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def parts(sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
                tmp_path: Path) -> AsyncIterator[Components]:
    config = build_config(sf_emulator, iterable_emulator, tmp_path,
                          objects={"Lead": {"consent": CONSENT}},
                          consent_inbound={"webhook": {"enabled": False},
                                           "poll": {"interval_s": 30}})
    async with production_components(config) as opened:
        yield opened


async def _until(check: object, what: str, timeout_s: float = 10.0) -> None:
    started = time.monotonic()
    while not (callable(check) and check()):
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.02)


def _leadership(parts: Components, clock: Clock) -> Leadership:
    return Leadership(store=parts.store, channels=[], config=CONF, exclusive=False,
                      clock=clock, worker_id="wa", roles=consent_roles(parts.config))


async def test_the_poller_runs_only_while_the_lease_is_held(parts: Components) -> None:
    clock = Clock(time.time())
    leads = _leadership(parts, clock)
    inbound = ConsentInbound(parts.config, parts, leads=leads)
    assert inbound.poller is not None
    stop = asyncio.Event()
    task = asyncio.create_task(inbound.run_led(stop))
    try:
        await asyncio.sleep(0.3)
        assert inbound.poller.polls == 0 and inbound.led_terms == 0  # no lease: nothing runs
        await leads.start()
        await _until(lambda: inbound.poller is not None and inbound.poller.polls == 1,
                     "the first poll under the lease")
        clock.now += CONF.lease_s + 1  # not renewed in time: the lease runs out here
        await _until(lambda: inbound.led_terms == 1 and leads.token(LEASE) is None
                     and not any(t.get_name() in ("consent-poll", "consent-drain")
                                 for t in asyncio.all_tasks()), "the poller and drain stopped")
        assert not task.done()  # following, not ended
    finally:
        stop.set()
        await task


async def test_a_poller_fenced_off_by_the_store_follows_instead_of_ending_the_service(
        parts: Components) -> None:
    clock = Clock(time.time())
    leads = _leadership(parts, clock)
    await leads.start()
    stale = leads.token(LEASE)
    assert stale is not None
    # Another worker took the lease over (this one has not noticed: its clock stood still).
    taken = await parts.store.acquire_channel(LEASE, "wb", CONF.lease_s, clock.now,
                                              take_over=True)
    assert taken is not None and taken.token > stale
    inbound = ConsentInbound(parts.config, parts, leads=leads)
    stop = asyncio.Event()
    task = asyncio.create_task(inbound.run_led(stop))
    try:
        await _until(lambda: leads.token(LEASE) is None, "the fenced write drops the lease")
        await asyncio.sleep(0.3)
        assert not task.done()
        assert inbound.led_terms == 1
        assert await parts.store.consent_cursor("emailUnSubscribe") is None  # moved nothing
    finally:
        stop.set()
        await task
