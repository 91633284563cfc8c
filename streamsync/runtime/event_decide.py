"""The decide step of custom events (docs/events.md §4): lease new candidates, read what they
need from Salesforce, decide in commit order per (rule, record), save the condition states and
the trackBulk items in one transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamsync.adapters.salesforce import SalesforceClient
from streamsync.adapters.store import StoreAPI
from streamsync.adapters.store.events import PendingEvent, StoredCondition
from streamsync.core.event_rules import ConditionState, decide, missing_fields
from streamsync.core.ids import parse_id
from streamsync.core.mapping import normalize_email, normalize_user_id, parse_source
from streamsync.core.soql import select_children
from streamsync.errors import RecordError
from streamsync.models import EventCandidate
from streamsync.runtime.event_rules import ROLE_OBJECT, CompiledRule
from streamsync.runtime.flush_read import _query_ids

ROLE_PARENTS_PER_QUERY = 300
NO_PROFILE = "no_profile"
RECORD_GONE = "record_not_found"


@dataclass
class Decided:
    """What one decide step settles: by event id."""

    ready: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    dead: dict[str, tuple[str, str]] = field(default_factory=dict)
    later: dict[str, tuple[str, float]] = field(default_factory=dict)
    states: dict[tuple[str, str], StoredCondition] = field(default_factory=dict)


@dataclass
class Prepared:
    """One lease with what its decisions need (see `EventDecider.prepare`)."""

    leased: Sequence[PendingEvent]
    running: dict[tuple[str, str], ConditionState]
    reads: dict[str, dict[str, dict[str, Any]]]
    roles: dict[str, dict[str, Any]]


def _walk(record: Mapping[str, Any], path: str) -> Any:
    node: Any = record
    for key in parse_source(path).keys:
        if not isinstance(node, Mapping):
            return None
        node = next((v for k, v in node.items() if k.lower() == key.lower()), None)
    return node


def _lower(record: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k.lower(): v for k, v in (record or {}).items() if not isinstance(v, dict)}


class EventDecider:
    """Turns stored candidates into ready trackBulk items, or drops them."""

    def __init__(self, *, rules: Sequence[CompiledRule], store: StoreAPI,
                 salesforce: SalesforceClient, max_attempts: int, retry_s: float) -> None:
        self._rules = {r.name: r for r in rules}
        self._fields = {r.name: r.read_fields() for r in rules}
        self._store = store
        self._salesforce = salesforce
        self._max_attempts = max_attempts
        self._retry_s = retry_s

    async def decide(self, leased: Sequence[PendingEvent]) -> Decided:
        """Decide every leased row (Salesforce faults propagate; the caller releases)."""
        return self.finish(await self.prepare(leased))

    async def prepare(self, leased: Sequence[PendingEvent]) -> Prepared:
        """Everything the decisions of `leased` need from the store and Salesforce (the
        condition states, the current rows, primary contact roles). The worker prepares the
        next lease while it settles this one: the store leases no row of a record whose
        earlier row is still undecided, so two leases never share a record."""
        known = [p for p in leased if p.candidate.rule in self._rules]
        stored = await self._store.conditions(
            [(p.candidate.rule, p.candidate.record_id) for p in known
             if self._rules[p.candidate.rule].trigger.condition is not None])
        running = {k: ConditionState(s.met, s.values, s.commit_ts_ms) for k, s in stored.items()}
        reads = await self._read(known, running)
        roles = await self._primary_contacts(known, reads)
        return Prepared(leased, running, reads, roles)

    def finish(self, prepared: Prepared) -> Decided:
        """The decisions, in lease (commit) order, from what `prepare` gathered."""
        out = Decided()
        for pending in prepared.leased:
            if pending.candidate.rule not in self._rules:
                out.skipped.append(pending.candidate.event_id)  # rule removed since
                continue
            self._one(pending, prepared.running, prepared.reads, prepared.roles, out)
        return out

    def _one(self, pending: PendingEvent, running: dict[tuple[str, str], ConditionState],
             reads: Mapping[str, Mapping[str, dict[str, Any]]],
             roles: Mapping[str, dict[str, Any]], out: Decided) -> None:
        cand = pending.candidate
        rule = self._rules[cand.rule]
        key = (cand.rule, cand.record_id)
        record = reads.get(cand.object_name, {}).get(cand.record_id)
        decision = decide(rule.trigger, cand, running.get(key), _lower(record))
        if decision.state is not None:
            running[key] = decision.state
            out.states[key] = StoredCondition(decision.state.met, decision.state.values,
                                              decision.state.commit_ts_ms)
        if not decision.fire:
            out.skipped.append(cand.event_id)
            return
        if record is None:
            out.dead[cand.event_id] = (RECORD_GONE, f"{cand.object_name} {cand.record_id} "
                                       "cannot be read (hard-deleted?)")
            return
        try:
            out.ready[cand.event_id] = self._item(rule, cand, record, roles)
        except RecordError as exc:
            if exc.reason == NO_PROFILE and pending.attempts + 1 < self._max_attempts:
                out.later[cand.event_id] = (str(exc), self._retry_s * 2 ** pending.attempts)
            else:
                out.dead[cand.event_id] = (exc.reason, str(exc))

    def _item(self, rule: CompiledRule, cand: EventCandidate, record: Mapping[str, Any],
              roles: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        return trackbulk_item(rule, cand.event_id, cand.commit_ts_ms, record,
                              roles.get(cand.record_id))

    async def _read(self, pending: Iterable[PendingEvent],
                    running: Mapping[tuple[str, str], ConditionState]
                    ) -> dict[str, dict[str, dict[str, Any]]]:
        """Current rows (deleted ones too) of the records that fire or miss condition values."""
        wanted: dict[str, dict[str, None]] = {}
        fields: dict[str, dict[str, None]] = {}
        for p in pending:
            cand = p.candidate
            rule = self._rules[cand.rule]
            if cand.fires or missing_fields(rule.trigger, cand,
                                            running.get((cand.rule, cand.record_id))):
                wanted.setdefault(cand.object_name, {})[cand.record_id] = None
                fields.setdefault(cand.object_name, {}).update(
                    dict.fromkeys(self._fields[rule.name]))
        return {name: await _query_ids(self._salesforce, name, list(fields[name]), list(ids),
                                       None) for name, ids in wanted.items()}

    async def _primary_contacts(self, pending: Iterable[PendingEvent],
                                reads: Mapping[str, Mapping[str, Any]]
                                ) -> dict[str, dict[str, Any]]:
        """Opportunity id → its primary OpportunityContactRole row (with the Contact path)."""
        paths: dict[str, None] = {}
        ids: dict[str, None] = {}
        for p in pending:
            rule = self._rules[p.candidate.rule]
            if rule.profile.via_primary_role and p.candidate.fires \
                    and p.candidate.record_id in reads.get(p.candidate.object_name, {}):
                ids[p.candidate.record_id] = None
                paths[parse_source(rule.profile.path).soql_field] = None
        return await read_primary_contacts(self._salesforce, list(ids), list(paths))


def trackbulk_item(rule: CompiledRule, event_id: str, created_ms: int,
                   record: Mapping[str, Any], role: Mapping[str, Any] | None) -> dict[str, Any]:
    """The trackBulk item: id, eventName, the user, createdAt (`created_ms` in seconds) and
    dataFields (docs/events.md §1); `role`: the Opportunity's primary contact role row."""
    profile = rule.profile
    source = record
    if profile.via_primary_role:
        if role is None:
            raise RecordError(NO_PROFILE, f"Opportunity {record.get('Id')} has no primary "
                                          "contact role")
        source = role
    raw = _walk(source, profile.path)  # empty: normalize_* raise a RecordError (dead)
    item: dict[str, Any] = {"id": event_id, "eventName": rule.config.event_name}
    if profile.kind == "email":
        item["email"] = normalize_email(raw)
    else:
        item["userId"] = normalize_user_id(raw, from_id_field=True)
    item["createdAt"] = created_ms // 1000
    item["dataFields"] = rule.data.map(record).payload.get("dataFields", {})
    return item


async def read_primary_contacts(salesforce: SalesforceClient, opportunity_ids: Sequence[str],
                                paths: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Opportunity id → its primary OpportunityContactRole row, with the Contact `paths`."""
    out: dict[str, dict[str, Any]] = {}
    id_list = list(opportunity_ids)
    fields = list(dict.fromkeys(paths))

    async def read(chunk: list[str]) -> None:
        soql = select_children(ROLE_OBJECT, "OpportunityId", chunk,
                               ["Id", "OpportunityId", *fields], where="IsPrimary = true")
        async for page in salesforce.query(soql):
            for row in page.records:
                out[parse_id(row.get("OpportunityId"))] = row

    # Concurrent: the Salesforce client bounds its requests in flight.
    await asyncio.gather(*(read(id_list[i:i + ROLE_PARENTS_PER_QUERY])
                           for i in range(0, len(id_list), ROLE_PARENTS_PER_QUERY)))
    return out
