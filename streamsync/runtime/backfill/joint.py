"""This process's part in a backfill run that several processes may work on at once.

Windows are claimed one at a time under a lease (adapters/store/backfill_lease.py), renewed by a
heartbeat every third of `backfill.lease_s` and with every checkpoint; a checkpoint of a window
whose lease another process took over is refused (`WindowTaken`) and the window left to it. A
participant with nothing left to claim keeps watching until every window is done, so the
windows of one that died are taken over when their lease expires (on this machine, once its
process is gone: every heartbeat looks). One participant closes the run (catch-up, finish);
each saves its counts with its checkpoints, so the run's summary adds up every participant's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from streamsync.adapters.store import BackfillWindow, Checkpoint, Participant, StoreAPI
from streamsync.adapters.store.backfill_lease import ParticipantState
from streamsync.errors import StreamsyncError, TransientError, WindowTaken
from streamsync.logs import get_logger
from streamsync.runtime.backfill.summary import Totals
from streamsync.runtime.backfill.tasks import all_or_first_error

log = get_logger(__name__)

COUNTS: Final = ("records_read", "records_written", "records_skipped", "retry_queued",
                 "catchup_queued", "pages", "iterable_requests", "iterable_429s",
                 "sf_api_calls", "windows_resumed")
"""The counts a participant saves and the run's summary adds up (plus `dead_by_reason`)."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_live(state: ParticipantState, lease_s: float, host: str | None = None) -> bool:
    """A participant still working: not left, heard from within the lease, and (on this
    machine) its process still there."""
    if state.left or state.heartbeat_age_s > lease_s:
        return False
    here = socket.gethostname() if host is None else host
    return state.participant.host != here or pid_alive(state.participant.pid)


def run_totals(states: list[ParticipantState]) -> dict[str, Any]:
    """The whole run's counts: every participant's added up."""
    out: dict[str, Any] = {name: 0 for name in COUNTS}
    dead: Counter[str] = Counter()
    for state in states:
        for name in COUNTS:
            value = state.totals.get(name, 0)
            out[name] += value if isinstance(value, int) else 0
        reasons = state.totals.get("dead_by_reason", {})
        if isinstance(reasons, dict):
            dead.update({str(k): int(v) for k, v in reasons.items() if isinstance(v, int)})
    out["dead_by_reason"] = dict(dead)
    out["dead_lettered"] = sum(dead.values())
    out["participants"] = len(states)
    return out


