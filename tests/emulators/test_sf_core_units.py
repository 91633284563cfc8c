"""Salesforce emulator internals without HTTP: ids, seed, SOQL, writes and their CDC events."""

from __future__ import annotations

from typing import Any

import pytest

from streamsync.emulators.salesforce.errors import SalesforceError
from streamsync.emulators.salesforce.ids import checksum, is_valid_id, make_id, to18
from streamsync.emulators.salesforce.seed import seed
from streamsync.emulators.salesforce.soql import execute, parse
from streamsync.emulators.salesforce.state import LeadConversion, OrgState


class RecordingBus:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def publish(self, entity_name: str, payload: dict[str, Any]) -> int:
        self.events.append((entity_name, payload))
        return len(self.events)


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def org() -> tuple[OrgState, RecordingBus, Clock]:
    bus = RecordingBus()
    clock = Clock()
    state = OrgState(bus=bus, clock=clock)
    seed(state, accounts=20, contacts=60, leads=300)
    return state, bus, clock


@pytest.mark.parametrize("body,suffix", [("a0RE000000IJmcN", "MAT"), ("001M000000qfPyS", "IAU"),
                                         ("aaaaaaaaaaaaaaa", "AAA"), ("aBcDEfgHIJKLMNO", "025")])
def test_checksum_vectors(body: str, suffix: str) -> None:
    assert checksum(body) == suffix
    assert to18(body) == body + suffix
    assert is_valid_id(body + suffix)


def test_made_ids_sort_in_creation_order_and_validate() -> None:
    ids = [make_id("00Q", n) for n in (1, 9, 10, 61, 62, 63, 3843, 3844, 10**9)]
    assert ids == sorted(ids)
    assert all(len(i) == 18 and is_valid_id(i) and i.startswith("00Q") for i in ids)
    assert not is_valid_id(ids[0][:15] + "AAA") or ids[0].endswith("AAA")


def test_seed_is_deterministic_and_has_queue_owners() -> None:
    a, b = OrgState(), OrgState()
    seed(a, accounts=5, contacts=10, leads=200)
    seed(b, accounts=5, contacts=10, leads=200)
    lead = a.tables["Lead"]
    assert lead.ids == b.tables["Lead"].ids
    assert [lead.rows[i] for i in lead.ids] == [b.tables["Lead"].rows[i] for i in lead.ids]
    owners = {lead.rows[i][lead.obj.slot("OwnerId")][:3] for i in lead.ids}
    assert owners == {"005", "00G"}


def test_parse_reports_malformed_query_with_position() -> None:
    with pytest.raises(SalesforceError) as exc:
        parse("SELECT Id FRM Lead")
    assert exc.value.error_code == "MALFORMED_QUERY"
    assert "ERROR at Row:1:Column:11" in exc.value.message
    assert "unexpected token: FRM" in exc.value.message


def test_string_literal_escapes() -> None:
    q = parse(r"SELECT Id FROM Lead WHERE LastName = 'O\'Brien' AND Title LIKE 'a\%b'")
    where: Any = q.where
    assert where.items[0].values[0].value == "O'Brien"


def test_where_operators_and_parent_paths(org: tuple[OrgState, RecordingBus, Clock]) -> None:
    state, _, _ = org
    lead = state.tables["Lead"]
    s = lead.obj.slot
    rows = [lead.rows[i] for i in lead.ids]

    def ids(q: str) -> list[str]:
        return [r[0] for r in execute(state, q).rows]

    expect = [r[0] for r in rows if r[s("OwnerId")].startswith("00G")]
    assert ids("SELECT Id FROM Lead WHERE Owner.Type = 'queue'") == expect
    assert ids("SELECT Id FROM Lead WHERE NOT (Owner.Type = 'Queue')") == [
        r[0] for r in rows if r[0] not in expect]
    expect = [r[0] for r in rows if r[s("Email")] is None]
    assert ids("SELECT Id FROM Lead WHERE Email = null") == expect
    expect = [r[0] for r in rows if r[s("LeadSource")] in ("Web", "Other")
              and r[s("Industry")] not in ("Banking",)]
    assert ids("SELECT Id FROM Lead WHERE LeadSource IN ('Web','Other') AND "
               "Industry NOT IN ('Banking')") == expect
    expect = [r[0] for r in rows if (r[s("FirstName")] or "").lower().startswith("ma")
              or r[s("Marketing_Opt_In__c")] is True]
    assert ids("SELECT Id FROM Lead WHERE FirstName LIKE 'ma%' OR Marketing_Opt_In__c = true"
               ) == expect
    cut = rows[150][s("CreatedDate")]
    literal = cut[:19] + "Z"
    assert ids(f"SELECT Id FROM Lead WHERE CreatedDate >= {literal}") == [
        r[0] for r in rows if r[s("CreatedDate")] >= cut]
    assert ids(f"SELECT Id FROM Lead WHERE Lead_Score__c > 50 AND CreatedDate < {literal}") == [
        r[0] for r in rows if r[s("Lead_Score__c")] > 50 and r[s("CreatedDate")] < cut]


