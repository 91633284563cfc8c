"""`backfill --events` (docs/events.md §7): the events of each `[[events]]` rule a record's
current state can judge, sent once per qualifying record.

Per rule, one run of the backfill's machinery (windows, leases, checkpoints: joint.py): its
records are read in keyset pages (the condition in the query), each page's qualifying records
become events stored with the store's knowledge of the rule (`add_backfill_events`: the ready
rows and the seeded condition states, one transaction), then the page is checkpointed. A
sender takes the ready rows to events/trackBulk through the shared trackBulk budget, the same
`EventSender` as the service's, so a resume, a restart or a running service never sends one
twice: each row is sent once, and its id is deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from streamsync.adapters.iterable import IterableClient
from streamsync.adapters.salesforce import SalesforceClient
from streamsync.adapters.store import BackfillRun, Checkpoint, StoreAPI
from streamsync.adapters.store.event_backfill import BackfillEvent
from streamsync.config import Config
from streamsync.core.event_backfill import (
    TIME_FIELDS,
    backfill_event_id,
    condition_values,
    moment_field,
    qualifies,
    unjudgeable,
    version_field,
)
from streamsync.core.mapping import parse_source
from streamsync.core.sf_time import sf_datetime
from streamsync.errors import AuthError, BackfillError, RecordError
from streamsync.logs import get_logger
from streamsync.runtime.backfill.joint import Participation, is_live
from streamsync.runtime.backfill.options import READS, BackfillOptions, key_refused
from streamsync.runtime.backfill.plan import ObjectPlan, Planner, combine, iso
from streamsync.runtime.backfill.read import Page, SalesforceReads, page_reader, strip_attributes
from streamsync.runtime.backfill.summary import Totals
from streamsync.runtime.components import shared_limiter
from streamsync.runtime.event_decide import read_primary_contacts, trackbulk_item
from streamsync.runtime.event_rules import CompiledRule
from streamsync.runtime.event_send import EventSender, send_and_settle

log = get_logger(__name__)

DRAIN_WAIT_S: Final = 30.0
"""How long the backfill waits at the end for its events due later (a profile not in Iterable
yet, an Iterable outage); the rest is left to the service's sender."""
_IDLE_S: Final = 0.5


@dataclass
class RuleSummary:
    """What `backfill --events` did for one rule."""

    rule: str
    object: str
    run_id: str | None
    status: str  # finished, already_finished
    records_read: int = 0
    qualifying: int = 0
    fired: int = 0  # stored to send now
    known: int = 0  # the store knew the moment (CDC fired it, or an earlier backfill)
    deferred: int = 0  # a CDC change of the record was being decided: left to it
    dead: dict[str, int] = field(default_factory=dict)
    resumed: bool = False


@dataclass
class EventsSummary:
    """The events part of a backfill: per rule, plus what the sender did."""

    rules: list[RuleSummary] = field(default_factory=list)
    not_judged: dict[str, str] = field(default_factory=dict)  # rule → why
    sent: int = 0
    sent_dead: int = 0
    left_queued: int = 0
    trackbulk_calls: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"rules": [vars(r) for r in self.rules], "not_judged": self.not_judged,
                "sent": self.sent, "sent_dead": self.sent_dead,
                "left_queued": self.left_queued, "trackbulk_calls": self.trackbulk_calls}


def select_rules(config: Config, rules: Sequence[CompiledRule], objects: Sequence[str]
                 ) -> tuple[list[CompiledRule], dict[str, str]]:
    """The rules a `--events` backfill of `objects` (empty: all) judges, and those of these
    objects it cannot judge (name → why); BackfillError when none is left."""
    if not config.events:
        raise BackfillError("--events: the config has no [[events]] rules")
    chosen = [r for r in rules if not objects or r.config.object in objects]
    if not chosen:
        have = ", ".join(sorted({f"{r.config.object} ({r.name})" for r in rules}))
        raise BackfillError(f"--events: no [[events]] rule has object "
                            f"{', '.join(objects)} (rules: {have})")
    skipped = {r.name: why for r in chosen if (why := unjudgeable(r.trigger)) is not None}
    judged = [r for r in chosen if r.name not in skipped]
    if not judged:
        reasons = "; ".join(f"rule {name!r}: {why}" for name, why in skipped.items())
        raise BackfillError(f"--events: no selected rule can be judged from current records "
                            f"({reasons})")
    return judged, skipped


def _ms(value: Any) -> int | None:
    moment = sf_datetime(value)
    return None if moment is None else int(moment.timestamp() * 1000)


def _lower(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k.lower(): v for k, v in record.items() if not isinstance(v, dict)}


