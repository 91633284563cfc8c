"""SOAP convertLead as jsforce's `conn.soap.convertLead` sends it, its reply, faults and CDC events.

The request is built the way jsforce 3.10 builds it (src/soap.ts `_createEnvelope` and `toXML`,
src/api/soap.ts `_invoke`): an XML declaration, a `soapenv:Envelope` declaring xsd and xsi, a
`soapenv:Header` and a `soapenv:Body` that both set the partner namespace as the default, the
SessionHeader (then CallOptions) in the header, `<convertLead><leadConverts>...` in the body,
no whitespace anywhere; POSTed to /services/Soap/u/<version> with `Content-Type: text/xml` and
`SOAPAction: ""` plus the Bearer token jsforce adds to every request."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig
from tests.emulators.sf_clients import cdc_events

SOAP_URL = "/services/Soap/u/66.0"
SOAPENV = "{http://schemas.xmlsoap.org/soap/envelope/}"
P = "{urn:partner.soap.sforce.com}"
XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
# jsforce's SOAP.isSessionExpired: a 500 whose body matches this makes it refresh the session.
JSFORCE_SESSION_EXPIRED = re.compile(r"<faultcode>[a-zA-Z]+:INVALID_SESSION_ID</faultcode>")


def to_xml(name: str | None, value: Any) -> str:
    """jsforce's toXML: dicts nest, lists repeat the element, None is xsi:nil, text escaped."""
    if isinstance(value, list):
        return "".join(to_xml(name, v) for v in value)
    attrs = ""
    if value is None:
        attrs, inner = ' xsi:nil="true"', ""
    elif isinstance(value, dict):
        inner = "".join(to_xml(k, v) for k, v in value.items())
    else:
        text = str(value).lower() if isinstance(value, bool) else str(value)
        inner = (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                 .replace('"', "&quot;").replace("'", "&apos;"))
    return f"<{name}{attrs}>{inner}</{name}>" if name else inner


def jsforce_envelope(session_id: str | None, message: dict[str, Any],
                     call_options: dict[str, str] | None = None) -> str:
    header: dict[str, Any] = {}
    if session_id:
        header["SessionHeader"] = {"sessionId": session_id}
    if call_options:
        header["CallOptions"] = call_options
    return "".join([
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"',
        ' xmlns:xsd="http://www.w3.org/2001/XMLSchema"',
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">',
        '<soapenv:Header xmlns="urn:partner.soap.sforce.com">',
        to_xml(None, header),
        "</soapenv:Header>",
        '<soapenv:Body xmlns="urn:partner.soap.sforce.com">',
        to_xml(None, message),
        "</soapenv:Body>",
        "</soapenv:Envelope>",
    ])


@pytest.fixture
async def emu() -> AsyncIterator[SalesforceEmulator]:
    e = SalesforceEmulator(SalesforceEmulatorConfig(seed_leads=3))
    await e.start()
    yield e
    await e.stop()


async def soap(emu: SalesforceEmulator, body: str | bytes, token: str | None = None
               ) -> tuple[int, str]:
    headers = {"Content-Type": "text/xml", "SOAPAction": '""'}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as s, s.post(emu.instance_url + SOAP_URL, data=body,
                                                    headers=headers) as r:
        assert r.content_type == "text/xml"
        return r.status, await r.text()


def convert(emu: SalesforceEmulator, converts: list[dict[str, Any]],
            token: str | None = None, **call_options: str) -> str:
    return jsforce_envelope(token or emu.issue_token(), {"convertLead": {
        "leadConverts": converts}}, call_options or None)


def results(text: str) -> list[dict[str, Any]]:
    root = ET.fromstring(text)
    response = root.find(f"{SOAPENV}Body/{P}convertLeadResponse")
    assert response is not None
    out = []
    for result in response.findall(f"{P}result"):
        item: dict[str, Any] = {"_order": [el.tag.removeprefix(P) for el in result]}
        for el in result:
            name = el.tag.removeprefix(P)
            if name == "errors":
                item.setdefault("errors", []).append(
                    {c.tag.removeprefix(P): c.text for c in el})
            else:
                item[name] = None if el.get(XSI_NIL) == "true" else el.text
        out.append(item)
    return out