def test_keyset_page_and_id_in(org: tuple[OrgState, RecordingBus, Clock]) -> None:
    state, _, _ = org
    ids = state.tables["Lead"].ids
    r = execute(state, f"SELECT Id FROM Lead WHERE Id > '{ids[99]}' ORDER BY Id LIMIT 50")
    assert [x[0] for x in r.rows] == ids[100:150]
    r = execute(state, f"SELECT Id FROM Lead WHERE Id > '{ids[99]}' ORDER BY Id DESC LIMIT 3")
    assert [x[0] for x in r.rows] == ids[-1:-4:-1]
    picked = [ids[5], ids[2][:15], ids[40]]
    r = execute(state, "SELECT Id FROM Lead WHERE Id IN ('" + "','".join(picked) + "')")
    assert [x[0] for x in r.rows] == [ids[2], ids[5], ids[40]]


def test_order_by_several_keys_and_nulls(org: tuple[OrgState, RecordingBus, Clock]) -> None:
    state, _, _ = org
    r = execute(state, "SELECT Id, Email, LastName FROM Lead ORDER BY Email DESC NULLS FIRST, "
                "Id ASC LIMIT 400")
    emails = [x[state.tables["Lead"].obj.slot("Email")] for x in r.rows]
    nulls = [e for e in emails if e is None]
    assert nulls and emails[: len(nulls)] == nulls
    rest = emails[len(nulls):]
    assert rest == sorted(rest, key=str.casefold, reverse=True)
    r = execute(state, "SELECT Id FROM Lead ORDER BY Email LIMIT 400")
    emails = [x[state.tables["Lead"].obj.slot("Email")] for x in r.rows]
    assert emails[0] is None  # ASC defaults to NULLS FIRST


def test_render_shape_with_parents(org: tuple[OrgState, RecordingBus, Clock]) -> None:
    state, _, _ = org
    con = state.tables["Contact"]
    orphan = next(i for i in con.ids if con.rows[i][con.obj.slot("AccountId")] is None)
    r = execute(state, f"SELECT Id, Account.Name, Account.Owner.Name, Owner.Email, email "
                f"FROM Contact WHERE Id = '{orphan}'", version="59.0")
    assert r.render is not None
    rec = r.render(r.rows[0])
    assert list(rec) == ["attributes", "Id", "Email", "Account", "Owner"]
    assert rec["attributes"] == {"type": "Contact",
                                 "url": f"/services/data/v59.0/sobjects/Contact/{orphan}"}
    assert rec["Account"] is None
    assert rec["Owner"]["attributes"]["type"] == "User"
    r = execute(state, "SELECT Account.Owner.Name FROM Contact WHERE AccountId != null LIMIT 1")
    assert r.render is not None
    rec = r.render(r.rows[0])
    assert rec["Account"]["attributes"]["type"] == "Account"
    assert set(rec["Account"]) == {"attributes", "Owner"}
    assert rec["Account"]["Owner"]["Name"]


def test_invalid_field_and_type(org: tuple[OrgState, RecordingBus, Clock]) -> None:
    state, _, _ = org
    with pytest.raises(SalesforceError) as exc:
        execute(state, "SELECT Id, SF_date__c FROM Lead")
    assert exc.value.error_code == "INVALID_FIELD"
    assert "No such column 'SF_date__c' on entity 'Lead'" in exc.value.message
    with pytest.raises(SalesforceError) as exc:
        execute(state, "SELECT Id FROM Leads")
    assert exc.value.error_code == "INVALID_TYPE"
    with pytest.raises(SalesforceError) as exc:
        execute(state, "SELECT Id FROM Lead WHERE IsConverted = 'true'")
    assert exc.value.error_code == "INVALID_FIELD"


