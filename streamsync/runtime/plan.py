"""`streamsync plan`: what applying a config would do, read from Salesforce, Iterable and the
store without writing to any of them (docs/design.md §9).

Per object: the field diff against the description the store last applied, the records in
scope (`COUNT()` with the new filter), how many a re-sync would write (payload hashes of the
records read compared with the store's; exact when every record in scope was read, otherwise
extrapolated from those read), the records a changed filter leaves out, the Salesforce calls
and Iterable requests the re-sync costs and the time it takes at the configured ceiling, and
for the first N records in scope the profile as Iterable holds it now next to what it would
hold.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from streamsync.adapters.http import UsageCounter
from streamsync.adapters.iterable import IterableClient
from streamsync.adapters.ratelimit import RateLimiter
from streamsync.adapters.salesforce import SalesforceClient
from streamsync.config import Config
from streamsync.core import soql
from streamsync.core.fingerprint import MappingDiff, diff
from streamsync.core.ids import row_id
from streamsync.core.mapping import CompiledMapping
from streamsync.models import MappedUser
from streamsync.retry import Policy
from streamsync.runtime.clients import (
    build_iterable_client,
    build_salesforce_auth,
    build_salesforce_client,
    iterable_session,
    salesforce_session,
)
from streamsync.runtime.describes import startup_mappings
from streamsync.runtime.mapping_state import (
    ObjectSync,
    clears_for,
    left_in_place,
    needs_out_of_scope_pass,
    object_syncs,
)
from streamsync.runtime.pipeline import SyncOutcome
from streamsync.runtime.pipeline_map import map_all
from streamsync.runtime.resync import ORDER_FIELDS, PAGE_SIZE
from streamsync.runtime.store_open import read_applied, read_hashes, store_location

ESTIMATE_RECORDS: Final = 10_000
"""Records read per object to compare payload hashes (more are extrapolated from these)."""
READS = Policy(name="plan_reads", attempts=4, timeout_s=60.0, wait_initial_s=0.5,
               wait_max_s=10.0)


@dataclass
class SampleDiff:
    """One record's profile: each data field that would change, as (now, would be)."""

    record_id: str
    key: str | None
    exists: bool
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"record_id": self.record_id, "key": self.key, "exists": self.exists,
                "fields": {k: {"now": now, "would_be": new}
                           for k, (now, new) in sorted(self.fields.items())}}


@dataclass
class ObjectPlan:
    """What applying the config does to one object."""

    object_name: str
    fingerprint: str
    applied_fingerprint: str | None
    change: MappingDiff
    action: str  # "none", "resync" or "record" (a first run records, re-syncs nothing)
    clears: list[str] = field(default_factory=list)
    left_in_place: list[str] = field(default_factory=list)
    in_scope: int = 0
    read: int = 0
    would_write: int = 0
    estimate: str = ""
    out_of_scope: int | None = None
    out_of_scope_policy: str = "ignore"
    salesforce_calls: int = 0
    iterable_requests: int = 0
    seconds_at_ceiling: float = 0.0
    samples: list[SampleDiff] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "object": self.object_name, "action": self.action,
            "fingerprint": self.fingerprint, "applied_fingerprint": self.applied_fingerprint,
            "changes": self.change.as_dict(), "clears": self.clears,
            "left_in_place": self.left_in_place, "records_in_scope": self.in_scope,
            "records_read": self.read, "would_write": self.would_write,
            "estimate": self.estimate, "out_of_scope": {
                "records": self.out_of_scope, "policy": self.out_of_scope_policy},
            "cost": {"salesforce_calls": self.salesforce_calls,
                     "iterable_requests": self.iterable_requests,
                     "seconds_at_ceiling": round(self.seconds_at_ceiling, 1)},
            "samples": [s.as_dict() for s in self.samples],
        }


@dataclass
class PlanReport:
    """Every object's plan, and the calls the plan itself made (reads only)."""

    store: str
    objects: list[ObjectPlan]
    dropped_objects: list[str]
    rate_per_s: float
    batch_users: int
    calls_made: dict[str, int] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        """True when applying the config would change anything (the store or Iterable)."""
        return any(o.action != "none" for o in self.objects)

    def as_dict(self) -> dict[str, Any]:
        return {"store": self.store, "changes": self.changes,
                "ceiling": {"requests_per_s": self.rate_per_s, "users_per_request":
                            self.batch_users},
                "objects": [o.as_dict() for o in self.objects],
                "objects_no_longer_configured": self.dropped_objects,
                "calls_made": self.calls_made}


async def make_plan(config: Config, *, samples: int = 0,
                    estimate_records: int = ESTIMATE_RECORDS) -> PlanReport:
    """Read everything the plan needs; writes nothing anywhere."""
    counter = UsageCounter()
    made: Counter[str] = Counter()
    counter.subscribe(lambda api, endpoint, _status: made.update([f"{api} {endpoint}"]))
    sf_http = salesforce_session(config)
    it_http = iterable_session(config)
    try:
        salesforce = build_salesforce_client(
            config, sf_http, counter=counter,
            auth=build_salesforce_auth(config, sf_http, counter))
        iterable = build_iterable_client(config, it_http, counter, limiter=RateLimiter(
            config.iterable.rate_limit_per_s, max_in_flight=config.iterable.max_in_flight))
        mappings = await startup_mappings(config, salesforce)
        planner = _Planner(config, salesforce, iterable, mappings, samples, estimate_records)
        report = await planner.plan()
    finally:
        await sf_http.close()
        await it_http.close()
    report.calls_made = dict(sorted(made.items()))
    return report


