"""Read what the final-state check needs: Salesforce's records, the verify policies, dead letters.

Shared by `make demo`, `scripts/chaos.py` and the end-to-end tests, so each compares Iterable with
Salesforce the same way (`core/verify.compare`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from streamsync.config import Config
from streamsync.core import soql
from streamsync.core.mapping import CompiledMapping
from streamsync.core.verify import ObjectPolicy
from streamsync.core.verify_consent import ConsentPolicy, ConsentReport, check_consent
from streamsync.core.verify_lists import ListExpectation, ListsReport, compare_lists
from streamsync.runtime.app import Components
from streamsync.runtime.consent_writer import list_ids
from streamsync.runtime.lists.members import MemberReader
from streamsync.runtime.lists.resolve import resolve_lists
from streamsync.runtime.lists.start import lists_client

USER_OBJECTS = ("Lead", "Contact")


def verify_policies(config: Config, mappings: Mapping[str, CompiledMapping],
                    objects: Iterable[str] = USER_OBJECTS) -> dict[str, ObjectPolicy]:
    """The verify rules of each object, from its configuration."""
    contact_first = config.converted_precedence() == "contact"
    out: dict[str, ObjectPolicy] = {}
    for name in objects:
        obj = config.objects[name]
        out[name] = ObjectPolicy(mappings[name], obj.delete_policy, obj.delete_flag_field,
                                 defers_when_converted=name == "Lead" and contact_first)
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
    client = lists_client(config, parts.iterable)
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