def test_count_and_query_all(org: tuple[OrgState, RecordingBus, Clock]) -> None:
    state, _, _ = org
    lead_id = state.tables["Lead"].ids[0]
    state.delete("Lead", lead_id)
    assert execute(state, "SELECT COUNT() FROM Lead").total_size == 299
    r = execute(state, "SELECT Id, IsDeleted FROM Lead WHERE IsDeleted = true",
                include_deleted=True)
    assert [x[0] for x in r.rows] == [lead_id]


def test_create_update_events(org: tuple[OrgState, RecordingBus, Clock]) -> None:
    state, bus, clock = org
    new_id = state.create("Lead", {"LastName": "Lovelace", "FirstName": "Ada",
                                   "Company": "Engines", "Email": "ada@example.com",
                                   "Street": "1 Analytical Way"}, origin="o1")
    entity, ev = bus.events[-1]
    h = ev["ChangeEventHeader"]
    assert entity == "Lead" and h["changeType"] == "CREATE" and h["recordIds"] == [new_id]
    assert h["changedFields"] == [] and h["sequenceNumber"] == 1 and h["changeOrigin"] == "o1"
    assert ev["Name"] == {"FirstName": "Ada", "LastName": "Lovelace"}
    assert ev["Address"] == {"Street": "1 Analytical Way"}
    assert "IsDeleted" not in ev and "SystemModstamp" not in ev and "Street" not in ev
    assert ev["CreatedDate"].endswith("Z")
    clock.t += 60
    state.update("Lead", new_id, {"Email": None, "LastName": "King", "Title": "Countess"})
    _, ev = bus.events[-1]
    h = ev["ChangeEventHeader"]
    assert h["changeType"] == "UPDATE"
    assert ev["Email"] is None and ev["Name"] == {"LastName": "King"}
    assert ev["Title"] == "Countess" and "Company" not in ev
    assert set(h["changedFields"]) == {"Email", "Name.LastName", "Title", "LastModifiedDate"}
    assert h["nulledFields"] == ["Email"]
    assert h["commitTimestamp"] == int(clock.t * 1000)
    rec = state.record("Lead", new_id)
    assert rec is not None and rec["SystemModstamp"] == rec["LastModifiedDate"]


def test_mass_update_merges_and_delete_undelete(org: tuple[OrgState, RecordingBus, Clock]
                                                ) -> None:
    state, bus, _ = org
    ids = state.tables["Contact"].ids[:5]
    state.mass_update("Contact", ids, {"Department": "Ops-42"})
    assert len(bus.events) == 1
    _, ev = bus.events[0]
    assert ev["ChangeEventHeader"]["recordIds"] == ids
    state.delete("Contact", ids[0])
    state.undelete("Contact", ids[0])
    kinds = [e["ChangeEventHeader"]["changeType"] for _, e in bus.events]
    assert kinds == ["UPDATE", "DELETE", "UNDELETE"]
    assert bus.events[2][1]["Department"] == "Ops-42"


def test_convert_lead_is_one_transaction(org: tuple[OrgState, RecordingBus, Clock]) -> None:
    state, bus, _ = org
    lead_id = state.tables["Lead"].ids[3]
    out = state.convert_lead(lead_id)
    evs = [e for _, e in bus.events]
    headers = [e["ChangeEventHeader"] for e in evs]
    assert [(h["entityName"], h["changeType"]) for h in headers] == [
        ("Account", "CREATE"), ("Contact", "CREATE"), ("Lead", "UPDATE")]
    assert len({h["transactionKey"] for h in headers}) == 1
    assert [h["sequenceNumber"] for h in headers] == [1, 2, 3]
    lead_ev = evs[2]
    assert lead_ev["IsConverted"] is True and lead_ev["ConvertedContactId"] == out["contactId"]
    assert "LastModifiedDate" not in lead_ev
    assert len(lead_ev["ConvertedDate"]) == 10
    with pytest.raises(SalesforceError) as exc:
        state.update("Lead", lead_id, {"Title": "x"})
    assert exc.value.error_code == "CANNOT_UPDATE_CONVERTED_LEAD"