def fault(text: str) -> tuple[str, str]:
    root = ET.fromstring(text)
    el = root.find(f"{SOAPENV}Body/{SOAPENV}Fault")
    assert el is not None
    return el.findtext("faultcode") or "", el.findtext("faultstring") or ""


async def test_convert_lead_like_jsforce_with_its_cdc_events(emu: SalesforceEmulator) -> None:
    s = emu.state
    lead = s.create("Lead", {"FirstName": "Ada", "LastName": "Lovelace", "Company": "Engines",
                             "Email": "ada@example.com", "Phone": "+44 20 0000", "Industry":
                             "Technology", "LeadSource": "Web"})
    other = s.create("Lead", {"LastName": "Babbage", "Company": "Engines",
                              "Email": "charles@example.com", "Industry": "Finance"})
    account = s.create("Account", {"Name": "Existing Ltd"})
    status, text = await soap(emu, convert(emu, [
        {"leadId": lead, "convertedStatus": "Closed - Converted"},
        {"leadId": other[:15], "convertedStatus": "Closed - Converted", "accountId": account,
         "doNotCreateOpportunity": True}], client="integration-x"))
    assert status == 200
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope ')
    assert "<soapenv:Body><convertLeadResponse><result>" in text  # jsforce wants prefixes
    first, second = results(text)
    assert first["_order"] == ["accountId", "contactId", "leadId", "opportunityId", "success"]
    assert first["success"] == "true" and first["leadId"] == lead
    assert first["opportunityId"].startswith("006")
    assert second["success"] == "true" and second["leadId"] == other
    assert second["accountId"] == account and second["opportunityId"] is None
    converted = s.record("Lead", lead)
    assert converted is not None and converted["IsConverted"] is True
    assert converted["ConvertedContactId"] == first["contactId"]
    assert converted["ConvertedOpportunityId"] == first["opportunityId"]
    opp = s.record("Opportunity", first["opportunityId"])
    assert opp is not None and opp["Name"] == "Engines" and opp["AccountId"] == first["accountId"]
    contact = s.record("Contact", first["contactId"])
    assert contact is not None and contact["Email"] == "ada@example.com"
    merged_account = s.record("Account", account)
    assert merged_account is not None and merged_account["Name"] == "Existing Ltd"
    assert merged_account["Industry"] == "Finance"  # empty fields of an existing account fill

    events = await cdc_events(emu, "/data/ChangeEvents", 11)
    conversion = [e["ChangeEventHeader"] for e in events[3:]]
    assert [(h["entityName"], h["changeType"]) for h in conversion] == [
        ("Account", "CREATE"), ("Contact", "CREATE"), ("Opportunity", "CREATE"),
        ("OpportunityContactRole", "CREATE"), ("Lead", "UPDATE"),
        ("Account", "UPDATE"), ("Contact", "CREATE"), ("Lead", "UPDATE")]
    assert {h["changeOrigin"] for h in conversion} == {
        "com/salesforce/api/soap/66.0;client=integration-x"}
    assert len({h["transactionKey"] for h in conversion}) == 1
    assert [h["sequenceNumber"] for h in conversion] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert conversion[0]["recordIds"] == [first["accountId"]]
    assert conversion[2]["recordIds"] == [first["opportunityId"]]
    assert conversion[4]["recordIds"] == [lead] and conversion[7]["recordIds"] == [other]
    lead_event = events[7]
    assert lead_event["IsConverted"] is True and lead_event["ConvertedContactId"] == \
        first["contactId"]
    assert {"IsConverted", "ConvertedContactId", "ConvertedAccountId",
            "ConvertedOpportunityId"} <= set(conversion[4]["changedFields"])
    assert events[5]["StageName"] == "Prospecting" and events[5]["IsClosed"] is False
    assert emu.counters()["soap_calls"] == 1


