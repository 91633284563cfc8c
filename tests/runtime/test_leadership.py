"""Leadership of the CDC channels among workers sharing one store: leases, failover, and a
deposed leader's subscription fenced by the store and turned back into a follower."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streamsync.adapters.cometd import CometdSubscriber
from streamsync.adapters.store import Store
from streamsync.config import Config, WorkersConfig
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.runtime.ingest import Ingest, ReplayCallbacks
from streamsync.runtime.leadership import Leadership
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.reconcile import Reconciler
from streamsync.runtime.reconcile_scheduler import ReconcileScheduler
from streamsync.runtime.subscriptions import Subscriptions
from tests.conftest import Clients

LEAD = "/data/LeadChangeEvent"
CONTACT = "/data/ContactChangeEvent"
CONF = WorkersConfig(lease_s=15.0, heartbeat_s=5.0)
T0 = 1_700_000_000.0

pytestmark = pytest.mark.salesforce(long_poll_s=0.2, seed_users=2, seed_queues=0)


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def handles(tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    a = await Store.open(tmp_path / "shared.db", busy_timeout_s=0.05)
    b = await Store.open(tmp_path / "shared.db", busy_timeout_s=0.05)
    yield a, b
    await a.close()
    await b.close()


def _leadership(store: Store, clock: Clock, name: str, metrics: Metrics | None = None,
                channels: tuple[str, ...] = (LEAD, CONTACT)) -> Leadership:
    return Leadership(store=store, channels=channels, config=CONF, exclusive=False,
                      metrics=metrics, clock=clock, worker_id=name)


async def test_the_first_worker_leads_a_silent_leader_is_replaced_after_its_lease(
        handles: tuple[Store, Store]) -> None:
    store_a, store_b = handles
    clock_a, clock_b = Clock(), Clock()
    metrics_b = Metrics()
    a = _leadership(store_a, clock_a, "wa")
    b = _leadership(store_b, clock_b, "wb", metrics_b)
    await a.start()
    await b.start()
    assert a.channels() == [LEAD, CONTACT] and b.channels() == []
    clock_b.now = T0 + CONF.lease_s - 1  # a still within its lease: nothing moves
    await b.tick()
    assert b.channels() == []

    clock_b.now = T0 + CONF.lease_s + 0.5  # a went silent (hung, killed): its lease ran out
    await b.tick()
    assert b.channels() == [LEAD, CONTACT] and b.failovers == 2
    assert metrics_b.leadership_failovers.labels(channel=LEAD)._value.get() == 1
    assert metrics_b.channel_leader.labels(channel=CONTACT)._value.get() == 1
    assert a.token(LEAD) is not None  # a has not noticed yet (its clock stood still) ...
    a.changed.clear()
    await a.tick()  # ... until its renewal is refused
    assert a.channels() == [] and a.token(LEAD) is None and a.changed.is_set()
    workers = {w.worker_id: w for w in await store_b.workers()}
    assert set(workers) == {"wa", "wb"}

    await b.resign()  # a clean stop hands over at once, without waiting for the lease
    clock_a.now = clock_b.now + 1
    await a.tick()
    assert a.channels() == [LEAD, CONTACT] and a.failovers == 0


async def test_a_leader_that_cannot_renew_in_time_drops_its_channels(
        handles: tuple[Store, Store], tmp_path: Path) -> None:
    store_a, _ = handles
    clock = Clock()
    a = _leadership(store_a, clock, "wa")
    await a.start()
    assert a.channels() == [LEAD, CONTACT]
    blocker = sqlite3.connect(tmp_path / "shared.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the store is unreachable for writes
    try:
        clock.now = T0 + CONF.heartbeat_s
        await a.tick()  # busy: waited out, the lease is still valid here
        assert a.channels() == [LEAD, CONTACT]
        clock.now = T0 + CONF.lease_s
        a.changed.clear()
        await a.tick()
        assert a.channels() == [] and a.changed.is_set()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def _ingest(config: Config, store: Store, clients: Clients, emu: SalesforceEmulator,
            leadership: Leadership, channels: list[str]) -> Ingest:
    callbacks = ReplayCallbacks(store)
    subscriber = CometdSubscriber(
        clients.session, instance_url=emu.instance_url,
        api_version=config.salesforce.api_version, get_token=clients.auth.access_token,
        invalidate_token=clients.auth.invalidate, channels=channels,
        replay_from=callbacks.replay_from, on_replay_invalid=callbacks.on_replay_invalid,
        watchdog_s=5.0, long_poll_timeout_s=2.0, request_timeout_s=2.0,
        min_handshake_interval_s=0.0, backoff_base_s=0.01)
    reconciler = Reconciler(config=config, store=store, salesforce=clients.salesforce,
                            metrics=Metrics())
    return Ingest(config=config, store=store, subscriber=subscriber, reconciler=reconciler,
                  metrics=Metrics(), callbacks=callbacks, channels=channels,
                  fence=leadership.token)


async def _until(check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def _lead(emu: SalesforceEmulator, name: str) -> str:
    return emu.state.create("Lead", {"LastName": name, "Company": "Acme",
                                     "Email": f"{name.lower()}@example.com"})


async def test_a_deposed_leader_is_fenced_by_the_store_and_follows_and_the_new_leader_replays(
        sf_emulator: SalesforceEmulator, config: Config, clients: Clients,
        handles: tuple[Store, Store]) -> None:
    store_a, store_b = handles
    clock_a, clock_b = Clock(time.time()), Clock(time.time())
    a = _leadership(store_a, clock_a, "wa", channels=(LEAD,))
    b = _leadership(store_b, clock_b, "wb", channels=(LEAD,))
    await a.start()
    await b.start()
    subs_a = Subscriptions(a, lambda ch: _ingest(config, store_a, clients, sf_emulator, a, ch))
    stop = asyncio.Event()
    running = asyncio.create_task(subs_a.run(stop))
    try:
        await _until(lambda: subs_a.current is not None and subs_a.current.subscribed)
        first = _lead(sf_emulator, "Before")
        deadline = time.monotonic() + 10.0
        while (stored := await store_b.get_replay(LEAD)) is None:  # committed (group commit)
            assert time.monotonic() < deadline, "the first event was never stored"
            await asyncio.sleep(0.02)

        # b takes the channel over while a is, as far as its own clock knows, still leader
        # (a hung process, a clock that stood still): only the store can stop a's write.
        clock_b.now += CONF.lease_s + 1
        await b.tick()
        assert b.channels() == [LEAD] and a.token(LEAD) is not None
        second = _lead(sf_emulator, "During")
        await _until(lambda: subs_a.deposed == 1)
        assert subs_a.following and subs_a.current is None and a.channels() == []
        assert not running.done()  # the worker goes on (following), it does not exit
        after = await store_b.get_replay(LEAD)
        assert after is not None and after.replay_id == stored.replay_id  # nothing moved
        queued = {lease.record_id for lease in await store_b.lease("t", 100, 60, time.time())}
        assert queued == {first}  # the refused event's id was not committed either

        # The new leader resumes from the stored replay id and gets the refused event.
        ingest_b = _ingest(config, store_b, clients, sf_emulator, b, [LEAD])
        stop_b = asyncio.Event()
        task_b = asyncio.create_task(ingest_b.run(stop_b))
        await _until(lambda: ingest_b.stats.ids_queued >= 1)
        stop_b.set()
        await task_b
        queued = {lease.record_id for lease in await store_b.lease("t2", 100, 60, time.time())}
        assert second in queued
    finally:
        stop.set()
        await running


async def test_a_role_is_leased_and_taken_over_like_a_channel_but_never_subscribed_to(
        handles: tuple[Store, Store]) -> None:
    store_a, store_b = handles
    clock_a, clock_b = Clock(), Clock()
    a = Leadership(store=store_a, channels=(LEAD,), config=CONF, exclusive=False,
                   clock=clock_a, worker_id="wa", roles=("consent/inbound",))
    b = Leadership(store=store_b, channels=(LEAD,), config=CONF, exclusive=False,
                   clock=clock_b, worker_id="wb", roles=("consent/inbound",))
    await a.start()
    await b.start()
    assert a.channels() == [LEAD]  # what Subscriptions subscribes to: no role
    assert a.token("consent/inbound") is not None and b.token("consent/inbound") is None
    leases = {lease.channel: lease.holder for lease in await store_b.channel_leases()}
    assert leases == {LEAD: "wa", "consent/inbound": "wa"}
    clock_b.now = T0 + CONF.lease_s + 0.5  # a went silent
    await b.tick()
    assert b.token("consent/inbound") is not None and b.channels() == [LEAD]
    clock_a.now = clock_b.now
    assert a.token("consent/inbound") is None  # ran out on a's own clock too


async def test_a_worker_resumes_only_the_reconciliations_of_the_channels_it_leads(
        config: Config, clients: Clients, store: Store) -> None:
    """A reconciliation owed for Contact is run by the leader of the Contact channel, once:
    the leader of the Lead channel neither resumes nor runs it."""
    await store.set_reconcile_pending("Lead", 1_000, "gap_overflow", T0)
    await store.set_reconcile_pending("Contact", 2_000, "gap_overflow", T0)
    reconciler = Reconciler(config=config, store=store, salesforce=clients.salesforce,
                            metrics=Metrics())
    lead_leader = ReconcileScheduler(config=config, store=store, reconciler=reconciler,
                                     channels=[LEAD])
    everything = ReconcileScheduler(config=config, store=store, reconciler=reconciler)
    assert set(await lead_leader.pending()) == {"Lead"}
    assert set(await everything.pending()) == {"Lead", "Contact"}  # a single ingest