def test_conversion_into_an_existing_account_with_an_opportunity(
        org: tuple[OrgState, RecordingBus, Clock]) -> None:
    state, bus, _ = org
    lead_id = state.create("Lead", {"LastName": "Hopper", "Company": "Navy", "Phone": "+1 555",
                                    "Industry": "Energy", "LeadSource": "Web"})
    account = state.create("Account", {"Name": "Existing", "Industry": "Banking"})
    bus.events.clear()
    with state.transaction(merge=False) as tx:
        out = tx.convert_lead(LeadConversion(lead_id, account_id=account, create_opportunity=True,
                                             opportunity_name="Deal"))
    assert out["accountId"] == account and str(out["opportunityId"]).startswith("006")
    merged = state.record("Account", account)
    assert merged is not None and (merged["Industry"], merged["Phone"]) == ("Banking", "+1 555")
    opp = state.record("Opportunity", str(out["opportunityId"]))
    assert opp is not None and (opp["Name"], opp["AccountId"], opp["StageName"]) == (
        "Deal", account, "Prospecting")
    assert opp["CloseDate"][5:] in ("03-31", "06-30", "09-30", "12-31")
    headers = [e["ChangeEventHeader"] for _, e in bus.events]
    assert [(h["entityName"], h["changeType"]) for h in headers] == [
        ("Account", "UPDATE"), ("Contact", "CREATE"), ("Opportunity", "CREATE"),
        ("OpportunityContactRole", "CREATE"), ("Lead", "UPDATE")]
    assert "ConvertedOpportunityId" in headers[4]["changedFields"]
    role = bus.events[3][1]
    assert (role["OpportunityId"], role["ContactId"], role["IsPrimary"]) == (
        out["opportunityId"], out["contactId"], True)
    q = execute(state, "SELECT ConvertedOpportunity.StageName, ConvertedOpportunity.IsClosed "
                       f"FROM Lead WHERE Id = '{lead_id}'")
    assert q.render is not None
    assert q.render(q.rows[0])["ConvertedOpportunity"]["StageName"] == "Prospecting"
    contact = state.create("Contact", {"LastName": "Other"})
    other = state.create("Lead", {"LastName": "L", "Company": "C"})
    for conv, code in ((LeadConversion(other, converted_status="Open - Not Contacted"),
                        "INVALID_STATUS"),
                       (LeadConversion(other, contact_id=contact), "REQUIRED_FIELD_MISSING"),
                       (LeadConversion(other, account_id=account, contact_id=contact),
                        "INVALID_CROSS_REFERENCE_KEY")):
        with pytest.raises(SalesforceError) as exc, state.transaction() as tx:
            tx.convert_lead(conv)
        assert exc.value.error_code == code


def test_failed_transaction_rolls_back(org: tuple[OrgState, RecordingBus, Clock]) -> None:
    state, bus, _ = org
    before = len(state.tables["Lead"].ids)
    with pytest.raises(SalesforceError), state.transaction() as tx:
        tx.create("Lead", {"LastName": "A", "Company": "B"})
        tx.create("Lead", {"LastName": "C"})  # Company missing
    assert len(state.tables["Lead"].ids) == before and bus.events == []


def test_validation_errors(org: tuple[OrgState, RecordingBus, Clock]) -> None:
    state, _, _ = org
    cases: list[tuple[dict[str, Any], str]] = [
        ({"LastName": "A", "Company": "B", "Email": "nope"}, "INVALID_EMAIL_ADDRESS"),
        ({"LastName": "A", "Company": "B", "Bogus": 1}, "INVALID_FIELD"),
        ({"LastName": "A", "Company": "B", "IsConverted": True},
         "INVALID_FIELD_FOR_INSERT_UPDATE"),
        ({"Id": "00Q000000000000AAA", "LastName": "A", "Company": "B"}, "INVALID_FIELD"),
        ({"LastName": "A", "Company": "B", "OwnerId": state.tables["Account"].ids[0]},
         "FIELD_INTEGRITY_EXCEPTION"),
        ({"LastName": "A" * 81, "Company": "B"}, "STRING_TOO_LONG"),
    ]
    for values, code in cases:
        with pytest.raises(SalesforceError) as exc:
            state.create("Lead", values)
        assert exc.value.error_code == code, values


