"""Read what the final-state check needs: Salesforce's records, the verify policies, dead letters.

Shared by `make demo`, `scripts/chaos.py` and the end-to-end tests, so each compares Iterable with
Salesforce the same way (`core/verify.compare`, and for custom events `core/verify_events`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from streamsync.config import Config
from streamsync.core import soql
from streamsync.core.event_rules import event_id
from streamsync.core.ids import to_18
from streamsync.core.mapping import CompiledMapping, normalize_email, normalize_user_id
from streamsync.core.verify import ObjectPolicy
from streamsync.core.verify_consent import ConsentPolicy, ConsentReport, check_consent
from streamsync.core.verify_events import (
    EventReport,
    ExpectedEvent,
    QualifyingChange,
    compare_events,
)
from streamsync.core.verify_lists import ListExpectation, ListsReport, compare_lists
from streamsync.errors import RecordError
from streamsync.runtime.app import Components
from streamsync.runtime.consent_writer import list_ids
from streamsync.runtime.event_rules import CompiledRule
from streamsync.runtime.flush_read import _query_ids
from streamsync.runtime.lists.members import MemberReader
from streamsync.runtime.lists.resolve import resolve_lists
from streamsync.runtime.lists.start import lists_client

USER_OBJECTS = ("Lead", "Contact")


def verify_policies(config: Config, mappings: Mapping[str, CompiledMapping],
                    objects: Iterable[str] = USER_OBJECTS,
                    cleared: Mapping[str, Sequence[str]] | None = None
                    ) -> dict[str, ObjectPolicy]:
    """The verify rules of each object, from its configuration; `cleared`: per object the
    targets a mapping change dropped (they must be absent or null)."""
    contact_first = config.converted_precedence() == "contact"
    out: dict[str, ObjectPolicy] = {}
    for name in objects:
        obj = config.objects[name]
        out[name] = ObjectPolicy(mappings[name], obj.delete_policy, obj.delete_flag_field,
                                 defers_when_converted=name == "Lead" and contact_first,
                                 cleared=tuple((cleared or {}).get(name, ())))
    return out


def consent_policies(config: Config, mappings: Mapping[str, CompiledMapping],
                     lists: list[dict[str, Any]], objects: Iterable[str] = USER_OBJECTS
                     ) -> dict[str, ConsentPolicy]:
    """The consent check's rules of each object that carries consent; `lists` is Iterable's
    GET /api/lists, to resolve list names (raises UnknownList as the writer would)."""
    contact_first = config.converted_precedence() == "contact"
    out: dict[str, ConsentPolicy] = {}
    for name in objects:
        consent = config.objects[name].consent
        if consent is None:
            continue
        out[name] = ConsentPolicy(
            mappings[name], tuple(consent.opt_out_fields),
            tuple(consent.unsubscribe_channel_ids), tuple(consent.unsubscribe_message_type_ids),
            list_ids(consent.remove_from_lists, lists),
            defers_when_converted=name == "Lead" and contact_first)
    return out


async def read_salesforce(parts: Components, objects: Iterable[str] = USER_OBJECTS
                          ) -> dict[str, list[dict[str, Any]]]:
    """Every record of each object, deleted ones included (queryAll), with the mapped fields."""
    records: dict[str, list[dict[str, Any]]] = {}
    for name in objects:
        extra = ["IsDeleted", *(["IsConverted"] if name == "Lead" else [])]
        fields = parts.mappings[name].soql_fields(*extra)
        query = soql.select_all(name, fields)
        records[name] = [r async for r in parts.salesforce.records(query, include_deleted=True)]
    return records


async def read_lists(config: Config, parts: Components) -> ListsReport:
    """Every mapped list as Iterable has it (getUsers) compared with its Campaign's members
    (`core/verify_lists.compare_lists`); an empty report when [lists] maps nothing."""
    if not config.lists.enabled:
        return ListsReport()
    client = lists_client(config, parts.iterable, parts.store)
    found = await resolve_lists(config, parts.salesforce, client, create=False)
    found.raise_on_problems()
    reader = MemberReader(config, parts.salesforce, found.lists)
    members: dict[str, list[dict[str, Any]]] = {}
    actual: dict[int, list[str]] = {}
    for mapped in found.lists:
        rows: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            page = await reader.page_of(mapped.campaign_id, after, 2000)
            rows.extend(page)
            if len(page) < 2000:
                break
            after = str(page[-1]["Id"])
        members[mapped.campaign_id] = rows
        actual[mapped.list_id] = await client.users(mapped.list_id)
    expectations = [ListExpectation(m.list_id, m.campaign_id, m.statuses) for m in found.lists]
    return compare_lists(expectations, members, actual, lead_email=reader.lead_email,
                         contact_email=reader.contact_email)


async def read_consent(config: Config, parts: Components,
                       records: Mapping[str, Iterable[Mapping[str, Any]]],
                       subscriptions: Mapping[str, Mapping[str, Any]]) -> ConsentReport:
    """No opted-out Salesforce record's Iterable user still receives a configured group
    (`core/verify_consent.py`); `subscriptions` are the users' arrays by profile key. List names
    and opt-in message types come from Iterable's API."""
    if not config.consent_objects():
        return ConsentReport()
    lists = await parts.iterable.get_lists()
    types = await parts.iterable.get_message_types()
    opt_in = frozenset(t["id"] for t in types
                       if t.get("subscriptionPolicy") == "OptIn" and isinstance(t.get("id"), int))
    policies = consent_policies(config, parts.mappings, lists, tuple(records))
    return check_consent(policies, records, subscriptions, opt_in)


