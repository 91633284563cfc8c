"""Deterministic seed data: users, queues, accounts, contacts, leads, opportunities with contact
roles and campaigns with members, built fast."""

from __future__ import annotations

import random
from typing import Any

from .ids import make_id
from .schema import (
    CAMPAIGN_TYPES,
    CONTACT_ROLES,
    INDUSTRIES,
    LEAD_SOURCES,
    LEAD_STATUSES,
    LIFECYCLE,
    MEMBER_STATUSES,
    OPPORTUNITY_TYPES,
    STAGE_INFO,
    SObject,
)
from .state import OrgState, Row, format_datetime

FIRST = ("James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda",
         "William", "Elizabeth", "David", "Barbara", "Richard", "Susan", "Joseph", "Jessica",
         "Thomas", "Sarah", "Carlos", "Karen", "Yuki", "Ananya", "Lukas", "Amélie", "Chen",
         "Fatima", "Olga", "Mateo", "Aisha", "Noah")
LAST = ("Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
        "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson",
        "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Müller", "Tanaka", "Nguyen",
        "O'Brien", "Kowalski", "Rossi", "Dubois", "Singh", "Kim")
CITIES = (("San Francisco", "CA", "US"), ("New York", "NY", "US"), ("Austin", "TX", "US"),
          ("Chicago", "IL", "US"), ("Seattle", "WA", "US"), ("London", None, "GB"),
          ("Berlin", None, "DE"), ("Paris", None, "FR"), ("Tokyo", None, "JP"),
          ("Toronto", "ON", "CA"))
STREETS = ("Main St", "Market St", "Oak Ave", "Pine Rd", "Elm St", "Maple Dr", "Cedar Ln")
TITLES = ("CEO", "CTO", "VP Marketing", "Marketing Manager", "Engineer", "Director of Sales",
          "Analyst", "Buyer", None)
COMPANY_WORDS = ("Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Hooli", "Vandelay",
                 "Soylent", "Tyrell", "Cyberdyne", "Wonka")
COMPANY_SUFFIX = ("Inc", "LLC", "Corp", "GmbH", "Ltd", "Group")
SEED_EPOCH_S = 1_704_067_200  # 2024-01-01T00:00:00Z
SEED_SPAN_S = 700 * 86400