class Participation:
    """This process working on run `run_id`: claims, heartbeat, fenced checkpoints, leaving."""

    def __init__(self, store: StoreAPI, run_id: str, *, lease_s: float, totals: Totals,
                 sf_calls: Callable[[], int]) -> None:
        self.store = store
        self.run_id = run_id
        self.lease_s = lease_s
        self.totals = totals
        self.sf_calls = sf_calls
        self.me = Participant(uuid.uuid4().hex[:12], os.getpid(), socket.gethostname())
        self.windows_resumed = 0
        self.catchup_queued = 0
        self.poll_s = max(0.2, min(2.0, lease_s / 6))
        self._window_ended = asyncio.Event()  # set (and replaced) when a window of ours ends

    def counts(self) -> dict[str, Any]:
        """This process's counts, as saved in the store."""
        t = self.totals
        return {"records_read": t.read, "records_written": t.written,
                "records_skipped": t.skipped, "retry_queued": t.retry_queued,
                "catchup_queued": self.catchup_queued, "pages": t.pages,
                "iterable_requests": t.requests, "iterable_429s": t.rate_limited,
                "sf_api_calls": self.sf_calls(), "windows_resumed": self.windows_resumed,
                "dead_by_reason": dict(t.dead)}

    async def join(self) -> None:
        await self.store.join_run(self.run_id, self.me)
        await self.reap_local_dead()

    async def heartbeat(self) -> None:
        """Renew this process's leases every third of the lease, and free those of dead
        participants on this machine, until cancelled."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.store.renew_leases(self.run_id, self.me.participant_id, self.lease_s,
                                              self.counts())
                await self.reap_local_dead()
            except TransientError as exc:
                log.warning("backfill.heartbeat_failed", run_id=self.run_id, error=str(exc))

    async def save(self, window: BackfillWindow, last_id: str | None, records_done: int) -> None:
        await self.store.save_leased_checkpoint(
            self.run_id, window, self.me.participant_id, last_id, records_done, self.lease_s,
            self.counts())

    async def finish(self, window: BackfillWindow, records_done: int) -> None:
        await self.store.save_leased_checkpoint(
            self.run_id, window, self.me.participant_id, None, records_done, self.lease_s,
            self.counts(), done=True)

    async def leave(self) -> None:
        """Free this process's leases and save its final counts (best effort)."""
        with contextlib.suppress(StreamsyncError):
            await self.store.release_participant(self.run_id, self.me.participant_id,
                                                 self.counts())

    async def reap_local_dead(self) -> int:
        """Free at once the leases of participants on this machine whose process is gone."""
        freed = 0
        for state in await self.store.run_participants(self.run_id):
            p = state.participant
            if (not state.left and p.host == self.me.host and p.pid != self.me.pid
                    and not pid_alive(p.pid)):
                await self.store.release_participant(self.run_id, p.participant_id)
                log.warning("backfill.participant_gone", run_id=self.run_id, pid=p.pid,
                            participant=p.participant_id)
                freed += 1
        return freed

    async def work(self, run_window: Callable[[Checkpoint], Awaitable[None]],
                   parallel: int) -> None:
        """Claim and run windows with `parallel` workers until every window of the run is done
        (by this process or another)."""
        async def worker() -> None:
            while True:
                try:
                    claim = await self.store.claim_window(self.run_id, self.me.participant_id,
                                                          self.lease_s)
                except TransientError as exc:
                    log.warning("backfill.claim_failed", run_id=self.run_id, error=str(exc))
                    await asyncio.sleep(self.poll_s)
                    continue
                cp = claim.checkpoint
                if cp is None:
                    if claim.unfinished == 0:
                        return
                    await self._until_a_window_ends()
                    continue
                if cp.last_id is not None:
                    self.windows_resumed += 1
                if claim.taken_over:
                    log.warning("backfill.window_taken_over", run_id=self.run_id,
                                object=cp.window.object_name, start=cp.window.window_start,
                                after_id=cp.last_id)
                try:
                    await run_window(cp)
                except WindowTaken as exc:
                    log.warning("backfill.window_lost", run_id=self.run_id, error=str(exc))
                finally:
                    ended, self._window_ended = self._window_ended, asyncio.Event()
                    ended.set()

        await all_or_first_error([worker() for _ in range(parallel)])

    async def _until_a_window_ends(self) -> None:
        """Wait until a window this process works on ends (the run may be done), or
        `poll_s` for those of other processes (done, or their lease expired)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._window_ended.wait(), self.poll_s)

    async def close(self, catch_up: Callable[[], Awaitable[int]], now: Callable[[], float]
                    ) -> None:
        """Run the catch-up and finish the run, unless another participant does: then wait
        until it has (or its closing lease expired, and close it here)."""
        while True:
            if await self.store.claim_run_close(self.run_id, self.me.participant_id,
                                                self.lease_s):
                self.catchup_queued = await catch_up()
                await self.store.finish_run_as(self.run_id, self.me.participant_id,
                                               self.counts(), now())
                return
            run = await self.store.get_run(self.run_id)
            if run is None or run.finished:
                return
            await asyncio.sleep(self.poll_s)

    async def whole_run(self) -> Mapping[str, Any]:
        """The run's counts, every participant's added up."""
        return run_totals(await self.store.run_participants(self.run_id))