class EventBackfill:
    """Runs `backfill --events` for the selected rules, one after the other."""

    def __init__(self, *, config: Config, store: StoreAPI, salesforce: SalesforceClient,
                 iterable: IterableClient, rules: Sequence[CompiledRule],
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.salesforce = salesforce
        self.rules = list(rules)
        self.clock = clock
        self.reads = SalesforceReads(salesforce, clock=clock)
        self.planner = Planner(config, {}, self.reads)
        conf = config.event_delivery
        self.limiter = shared_limiter(config, store, "trackBulk", conf.rate_limit_per_s,
                                      conf.max_in_flight, drawer="backfill")
        self.sender = EventSender(iterable=iterable, limiter=self.limiter,
                                  max_events=conf.batch_max_events,
                                  max_bytes=config.iterable.batch_max_bytes,
                                  max_attempts=conf.max_attempts,
                                  retry_s=config.queue.backoff_base_s)
        self._wake = asyncio.Event()
        self._summary = EventsSummary()
        self._sender: asyncio.Task[None] | None = None

    async def run(self, options: BackfillOptions) -> EventsSummary:
        """Judge and send the events of every selected rule (see the module docstring)."""
        rules, self._summary.not_judged = select_rules(self.config, self.rules, options.objects)
        for name, why in self._summary.not_judged.items():
            log.warning("backfill.events_rule_not_judged", rule=name, why=why)
        self._sender = asyncio.create_task(self._send_loop(), name="backfill.events_send")
        try:
            for rule in rules:
                self._summary.rules.append(await self._rule(rule, options))
        finally:
            self._sender.cancel()
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._sender
            finally:
                await self.limiter.close()  # leaves the shared budget
        self._summary.left_queued, _ = await self.store.backfill_events_waiting(
            [r.name for r in rules])
        log.info("backfill.events_finished", **{k: v for k, v in self._summary.to_dict().items()
                                                if k != "rules"})
        return self._summary

    def plan(self, rule: CompiledRule, options: BackfillOptions) -> ObjectPlan:
        """The rule's query: the fields it reads, the record times, its condition AND
        --where."""
        fields = list(dict.fromkeys([*rule.read_fields(), *TIME_FIELDS]))
        condition = rule.config.safe_condition
        return ObjectPlan(rule.config.object, tuple(fields),
                          combine(condition.text if condition else None, options.where))

    def _scope(self, rule: CompiledRule, plan: ObjectPlan, options: BackfillOptions
               ) -> dict[str, Any]:
        return {"events": rule.name, "object": plan.object_name, "where": plan.where,
                "since": iso(options.since) if options.since else None,
                "until": iso(options.until) if options.until else None,
                "api": self.planner.api(options)}

    async def _matching_run(self, scope: Mapping[str, Any]) -> BackfillRun | None:
        wanted = orjson.loads(orjson.dumps(dict(scope)))
        for run in await self.store.runs(limit=50):
            if dict(run.options).get("scope") == wanted:
                return run
        return None

    async def _select_run(self, plan: ObjectPlan, scope: dict[str, Any],
                          options: BackfillOptions) -> tuple[BackfillRun | None, bool]:
        """(run, resumed); (None, False) when the same rule's backfill already finished."""
        previous = await self._matching_run(scope)
        lease_s = self.config.backfill.lease_s
        if previous is not None and not previous.finished:
            live = [p for p in await self.store.run_participants(previous.run_id)
                    if is_live(p, lease_s)]
            if options.restart and live:
                raise BackfillError(f"the events backfill {previous.run_id} of rule "
                                    f"{scope['events']!r} is running: stop it before --restart")
            if not options.restart:
                if not (live or options.resume or options.join):
                    raise BackfillError(
                        f"the events backfill {previous.run_id} of rule {scope['events']!r} "
                        "stopped before finishing: use --resume to continue it or --restart "
                        "to start over")
                return previous, True
        elif options.join:
            raise BackfillError(f"--join: no events backfill of rule {scope['events']!r} is "
                                "in progress")
        elif previous is not None and not options.restart:
            return None, False
        windows, _total = await self.planner.windows_and_total([plan], options)
        run_id = "bfe-" + datetime.fromtimestamp(self.clock(), UTC).strftime(
            "%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        doc = {"scope": scope, "parallel": self.planner.parallel(options),
               "page_size": self.planner.page_size(options)}
        # objects=(): an events run loads no profiles, so no replay anchor depends on it
        if options.restart:
            return await self.store.start_run(run_id, windows, doc, self.clock()), False
        run, created = await self.store.start_or_find_run(run_id, windows, doc, self.clock())
        return run, not created

    async def _rule(self, rule: CompiledRule, options: BackfillOptions) -> RuleSummary:
        plan = self.plan(rule, options)
        scope = self._scope(rule, plan, options)
        run, resumed = await self._select_run(plan, scope, options)
        if run is None:
            previous = await self._matching_run(scope)
            return RuleSummary(rule.name, plan.object_name,
                               previous.run_id if previous else None, "already_finished")
        summary = RuleSummary(rule.name, plan.object_name, run.run_id, "finished",
                              resumed=resumed)
        totals = Totals()
        part = Participation(self.store, run.run_id, lease_s=self.config.backfill.lease_s,
                             totals=totals, sf_calls=lambda: 0)
        log.info("backfill.events_started", run_id=run.run_id, rule=rule.name,
                 object=plan.object_name, where=plan.where or "", resumed=resumed)
        await part.join()
        heartbeat = asyncio.create_task(part.heartbeat())
        try:
            await part.work(lambda cp: self._window(rule, plan, cp, options, part, summary),
                            self.planner.parallel(options))
            await self._drained(rule.name)  # finished: its events sent (or left to the service)
            await part.close(_no_catch_up, self.clock)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await part.leave()
        summary.records_read = totals.read
        return summary

    async def _window(self, rule: CompiledRule, plan: ObjectPlan, cp: Checkpoint,
                      options: BackfillOptions, part: Participation,
                      summary: RuleSummary) -> None:
        reader = page_reader(self.planner.api(options), self.reads,
                             window_field=self.config.backfill.window_field,
                             page_size=self.planner.page_size(options))
        done = cp.records_done
        async for page in reader.pages(plan, cp.window, cp.last_id):
            strip_attributes(page.records)
            part.totals.read += len(page.records)
            part.totals.pages += 1
            await self._page(rule, page, summary, part.totals)
            done += len(page.records)
            await part.save(cp.window, page.last_id, done)
        await part.finish(cp.window, done)

    async def _page(self, rule: CompiledRule, page: Page, summary: RuleSummary,
                    totals: Totals) -> None:
        """Judge one page, store its events and seeded states, wake the sender."""
        trigger = rule.trigger
        moment, version = moment_field(trigger), version_field(trigger)
        chosen = [r for r in page.records if qualifies(trigger, _lower(r))]
        roles: dict[str, dict[str, Any]] = {}
        if rule.profile.via_primary_role and chosen:
            paths = [parse_source(rule.profile.path).soql_field]
            salesforce = self.salesforce
            ids = [str(r["Id"]) for r in chosen]
            roles = await READS.call(lambda: read_primary_contacts(salesforce, ids, paths))
        events: list[BackfillEvent] = []
        for record in chosen:
            version_ms, created_ms = _ms(record.get(version)), _ms(record.get(moment))
            if version_ms is None or created_ms is None:
                summary.dead["no_timestamp"] = summary.dead.get("no_timestamp", 0) + 1
                continue
            record_id = str(record["Id"])
            eid = backfill_event_id(rule.name, record_id, version_ms)
            values = condition_values(trigger, _lower(record))
            try:
                item = trackbulk_item(rule, eid, created_ms, record, roles.get(record_id))
            except RecordError as exc:
                events.append(BackfillEvent(eid, rule.name, rule.config.object, record_id,
                                            version_ms, trigger.condition is not None, values,
                                            None, (exc.reason, str(exc))))
                continue
            events.append(BackfillEvent(eid, rule.name, rule.config.object, record_id,
                                        version_ms, trigger.condition is not None, values,
                                        item))
        summary.qualifying += len(chosen)
        if not events:
            return
        admitted = await self.store.add_backfill_events(events, self.clock())
        added = set(admitted.added)
        for e in events:
            if e.event_id in added and e.dead is not None:
                summary.dead[e.dead[0]] = summary.dead.get(e.dead[0], 0) + 1
        fired = sum(1 for e in events if e.event_id in added and e.dead is None)
        summary.fired += fired
        summary.known += len(admitted.known)
        summary.deferred += len(admitted.pending)
        totals.written += fired
        totals.skipped += len(page.records) - fired
        if fired:
            self._wake.set()

    async def _send_loop(self) -> None:
        """Send due backfill events as they are stored, until cancelled."""
        conf = self.config.event_delivery
        limit = conf.batch_max_events * max(1, int(conf.rate_limit_per_s))
        while True:
            if await self._send_once(limit):
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _IDLE_S)

    async def _drained(self, rule: str) -> None:
        """Until no ready event of `rule` is left, or none due within DRAIN_WAIT_S (those are
        the service's to send); a sender failure is raised here."""
        while True:
            count, due = await self.store.backfill_events_waiting([rule])
            if not count or due is None or due - self.clock() > DRAIN_WAIT_S:
                return
            assert self._sender is not None
            if self._sender.done():
                self._sender.result()
                raise BackfillError("the events sender stopped")
            self._wake.set()
            await asyncio.wait([self._sender], timeout=max(0.05, min(_IDLE_S,
                                                                    due - self.clock())))

    async def _send_once(self, limit: int) -> int:
        leased = await self.store.lease_backfill_events(limit, self.config.queue.lease_s,
                                                        self.clock())
        if not leased:
            return 0
        try:
            out = await send_and_settle(self.store, self.sender, leased, self.clock)
        except AuthError as exc:
            raise key_refused(exc) from exc
        self._summary.sent += len(out.sent)
        self._summary.sent_dead += len(out.dead)
        self._summary.trackbulk_calls += out.calls
        return len(leased)


async def _no_catch_up() -> int:
    return 0
