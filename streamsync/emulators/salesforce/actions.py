"""What a Salesforce user does in the UI, for the control API: campaign membership, opportunity
stages and opt-outs. Each is one transaction by a sales user with an empty change origin."""

from __future__ import annotations

from .errors import SalesforceError, not_found
from .ids import is_valid_id, to18
from .rules import live_children
from .state import OrgState

CONSENT_FIELDS = ("HasOptedOutOfEmail", "HasOptedOutOfFax", "DoNotCall")
_PERSON_FIELD = {"00Q": "LeadId", "003": "ContactId"}


def _person_field(person_id: str) -> tuple[str, str]:
    """("LeadId" | "ContactId", 18-character id) for a Lead or Contact id."""
    if not isinstance(person_id, str) or not is_valid_id(person_id):
        raise SalesforceError(400, "MALFORMED_ID", f"not a Lead or Contact id: {person_id!r}")
    field = _PERSON_FIELD.get(person_id[:3])
    if field is None:
        raise SalesforceError(400, "FIELD_INTEGRITY_EXCEPTION",
                              f"{person_id} is neither a Lead nor a Contact id")
    return field, to18(person_id)


def add_campaign_member(state: OrgState, campaign_id: str, person_id: str,
                        status: str | None = None) -> str:
    """Add a Lead or Contact to a campaign; returns the CampaignMember id."""
    field, person = _person_field(person_id)
    values = {"CampaignId": campaign_id, field: person}
    if status is not None:
        values["Status"] = status
    with state.transaction(user_id=state.sales_user_id) as tx:
        return tx.create("CampaignMember", values)


def remove_campaign_member(state: OrgState, campaign_id: str, person_id: str) -> str:
    """Remove a Lead or Contact from a campaign (a converted lead's row is found by either
    id); returns the deleted CampaignMember id."""
    field, person = _person_field(person_id)
    members = state.tables["CampaignMember"]
    campaign = to18(campaign_id) if is_valid_id(campaign_id) else campaign_id
    slot = members.obj.slot("CampaignId")
    rows = [r for r in live_children(members, field, person) if r[slot] == campaign]
    if not rows:
        raise not_found()
    with state.transaction(user_id=state.sales_user_id) as tx:
        tx.delete("CampaignMember", rows[0][0])
    return str(rows[0][0])


def delete_campaign_member(state: OrgState, member_id: str) -> None:
    with state.transaction(user_id=state.sales_user_id) as tx:
        tx.delete("CampaignMember", member_id)


def set_member_status(state: OrgState, member_id: str, status: str) -> None:
    with state.transaction(user_id=state.sales_user_id) as tx:
        tx.update("CampaignMember", member_id, {"Status": status})


def set_stage(state: OrgState, opportunity_id: str, stage: str) -> None:
    """Move an opportunity to a stage (IsClosed, IsWon, Probability follow)."""
    with state.transaction(user_id=state.sales_user_id) as tx:
        tx.update("Opportunity", opportunity_id, {"StageName": stage})


def set_opt_out(state: OrgState, record_id: str, opted_out: bool,
                fields: tuple[str, ...] = ("HasOptedOutOfEmail",)) -> str:
    """Set (or clear) opt-out flags of a Lead or Contact; returns the object name."""
    field, sf_id = _person_field(record_id)
    unknown = [f for f in fields if f not in CONSENT_FIELDS]
    if not fields or unknown:
        raise SalesforceError(400, "INVALID_FIELD",
                              f"opt-out fields must be among {', '.join(CONSENT_FIELDS)}")
    obj = "Lead" if field == "LeadId" else "Contact"
    with state.transaction(user_id=state.sales_user_id) as tx:
        tx.update(obj, sf_id, dict.fromkeys(fields, opted_out))
    return obj
