"""This worker's place among the `run` processes of one store: its registry row, heartbeats,
and the leadership leases of the CDC channels it subscribes to (docs/design.md §1.8).

Every `heartbeat_s` the worker heartbeats, renews the leases it holds and tries to acquire
the free ones (never held, released, or expired: their holder died, hung or lost the store).
A lease the store no longer grants, or one not renewed before it runs out here, is dropped at
once: `changed` is set and `runtime/subscriptions.py` stops subscribing to that channel. The
store fences the leader's writes by token in any case (store/workers.py), so even a worker
that does not notice in time cannot move a replay id it no longer owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from streamsync.adapters.store import StoreAPI, WorkerInfo
from streamsync.config import WorkersConfig
from streamsync.errors import RetriableError, StreamsyncError, describe_error
from streamsync.logs import get_logger
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.status import STALE_AFTER_HEARTBEATS

log = get_logger(__name__)

FORGET_AFTER_S = 7 * 86_400.0
"""Registry rows of workers gone for this long are dropped."""


def new_worker_id() -> str:
    """`host/pid/random`: unique per process start, readable in `status`."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


@dataclass
class _Held:
    token: int
    valid_until: float  # past this without a renewal, the lease is treated as lost


class Leadership:
    """The worker registry entry and channel leases of one `run` process.

    `exclusive` is for a store only one `run` can hold at a time (SQLite: store/owner.py): a
    lease left by the previous, now dead, process is taken over at once instead of after it
    expires. `roles` are leases of work other than a CDC channel (e.g. "consent/inbound",
    runtime/consent_inbound.py): held, renewed and fenced the same way, never subscribed to.
    """

    def __init__(self, *, store: StoreAPI, channels: Sequence[str], config: WorkersConfig,
                 exclusive: bool, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time, worker_id: str | None = None,
                 roles: Sequence[str] = ()) -> None:
        self._store = store
        self._roles = [r for r in dict.fromkeys(roles) if r not in channels]
        self._channels = list(dict.fromkeys(channels)) + self._roles
        self._lease_s = config.lease_s
        self._heartbeat_s = config.heartbeat_s
        self._exclusive = exclusive
        self._metrics = metrics
        self._clock = clock
        self.worker_id = worker_id or new_worker_id()
        self.started_at = clock()
        self._held: dict[str, _Held] = {}
        self.changed = asyncio.Event()
        self.failovers = 0
        for channel in self._channels:
            self._set_gauge(channel, 0)
            if metrics is not None:
                metrics.leadership_failovers.labels(channel=channel)  # exported from 0

    @property
    def stale_after_s(self) -> float:
        return self._heartbeat_s * STALE_AFTER_HEARTBEATS

    def channels(self) -> list[str]:
        """The CDC channels this worker leads now, in configuration order (not its roles)."""
        now = self._clock()
        return [c for c in self._channels if c not in self._roles
                and c in self._held and self._held[c].valid_until > now]

    def token(self, channel: str) -> int | None:
        """The fencing token of a channel this worker leads, else None."""
        held = self._held.get(channel)
        if held is None or held.valid_until <= self._clock():
            return None
        return held.token

    def lost(self, channel: str, token: int | None) -> None:
        """A fenced write was refused: the channel is led by another worker now."""
        held = self._held.get(channel)
        if held is not None and (token is None or held.token == token):
            self._drop(channel, "write_fenced")

    async def start(self) -> None:
        """Register this worker and take what is free."""
        now = self._clock()
        await self._store.register_worker(
            WorkerInfo(self.worker_id, socket.gethostname(), os.getpid(), self.started_at, now))
        log.info("workers.registered", worker=self.worker_id)
        with contextlib.suppress(StreamsyncError):
            await self._store.forget_workers(now - FORGET_AFTER_S)
        await self.tick()

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat, renew and acquire every `heartbeat_s` until `stop`."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._heartbeat_s)
            if not stop.is_set():
                await self.tick()

    async def tick(self) -> None:
        """One round: heartbeat, renew held leases, acquire free ones. The store being
        unreachable is waited out, except that leases not renewed in time are dropped."""
        try:
            await self._heartbeat()
            if not self._exclusive:
                await self._reclaim_queue_leases()
            for channel in list(self._held):
                await self._renew(channel)
            for channel in self._channels:
                if channel not in self._held:
                    await self._acquire(channel)
        except RetriableError as exc:
            log.warning("workers.store_unreachable", worker=self.worker_id,
                        **describe_error(exc))
        now = self._clock()
        for channel, held in list(self._held.items()):
            if held.valid_until <= now:
                self._drop(channel, "not_renewed_in_time")

    async def resign(self) -> None:
        """A clean stop: release every lease (another worker takes over at once) and mark
        this worker stopped. Best effort: the store may be what failed."""
        held = list(self._held)
        for channel in held:
            self._drop(channel, "resigned")
        with contextlib.suppress(StreamsyncError):
            await self._store.worker_stopped(self.worker_id, self._clock())
            log.info("workers.stopped", worker=self.worker_id, released=",".join(held))

    async def _heartbeat(self) -> None:
        if not await self._store.heartbeat(self.worker_id, self._clock()):
            # Marked stopped or forgotten by an operator: join again.
            await self._store.register_worker(WorkerInfo(
                self.worker_id, socket.gethostname(), os.getpid(), self.started_at,
                self._clock()))

    async def _reclaim_queue_leases(self) -> None:
        """Rows leased by a worker that died are flushed by the others at once, not after
        `queue.lease_s` (the flushers' lease owner is their worker id)."""
        reclaimed = await self._store.reclaim_leases_of_gone_workers(self._clock(),
                                                                     self.stale_after_s)
        if reclaimed:
            log.warning("workers.leases_reclaimed", records=reclaimed, worker=self.worker_id,
                        detail="leased by a worker that stopped heartbeating")

    async def _renew(self, channel: str) -> None:
        held = self._held[channel]
        started = self._clock()
        expires = await self._store.renew_channel(channel, self.worker_id, held.token,
                                                  self._lease_s, started)
        if expires is None:
            self._drop(channel, "taken_over")
        else:
            held.valid_until = started + self._lease_s

    async def _acquire(self, channel: str) -> None:
        started = self._clock()
        grant = await self._store.acquire_channel(channel, self.worker_id, self._lease_s,
                                                  started, take_over=self._exclusive)
        if grant is None:
            return
        self._held[channel] = _Held(grant.token, started + self._lease_s)
        self._set_gauge(channel, 1)
        self.changed.set()
        if grant.took_over_from is not None and not self._exclusive:
            self.failovers += 1
            if self._metrics is not None:
                self._metrics.leadership_failovers.labels(channel=channel).inc()
            log.warning("workers.failover", channel=channel, worker=self.worker_id,
                        fence=grant.token, previous=grant.took_over_from)
        else:
            log.info("workers.leading", channel=channel, worker=self.worker_id,
                     fence=grant.token)

    def _drop(self, channel: str, why: str) -> None:
        held = self._held.pop(channel, None)
        if held is None:
            return
        self._set_gauge(channel, 0)
        self.changed.set()
        log_at = log.info if why == "resigned" else log.warning
        log_at("workers.leadership_lost", channel=channel, worker=self.worker_id,
               fence=held.token, reason=why)

    def _set_gauge(self, channel: str, value: int) -> None:
        if self._metrics is not None:
            self._metrics.channel_leader.labels(channel=channel).set(value)
