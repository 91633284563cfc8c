"""`streamsync backfill --lists`: every mapped list brought to its Campaign's current
membership, adds and removals, resumable from per-Campaign checkpoints (docs/design.md §8).

Per Campaign: (1) its live members are read by keyset pages and set through `ListSync.apply`
(subscribes what is missing, unsubscribes members whose status no longer counts); the page's
last Id is checkpointed after Iterable confirmed it. (2) Store rows of the Campaign that no page
and no real-time flush touched since the run started are members gone while nobody listened:
they are unsubscribed. (3) The list's users as Iterable has them (getUsers) that no member
holds are unsubscribed. A run stopped by a failure or a signal continues with `--resume`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from streamsync.adapters.store import ListBackfillState, StoreAPI
from streamsync.config import CAMPAIGN_MEMBER, Config
from streamsync.errors import BackfillError, WritesFailed
from streamsync.logs import get_logger
from streamsync.runtime.components import Components
from streamsync.runtime.lists.members import MemberReader
from streamsync.runtime.lists.resolve import MappedList
from streamsync.runtime.lists.start import lists_client, resolved
from streamsync.runtime.lists.sync import ListCounts, ListSync

log = get_logger(__name__)

PAGE_SIZE = 2000


@dataclass
class ListTotals:
    """What the lists backfill did to one list."""

    campaign_id: str
    list_id: int
    members: int = 0
    subscribed: int = 0
    unsubscribed: int = 0
    dead: int = 0
    resumed: bool = False


@dataclass
class ListsSummary:
    """The lists backfill's result, per list."""

    lists: list[ListTotals] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"lists": [vars(t) for t in self.lists]}


async def run_lists_backfill(config: Config, parts: Components, *, resume: bool,
                             page_size: int = PAGE_SIZE) -> ListsSummary:
    """Resolve [lists] (creating lists where allowed), then run the lists backfill."""
    if not config.lists.enabled:
        raise BackfillError("--lists: no Campaign is mapped ([[lists.campaigns]] in the config)")
    client = lists_client(config, parts.iterable, parts.store)
    resolution = await resolved(config, parts, client, create=True)
    resolution.raise_on_problems()
    reader = MemberReader(config, parts.salesforce, resolution.lists)
    sync = ListSync(store=parts.store, reader=reader, lists=client,
                    writer=parts.pipeline.writer, max_subscribers=config.lists.max_subscribers,
                    clock=parts.clock)
    runner = ListsBackfill(store=parts.store, sync=sync, lists=resolution.lists,
                           page_size=page_size, clock=parts.clock)
    return await runner.run(resume=resume)


class ListsBackfill:
    """Runs the three steps of the module docstring for every mapped Campaign in turn."""

    def __init__(self, *, store: StoreAPI, sync: ListSync, lists: list[MappedList],
                 page_size: int = PAGE_SIZE, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.sync = sync
        self.lists = lists
        self.page_size = page_size
        self.clock = clock

    async def run(self, *, resume: bool) -> ListsSummary:
        """Every mapped list; `resume` continues unfinished checkpoints (a finished or
        missing one starts over)."""
        summary = ListsSummary()
        for mapped in self.lists:
            summary.lists.append(await self._one(mapped, resume))
        return summary

    async def _one(self, mapped: MappedList, resume: bool) -> ListTotals:
        saved = await self.store.list_backfill(mapped.campaign_id)
        totals = ListTotals(mapped.campaign_id, mapped.list_id)
        if (resume and saved is not None and saved.phase != "done"
                and saved.list_id == mapped.list_id):
            state = saved
            totals.resumed = True
            totals.subscribed, totals.unsubscribed = saved.subscribed, saved.unsubscribed
        else:
            state = ListBackfillState(mapped.campaign_id, mapped.list_id, self.clock(),
                                      "members")
            await self.store.save_list_backfill(state, self.clock())
        log.info("lists_backfill.start", campaign_id=mapped.campaign_id, list_id=mapped.list_id,
                 phase=state.phase, after_id=state.after_id or "")
        if state.phase == "members":
            state = await self._members(mapped, state, totals)
        if state.phase == "removals":
            state = await self._removals(mapped, state, totals)
        log.info("lists_backfill.done", campaign_id=mapped.campaign_id, list_id=mapped.list_id,
                 subscribed=totals.subscribed, unsubscribed=totals.unsubscribed)
        return totals

    async def _members(self, mapped: MappedList, state: ListBackfillState,
                       totals: ListTotals) -> ListBackfillState:
        after = state.after_id
        while True:
            rows = await self.sync.reader.page_of(mapped.campaign_id, after, self.page_size)
            if rows:
                counts = await self.sync.apply([str(r["Id"]) for r in rows], rows)
                await self._book(counts, totals)
                totals.members += len(rows)
                after = str(rows[-1]["Id"])
                state = ListBackfillState(
                    state.campaign_id, state.list_id, state.started_at, "members", after,
                    state.subscribed + counts.subscribed,
                    state.unsubscribed + counts.unsubscribed)
                await self.store.save_list_backfill(state, self.clock())
            if len(rows) < self.page_size:
                break
        state = ListBackfillState(state.campaign_id, state.list_id, state.started_at,
                                  "removals", after, state.subscribed, state.unsubscribed)
        await self.store.save_list_backfill(state, self.clock())
        return state

    async def _removals(self, mapped: MappedList, state: ListBackfillState,
                        totals: ListTotals) -> ListBackfillState:
        stale = await self.store.retire_unseen_list_members(
            mapped.list_id, mapped.campaign_id, state.started_at, self.clock())
        counts = await self.sync.settle_leaving(stale)
        await self._book(counts, totals)
        users = await self.sync.lists.users(mapped.list_id)
        strays = await self.sync.remove_strays(mapped.list_id, users)
        await self._book(strays, totals)
        state = ListBackfillState(state.campaign_id, state.list_id, state.started_at, "done",
                                  state.after_id, state.subscribed + counts.subscribed,
                                  state.unsubscribed + counts.unsubscribed
                                  + strays.unsubscribed)
        await self.store.save_list_backfill(state, self.clock())
        return state

    async def _book(self, counts: ListCounts, totals: ListTotals) -> None:
        """Count what a step did; dead-letter refused members; stop on transient failures
        (the checkpoint before this step is kept for `--resume`)."""
        totals.subscribed += counts.subscribed
        totals.unsubscribed += counts.unsubscribed
        if counts.failed:
            totals.dead += len(counts.failed)
            await self.store.add_dead_letters(CAMPAIGN_MEMBER, counts.failed, self.clock())
        if counts.retry:
            error = next(iter(counts.retry.values()))
            raise WritesFailed(
                f"Iterable did not take list changes: {error}",
                advice="run `streamsync backfill --lists --resume` once Iterable answers "
                       "again: it continues from the last confirmed page") from error