async def test_failed_conversions_are_reported_per_lead_and_change_nothing(
        emu: SalesforceEmulator) -> None:
    leads = emu.state.tables["Lead"].ids
    emu.state.convert_lead(leads[0])
    before = len(emu.state.event_log)
    _, text = await soap(emu, convert(emu, [
        {"leadId": leads[0], "convertedStatus": "Closed - Converted"},
        {"leadId": leads[1], "convertedStatus": "Working - Contacted"},
        {"leadId": leads[1]},
        {"leadId": "00Q8W0000000999AAA"[:15], "convertedStatus": "Closed - Converted"},
        {"leadId": "not-an-id", "convertedStatus": "Closed - Converted"},
        {"leadId": leads[1], "convertedStatus": "Closed - Converted",
         "contactId": "0038W0000000001QAA"},
        {"leadId": leads[2], "convertedStatus": "Closed - Converted",
         "doNotCreateOpportunity": True},
    ]))
    out = results(text)
    codes = [[e["statusCode"] for e in r.get("errors", [])] for r in out]
    assert codes == [["CANNOT_UPDATE_CONVERTED_LEAD"], ["INVALID_STATUS"],
                     ["REQUIRED_FIELD_MISSING"], ["INVALID_CROSS_REFERENCE_KEY"],
                     ["INVALID_CROSS_REFERENCE_KEY"], ["REQUIRED_FIELD_MISSING"], []]
    assert [r["success"] for r in out] == ["false"] * 6 + ["true"]
    assert out[1]["_order"] == ["accountId", "contactId", "errors", "leadId", "opportunityId",
                                "success"]
    assert out[1]["accountId"] is None and out[1]["leadId"] == leads[1]
    assert emu.state.record("Lead", leads[1])["IsConverted"] is False  # type: ignore[index]
    headers = [e["ChangeEventHeader"] for e in list(emu.state.event_log)[before:]]
    kinds = [(h["entityName"], h["changeType"]) for h in headers]
    assert kinds == [("Account", "CREATE"), ("Contact", "CREATE"), ("Lead", "UPDATE")]


async def test_faults(emu: SalesforceEmulator) -> None:
    lead = emu.state.tables["Lead"].ids[0]
    one = [{"leadId": lead, "convertedStatus": "Closed - Converted"}]
    status, text = await soap(emu, convert(emu, one, token="00D8W0000000001!bogus"))
    assert status == 500 and JSFORCE_SESSION_EXPIRED.search(text)
    assert fault(text) == ("sf:INVALID_SESSION_ID", "INVALID_SESSION_ID: Invalid Session ID "
                           "found in SessionHeader: Illegal Session")
    assert "<sf:exceptionCode>INVALID_SESSION_ID</sf:exceptionCode>" in text
    token = emu.issue_token()
    emu.sessions.expire_all()
    status, text = await soap(emu, convert(emu, one, token=token))
    assert (status, fault(text)[0]) == (500, "sf:INVALID_SESSION_ID")
    no_header = jsforce_envelope(None, {"convertLead": {"leadConverts": one}})
    status, text = await soap(emu, no_header, token=emu.issue_token())  # Bearer alone: no
    assert (status, fault(text)[0]) == (500, "sf:INVALID_SESSION_ID")
    token = emu.issue_token()
    client_faults = [
        b"<soapenv:Envelope",  # not XML
        b"<Envelope/>",  # not a SOAP envelope
        b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>',
        jsforce_envelope(token, {"merge": {"mergeRequests": {}}}).encode(),
        jsforce_envelope(token, {"convertLead": {}}).encode(),
        jsforce_envelope(token, {"convertLead": {"leadConverts": {
            "leadId": lead, "convertedStatus": "x", "doNotCreateOpportunity": "maybe"}}}).encode(),
        jsforce_envelope(token, {"convertLead": {"leadConverts": {
            "leadId": lead, "convertedStatus": "x", "colour": "red"}}}).encode(),
    ]
    for body in client_faults:
        status, text = await soap(emu, body)
        assert status == 500 and fault(text)[0] == "soapenv:Client", body
    too_many = convert(emu, one * 101)
    status, text = await soap(emu, too_many)
    assert (status, fault(text)[0]) == (500, "sf:LIMIT_EXCEEDED")
    emu.state.usage.used = emu.state.usage.daily_max
    status, text = await soap(emu, convert(emu, one))
    assert (status, fault(text)) == (500, ("sf:REQUEST_LIMIT_EXCEEDED",
                                           "REQUEST_LIMIT_EXCEEDED: TotalRequests Limit "
                                           "exceeded."))
    assert emu.state.record("Lead", lead)["IsConverted"] is False  # type: ignore[index]