def test_system_modstamp_filter_sees_recent_writes(org: tuple[OrgState, RecordingBus, Clock]
                                                   ) -> None:
    state, _, clock = org
    lead = state.tables["Lead"]
    clock.t = 1_900_000_000.0  # later than every seeded stamp
    touched = [lead.ids[250], lead.ids[3], lead.ids[120]]
    for sf_id in touched:
        state.update("Lead", sf_id, {"Title": "Changed"})
    new_id = state.create("Lead", {"LastName": "New", "Company": "Co"})
    state.delete("Lead", lead.ids[40])
    q = "SELECT Id FROM Lead WHERE SystemModstamp >= 2030-03-17T00:00:00Z ORDER BY Id"
    got = [r[0] for r in execute(state, q, include_deleted=True).rows]
    assert got == sorted([*touched, new_id, lead.ids[40]])
    got = [r[0] for r in execute(state, q).rows]
    assert got == sorted([*touched, new_id])
    q = (f"SELECT Id FROM Lead WHERE SystemModstamp > 2030-03-17T00:00:00Z AND "
         f"Id > '{lead.ids[3]}' ORDER BY Id LIMIT 2")
    assert [r[0] for r in execute(state, q).rows] == sorted(touched)[1:3]


def test_transaction_over_the_change_cap_ends_with_overflow_events() -> None:
    bus = RecordingBus()
    state = OrgState(bus=bus, overflow_changes=6)
    seed(state, accounts=3, contacts=10, leads=10)
    with state.transaction() as tx:
        for sf_id in state.tables["Contact"].ids[:4]:
            tx.update("Contact", sf_id, {"Title": f"T{sf_id}"})  # 3 changes each
        tx.delete("Lead", state.tables["Lead"].ids[0])
        tx.delete("Account", state.tables["Account"].ids[0])
    headers = [e["ChangeEventHeader"] for _, e in bus.events]
    assert [(h["entityName"], h["changeType"]) for h in headers] == [
        ("Contact", "UPDATE"), ("Contact", "UPDATE"),
        ("Contact", "GAP_OVERFLOW"), ("Lead", "GAP_OVERFLOW"), ("Account", "GAP_OVERFLOW")]
    assert headers[2]["recordIds"] == [] and headers[4]["sequenceNumber"] == 5
    assert len({h["transactionKey"] for h in headers}) == 1
    rec = state.record("Account", state.tables["Account"].ids[0])
    assert rec is not None and rec["IsDeleted"] is True  # the data change still happened


def test_reference_filters_follow_writes(org: tuple[OrgState, RecordingBus, Clock]) -> None:
    state, _, _ = org
    con = state.tables["Contact"]
    slot = con.obj.slot("AccountId")
    acc_a, acc_b = state.tables["Account"].ids[:2]

    def by_scan(acc: str) -> list[str]:
        return [i for i in con.ids if con.rows[i][slot] == acc]

    def by_query(acc: str) -> list[str]:
        return [r[0] for r in execute(state, f"SELECT Id FROM Contact WHERE AccountId = '{acc}'"
                                      " ORDER BY Id").rows]
    assert by_query(acc_a) == by_scan(acc_a)  # builds the index
    moved = by_scan(acc_b)[0] if by_scan(acc_b) else con.ids[0]
    state.update("Contact", moved, {"AccountId": acc_a})
    new_id = state.create("Contact", {"LastName": "Z", "AccountId": acc_a})
    with pytest.raises(SalesforceError), state.transaction() as tx:
        tx.update("Contact", by_scan(acc_a)[0], {"AccountId": acc_b})
        tx.create("Contact", {"FirstName": "no last name"})
    assert by_query(acc_a) == by_scan(acc_a) and moved in by_scan(acc_a)
    assert new_id in by_query(acc_a)
    q = f"SELECT Id FROM Contact WHERE AccountId IN ('{acc_a}', '{acc_b[:15]}') ORDER BY Id"
    assert [r[0] for r in execute(state, q).rows] == sorted(by_scan(acc_a) + by_scan(acc_b))


def test_tokenizer_escapes() -> None:
    from streamsync.emulators.salesforce.soql import tokenize
    toks = tokenize(r"SELECT Id FROM Lead WHERE A = 'O\'Br\\ien\n' AND B LIKE '50\%'")
    strings = [t.value for t in toks if t.kind == "string"]
    assert strings == ["O'Br\\ien\n", "50\\%"]
    for bad, message in ((r"SELECT Id FROM Lead WHERE A = 'x\q'", "bad escape sequence"),
                         ("SELECT Id FROM Lead WHERE A = 'x", "missing quote")):
        with pytest.raises(SalesforceError) as exc:
            tokenize(bad)
        assert exc.value.error_code == "MALFORMED_QUERY" and message in exc.value.message
