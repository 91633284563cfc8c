"""Opportunity, OpportunityContactRole, Campaign and CampaignMember over real HTTP: describe,
SOQL relationship paths, REST writes with Salesforce's rules, CDC through CometD
(aiosfstream-ng), seed data and the control API's user actions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig
from tests.emulators.sf_clients import cdc_events, json_of

V = "/services/data/v66.0"
CONTROL = "/__emulator__"
OBJECTS = ("Opportunity", "OpportunityContactRole", "Campaign", "CampaignMember")


@pytest.fixture
async def emu() -> AsyncIterator[SalesforceEmulator]:
    e = SalesforceEmulator(SalesforceEmulatorConfig(
        seed_accounts=10, seed_contacts=60, seed_leads=80, seed_opportunities=25,
        seed_campaigns=4, seed_campaign_members=90))
    await e.start()
    yield e
    await e.stop()


async def query(http: aiohttp.ClientSession, soql: str) -> list[dict[str, Any]]:
    async with http.get(f"{V}/query", params={"q": soql}) as r:
        return list((await json_of(r))["records"])


async def create(http: aiohttp.ClientSession, sobject: str, values: dict[str, Any],
                 status: int = 201) -> Any:
    async with http.post(f"{V}/sobjects/{sobject}", json=values) as r:
        body = await json_of(r, status)
    return body["id"] if status == 201 else body[0]


async def patch(http: aiohttp.ClientSession, sobject: str, sf_id: str,
                values: dict[str, Any]) -> dict[str, Any] | None:
    async with http.patch(f"{V}/sobjects/{sobject}/{sf_id}", json=values) as r:
        if r.status == 204:
            return None
        return dict((await json_of(r, 400))[0])


def record(emu: SalesforceEmulator, sobject: str, sf_id: str) -> dict[str, Any]:
    rec = emu.state.record(sobject, sf_id)
    assert rec is not None
    return rec


async def test_describe_reports_the_fields_and_their_types(http: aiohttp.ClientSession) -> None:
    async with http.get(f"{V}/sobjects") as r:
        listed = {o["name"]: o for o in (await json_of(r))["sobjects"]}
    assert {n: listed[n]["keyPrefix"] for n in OBJECTS} == {
        "Opportunity": "006", "OpportunityContactRole": "00K", "Campaign": "701",
        "CampaignMember": "00v"}
    expected = {
        "Opportunity": {"StageName": ("picklist", False, True, True),
                        "CloseDate": ("date", False, True, True),
                        "Amount": ("currency", True, True, True),
                        "Probability": ("percent", True, True, True),
                        "IsWon": ("boolean", False, False, False),
                        "IsClosed": ("boolean", False, False, False),
                        "AccountId": ("reference", True, True, True),
                        "CampaignId": ("reference", True, True, True)},
        "OpportunityContactRole": {"OpportunityId": ("reference", False, True, False),
                                   "ContactId": ("reference", False, True, True),
                                   "Role": ("picklist", True, True, True),
                                   "IsPrimary": ("boolean", False, True, True)},
        "Campaign": {"Name": ("string", False, True, True),
                     "IsActive": ("boolean", False, True, True),
                     "Status": ("picklist", True, True, True),
                     "Type": ("picklist", True, True, True),
                     "StartDate": ("date", True, True, True),
                     "ParentId": ("reference", True, True, True)},
        "CampaignMember": {"CampaignId": ("reference", False, True, False),
                           "LeadId": ("reference", True, True, False),
                           "ContactId": ("reference", True, True, False),
                           "LeadOrContactId": ("reference", True, False, False),
                           "Status": ("picklist", True, True, True),
                           "HasResponded": ("boolean", False, False, False),
                           "FirstRespondedDate": ("date", True, False, False)},
    }
    for sobject, wanted in expected.items():
        async with http.get(f"{V}/sobjects/{sobject}/describe") as r:
            fields = {f["name"]: f for f in (await json_of(r))["fields"]}
        got = {n: (fields[n]["type"], fields[n]["nillable"], fields[n]["createable"],
                   fields[n]["updateable"]) for n in wanted}
        assert got == wanted, sobject
    async with http.get(f"{V}/sobjects/CampaignMember/describe") as r:
        member = {f["name"]: f for f in (await json_of(r))["fields"]}
    assert (member["Campaign" + "Id"]["relationshipName"], member["CampaignId"]["referenceTo"]) \
        == ("Campaign", ["Campaign"])
    assert member["LeadOrContactId"]["referenceTo"] == ["Lead", "Contact"]
    assert member["LeadOrContactId"]["polymorphicForeignKey"] is True
    async with http.get(f"{V}/sobjects/Opportunity/describe") as r:
        opp = {f["name"]: f for f in (await json_of(r))["fields"]}
    assert [v["value"] for v in opp["StageName"]["picklistValues"]][-2:] == [
        "Closed Won", "Closed Lost"]
    assert opp["Probability"]["soapType"] == "xsd:double"


async def test_soql_relationship_paths(emu: SalesforceEmulator,
                                       http: aiohttp.ClientSession) -> None:
    members = await query(http, "SELECT Id, Status, Campaign.Name, Campaign.IsActive, "
                                "Contact.Email, Lead.Email, LeadOrContactId FROM CampaignMember "
                                "ORDER BY Id")
    assert len(members) == 90
    for m in members:
        campaign = record(emu, "Campaign", record(emu, "CampaignMember", m["Id"])["CampaignId"])
        assert m["Campaign"]["Name"] == campaign["Name"]
        assert m["Campaign"]["attributes"]["type"] == "Campaign"
        person = m["Contact"] or m["Lead"]
        assert (m["Contact"] is None) != (m["Lead"] is None)
        kind = "Contact" if m["Contact"] else "Lead"
        assert person["Email"] == record(emu, kind, m["LeadOrContactId"])["Email"]
    active = await query(http, "SELECT Id FROM CampaignMember WHERE Campaign.IsActive = true")
    assert {m["Id"] for m in active} == {m["Id"] for m in members if m["Campaign"]["IsActive"]}
    emails = await query(http, "SELECT Contact.Email FROM CampaignMember WHERE ContactId != null "
                               "AND Contact.Email LIKE '%example.com' LIMIT 5")
    assert len(emails) == 5 and all(e["Contact"]["Email"].endswith("example.com")
                                    for e in emails)
    opps = await query(http, "SELECT Id, Name, StageName, IsWon, IsClosed, Account.Name "
                             "FROM Opportunity WHERE IsWon = true")
    assert opps and all(o["StageName"] == "Closed Won" for o in opps)
    for o in opps:
        account = record(emu, "Account", record(emu, "Opportunity", o["Id"])["AccountId"])
        assert o["Account"]["Name"] == account["Name"]
    roles = await query(http, "SELECT Opportunity.StageName, Opportunity.Account.Name, "
                              "Contact.Email, Role FROM OpportunityContactRole "
                              "WHERE IsPrimary = true")
    assert len(roles) == 25  # one primary per seeded opportunity
    assert all(r["Contact"]["Email"] and r["Opportunity"]["StageName"] for r in roles)


async def test_seeded_members_and_roles_follow_the_rules(emu: SalesforceEmulator) -> None:
    members = emu.state.tables["CampaignMember"]
    obj = members.obj
    seen: set[tuple[str, str]] = set()
    for row in members.rows.values():
        lead, contact = row[obj.slot("LeadId")], row[obj.slot("ContactId")]
        assert (lead is None) != (contact is None)
        key = (row[obj.slot("CampaignId")], lead or contact)
        assert key not in seen
        seen.add(key)
        assert row[obj.slot("HasResponded")] == (row[obj.slot("Status")] == "Responded")
    assert {k[0] for k in seen} == set(emu.state.tables["Campaign"].ids)
    kinds = {k[1][:3] for k in seen}
    assert kinds == {"00Q", "003"}
    roles = emu.state.tables["OpportunityContactRole"]
    primaries: dict[str, int] = {}
    for row in roles.rows.values():
        opp = row[roles.obj.slot("OpportunityId")]
        primaries[opp] = primaries.get(opp, 0) + int(row[roles.obj.slot("IsPrimary")])
    assert set(primaries) == set(emu.state.tables["Opportunity"].ids)
    assert set(primaries.values()) == {1}


async def test_campaign_member_rules(emu: SalesforceEmulator,
                                     http: aiohttp.ClientSession) -> None:
    campaign = await create(http, "Campaign", {"Name": "Spring Webinar", "IsActive": True,
                                               "Type": "Webinar"})
    assert record(emu, "Campaign", campaign)["Status"] == "Planned"
    lead = await create(http, "Lead", {"LastName": "Member", "Company": "C",
                                       "Email": "member@example.com"})
    contact = emu.state.tables["Contact"].ids[0]
    member = await create(http, "CampaignMember", {"CampaignId": campaign, "LeadId": lead})
    rec = record(emu, "CampaignMember", member)
    assert (rec["Status"], rec["HasResponded"], rec["LeadOrContactId"], rec["ContactId"]) == (
        "Sent", False, lead, None)
    assert await patch(http, "CampaignMember", member, {"Status": "Responded"}) is None
    rec = record(emu, "CampaignMember", member)
    assert rec["HasResponded"] is True and rec["FirstRespondedDate"] == rec[
        "LastModifiedDate"][:10]
    err = await create(http, "CampaignMember", {"CampaignId": campaign, "LeadId": lead}, 400)
    assert (err["errorCode"], err["message"]) == ("DUPLICATE_VALUE", "Already a campaign member.")
    err = await create(http, "CampaignMember", {"CampaignId": campaign}, 400)
    assert err["errorCode"] == "REQUIRED_FIELD_MISSING"
    err = await create(http, "CampaignMember", {"CampaignId": campaign, "LeadId": lead,
                                                "ContactId": contact}, 400)
    assert err["errorCode"] == "FIELD_INTEGRITY_EXCEPTION"
    err = await create(http, "CampaignMember", {"CampaignId": campaign, "LeadId": contact},
                       400)
    assert err["errorCode"] == "FIELD_INTEGRITY_EXCEPTION"
    err = await create(http, "CampaignMember", {"LeadId": lead}, 400)
    assert err["errorCode"] == "REQUIRED_FIELD_MISSING" and err["fields"] == ["CampaignId"]
    err = await patch(http, "CampaignMember", member, {"ContactId": contact})
    assert err is not None and err["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    err = await patch(http, "CampaignMember", member, {"HasResponded": False})
    assert err is not None and err["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    converted = emu.state.tables["Lead"].ids[1]
    emu.state.convert_lead(converted)
    err = await create(http, "CampaignMember", {"CampaignId": campaign, "LeadId": converted},
                       400)
    assert err["errorCode"] == "CANNOT_UPDATE_CONVERTED_LEAD"
    # Deleting the lead deletes its membership; undeleting it brings the membership back.
    async with http.delete(f"{V}/sobjects/Lead/{lead}") as r:
        assert r.status == 204
    assert record(emu, "CampaignMember", member)["IsDeleted"] is True
    emu.state.undelete("Lead", lead)
    assert record(emu, "CampaignMember", member)["IsDeleted"] is False


async def test_opportunity_stage_derives_closed_won_and_probability(
        emu: SalesforceEmulator, http: aiohttp.ClientSession) -> None:
    account = emu.state.tables["Account"].ids[0]
    opp = await create(http, "Opportunity", {"Name": "Big Deal", "StageName": "Qualification",
                                             "CloseDate": "2026-12-31", "Amount": 50000,
                                             "AccountId": account})
    rec = record(emu, "Opportunity", opp)
    assert (rec["IsClosed"], rec["IsWon"], rec["Probability"], rec["ForecastCategoryName"]) == (
        False, False, 10.0, "Pipeline")
    assert await patch(http, "Opportunity", opp, {"StageName": "Closed Won"}) is None
    rec = record(emu, "Opportunity", opp)
    assert (rec["IsClosed"], rec["IsWon"], rec["Probability"], rec["ForecastCategoryName"]) == (
        True, True, 100.0, "Closed")
    assert await patch(http, "Opportunity", opp, {"StageName": "Negotiation/Review",
                                                  "Probability": 85}) is None
    rec = record(emu, "Opportunity", opp)
    assert (rec["IsClosed"], rec["IsWon"], rec["Probability"]) == (False, False, 85.0)
    assert await patch(http, "Opportunity", opp, {"Amount": 60000}) is None
    assert record(emu, "Opportunity", opp)["Probability"] == 85.0  # stage unchanged: kept
    err = await patch(http, "Opportunity", opp, {"IsWon": True})
    assert err is not None and err["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    err = await create(http, "Opportunity", {"Name": "No stage", "CloseDate": "2026-01-01"},
                       400)
    assert err["errorCode"] == "REQUIRED_FIELD_MISSING" and err["fields"] == ["StageName"]
    contacts = emu.state.tables["Contact"].ids
    first = await create(http, "OpportunityContactRole", {
        "OpportunityId": opp, "ContactId": contacts[0], "Role": "Decision Maker",
        "IsPrimary": True})
    second = await create(http, "OpportunityContactRole", {
        "OpportunityId": opp, "ContactId": contacts[1], "IsPrimary": True})
    assert record(emu, "OpportunityContactRole", first)["IsPrimary"] is False
    assert record(emu, "OpportunityContactRole", second)["IsPrimary"] is True
    err = await patch(http, "OpportunityContactRole", second, {"OpportunityId": opp})
    assert err is not None and err["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    async with http.delete(f"{V}/sobjects/Opportunity/{opp}") as r:
        assert r.status == 204
    assert record(emu, "OpportunityContactRole", second)["IsDeleted"] is True


async def test_cdc_events_through_cometd(emu: SalesforceEmulator,
                                         http: aiohttp.ClientSession) -> None:
    tagged = {"Sforce-Call-Options": "client=events-test"}
    origin = "com/salesforce/api/rest/66.0;client=events-test"
    async with http.post(f"{V}/sobjects/Campaign", json={"Name": "Launch"},
                         headers=tagged) as r:
        campaign = (await json_of(r, 201))["id"]
    lead = emu.state.tables["Lead"].ids[-1]
    async with http.post(f"{V}/sobjects/CampaignMember", headers=tagged,
                         json={"CampaignId": campaign, "LeadId": lead}) as r:
        member = (await json_of(r, 201))["id"]
    opp = emu.state.tables["Opportunity"].ids[0]
    stage = record(emu, "Opportunity", opp)["StageName"]
    target = "Closed Lost" if stage == "Closed Won" else "Closed Won"
    async with http.patch(f"{V}/sobjects/Opportunity/{opp}", json={"StageName": target},
                          headers=tagged) as r:
        assert r.status == 204
    async with http.delete(f"{V}/sobjects/CampaignMember/{member}", headers=tagged) as r:
        assert r.status == 204

    (created,) = await cdc_events(emu, "/data/CampaignChangeEvent", 1)
    assert created["ChangeEventHeader"]["changeType"] == "CREATE"
    assert (created["Name"], created["IsActive"], created["Status"]) == (
        "Launch", False, "Planned")
    added, removed = await cdc_events(emu, "/data/CampaignMemberChangeEvent", 2)
    assert added["ChangeEventHeader"]["changeType"] == "CREATE"
    assert added["ChangeEventHeader"]["recordIds"] == [member]
    assert (added["CampaignId"], added["LeadId"], added["Status"], added["HasResponded"]) == (
        campaign, lead, "Sent", False)
    assert "ContactId" not in added
    assert removed["ChangeEventHeader"]["changeType"] == "DELETE"
    (update,) = await cdc_events(emu, "/data/OpportunityChangeEvent", 1)
    header = update["ChangeEventHeader"]
    assert header["changeType"] == "UPDATE" and header["recordIds"] == [opp]
    assert {"StageName", "IsWon", "Probability", "LastModifiedDate"} <= set(
        header["changedFields"])
    assert update["StageName"] == target and update["IsWon"] is (target == "Closed Won")
    for event in (created, added, removed, update):
        assert event["ChangeEventHeader"]["changeOrigin"] == origin


async def test_a_converted_leads_membership_moves_to_its_contact(
        emu: SalesforceEmulator) -> None:
    state = emu.state
    campaigns = state.tables["Campaign"].ids
    lead = state.create("Lead", {"LastName": "Convert", "Company": "Acme",
                                 "Email": "convert@example.com"})
    member = state.create("CampaignMember", {"CampaignId": campaigns[0], "LeadId": lead})
    other = state.create("CampaignMember", {"CampaignId": campaigns[1], "LeadId": lead})
    start = emu.bus.latest_replay_id
    out = state.convert_lead(lead)
    contact = out["contactId"]
    for sf_id in (member, other):
        rec = record(emu, "CampaignMember", sf_id)
        assert (rec["LeadId"], rec["ContactId"], rec["LeadOrContactId"], rec["IsDeleted"]) == (
            lead, contact, contact, False)
    events = (await cdc_events(emu, "/data/ChangeEvents", emu.bus.latest_replay_id))[start:]
    kinds = [(e["ChangeEventHeader"]["entityName"], e["ChangeEventHeader"]["changeType"])
             for e in events]
    assert kinds == [("Account", "CREATE"), ("Contact", "CREATE"), ("Lead", "UPDATE"),
                     ("CampaignMember", "UPDATE"), ("CampaignMember", "UPDATE")]
    assert len({e["ChangeEventHeader"]["transactionKey"] for e in events}) == 1
    assert events[3]["ContactId"] == contact and "ContactId" in events[3][
        "ChangeEventHeader"]["changedFields"]

    # Converted into an existing contact that already belongs to the campaign: the contact's
    # own membership stays, the lead's row keeps only its LeadId.
    account = state.tables["Account"].ids[0]
    existing = state.create("Contact", {"LastName": "Known", "AccountId": account})
    mine = state.create("CampaignMember", {"CampaignId": campaigns[2], "ContactId": existing})
    second = state.create("Lead", {"LastName": "Again", "Company": "Acme"})
    lead_row = state.create("CampaignMember", {"CampaignId": campaigns[2], "LeadId": second})
    from streamsync.emulators.salesforce.state import LeadConversion
    with state.transaction(merge=False) as tx:
        tx.convert_lead(LeadConversion(second, account_id=account, contact_id=existing))
    assert record(emu, "CampaignMember", lead_row)["ContactId"] is None
    assert record(emu, "CampaignMember", mine)["ContactId"] == existing


async def test_channels_follow_cdc_support_and_the_org_selection() -> None:
    with pytest.raises(ValueError, match="does not support Group"):
        SalesforceEmulator(SalesforceEmulatorConfig(cdc_entities=("Lead", "Group")))
    emu = SalesforceEmulator(SalesforceEmulatorConfig(
        seed_leads=2, cdc_entities=("Lead", "Contact", "Account", "CampaignMember")))
    await emu.start()
    try:
        emu.state.create("Campaign", {"Name": "Not selected"})
        campaign = emu.state.tables["Campaign"].ids[0]
        lead = emu.state.tables["Lead"].ids[0]
        emu.state.create("CampaignMember", {"CampaignId": campaign, "LeadId": lead})
        assert [e["ChangeEventHeader"]["entityName"] for e in emu.state.event_log] == [
            "CampaignMember"]
        (event,) = await cdc_events(emu, "/data/CampaignMemberChangeEvent", 1)
        assert event["CampaignId"] == campaign
        with pytest.raises(Exception, match="doesn't exist /data/GroupChangeEvent"):
            await cdc_events(emu, "/data/GroupChangeEvent", 1, timeout_s=2.0)
    finally:
        await emu.stop()


async def test_control_api_acts_as_a_sales_user(emu: SalesforceEmulator,
                                                http: aiohttp.ClientSession) -> None:
    state = emu.state
    campaign = state.tables["Campaign"].ids[0]
    contact = state.create("Contact", {"LastName": "Ctl", "Email": "ctl@example.com"})
    opp = state.tables["Opportunity"].ids[1]
    lead = next(i for i in state.tables["Lead"].ids
                if not record(emu, "Lead", i)["HasOptedOutOfEmail"])
    start = emu.bus.latest_replay_id
    async with aiohttp.ClientSession(base_url=emu.instance_url) as ctl:
        async with ctl.post(f"{CONTROL}/campaign-members",
                            json={"campaignId": campaign, "contactId": contact}) as r:
            member = (await json_of(r, 201))["id"]
        async with ctl.patch(f"{CONTROL}/campaign-members/{member}",
                             json={"status": "Responded"}) as r:
            assert r.status == 204
        async with ctl.post(f"{CONTROL}/campaign-members",
                            json={"campaignId": campaign, "contactId": contact}) as r:
            assert (await json_of(r, 400))[0]["errorCode"] == "DUPLICATE_VALUE"
        async with ctl.post(f"{CONTROL}/campaign-members/remove",
                            json={"campaignId": campaign, "contactId": contact}) as r:
            assert (await json_of(r))["id"] == member
        async with ctl.post(f"{CONTROL}/campaign-members/remove",
                            json={"campaignId": campaign, "contactId": contact}) as r:
            assert (await json_of(r, 404))[0]["errorCode"] == "NOT_FOUND"
        async with ctl.post(f"{CONTROL}/campaign-members",
                            json={"campaignId": campaign}) as r:
            assert r.status == 400
        async with ctl.post(f"{CONTROL}/opportunities/{opp}/stage",
                            json={"stageName": "Closed Won"}) as r:
            assert await json_of(r) == {"Id": opp, "StageName": "Closed Won", "IsClosed": True,
                                      "IsWon": True, "Probability": 100.0,
                                      "ForecastCategoryName": "Closed"}
        async with ctl.post(f"{CONTROL}/opt-out", json={"id": lead}) as r:
            assert (await json_of(r))["sobject"] == "Lead"
        async with ctl.post(f"{CONTROL}/opt-out",
                            json={"id": contact, "fields": ["HasOptedOutOfEmail",
                                                            "DoNotCall"]}) as r:
            await json_of(r)
        async with ctl.post(f"{CONTROL}/opt-in", json={"id": contact}) as r:
            await json_of(r)
        async with ctl.post(f"{CONTROL}/opt-out", json={"id": lead, "fields": ["Email"]}) as r:
            assert (await json_of(r, 400))[0]["errorCode"] == "INVALID_FIELD"
        async with ctl.post(f"{CONTROL}/opt-out", json={"id": opp}) as r:
            assert r.status == 400
    assert record(emu, "Lead", lead)["HasOptedOutOfEmail"] is True
    rec = record(emu, "Contact", contact)
    assert (rec["HasOptedOutOfEmail"], rec["DoNotCall"]) == (False, True)
    events = (await cdc_events(emu, "/data/ChangeEvents", emu.bus.latest_replay_id))[start:]
    headers = [e["ChangeEventHeader"] for e in events]
    assert [(h["entityName"], h["changeType"]) for h in headers] == [
        ("CampaignMember", "CREATE"), ("CampaignMember", "UPDATE"),
        ("CampaignMember", "DELETE"), ("Opportunity", "UPDATE"), ("Lead", "UPDATE"),
        ("Contact", "UPDATE"), ("Contact", "UPDATE")]
    assert {h["changeOrigin"] for h in headers} == {""}
    assert {h["commitUser"] for h in headers} == {state.sales_user_id}
    assert state.sales_user_id != state.integration_user_id
    assert events[4]["HasOptedOutOfEmail"] is True
    assert events[5]["ChangeEventHeader"]["changedFields"][:2] == ["HasOptedOutOfEmail",
                                                                   "DoNotCall"]
    assert events[6]["HasOptedOutOfEmail"] is False and "DoNotCall" not in events[6]


async def test_composite_references_and_all_or_none(emu: SalesforceEmulator,
                                                   http: aiohttp.ClientSession) -> None:
    lead = emu.state.tables["Lead"].ids[3]
    tagged = {"Sforce-Call-Options": "client=composite-test"}
    start = emu.bus.latest_replay_id
    async with http.post(f"{V}/composite", headers=tagged, json={"compositeRequest": [
            {"method": "POST", "url": f"{V}/sobjects/Campaign", "referenceId": "camp",
             "body": {"Name": "Composite Launch", "IsActive": True}},
            {"method": "POST", "url": f"{V}/sobjects/CampaignMember", "referenceId": "member",
             "body": {"CampaignId": "@{camp.id}", "LeadId": lead}},
            {"method": "GET", "referenceId": "read",
             "url": f"{V}/query?q=SELECT+Id,+Campaign.Name+FROM+CampaignMember+"
                    "WHERE+Id+=+'@{member.id}'"},
            {"method": "PATCH", "url": f"{V}/sobjects/CampaignMember/@{{read.records[0].Id}}",
             "referenceId": "respond", "body": {"Status": "Responded"}},
            {"method": "GET", "url": f"{V}/sobjects/Campaign/@{{camp.id}}?fields=Name,IsActive",
             "referenceId": "get"}]}) as r:
        subs = (await json_of(r))["compositeResponse"]
    assert [s["httpStatusCode"] for s in subs] == [201, 201, 200, 204, 200]
    campaign, member = subs[0]["body"]["id"], subs[1]["body"]["id"]
    assert subs[0]["httpHeaders"] == {"Location": f"{V}/sobjects/Campaign/{campaign}"}
    assert subs[2]["body"]["records"][0]["Campaign"]["Name"] == "Composite Launch"
    assert (subs[4]["body"]["Name"], subs[4]["body"]["IsActive"]) == ("Composite Launch", True)
    assert record(emu, "CampaignMember", member)["HasResponded"] is True
    headers = [e["ChangeEventHeader"] for e in list(emu.state.event_log)]
    mine = [h for h in headers if h["changeOrigin"].endswith("client=composite-test")]
    assert [(h["entityName"], h["changeType"]) for h in mine] == [
        ("Campaign", "CREATE"), ("CampaignMember", "CREATE"), ("CampaignMember", "UPDATE")]
    assert mine[0]["changeOrigin"] == "com/salesforce/api/rest/66.0;client=composite-test"

    # allOrNone: the failure rolls back what came before; nothing is published.
    before = emu.bus.latest_replay_id
    async with http.post(f"{V}/composite", json={"allOrNone": True, "compositeRequest": [
            {"method": "POST", "url": f"{V}/sobjects/Campaign", "referenceId": "ok",
             "body": {"Name": "Rolled back"}},
            {"method": "POST", "url": f"{V}/sobjects/CampaignMember", "referenceId": "dup",
             "body": {"CampaignId": campaign, "LeadId": lead}},
            {"method": "DELETE", "url": f"{V}/sobjects/Campaign/{campaign}",
             "referenceId": "later"}]}) as r:
        subs = (await json_of(r))["compositeResponse"]
    assert [s["httpStatusCode"] for s in subs] == [400, 400, 400]
    assert subs[1]["body"][0]["errorCode"] == "DUPLICATE_VALUE"
    assert subs[0]["body"][0]["errorCode"] == subs[2]["body"][0]["errorCode"] == \
        "PROCESSING_HALTED"
    assert emu.bus.latest_replay_id == before
    assert await query(http, "SELECT Id FROM Campaign WHERE Name = 'Rolled back'") == []

    # Without allOrNone: a failure stops only the subrequests that depend on it.
    async with http.post(f"{V}/composite", json={"compositeRequest": [
            {"method": "POST", "url": f"{V}/sobjects/CampaignMember", "referenceId": "dup",
             "body": {"CampaignId": campaign, "LeadId": lead}},
            {"method": "PATCH", "url": f"{V}/sobjects/CampaignMember/@{{dup.id}}",
             "referenceId": "dependent", "body": {"Status": "Sent"}},
            {"method": "PATCH", "url": f"{V}/sobjects/Campaign/{campaign}",
             "referenceId": "independent", "body": {"IsActive": False}}]}) as r:
        subs = (await json_of(r))["compositeResponse"]
    assert [s["httpStatusCode"] for s in subs] == [400, 400, 204]
    assert subs[1]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert record(emu, "Campaign", campaign)["IsActive"] is False
    async with http.post(f"{V}/composite", json={"compositeRequest": [
            {"method": "GET", "url": f"{V}/sobjects/Lead/{lead}", "referenceId": f"r{i}"}
            for i in range(26)]}) as r:
        assert (await json_of(r, 400))[0]["errorCode"] == "LIMIT_EXCEEDED"
    assert emu.bus.latest_replay_id > start


async def test_member_copies_of_the_persons_fields(emu: SalesforceEmulator,
                                                   http: aiohttp.ClientSession) -> None:
    campaign = emu.state.tables["Campaign"].ids[0]
    lead = await create(http, "Lead", {"FirstName": "Ada", "LastName": "Copy", "Company": "C",
                                       "Email": "ada.copy@example.com", "City": "Paris"})
    member = await create(http, "CampaignMember", {"CampaignId": campaign, "LeadId": lead})
    select = ("SELECT Name, Email, City, HasOptedOutOfEmail, DoNotCall FROM CampaignMember "
              f"WHERE Id = '{member}'")
    (row,) = await query(http, select)
    assert {k: row[k] for k in ("Name", "Email", "City", "HasOptedOutOfEmail")} == {
        "Name": "Ada Copy", "Email": "ada.copy@example.com", "City": "Paris",
        "HasOptedOutOfEmail": False}
    assert await patch(http, "Lead", lead, {"HasOptedOutOfEmail": True}) is None
    opted = await query(http, "SELECT Id FROM CampaignMember WHERE HasOptedOutOfEmail = true "
                              f"AND CampaignId = '{campaign}'")
    assert member in {r["Id"] for r in opted}
    err = await patch(http, "CampaignMember", member, {"Email": "other@example.com"})
    assert err is not None and err["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    err = await create(http, "CampaignMember", {"CampaignId": campaign, "LeadId": lead,
                                                "DoNotCall": True}, 400)
    assert err["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    async with http.get(f"{V}/sobjects/CampaignMember/describe") as r:
        fields = {f["name"]: f for f in (await json_of(r))["fields"]}
    assert (fields["Email"]["type"], fields["Email"]["createable"],
            fields["Email"]["updateable"]) == ("email", False, False)
    assert fields["HasOptedOutOfEmail"]["type"] == "boolean"
    (created,) = [e for e in emu.state.event_log
                  if e["ChangeEventHeader"]["recordIds"] == [member]]
    assert "Email" not in created and created["LeadId"] == lead
    async with http.get(f"{V}/sobjects/CampaignMember/{member}") as r:
        assert (await json_of(r))["Email"] == "ada.copy@example.com"
    contact = emu.state.convert_lead(lead)["contactId"]
    emu.state.update("Contact", contact, {"MailingCity": "Lyon"})
    (row,) = await query(http, select)
    assert (row["City"], row["HasOptedOutOfEmail"]) == ("Lyon", True)  # now the Contact's


def test_command_line_seeds_and_selects(capsys: pytest.CaptureFixture[str]) -> None:
    from streamsync.emulators.salesforce.__main__ import build_parser, config_from_args, main
    cfg = config_from_args(build_parser().parse_args([
        "--seed-accounts", "2", "--seed-contacts", "4", "--seed-opportunities", "3",
        "--seed-campaigns", "2", "--seed-campaign-members", "5",
        "--cdc-entities", "Lead, Contact,CampaignMember"]))
    assert (cfg.seed_opportunities, cfg.seed_campaigns, cfg.seed_campaign_members,
            cfg.cdc_entities) == (3, 2, 5, ("Lead", "Contact", "CampaignMember"))
    seeded = SalesforceEmulator(cfg).seeded
    assert (seeded["Opportunity"], seeded["Campaign"], seeded["CampaignMember"]) == (3, 2, 5)
    assert 3 <= seeded["OpportunityContactRole"] <= 6
    assert main(["--port", "0", "--cdc-entities", "Lead,Group"]) == 2
    assert "Change Data Capture does not support Group" in capsys.readouterr().err
    assert main(["--port", "0", "--seed-opportunities", "5"]) == 2
    assert "needs seeded accounts and contacts" in capsys.readouterr().err


async def test_campaign_rollups_count_live_members_and_opportunities(
        emu: SalesforceEmulator, http: aiohttp.ClientSession) -> None:
    state = emu.state
    campaign = state.create("Campaign", {"Name": "Rollups"})
    leads = state.tables["Lead"].ids[:3]
    contact = state.tables["Contact"].ids[0]
    members = [state.create("CampaignMember", {"CampaignId": campaign, "LeadId": i})
               for i in leads]
    state.create("CampaignMember", {"CampaignId": campaign, "ContactId": contact,
                                    "Status": "Responded"})
    state.convert_lead(leads[0])
    state.delete("CampaignMember", members[1])
    account = state.tables["Account"].ids[0]
    for stage in ("Closed Won", "Prospecting"):
        state.create("Opportunity", {"Name": stage, "StageName": stage, "AccountId": account,
                                     "CloseDate": "2026-06-30", "CampaignId": campaign})
    (row,) = await query(http, "SELECT NumberOfLeads, NumberOfConvertedLeads, NumberOfContacts, "
                               "NumberOfResponses, NumberOfOpportunities, "
                               f"NumberOfWonOpportunities FROM Campaign WHERE Id = '{campaign}'")
    assert {k: v for k, v in row.items() if k != "attributes"} == {
        "NumberOfLeads": 2, "NumberOfConvertedLeads": 1, "NumberOfContacts": 2,
        "NumberOfResponses": 1, "NumberOfOpportunities": 2, "NumberOfWonOpportunities": 1}
    busy = await query(http, "SELECT Id FROM Campaign WHERE NumberOfContacts >= 2")
    assert campaign in {r["Id"] for r in busy}
    async with http.patch(f"{V}/sobjects/Campaign/{campaign}",
                          json={"NumberOfLeads": 9}) as r:
        assert (await json_of(r, 400))[0]["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