async def read_events(parts: Components, changes: Iterable[QualifyingChange],
                      also_users: Iterable[str] = ()) -> EventReport:
    """Each qualifying change's expected event (its user and data from Salesforce now), and
    the rules' events Iterable holds for those users (and `also_users`), compared
    (`core/verify_events.py`)."""
    rules = {r.name: r for r in parts.rules}
    wanted: dict[str, list[QualifyingChange]] = {}
    for change in changes:
        wanted.setdefault(change.rule, []).append(change)
    expected: list[ExpectedEvent] = []
    for name, rule_changes in wanted.items():
        rule = rules[name]
        ids = sorted({to_18(c.record_id) for c in rule_changes})
        records = await _query_ids(parts.salesforce, rule.config.object, rule.read_fields(),
                                   ids, None)
        roles = await _primary_roles(parts, rule, ids)
        for change in rule_changes:
            record = records.get(to_18(change.record_id))
            if record is None:
                continue  # hard-deleted: nothing to compare with (reported as missing)
            source = roles.get(to_18(change.record_id)) if rule.profile.via_primary_role \
                else record
            user = _identity(rule, source)
            if user is None:
                continue  # no valid email or id: no profile to land on (the event is dead)
            expected.append(ExpectedEvent(
                event_id(name, to_18(change.record_id), change.transaction_key),
                rule.config.event_name, user, change.commit_ts_ms // 1000,
                None if change.data_moved else rule.data.map(record).payload.get(
                    "dataFields", {}), change.lost_to_cdc))
    found: list[dict[str, Any]] = []
    for user in sorted({e.user for e in expected} | set(also_users)):
        # Read by the profile the event must be on (its stored email may be an older one).
        found.extend({**event, "readAs": user} for event in await (
            parts.iterable.user_events(email=user) if "@" in user
            else parts.iterable.user_events(user_id=user)))
    return compare_events(expected, found, {r.config.event_name for r in parts.rules})


async def _primary_roles(parts: Components, rule: CompiledRule, ids: list[str]
                         ) -> dict[str, dict[str, Any]]:
    if not rule.profile.via_primary_role or not ids:
        return {}
    out: dict[str, dict[str, Any]] = {}
    field_path = rule.profile.path
    for start in range(0, len(ids), 300):
        query = soql.select_children("OpportunityContactRole", "OpportunityId",
                                     ids[start:start + 300], ["Id", "OpportunityId", field_path],
                                     where="IsPrimary = true")
        async for page in parts.salesforce.query(query):
            for row in page.records:
                out[to_18(row["OpportunityId"])] = row
    return out


def _identity(rule: CompiledRule, source: Mapping[str, Any] | None) -> str | None:
    node: Any = source
    for key in rule.profile.path.split("."):
        node = node.get(key) if isinstance(node, Mapping) else None
    try:
        return normalize_email(node) if rule.profile.kind == "email" else \
            normalize_user_id(node, from_id_field=True)
    except RecordError:
        return None
