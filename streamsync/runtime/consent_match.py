"""Which Salesforce records an Iterable consent event is about (docs/design.md §7).

Per consent object (`[objects.<Name>.consent]`): the records the identity table maps to the
event's Iterable user (by email or userId), and every live record whose email field holds the
event's email. The rule for several matches: **all of them** are brought to the event's state,
Leads and Contacts alike (an opt-out is a person's, about an address; Salesforce's own consent
API merges every record with the same email the same way). Converted Leads are left out
(Salesforce refuses to update them; the Contact they became is matched instead).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamsync.adapters.iterable import IterableClient
from streamsync.adapters.salesforce import SalesforceClient
from streamsync.adapters.store import StoreAPI
from streamsync.config import Config
from streamsync.core.consent_inbound import ConsentGroups, Decision
from streamsync.core.ids import id_or_none
from streamsync.core.soql import (
    encoded_len,
    quote,
    select_by_ids_chunked,
    select_where_in,
    validate_identifier,
)
from streamsync.errors import SoqlError
from streamsync.runtime.consent_writer import list_ids

EMAILS_PER_QUERY = 300
EMAIL_LIST_BUDGET = 12_000
"""Encoded characters of one query's email list: the URI stays under Salesforce's 16,384-byte
cap with room for the rest of the query and the headers (docs/salesforce.md §3.3)."""


@dataclass(frozen=True)
class Target:
    """One consent object as the inbound direction sees it."""

    object_name: str
    fields: tuple[str, ...]
    groups: ConsentGroups
    email_field: str | None  # a plain field to match emails on, or None (identities only)

    @property
    def select(self) -> list[str]:
        extra = ["IsConverted"] if self.object_name == "Lead" else []
        email = [self.email_field] if self.email_field else []
        return ["Id", *email, *self.fields, "SystemModstamp", *extra]


@dataclass
class Matches:
    """Per user key, the records of one object it matched (Id → record as read)."""

    by_user: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def add(self, user_key: str, record: dict[str, Any]) -> None:
        sf_id = id_or_none(record.get("Id"))
        if sf_id is not None:
            self.by_user.setdefault(user_key, {})[sf_id] = record


async def load_targets(config: Config, iterable: IterableClient) -> list[Target]:
    """The consent objects with their groups by id (list names looked up once)."""
    out: list[Target] = []
    lists: list[dict[str, Any]] | None = None
    for name, consent in config.consent_objects().items():
        if any(isinstance(e, str) for e in consent.remove_from_lists) and lists is None:
            lists = await iterable.get_lists()
        groups = ConsentGroups(frozenset(consent.unsubscribe_channel_ids),
                               frozenset(consent.unsubscribe_message_type_ids),
                               frozenset(list_ids(consent.remove_from_lists, lists or [])))
        email = config.objects[name].email_field
        try:
            plain = validate_identifier(email) if "." not in email else None
        except SoqlError:
            plain = None
        out.append(Target(name, tuple(consent.opt_out_fields), groups, plain))
    return out


def email_chunks(emails: Sequence[str], budget: int = EMAIL_LIST_BUDGET,
                 size: int = EMAILS_PER_QUERY) -> Iterable[list[str]]:
    """The emails in chunks whose quoted, encoded list fits `budget` (at most `size` each)."""
    chunk: list[str] = []
    used = 0
    for email in emails:
        cost = encoded_len(quote(email)) + 3  # the encoded comma
        if chunk and (used + cost > budget or len(chunk) >= size):
            yield chunk
            chunk, used = [], 0
        chunk.append(email)
        used += cost
    if chunk:
        yield chunk


async def _read(salesforce: SalesforceClient, soqls: Sequence[str]) -> list[dict[str, Any]]:
    async def one(soql: str) -> list[dict[str, Any]]:
        return [r async for r in salesforce.records(soql)]

    pages = await asyncio.gather(*(one(q) for q in soqls))
    return [r for page in pages for r in page]


async def find_records(salesforce: SalesforceClient, store: StoreAPI, target: Target,
                       decisions: Mapping[str, Decision]) -> Matches:
    """The live, unconverted records of `target` each decided user maps to."""
    emails = sorted({d.event.email for d in decisions.values() if d.event.email})
    user_ids = sorted({d.event.user_id for d in decisions.values() if d.event.user_id})
    owners: dict[str, set[str]] = {}  # record id -> user keys
    for ident in await store.identities_for_users(emails, user_ids):
        if ident.object_name != target.object_name:
            continue
        keys = {f"email:{ident.iterable_email.lower()}" if ident.iterable_email else "",
                f"userId:{ident.iterable_user_id}" if ident.iterable_user_id else ""}
        owners.setdefault(ident.record_id, set()).update(k for k in keys if k in decisions)
    soqls: list[str] = []
    if owners:
        prefix = f"{salesforce.data_path}/query?q="
        soqls += select_by_ids_chunked(target.object_name, target.select, sorted(owners), prefix)
    if target.email_field and emails:
        soqls += [select_where_in(target.object_name, target.select, target.email_field, chunk)
                  for chunk in email_chunks(emails)]
    matches = Matches()
    for record in await _read(salesforce, soqls):
        if record.get("IsConverted") is True:
            continue
        sf_id = id_or_none(record.get("Id"))
        keys = set(owners.get(sf_id or "", ()))
        email = record.get(target.email_field) if target.email_field else None
        if isinstance(email, str) and f"email:{email.strip().lower()}" in decisions:
            keys.add(f"email:{email.strip().lower()}")
        for key in keys:
            matches.add(key, record)
    return matches
