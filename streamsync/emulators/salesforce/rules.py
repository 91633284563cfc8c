"""Salesforce's own rules on writes: fields derived from others, CampaignMember integrity,
cascade deletes, and what a lead conversion does to the lead's campaign memberships."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import SalesforceError
from .schema import RESPONDED_STATUSES, STAGE_INFO, SObject

if TYPE_CHECKING:
    from .state import Row, Table

# Deleting a parent deletes these children (child object, reference field to the parent);
# undeleting the parent restores the ones deleted with it.
CASCADES: dict[str, tuple[tuple[str, str], ...]] = {
    "Lead": (("CampaignMember", "LeadId"),),
    "Contact": (("CampaignMember", "ContactId"), ("OpportunityContactRole", "ContactId")),
    "Campaign": (("CampaignMember", "CampaignId"),),
    "Opportunity": (("OpportunityContactRole", "OpportunityId"),),
}


def derive(obj: SObject, row: Row, before: Row | None, given: set[str], today: str) -> None:
    """Set the fields Salesforce computes from others (`before` is None on create; `given`
    holds the lower-case names the caller wrote)."""
    if obj.name == "Opportunity":
        stage = obj.slot("StageName")
        if before is not None and before[stage] == row[stage]:
            return
        info = STAGE_INFO.get(row[stage])
        if info is None:
            return
        probability, category, closed, won = info
        row[obj.slot("IsClosed")] = closed
        row[obj.slot("IsWon")] = won
        if "probability" not in given:
            row[obj.slot("Probability")] = probability
        if "forecastcategoryname" not in given:
            row[obj.slot("ForecastCategoryName")] = category
    elif obj.name == "CampaignMember":
        contact, lead = row[obj.slot("ContactId")], row[obj.slot("LeadId")]
        row[obj.slot("LeadOrContactId")] = contact or lead
        responded = row[obj.slot("Status")] in RESPONDED_STATUSES
        row[obj.slot("HasResponded")] = responded
        first = obj.slot("FirstRespondedDate")
        if responded and row[first] is None:
            row[first] = today


def check_new_member(members: Table, leads: Table, row: Row) -> None:
    """A CampaignMember names exactly one of a Lead or a Contact, not a converted Lead, and
    is the only live membership of that person in the campaign."""
    obj = members.obj
    lead, contact = row[obj.slot("LeadId")], row[obj.slot("ContactId")]
    if lead is None and contact is None:
        raise SalesforceError(400, "REQUIRED_FIELD_MISSING",
                              "Required fields are missing: [LeadId, ContactId]",
                              ["LeadId", "ContactId"])
    if lead is not None and contact is not None:
        raise SalesforceError(400, "FIELD_INTEGRITY_EXCEPTION",
                              "A campaign member is either a lead or a contact, not both",
                              ["LeadId", "ContactId"])
    if lead is not None and leads.rows[lead][leads.obj.slot("IsConverted")]:
        raise SalesforceError(400, "CANNOT_UPDATE_CONVERTED_LEAD",
                              "cannot reference converted lead", ["LeadId"])
    field, person = ("LeadId", lead) if lead is not None else ("ContactId", contact)
    campaign = row[obj.slot("CampaignId")]
    if any(other[obj.slot("CampaignId")] == campaign
           for other in live_children(members, field, person)):
        raise SalesforceError(400, "DUPLICATE_VALUE", "Already a campaign member.", [])


def live_children(table: Table, field: str, parent_id: str) -> list[Row]:
    """Live rows of `table` whose `field` references `parent_id`, in id order."""
    slot = table.obj.slot(field)
    ids = sorted(table.index_for(slot).get(parent_id, ()))
    deleted = table.deleted_slot
    return [r for i in ids if not (r := table.rows[i])[deleted]]


def deleted_children(table: Table, field: str, parent_id: str, stamp: Any) -> list[Row]:
    """Rows of `table` under `parent_id` deleted at `stamp` (with the parent)."""
    slot = table.obj.slot(field)
    modstamp = table.stamp_slot
    deleted = table.deleted_slot
    return [r for i in sorted(table.index_for(slot).get(parent_id, ()))
            if (r := table.rows[i])[deleted] and r[modstamp] == stamp]