class _Dates:
    """Sorted pool of datetime strings so created dates rise with ids."""

    def __init__(self, count: int) -> None:
        self.count = max(count, 1)
        pool = 4096
        self.pool = [format_datetime(SEED_EPOCH_S + SEED_SPAN_S * k // pool) for k in range(pool)]
        self.size = pool

    def at(self, i: int) -> str:
        return self.pool[i * self.size // self.count]


def _slots(obj: SObject) -> dict[str, int]:
    return {f.name: f.slot for f in obj.stored}


# Shares of seeded Leads and Contacts opted out, per flag (HasOptedOutOfEmail comes from the
# main random stream at 5%, as before the other flags existed).
FAX_OPT_OUT_SHARE = 0.02
DO_NOT_CALL_SHARE = 0.03


def seed(state: OrgState, *, accounts: int = 0, contacts: int = 0, leads: int = 0,
         users: int = 20, queues: int = 3, seed_value: int = 42, opportunities: int = 0,
         campaigns: int = 0, campaign_members: int = 0) -> dict[str, int]:
    """Fill the org deterministically; no CDC events. Returns the counts created."""
    rnd = random.Random(seed_value)
    rand = rnd.random
    choice = rnd.choice
    # A stream of its own, so the consent flags leave every other seeded value as it was.
    consent = random.Random(seed_value * 7919 + 1).random
    user_ids = _seed_users(state, users)
    queue_ids = _seed_queues(state, queues)

    t = state.tables["Account"]
    s = _slots(t.obj)
    dates = _Dates(accounts)
    account_ids: list[str] = []
    seq = t.seq
    for i in range(accounts):
        row: Row = [None] * t.obj.width
        sf_id = make_id("001", seq.next_number)
        seq.next_number += 1
        city, st, country = choice(CITIES)
        d = dates.at(i)
        row[0] = sf_id
        row[s["IsDeleted"]] = False
        row[s["Name"]] = f"{choice(COMPANY_WORDS)} {choice(COMPANY_SUFFIX)} {i}"
        row[s["Type"]] = "Customer - Direct" if rand() < 0.5 else "Prospect"
        row[s["Industry"]] = choice(INDUSTRIES)
        row[s["AnnualRevenue"]] = float(int(rand() * 1000) * 10000)
        row[s["NumberOfEmployees"]] = int(rand() * 5000) + 1
        row[s["Phone"]] = f"(415) 555-{i % 10000:04d}"
        row[s["Website"]] = f"https://www.company{i}.example.com"
        row[s["BillingStreet"]] = f"{i % 999 + 1} {choice(STREETS)}"
        row[s["BillingCity"]] = city
        row[s["BillingState"]] = st
        row[s["BillingPostalCode"]] = f"{10000 + i % 89999}"
        row[s["BillingCountry"]] = country
        owner = choice(user_ids)
        row[s["OwnerId"]] = owner
        row[s["CreatedById"]] = owner
        row[s["LastModifiedById"]] = owner
        row[s["CreatedDate"]] = d
        row[s["LastModifiedDate"]] = d
        row[s["SystemModstamp"]] = d
        row[s["Tier__c"]] = choice(("Gold", "Silver", "Bronze"))
        row[s["Region__c"]] = choice(("AMER", "EMEA", "APAC"))
        row[s["Customer_Since__c"]] = d[:10]
        t.ids.append(sf_id)
        t.rows[sf_id] = row
        account_ids.append(sf_id)

    t = state.tables["Contact"]
    s = _slots(t.obj)
    dates = _Dates(contacts)
    seq = t.seq
    for i in range(contacts):
        row = [None] * t.obj.width
        sf_id = make_id("003", seq.next_number)
        seq.next_number += 1
        first, last = choice(FIRST), choice(LAST)
        city, st, country = choice(CITIES)
        d = dates.at(i)
        row[0] = sf_id
        row[s["IsDeleted"]] = False
        row[s["AccountId"]] = (account_ids[int(rand() * len(account_ids))]
                               if account_ids and rand() < 0.9 else None)
        row[s["FirstName"]] = first
        row[s["LastName"]] = last
        row[s["Title"]] = choice(TITLES)
        row[s["Email"]] = f"{first.lower()}.{last.lower()}.c{i}@example.com"
        row[s["Phone"]] = f"+1 415 555 {i % 10000:04d}"
        row[s["MailingStreet"]] = f"{i % 999 + 1} {choice(STREETS)}"
        row[s["MailingCity"]] = city
        row[s["MailingState"]] = st
        row[s["MailingPostalCode"]] = f"{10000 + i % 89999}"
        row[s["MailingCountry"]] = country
        row[s["LeadSource"]] = choice(LEAD_SOURCES)
        row[s["HasOptedOutOfEmail"]] = rand() < 0.05
        row[s["HasOptedOutOfFax"]] = consent() < FAX_OPT_OUT_SHARE
        row[s["DoNotCall"]] = consent() < DO_NOT_CALL_SHARE
        owner = choice(user_ids)
        row[s["OwnerId"]] = owner
        row[s["CreatedById"]] = owner
        row[s["LastModifiedById"]] = owner
        row[s["CreatedDate"]] = d
        row[s["LastModifiedDate"]] = d
        row[s["SystemModstamp"]] = d
        row[s["Lifecycle_Stage__c"]] = choice(LIFECYCLE)
        row[s["Preferred_Language__c"]] = choice(("en", "de", "fr", "es", "ja"))
        row[s["External_Id__c"]] = f"C-{i:08d}"
        t.ids.append(sf_id)
        t.rows[sf_id] = row

    t = state.tables["Lead"]
    s = _slots(t.obj)
    dates = _Dates(leads)
    seq = t.seq
    open_statuses = LEAD_STATUSES[:2]
    for i in range(leads):
        row = [None] * t.obj.width
        sf_id = make_id("00Q", seq.next_number)
        seq.next_number += 1
        first, last = choice(FIRST), choice(LAST)
        city, st, country = choice(CITIES)
        d = dates.at(i)
        row[0] = sf_id
        row[s["IsDeleted"]] = False
        row[s["FirstName"]] = first
        row[s["LastName"]] = last
        row[s["Title"]] = choice(TITLES)
        row[s["Company"]] = f"{choice(COMPANY_WORDS)} {choice(COMPANY_SUFFIX)}"
        row[s["Email"]] = (f"{first.lower()}.{last.lower()}.l{i}@example.org"
                           if rand() < 0.97 else None)
        row[s["Phone"]] = f"+1 212 555 {i % 10000:04d}"
        row[s["Street"]] = f"{i % 999 + 1} {choice(STREETS)}"
        row[s["City"]] = city
        row[s["State"]] = st
        row[s["PostalCode"]] = f"{10000 + i % 89999}"
        row[s["Country"]] = country
        row[s["Status"]] = choice(open_statuses)
        row[s["LeadSource"]] = choice(LEAD_SOURCES)
        row[s["Industry"]] = choice(INDUSTRIES)
        row[s["HasOptedOutOfEmail"]] = rand() < 0.05
        row[s["HasOptedOutOfFax"]] = consent() < FAX_OPT_OUT_SHARE
        row[s["DoNotCall"]] = consent() < DO_NOT_CALL_SHARE
        row[s["IsConverted"]] = False
        owner = choice(queue_ids) if queue_ids and rand() < 0.15 else choice(user_ids)
        row[s["OwnerId"]] = owner
        creator = user_ids[i % len(user_ids)]
        row[s["CreatedById"]] = creator
        row[s["LastModifiedById"]] = creator
        row[s["CreatedDate"]] = d
        row[s["LastModifiedDate"]] = d
        row[s["SystemModstamp"]] = d
        row[s["Lifecycle_Stage__c"]] = choice(LIFECYCLE)
        row[s["Lead_Score__c"]] = float(int(rand() * 100))
        row[s["Marketing_Opt_In__c"]] = rand() < 0.6
        row[s["External_Id__c"]] = f"L-{i:08d}"
        t.ids.append(sf_id)
        t.rows[sf_id] = row
    extra = random.Random(seed_value * 104_729 + 3)
    roles = _seed_opportunities(state, opportunities, user_ids, extra)
    members = _seed_campaigns(state, campaigns, campaign_members, user_ids, extra)
    for table in state.tables.values():
        table.rebuild_stamp_index()
    return {"User": len(user_ids), "Group": len(queue_ids), "Account": accounts,
            "Contact": contacts, "Lead": leads, "Opportunity": opportunities,
            "OpportunityContactRole": roles, "Campaign": campaigns, "CampaignMember": members}


def _new_row(t: Any, s: dict[str, int], d: str, owner: str) -> Row:
    """A live row with a fresh id and its audit fields set (OwnerId when the object has one)."""
    row: Row = [None] * t.obj.width
    sf_id = make_id(t.obj.key_prefix, t.seq.next_number)
    t.seq.next_number += 1
    row[0] = sf_id
    row[s["IsDeleted"]] = False
    if "OwnerId" in s:
        row[s["OwnerId"]] = owner
    for name in ("CreatedById", "LastModifiedById"):
        row[s[name]] = owner
    for name in ("CreatedDate", "LastModifiedDate", "SystemModstamp"):
        row[s[name]] = d
    t.ids.append(sf_id)
    t.rows[sf_id] = row
    return row


def _seed_opportunities(state: OrgState, count: int, user_ids: list[str],
                        rnd: random.Random) -> int:
    """`count` opportunities on random accounts, each with 1-2 contact roles (the first
    primary) from the account's contacts when it has any, else from all contacts."""
    accounts = state.tables["Account"].ids
    contacts = state.tables["Contact"]
    if count <= 0:
        return 0
    if not accounts or not contacts.ids:
        raise ValueError("seeding opportunities needs seeded accounts and contacts")
    by_account = contacts.index_for(contacts.obj.slot("AccountId"))
    t = state.tables["Opportunity"]
    s = _slots(t.obj)
    r = state.tables["OpportunityContactRole"]
    rs = _slots(r.obj)
    dates = _Dates(count)
    stages = tuple(STAGE_INFO)
    roles = 0
    for i in range(count):
        d = dates.at(i)
        owner = rnd.choice(user_ids)
        row = _new_row(t, s, d, owner)
        account = accounts[int(rnd.random() * len(accounts))]
        stage = stages[int(rnd.random() * len(stages))]
        probability, category, closed, won = STAGE_INFO[stage]
        row[s["AccountId"]] = account
        row[s["Name"]] = f"Opportunity {i}"
        row[s["StageName"]] = stage
        row[s["Probability"]] = probability
        row[s["ForecastCategoryName"]] = category
        row[s["IsClosed"]] = closed
        row[s["IsWon"]] = won
        row[s["CloseDate"]] = d[:10]
        row[s["Amount"]] = float(int(rnd.random() * 500) * 1000)
        row[s["Type"]] = rnd.choice(OPPORTUNITY_TYPES)
        row[s["LeadSource"]] = rnd.choice(LEAD_SOURCES)
        pool = sorted(by_account.get(account, ())) or contacts.ids
        picked = rnd.sample(pool, min(len(pool), 1 + int(rnd.random() * 2)))
        for n, contact in enumerate(picked):
            role = _new_row(r, rs, d, owner)
            role[rs["OpportunityId"]] = row[0]
            role[rs["ContactId"]] = contact
            role[rs["Role"]] = rnd.choice(CONTACT_ROLES)
            role[rs["IsPrimary"]] = n == 0
            roles += 1
    return roles


def _seed_campaigns(state: OrgState, count: int, members: int, user_ids: list[str],
                    rnd: random.Random) -> int:
    """`count` campaigns and `members` members spread over them round-robin: live leads and
    contacts (about half each), each at most once per campaign."""
    if count <= 0:
        if members > 0:
            raise ValueError("seeding campaign members needs seeded campaigns")
        return 0
    t = state.tables["Campaign"]
    s = _slots(t.obj)
    campaign_ids: list[str] = []
    for i in range(count):
        d = format_datetime(SEED_EPOCH_S + SEED_SPAN_S * i // count)
        row = _new_row(t, s, d, rnd.choice(user_ids))
        row[s["Name"]] = f"{rnd.choice(CAMPAIGN_TYPES)} Campaign {i}"
        row[s["Type"]] = rnd.choice(CAMPAIGN_TYPES)
        active = rnd.random() < 0.7
        row[s["IsActive"]] = active
        row[s["Status"]] = "In Progress" if active else rnd.choice(("Planned", "Completed"))
        row[s["StartDate"]] = d[:10]
        row[s["BudgetedCost"]] = float(int(rnd.random() * 100) * 1000)
        campaign_ids.append(row[0])
    if members <= 0:
        return 0
    people = state.tables["Lead"].ids + state.tables["Contact"].ids
    if members > len(people) * count:
        raise ValueError(f"{members} campaign members need more leads and contacts")
    leads = len(state.tables["Lead"].ids)
    m = state.tables["CampaignMember"]
    ms = _slots(m.obj)
    dates = _Dates(members)
    start = int(rnd.random() * len(people))
    for i in range(members):
        campaign = campaign_ids[i % count]
        # Campaign c takes consecutive people from its own offset: no one twice in a campaign.
        person_index = (start + i // count + (i % count) * 7919) % len(people)
        person = people[person_index]
        row = _new_row(m, ms, dates.at(i), user_ids[i % len(user_ids)])
        row[ms["CampaignId"]] = campaign
        row[ms["LeadId" if person_index < leads else "ContactId"]] = person
        row[ms["LeadOrContactId"]] = person
        status = MEMBER_STATUSES[1] if rnd.random() < 0.2 else MEMBER_STATUSES[0]
        row[ms["Status"]] = status
        row[ms["HasResponded"]] = status == MEMBER_STATUSES[1]
        if status == MEMBER_STATUSES[1]:
            row[ms["FirstRespondedDate"]] = dates.at(i)[:10]
    return members


def _seed_users(state: OrgState, count: int) -> list[str]:
    """The integration user (first) plus `count` sales users."""
    t = state.tables["User"]
    if t.ids:
        return [i for i in t.ids if i != state.integration_user_id] or list(t.ids)
    s = _slots(t.obj)
    d = format_datetime(SEED_EPOCH_S)
    people: list[tuple[str, str, str]] = [("Integration", "User", "integration@example.com")]
    for i in range(count):
        first, last = FIRST[i % len(FIRST)], LAST[(i * 7) % len(LAST)]
        people.append((first, last, f"{first.lower()}.{last.lower()}.u{i}@example.com"))
    out: list[str] = []
    for first, last, email in people:
        row: Row = [None] * t.obj.width
        sf_id = t.seq.next()
        values: dict[str, Any] = {
            "Id": sf_id, "Username": email, "FirstName": first, "LastName": last,
            "Alias": (first[:1] + last[:4]).lower(), "Email": email, "Title": "Sales Rep",
            "IsActive": True, "CreatedDate": d, "LastModifiedDate": d, "SystemModstamp": d,
        }
        for k, v in values.items():
            row[s[k]] = v
        t.insert(row)
        out.append(sf_id)
    state.integration_user_id = out[0]
    state.sales_user_id = out[1] if len(out) > 1 else out[0]
    return out[1:] or out


def _seed_queues(state: OrgState, count: int) -> list[str]:
    t = state.tables["Group"]
    s = _slots(t.obj)
    d = format_datetime(SEED_EPOCH_S)
    names = ("Inbound Leads", "Partner Leads", "EMEA Leads", "APAC Leads", "Event Leads")
    out: list[str] = []
    for i in range(count):
        row: Row = [None] * t.obj.width
        sf_id = t.seq.next()
        name = names[i % len(names)] + ("" if i < len(names) else f" {i}")
        values = {"Id": sf_id, "Name": name, "DeveloperName": name.replace(" ", "_"),
                  "Type": "Queue", "Email": name.lower().replace(" ", ".") + "@example.com",
                  "CreatedDate": d, "LastModifiedDate": d, "SystemModstamp": d}
        for k, v in values.items():
            row[s[k]] = v
        t.insert(row)
        out.append(sf_id)
    return out