class _Planner:
    def __init__(self, config: Config, salesforce: SalesforceClient, iterable: IterableClient,
                 mappings: Mapping[str, CompiledMapping], samples: int,
                 estimate_records: int) -> None:
        self.config = config
        self.salesforce = salesforce
        self.iterable = iterable
        self.mappings = mappings
        self.samples = samples
        self.estimate_records = max(estimate_records, samples, 1)

    async def plan(self) -> PlanReport:
        path = store_location(self.config)
        applied = await read_applied(self.config)
        syncs = object_syncs(self.config, self.mappings)
        plans = []
        for name, sync in syncs.items():
            done = applied.get(name)
            plans.append(await self._object(
                sync, done.description if done is not None else None,
                done.fingerprint if done is not None else None, first=not applied))
        it = self.config.iterable
        return PlanReport(path, plans, sorted(set(applied) - set(syncs)),
                          it.rate_limit_per_s, it.batch_max_users)

    async def _object(self, sync: ObjectSync, old: Mapping[str, Any] | None,
                      old_fingerprint: str | None, *, first: bool) -> ObjectPlan:
        name = sync.object_name
        obj = self.config.objects[name]
        change = diff(old, sync.description)
        unchanged = old_fingerprint == sync.fingerprint
        action = "none" if unchanged else ("record" if first else "resync")
        null_policy = obj.null_policy
        plan = ObjectPlan(name, sync.fingerprint, old_fingerprint, change, action,
                          out_of_scope_policy=obj.out_of_scope)
        if action != "resync":
            return plan
        plan.clears = clears_for(change, null_policy)
        plan.left_in_place = left_in_place(change, null_policy)
        plan.in_scope = await self._count(name, obj.safe_filter)
        kept = [str(t) for t in (old or {}).get("cleared") or ()]  # still cleared
        mapping = self.mappings[name].with_clears([*plan.clears, *kept])
        records = await self._read(name, mapping, plan.in_scope)
        plan.read = len(records)
        users = map_all(self.config, mapping, name, records, SyncOutcome(), [])
        stored = await read_hashes(self.config, name, [u.sf_id for u in users])
        writes = [u for u in users if stored.get(u.sf_id, "") != u.payload_hash]
        plan.would_write, plan.estimate = _extrapolate(len(writes), plan.read, plan.in_scope)
        pages = math.ceil(plan.in_scope / PAGE_SIZE) or 1
        if obj.filter is not None and needs_out_of_scope_pass(change, obj.out_of_scope):
            plan.out_of_scope = await self._count(
                name, soql.parse_filter(f"NOT ({obj.filter})"))
            pages += math.ceil(plan.out_of_scope / PAGE_SIZE) or 1
        plan.salesforce_calls = pages
        acted = plan.out_of_scope or 0
        per_call = self.config.iterable.batch_max_users
        plan.iterable_requests = math.ceil(plan.would_write / per_call) + (
            acted if obj.out_of_scope == "delete" else math.ceil(acted / per_call))
        plan.seconds_at_ceiling = plan.iterable_requests / self.config.iterable.rate_limit_per_s
        plan.samples = [await self._sample(u) for u in _sample_users(users, records,
                                                                    self.samples)]
        return plan

    async def _count(self, name: str, where: soql.SafeFilter | None) -> int:
        query = soql.count(name, where)
        return await READS.call(lambda: self.salesforce.count(query))

    async def _read(self, name: str, mapping: CompiledMapping, in_scope: int
                    ) -> list[dict[str, Any]]:
        """Up to `estimate_records` records in scope, in Id order, as the re-sync reads them."""
        where = self.config.objects[name].safe_filter
        fields = mapping.soql_fields(*ORDER_FIELDS)
        out: list[dict[str, Any]] = []
        after: str | None = None
        wanted = min(self.estimate_records, in_scope)
        while len(out) < wanted:
            limit = min(PAGE_SIZE, wanted - len(out))
            query = soql.keyset_page(name, fields, after, where=where, limit=limit)

            async def page(q: str = query) -> list[dict[str, Any]]:
                return [r async for r in self.salesforce.records(q)]

            rows = await READS.call(page)
            for row in rows:
                row.pop("attributes", None)
                row["Id"] = row_id(row)
            rows = [r for r in rows if r["Id"] is not None]
            out.extend(rows)
            if len(rows) < limit:
                break
            after = str(rows[-1]["Id"])
        return out

    async def _sample(self, user: MappedUser) -> SampleDiff:
        """Iterable's profile now (GET) next to the payload the re-sync would send."""
        by_user_id = self.config.iterable.project_type == "userId" or user.email is None
        key = user.user_id if by_user_id else user.email
        now = await READS.call(lambda: self.iterable.get_user(
            email=None if by_user_id else user.email,
            user_id=user.user_id if by_user_id else None))
        held = _leaves((now or {}).get("dataFields") or {})
        would = _leaves(user.payload.get("dataFields") or {})
        fields = {path: (held.get(path), value) for path, value in would.items()
                  if held.get(path) != value}
        return SampleDiff(user.sf_id, key, now is not None and bool(now), fields)


def _sample_users(users: Sequence[MappedUser], records: Sequence[Mapping[str, Any]],
                  n: int) -> list[MappedUser]:
    """The users of the first `n` records in scope (Id order) that map to one."""
    order = {str(r["Id"]): i for i, r in enumerate(records)}
    return sorted(users, key=lambda u: order.get(u.sf_id, 0))[:n]


def _extrapolate(writes: int, read: int, in_scope: int) -> tuple[int, str]:
    if read >= in_scope:
        return writes, (f"exact: all {read} records in scope were read and their payload "
                        "hashes compared with the store's")
    estimate = round(in_scope * writes / read) if read else in_scope
    return estimate, (f"estimated: {writes} of the first {read} records in scope (by Id) "
                      f"would be written; that share of {in_scope}")


def _leaves(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(_leaves(value, path))
        else:
            out[path] = value
    return out
