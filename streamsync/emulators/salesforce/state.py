"""The org's records and the write API; every committed write publishes CDC events."""

from __future__ import annotations

import re
import time
import uuid
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from .errors import SalesforceError, not_found
from .ids import KEY_PREFIXES, IdSequence, is_valid_id, make_id, to18
from .oauth import Sessions
from .rules import CASCADES, check_new_member, deleted_children, derive, live_children
from .schema import (
    BY_PREFIX,
    CDC_EXCLUDED,
    DEFAULT_CDC_ENTITIES,
    OPPORTUNITY_STAGES,
    SCHEMA,
    SCHEMA_LOWER,
    Field,
    SObject,
)

Row = list[Any]
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?(Z|[+-]\d{2}:?\d{2})$")


CONVERTED_STATUS = "Closed - Converted"
CONVERTED_STATUSES = frozenset({CONVERTED_STATUS})
# (target field, Lead field): what a conversion copies onto the Account and the Contact.
_LEAD_TO_ACCOUNT = (("Industry", "Industry"), ("Phone", "Phone"), ("Website", "Website"),
                    ("AnnualRevenue", "AnnualRevenue"), ("NumberOfEmployees", "NumberOfEmployees"),
                    ("BillingStreet", "Street"), ("BillingCity", "City"),
                    ("BillingState", "State"), ("BillingPostalCode", "PostalCode"),
                    ("BillingCountry", "Country"))
_LEAD_TO_CONTACT = (("Salutation", "Salutation"), ("FirstName", "FirstName"),
                    ("LastName", "LastName"), ("Title", "Title"), ("Email", "Email"),
                    ("Phone", "Phone"), ("MobilePhone", "MobilePhone"),
                    ("LeadSource", "LeadSource"), ("MailingStreet", "Street"),
                    ("MailingCity", "City"), ("MailingState", "State"),
                    ("MailingPostalCode", "PostalCode"), ("MailingCountry", "Country"),
                    ("HasOptedOutOfEmail", "HasOptedOutOfEmail"),
                    ("HasOptedOutOfFax", "HasOptedOutOfFax"), ("DoNotCall", "DoNotCall"),
                    ("Lifecycle_Stage__c", "Lifecycle_Stage__c"),
                    ("External_Id__c", "External_Id__c"))


@dataclass(frozen=True)
class LeadConversion:
    """One convertLead request (the LeadConvert fields the emulator honours)."""

    lead_id: str
    converted_status: str = CONVERTED_STATUS
    account_id: str | None = None
    contact_id: str | None = None
    owner_id: str | None = None
    create_opportunity: bool = False
    opportunity_name: str | None = None
    overwrite_lead_source: bool = False


def _present(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _quarter_end(day: str) -> str:
    """The last day of the calendar quarter holding `day` (YYYY-MM-DD)."""
    year, month = int(day[:4]), int(day[5:7])
    last_month = (month - 1) // 3 * 3 + 3
    return f"{year:04d}-{last_month:02d}-{(31 if last_month in (3, 12) else 30):02d}"


class Publisher(Protocol):
    """What the state needs from the event bus."""

    def publish(self, entity_name: str, payload: dict[str, Any]) -> int: ...


def format_datetime(epoch_s: float) -> str:
    """A REST/SOQL datetime: 2026-01-02T03:04:05.000+0000."""
    return datetime.fromtimestamp(int(epoch_s), UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def event_datetime(value: str) -> str:
    """The CometD form of a stored datetime: 2026-01-02T03:04:05Z."""
    return value[:19] + "Z"


def parse_datetime(value: str) -> str:
    """Normalise an ISO-8601 datetime to the stored form, or raise ValueError."""
    if not _DATETIME_RE.match(value):
        raise ValueError(value)
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


class Table:
    """Records of one sObject: a dict by id and the ids in sorted (creation) order."""

    __slots__ = ("obj", "rows", "ids", "seq", "deleted_slot", "stamp_slot", "mod_stamps",
                 "mod_ids", "ref_index")

    def __init__(self, obj: SObject, seq: IdSequence) -> None:
        self.obj = obj
        self.rows: dict[str, Row] = {}
        self.ids: list[str] = []
        self.seq = seq
        f = obj.get("IsDeleted")
        self.deleted_slot = f.slot if f else -1
        f = obj.get("SystemModstamp")
        self.stamp_slot = f.slot if f else -1
        # (SystemModstamp, Id) of every write, sorted by stamp; stale entries stay until the
        # next rebuild, so readers re-check the row. Serves "SystemModstamp >= t" filters.
        self.mod_stamps: list[str] = []
        self.mod_ids: list[str] = []
        # slot -> value -> ids, for reference fields; built on first use, kept up to date.
        self.ref_index: dict[int, dict[str, set[str]]] = {}

    def index_for(self, slot: int) -> dict[str, set[str]]:
        """The value -> ids index of one (reference) field, built on first use."""
        index = self.ref_index.get(slot)
        if index is None:
            index = {}
            for sf_id, row in self.rows.items():
                value = row[slot]
                if value is not None:
                    index.setdefault(value, set()).add(sf_id)
            self.ref_index[slot] = index
        return index

    def replace(self, row: Row, new: Row) -> None:
        """Overwrite a stored row's values in place, keeping the indexes right."""
        sf_id = row[0]
        for slot, index in self.ref_index.items():
            old_value, new_value = row[slot], new[slot]
            if old_value != new_value:
                if old_value is not None:
                    index.get(old_value, set()).discard(sf_id)
                if new_value is not None:
                    index.setdefault(new_value, set()).add(sf_id)
        row[:] = new

    def insert(self, row: Row) -> None:
        sf_id = row[0]
        for slot, index in self.ref_index.items():
            if row[slot] is not None:
                index.setdefault(row[slot], set()).add(sf_id)
        if self.ids and sf_id <= self.ids[-1]:
            pos = bisect_left(self.ids, sf_id)
            self.ids.insert(pos, sf_id)
        else:
            self.ids.append(sf_id)
        self.rows[sf_id] = row

    def remove(self, sf_id: str) -> None:
        row = self.rows.pop(sf_id)
        for slot, index in self.ref_index.items():
            if row[slot] is not None:
                index.get(row[slot], set()).discard(sf_id)
        pos = bisect_left(self.ids, sf_id)
        if pos < len(self.ids) and self.ids[pos] == sf_id:
            del self.ids[pos]

    def rebuild_stamp_index(self) -> None:
        """Index every row by SystemModstamp (after seeding, or to drop stale entries)."""
        s = self.stamp_slot
        if s < 0:
            return
        stamps = [self.rows[i][s] for i in self.ids]
        if all(a <= b for a, b in zip(stamps, stamps[1:], strict=False)):
            self.mod_stamps, self.mod_ids = stamps, list(self.ids)
            return
        pairs = sorted(zip(stamps, self.ids, strict=True))
        self.mod_stamps = [p[0] for p in pairs]
        self.mod_ids = [p[1] for p in pairs]

    def touch(self, sf_id: str) -> None:
        """Record that the row's SystemModstamp was just set."""
        row = self.rows.get(sf_id)
        if row is None or self.stamp_slot < 0:
            return
        stamp = row[self.stamp_slot]
        if self.mod_stamps and stamp < self.mod_stamps[-1]:
            pos = bisect_right(self.mod_stamps, stamp)
            self.mod_stamps.insert(pos, stamp)
            self.mod_ids.insert(pos, sf_id)
        else:
            self.mod_stamps.append(stamp)
            self.mod_ids.append(sf_id)
        if len(self.mod_ids) > 2 * len(self.rows) + 4096:
            self.rebuild_stamp_index()

    def modified_since(self, stamp: str) -> set[str]:
        """Ids whose SystemModstamp may be >= stamp (a superset: callers re-check rows)."""
        return set(self.mod_ids[bisect_left(self.mod_stamps, stamp):])

    def live_count(self) -> int:
        if self.deleted_slot < 0:
            return len(self.rows)
        s = self.deleted_slot
        return sum(1 for r in self.rows.values() if not r[s])


class ApiUsage:
    """Daily API request accounting, by kind of call."""

    def __init__(self, daily_max: int) -> None:
        self.daily_max = daily_max
        self.used = 0
        self.by_kind: dict[str, int] = {}

    def count(self, kind: str) -> bool:
        """Count one call; False when the allocation is already spent."""
        if self.used >= self.daily_max:
            self.by_kind["rejected"] = self.by_kind.get("rejected", 0) + 1
            return False
        self.used += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        return True

    def snapshot(self) -> dict[str, Any]:
        return {"used": self.used, "max": self.daily_max, "by_kind": dict(self.by_kind)}


class _Undo:
    __slots__ = ("kind", "table", "sf_id", "row")

    def __init__(self, kind: str, table: Table, sf_id: str, row: Row | None) -> None:
        self.kind = kind
        self.table = table
        self.sf_id = sf_id
        self.row = row


class Transaction:
    """One unit of work: writes, their undo log, and the CDC events they produce."""

    def __init__(self, state: OrgState, *, origin: str, user_id: str) -> None:
        self.state = state
        self.origin = origin
        self.user_id = user_id
        self.now_s = state.clock()
        self.now = format_datetime(self.now_s)
        self.today = self.now[:10]
        self.events: list[tuple[str, str, list[str], dict[str, Any], list[str], list[str]]] = []
        self.undo: list[_Undo] = []

    # -- writes -----------------------------------------------------------------------------
    def create(self, obj_name: str, values: dict[str, Any]) -> str:
        table = self.state.table(obj_name)
        obj = table.obj
        if any(k.lower() == "id" for k in values):
            raise SalesforceError(400, "INVALID_FIELD",
                                  "The Id field should not be specified in the sobject data.")
        row: Row = [None] * obj.width
        for f in obj.stored:
            if f.type == "boolean":
                row[f.slot] = False
        self._apply(obj, row, values, creating=True)
        self._set_defaults(obj, row, creating=True)
        derive(obj, row, None, {k.lower() for k in values}, self.today)
        missing = [f.name for f in obj.stored
                   if not f.nillable and f.createable and row[f.slot] is None]
        if missing:
            raise SalesforceError(400, "REQUIRED_FIELD_MISSING",
                                  f"Required fields are missing: [{', '.join(missing)}]", missing)
        if obj.name == "CampaignMember":
            check_new_member(table, self.state.tables["Lead"], row)
        sf_id = table.seq.next()
        row[0] = sf_id
        table.insert(row)
        self.undo.append(_Undo("create", table, sf_id, None))
        self._event(obj.name, "CREATE", [sf_id], self.state.full_payload(obj, row), [], [])
        if obj.name == "OpportunityContactRole" and row[obj.slot("IsPrimary")]:
            self._single_primary(row)
        return sf_id

    def update(self, obj_name: str, sf_id: str, values: dict[str, Any], *,
               event_has_last_modified: bool = True, system: bool = False) -> None:
        table = self.state.table(obj_name)
        obj = table.obj
        row = self._live_row(table, sf_id)
        if obj.name == "Lead" and row[obj.slot("IsConverted")] and not system:
            raise SalesforceError(400, "CANNOT_UPDATE_CONVERTED_LEAD",
                                  "cannot reference converted lead")
        before = list(row)
        new = list(row)
        self._apply(obj, new, values, creating=False, system=system)
        derive(obj, new, before, {k.lower() for k in values}, self.today)
        changed = [f for f in obj.stored if new[f.slot] != before[f.slot]]
        self._set_defaults(obj, new, creating=False)
        table.replace(row, new)
        self.undo.append(_Undo("update", table, row[0], before))
        if obj.name == "OpportunityContactRole" and new[obj.slot("IsPrimary")] \
                and not before[obj.slot("IsPrimary")]:
            self._single_primary(new)
        if obj.name not in self.state.cdc_entities:
            return
        payload: dict[str, Any] = {}
        changed_names: list[str] = []
        nulled: list[str] = []
        for f in changed:
            if f.name in CDC_EXCLUDED or f.name in ("LastModifiedDate", "LastModifiedById"):
                continue
            value = _event_value(f, new[f.slot])
            if f.compound_of:
                comp = obj.by_lower[f.compound_of.lower()]
                key = next(k for k, stored in comp.components if stored == f.name)
                payload.setdefault(comp.name, {})[key] = value
                path = f"{comp.name}.{key}"
            else:
                payload[f.name] = value
                path = f.name
            changed_names.append(path)
            if value is None:
                nulled.append(path)
        if event_has_last_modified:
            lm = obj.get("LastModifiedDate")
            if lm is not None:
                payload["LastModifiedDate"] = event_datetime(new[lm.slot])
                changed_names.append("LastModifiedDate")
            lmb = obj.slot("LastModifiedById")
            if before[lmb] != new[lmb]:
                payload["LastModifiedById"] = new[lmb]
                changed_names.append("LastModifiedById")
        if not changed_names:
            return
        self._event(obj.name, "UPDATE", [row[0]], payload, changed_names, nulled)

    def delete(self, obj_name: str, sf_id: str) -> None:
        table = self.state.table(obj_name)
        if table.deleted_slot < 0:
            raise SalesforceError(400, "INVALID_TYPE_FOR_OPERATION",
                                  f"entity type {table.obj.name} does not support delete")
        row = self._live_row(table, sf_id)
        before = list(row)
        row[table.deleted_slot] = True
        row[table.obj.slot("SystemModstamp")] = self.now
        self.undo.append(_Undo("update", table, row[0], before))
        self._event(table.obj.name, "DELETE", [row[0]], {}, [], [])
        for child, field in CASCADES.get(table.obj.name, ()):
            for child_row in live_children(self.state.tables[child], field, row[0]):
                self.delete(child, child_row[0])

    def undelete(self, obj_name: str, sf_id: str) -> None:
        table = self.state.table(obj_name)
        row = table.rows.get(_norm_id(sf_id))
        if row is None or table.deleted_slot < 0:
            raise not_found()
        if not row[table.deleted_slot]:
            raise SalesforceError(400, "UNDELETE_FAILED", "Entity is not in the recycle bin")
        before = list(row)
        deleted_at = row[table.stamp_slot]
        row[table.deleted_slot] = False
        row[table.obj.slot("SystemModstamp")] = self.now
        self.undo.append(_Undo("update", table, row[0], before))
        self._event(table.obj.name, "UNDELETE", [row[0]],
                    self.state.full_payload(table.obj, row), [], [])
        for child, field in CASCADES.get(table.obj.name, ()):
            for child_row in deleted_children(self.state.tables[child], field, row[0],
                                              deleted_at):
                self.undelete(child, child_row[0])

    def convert_lead(self, conv: LeadConversion) -> dict[str, str | None]:
        """Convert a Lead in this transaction (as SOAP convertLead does).

        New Account (unless conv.account_id), new Contact (unless conv.contact_id), an
        Opportunity when asked, then the Lead UPDATE; an existing Account or Contact only gets
        its empty fields filled from the Lead."""
        leads = self.state.table("Lead")
        row = self._live_row(leads, conv.lead_id)
        lead = {f.name: row[f.slot] for f in leads.obj.stored}
        if lead["IsConverted"]:
            raise SalesforceError(400, "CANNOT_UPDATE_CONVERTED_LEAD",
                                  "cannot reference converted lead")
        if conv.converted_status not in CONVERTED_STATUSES:
            raise SalesforceError(400, "INVALID_STATUS",
                                  f"invalid convertedStatus: {conv.converted_status}",
                                  ["Status"])
        if conv.contact_id is not None and conv.account_id is None:
            raise SalesforceError(400, "REQUIRED_FIELD_MISSING",
                                  "accountId is required when contactId is given", ["accountId"])
        owner = conv.owner_id or (lead["OwnerId"] if str(lead["OwnerId"]).startswith("005")
                                  else None)
        account_values = {k: lead[v] for k, v in _LEAD_TO_ACCOUNT}
        account_values["Name"] = lead["Company"]
        account_id = conv.account_id
        if account_id is None:
            if owner:
                account_values["OwnerId"] = owner
            account_id = self.create("Account", _present(account_values))
        else:
            account_id = self._fill_empty("Account", account_id, account_values)
        contact_values = {k: lead[v] for k, v in _LEAD_TO_CONTACT}
        contact_values["AccountId"] = account_id
        contact_id = conv.contact_id
        if contact_id is None:
            if owner:
                contact_values["OwnerId"] = owner
            contact_id = self.create("Contact", _present(contact_values))
        else:
            contacts = self.state.table("Contact")
            current = self._live_row(contacts, contact_id)
            if current[contacts.obj.slot("AccountId")] != account_id:
                raise SalesforceError(400, "INVALID_CROSS_REFERENCE_KEY",
                                      "contactId does not belong to accountId", ["contactId"])
            contact_id = self._fill_empty("Contact", contact_id, contact_values,
                                          overwrite=("LeadSource",) if
                                          conv.overwrite_lead_source else ())
        today = datetime.fromtimestamp(int(self.now_s), UTC).strftime("%Y-%m-%d")
        opportunity_id = None
        if conv.create_opportunity:
            opp: dict[str, Any] = {
                "AccountId": account_id, "Name": conv.opportunity_name or lead["Company"],
                "StageName": OPPORTUNITY_STAGES[0], "CloseDate": _quarter_end(today),
                "LeadSource": lead["LeadSource"]}
            if owner:
                opp["OwnerId"] = owner
            opportunity_id = self.create("Opportunity", _present(opp))
            self.create("OpportunityContactRole", {"OpportunityId": opportunity_id,
                                                   "ContactId": contact_id, "IsPrimary": True})
        lead_values: dict[str, Any] = {
            "Status": conv.converted_status, "IsConverted": True, "ConvertedDate": today,
            "ConvertedAccountId": account_id, "ConvertedContactId": contact_id}
        if opportunity_id is not None:
            lead_values["ConvertedOpportunityId"] = opportunity_id
        self.update("Lead", row[0], lead_values, event_has_last_modified=False, system=True)
        self._move_memberships(row[0], contact_id)
        return {"leadId": row[0], "accountId": account_id, "contactId": contact_id,
                "opportunityId": opportunity_id}

    def _move_memberships(self, lead_id: str, contact_id: str) -> None:
        """The converted lead's campaign members now name the contact too (same rows); a
        campaign the contact already belongs to keeps the contact's own row."""
        members = self.state.tables["CampaignMember"]
        campaign = members.obj.slot("CampaignId")
        taken = {r[campaign] for r in live_children(members, "ContactId", contact_id)}
        for member in live_children(members, "LeadId", lead_id):
            if member[campaign] not in taken:
                self.update("CampaignMember", member[0], {"ContactId": contact_id}, system=True)

    def _single_primary(self, row: Row) -> None:
        """Only one primary contact role per opportunity: the others stop being primary."""
        roles = self.state.tables["OpportunityContactRole"]
        obj = roles.obj
        primary = obj.slot("IsPrimary")
        for other in live_children(roles, "OpportunityId", row[obj.slot("OpportunityId")]):
            if other[0] != row[0] and other[primary]:
                self.update("OpportunityContactRole", other[0], {"IsPrimary": False})

    def _fill_empty(self, obj_name: str, sf_id: str, values: dict[str, Any], *,
                    overwrite: tuple[str, ...] = ()) -> str:
        """Set the fields of an existing record that are empty (or listed in overwrite)."""
        table = self.state.table(obj_name)
        row = self._live_row(table, sf_id)
        obj = table.obj
        changes = {k: v for k, v in values.items() if v is not None and obj.get(k) is not None
                   and (row[obj.slot(k)] is None or k in overwrite) and obj.slot(k) >= 0
                   and k != "AccountId"}
        if changes:
            self.update(obj_name, row[0], changes)
        return str(row[0])

    # -- helpers ----------------------------------------------------------------------------
    def _live_row(self, table: Table, sf_id: str) -> Row:
        if not is_valid_id(sf_id):
            raise SalesforceError(400, "MALFORMED_ID",
                                  f"{table.obj.name} ID: id value of incorrect type: {sf_id}",
                                  ["Id"])
        row = table.rows.get(to18(sf_id))
        if row is None:
            raise not_found()
        if table.deleted_slot >= 0 and row[table.deleted_slot]:
            raise SalesforceError(400, "ENTITY_IS_DELETED", "entity is deleted")
        return row

    def _set_defaults(self, obj: SObject, row: Row, *, creating: bool) -> None:
        user = self.user_id
        for name, value in (("LastModifiedDate", self.now), ("SystemModstamp", self.now),
                            ("LastModifiedById", user)):
            f = obj.get(name)
            if f is not None:
                row[f.slot] = value
        if creating:
            for name, value in (("CreatedDate", self.now), ("CreatedById", user),
                                ("OwnerId", user)):
                f = obj.get(name)
                if f is not None and row[f.slot] is None:
                    row[f.slot] = value
            status = obj.get("Status")
            if status is not None and row[status.slot] is None and status.picklist:
                row[status.slot] = status.picklist[0]

    def _apply(self, obj: SObject, row: Row, values: dict[str, Any], *, creating: bool,
               system: bool = False) -> None:
        bad: list[str] = []
        for key, value in values.items():
            if key == "attributes":
                continue
            f = obj.get(key)
            if f is None:
                raise SalesforceError(
                    400, "INVALID_FIELD", f"No such column '{key}' on sobject of type {obj.name}")
            allowed = f.createable if creating else f.updateable
            if not f.is_stored or (not allowed and not system):
                bad.append(f.name)
                continue
            row[f.slot] = self.state.coerce(obj, f, value)
        if bad:
            raise SalesforceError(
                400, "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(bad)}. Please check the security "
                "settings of this field and verify that it is read/write for your profile or "
                "permission set.", bad)

    def _event(self, entity: str, change_type: str, record_ids: list[str],
               payload: dict[str, Any], changed: list[str], nulled: list[str]) -> None:
        if entity in self.state.cdc_entities:
            self.events.append((entity, change_type, record_ids, payload, changed, nulled))

    def savepoint(self) -> tuple[int, int]:
        """A mark to roll back to when one item of a collection fails."""
        return len(self.undo), len(self.events)

    def rollback_to(self, mark: tuple[int, int]) -> None:
        """Undo the writes (and drop the events) made after `mark`."""
        undo_len, events_len = mark
        for u in reversed(self.undo[undo_len:]):
            if u.kind == "create":
                u.table.remove(u.sf_id)
            elif u.row is not None:
                u.table.replace(u.table.rows[u.sf_id], u.row)
        del self.undo[undo_len:]
        del self.events[events_len:]

    def rollback(self) -> None:
        self.rollback_to((0, 0))


def _norm_id(sf_id: str) -> str:
    return to18(sf_id) if len(sf_id) == 15 else sf_id


def _event_value(f: Field, value: Any) -> Any:
    if value is not None and f.type == "datetime":
        return event_datetime(value)
    return value


_NO_FIT = object()
"""What a coercer returns when the value is not of the field's type (JSON_PARSER_ERROR)."""


def _null_for(f: Field) -> None:
    """A null written to a field: refused when the field is not nillable."""
    if f.nillable:
        return None
    if f.type == "boolean":
        raise SalesforceError(400, "INVALID_TYPE_ON_FIELD_IN_RECORD",
                              f"{f.label}: value not of required type: null", [f.name])
    raise SalesforceError(400, "REQUIRED_FIELD_MISSING",
                          f"Required fields are missing: [{f.name}]", [f.name])


def _coerce_boolean(f: Field, value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return _NO_FIT


def _coerce_double(f: Field, value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return _NO_FIT


def _coerce_int(f: Field, value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return _NO_FIT


def _coerce_date(f: Field, value: Any) -> Any:
    return value if isinstance(value, str) and _DATE_RE.match(value) else _NO_FIT


def _coerce_datetime(f: Field, value: Any) -> Any:
    if not isinstance(value, str):
        return _NO_FIT
    try:
        return parse_datetime(value)
    except ValueError:
        return _NO_FIT


def _coerce_text(f: Field, value: Any) -> Any:
    """Strings, emails, picklists, ...: length and email format checked; "" stores null."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        return _NO_FIT
    if f.length and len(value) > f.length:
        raise SalesforceError(400, "STRING_TOO_LONG",
                              f"{f.label}: data value too large: {value[:40]} "
                              f"(max length={f.length})", [f.name])
    if f.type == "email" and value and not _EMAIL_RE.match(value):
        raise SalesforceError(400, "INVALID_EMAIL_ADDRESS",
                              f"{f.label}: invalid email address: {value}", [f.name])
    return value if value != "" else None


_SCALAR_COERCERS: dict[str, Callable[[Field, Any], Any]] = {
    "boolean": _coerce_boolean, "double": _coerce_double, "currency": _coerce_double,
    "percent": _coerce_double, "int": _coerce_int, "date": _coerce_date,
    "datetime": _coerce_datetime,
}


class OrgState:
    """Everything the emulated org holds: tables, users, the event bus and API usage."""

    def __init__(self, *, bus: Publisher | None = None, api_version: str = "66.0",
                 daily_api_max: int = 1_000_000, clock: Callable[[], float] = time.time,
                 org_id: str = "", event_log_size: int = 10_000,
                 overflow_changes: int = 100_000,
                 cdc_entities: tuple[str, ...] = DEFAULT_CDC_ENTITIES) -> None:
        self.bus = bus
        # The objects selected for Change Data Capture: only their writes publish events.
        self.cdc_entities = frozenset(cdc_entities)
        self.overflow_changes = overflow_changes
        self.api_version = api_version
        self.clock = clock
        self.org_id = org_id or make_id(KEY_PREFIXES["Organization"], 1)
        self.usage = ApiUsage(daily_api_max)
        self.tables: dict[str, Table] = {
            name: Table(obj, IdSequence(obj.key_prefix)) for name, obj in SCHEMA.items()
        }
        self.commit_number = 10_000_000_000
        self.event_log: deque[dict[str, Any]] = deque(maxlen=event_log_size)
        self.integration_user_id = ""
        self.sales_user_id = ""  # a seeded sales user: the actor of "user" control calls
        self.sessions: Sessions | None = None  # set by the app

    # -- lookups ----------------------------------------------------------------------------
    def table(self, obj_name: str) -> Table:
        obj = SCHEMA_LOWER.get(obj_name.lower())
        if obj is None:
            raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
        return self.tables[obj.name]

    def get_row(self, sf_id: str) -> Row | None:
        """The stored row of any object, found by key prefix."""
        obj = BY_PREFIX.get(sf_id[:3])
        if obj is None:
            return None
        return self.tables[obj.name].rows.get(sf_id)

    def record(self, obj_name: str, sf_id: str) -> dict[str, Any] | None:
        """A record as a {field: value} dict (stored fields only), or None."""
        table = self.table(obj_name)
        row = table.rows.get(_norm_id(sf_id))
        if row is None:
            return None
        return {f.name: row[f.slot] for f in table.obj.stored}

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: {"total": len(t.rows), "live": t.live_count()}
                for name, t in self.tables.items()}

    # -- values -----------------------------------------------------------------------------
    def coerce(self, obj: SObject, f: Field, value: Any) -> Any:
        """Validate one written value and turn it into its stored form."""
        if value is None:
            return _null_for(f)
        if f.type in ("reference", "id"):
            stored = self._coerce_reference(f, value)
        else:
            stored = _SCALAR_COERCERS.get(f.type, _coerce_text)(f, value)
        if stored is _NO_FIT:
            raise SalesforceError(400, "JSON_PARSER_ERROR",
                                  f"Cannot deserialize instance of {f.type} from value "
                                  f"{value!r} for field {f.name}")
        return stored

    def _coerce_reference(self, f: Field, value: Any) -> Any:
        """An id written to a lookup: the right object's key prefix, and the record exists."""
        if not isinstance(value, str):
            return _NO_FIT
        if not is_valid_id(value):
            raise SalesforceError(400, "MALFORMED_ID",
                                  f"{f.label}: id value of incorrect type: {value}", [f.name])
        ref = to18(value)
        if ref[:3] not in {SCHEMA[r].key_prefix for r in f.reference_to if r in SCHEMA}:
            raise SalesforceError(400, "FIELD_INTEGRITY_EXCEPTION",
                                  f"{f.label}: id value of incorrect type: {value}", [f.name])
        if self.get_row(ref) is None:
            raise SalesforceError(400, "INVALID_CROSS_REFERENCE_KEY",
                                  "invalid cross reference id", [f.name])
        return ref

    def full_payload(self, obj: SObject, row: Row) -> dict[str, Any]:
        """A CREATE/UNDELETE event body: every non-null field, compounds nested."""
        payload: dict[str, Any] = {}
        for f in obj.fields:
            if f.name in CDC_EXCLUDED or f.compound_of or not (f.is_stored or f.is_compound):
                continue
            if f.is_compound:
                comp = {k: row[obj.by_lower[s.lower()].slot] for k, s in f.components}
                comp = {k: v for k, v in comp.items() if v is not None}
                if comp:
                    payload[f.name] = comp
                continue
            value = row[f.slot]
            if value is not None:
                payload[f.name] = _event_value(f, value)
        return payload

    # -- transactions -----------------------------------------------------------------------
    @contextmanager
    def transaction(self, *, origin: str = "", user_id: str | None = None,
                    merge: bool = True) -> Iterator[Transaction]:
        """Run writes as one transaction: all or nothing, then publish its events."""
        tx = Transaction(self, origin=origin, user_id=user_id or self.integration_user_id)
        try:
            yield tx
        except BaseException:
            tx.rollback()
            raise
        for u in tx.undo:
            u.table.touch(u.sf_id)
        self._commit(tx, merge=merge)

    def _commit(self, tx: Transaction, *, merge: bool) -> None:
        if not tx.events:
            return
        # Past `overflow_changes` changes in one transaction, Salesforce sends one GAP_OVERFLOW
        # event per entity type instead (a create/delete/undelete is one change, an update one
        # per changed field).
        kept = tx.events
        overflowed: list[str] = []
        budget = self.overflow_changes
        for n, ev in enumerate(tx.events):
            budget -= len(ev[4]) if ev[1] == "UPDATE" else 1
            if budget < 0:
                kept = tx.events[:n]
                for later in tx.events[n:]:
                    if later[0] not in overflowed:
                        overflowed.append(later[0])
                break
        events = _merge(kept) if merge else list(kept)
        events += [(entity, "GAP_OVERFLOW", [], {}, [], []) for entity in overflowed]
        self.commit_number += 1
        key = str(uuid.UUID(int=uuid.uuid4().int))
        commit_ms = int(tx.now_s * 1000)
        for seq, (entity, change_type, record_ids, payload, changed, nulled) in enumerate(
                events, start=1):
            header = {
                "entityName": entity,
                "recordIds": record_ids,
                "changeType": change_type,
                "changeOrigin": tx.origin,
                "transactionKey": key,
                "sequenceNumber": seq,
                "commitTimestamp": commit_ms,
                "commitNumber": self.commit_number,
                "commitUser": tx.user_id,
                "changedFields": changed,
                "diffFields": [],
                "nulledFields": nulled,
            }
            body = {"ChangeEventHeader": header, **payload}
            self.event_log.append(body)
            if self.bus is not None:
                self.bus.publish(entity, body)

    # -- convenience write API (one transaction each) ---------------------------------------
    def create(self, obj_name: str, values: dict[str, Any], *, origin: str = "") -> str:
        with self.transaction(origin=origin) as tx:
            return tx.create(obj_name, values)

    def update(self, obj_name: str, sf_id: str, values: dict[str, Any], *,
               origin: str = "") -> None:
        with self.transaction(origin=origin) as tx:
            tx.update(obj_name, sf_id, values)

    def delete(self, obj_name: str, sf_id: str, *, origin: str = "") -> None:
        with self.transaction(origin=origin) as tx:
            tx.delete(obj_name, sf_id)

    def undelete(self, obj_name: str, sf_id: str, *, origin: str = "") -> None:
        with self.transaction(origin=origin) as tx:
            tx.undelete(obj_name, sf_id)

    def mass_update(self, obj_name: str, record_ids: list[str], values: dict[str, Any], *,
                    origin: str = "") -> int:
        """Apply the same change to many records in one transaction (merged CDC events)."""
        with self.transaction(origin=origin) as tx:
            for sf_id in record_ids:
                tx.update(obj_name, sf_id, values)
        return len(record_ids)

    def convert_lead(self, lead_id: str, *, converted_status: str = CONVERTED_STATUS,
                     account_id: str | None = None, origin: str = "") -> dict[str, str]:
        """Convert a Lead: Account CREATE (unless given), Contact CREATE, Lead UPDATE."""
        with self.transaction(origin=origin, merge=False) as tx:
            out = tx.convert_lead(LeadConversion(lead_id, converted_status,
                                                 account_id=account_id))
        return {k: v for k, v in out.items() if v is not None}


def _merge(events: list[tuple[str, str, list[str], dict[str, Any], list[str], list[str]]],
           ) -> list[tuple[str, str, list[str], dict[str, Any], list[str], list[str]]]:
    """Merge consecutive identical non-CREATE changes to records of one type."""
    out: list[tuple[str, str, list[str], dict[str, Any], list[str], list[str]]] = []
    last_key: bytes | None = None
    for ev in events:
        entity, change_type, record_ids, payload, changed, nulled = ev
        key = None
        if change_type != "CREATE" and change_type != "UNDELETE":
            key = orjson.dumps([entity, change_type, payload, changed, nulled],
                               option=orjson.OPT_SORT_KEYS)
        if key is not None and key == last_key:
            out[-1][2].extend(record_ids)
            continue
        out.append((entity, change_type, list(record_ids), payload, changed, nulled))
        last_key = key
    return out
