"""SOAP Partner API: the convertLead call (POST /services/Soap/u/{version}).

The session comes from the envelope's SessionHeader, as on Salesforce; all leads of one call are
converted in one transaction (partial success: a failed lead is rolled back alone), so their CDC
events share a transaction key and carry a `soap` change origin."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from .errors import SalesforceError
from .ids import is_valid_id, to18
from .oauth import SessionStatus
from .state import LeadConversion, OrgState

SOAPENV = "http://schemas.xmlsoap.org/soap/envelope/"
PARTNER = "urn:partner.soap.sforce.com"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
MAX_LEADS = 100
_VERSION_RE = re.compile(r"^\d{2,3}\.0$")
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
# LeadConvert elements the emulator honours (others of the WSDL are refused by name).
_ID_FIELDS = ("leadId", "accountId", "contactId", "ownerId")
_TEXT_FIELDS = ("convertedStatus", "opportunityName")
_BOOL_FIELDS = ("doNotCreateOpportunity", "overwriteLeadSource", "sendNotificationEmail",
                "bypassAccountDedupeCheck", "bypassContactDedupeCheck")
_NOT_SERVED = ("accountRecord", "contactRecord", "opportunityRecord", "opportunityId")


class SoapFault(Exception):
    """A SOAP fault: `sf:CODE` with an UnexpectedErrorFault detail, or a `soapenv:Client` one."""

    def __init__(self, code: str, message: str, *, client: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.client = client

    def envelope(self) -> str:
        if self.client:
            return (_envelope_head(fault=True) + "<soapenv:Body><soapenv:Fault>"
                    f"<faultcode>soapenv:Client</faultcode><faultstring>{escape(self.message)}"
                    "</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>")
        msg = escape(self.message)
        return (_envelope_head(fault=True) + "<soapenv:Body><soapenv:Fault>"
                f"<faultcode>sf:{self.code}</faultcode>"
                f"<faultstring>{self.code}: {msg}</faultstring><detail>"
                '<sf:UnexpectedErrorFault xsi:type="sf:UnexpectedErrorFault">'
                f"<sf:exceptionCode>{self.code}</sf:exceptionCode>"
                f"<sf:exceptionMessage>{msg}</sf:exceptionMessage>"
                "</sf:UnexpectedErrorFault></detail></soapenv:Fault></soapenv:Body>"
                "</soapenv:Envelope>")


def _envelope_head(*, fault: bool) -> str:
    ns = 'xmlns:sf="urn:fault.partner.soap.sforce.com"' if fault else f'xmlns="{PARTNER}"'
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            f'<soapenv:Envelope xmlns:soapenv="{SOAPENV}" {ns} xmlns:xsi="{XSI}">')


def _fault_response(fault: SoapFault) -> web.Response:
    return web.Response(status=500, text=fault.envelope(), content_type="text/xml",
                        charset="utf-8")


def _local(tag: str) -> tuple[str, str]:
    """(namespace, local name) of an ElementTree tag."""
    if tag.startswith("{"):
        ns, _, name = tag[1:].partition("}")
        return ns, name
    return "", tag


def _text(el: ET.Element) -> str | None:
    if el.get(f"{{{XSI}}}nil") == "true":
        return None
    return (el.text or "").strip()


class SoapApi:
    """POST /services/Soap/u/{version}: convertLead."""

    def __init__(self, state: OrgState, check_session: Callable[[str], SessionStatus],
                 user_of: Callable[[str], str | None]) -> None:
        self.state = state
        self.check_session = check_session
        self.user_of = user_of
        self.calls = 0

    def register(self, app: web.Application) -> None:
        app.router.add_post("/services/Soap/u/{version}", self.handle)
        app.router.add_post("/services/Soap/u/{version}/", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        try:
            return await self._handle(request)
        except SoapFault as fault:
            return _fault_response(fault)

    async def _handle(self, request: web.Request) -> web.Response:
        version = request.match_info["version"]
        if not _VERSION_RE.match(version):
            raise SoapFault("UNSUPPORTED_API_VERSION",
                            f"Invalid Api version specified on URL: {version}")
        header, body = _envelope(await request.read())
        user = self._session(header)
        if not self.state.usage.count("soap"):
            raise SoapFault("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        self.calls += 1
        conversions = _convert_lead_call(body[0])
        origin = _origin(header, version)
        results = []
        with self.state.transaction(origin=origin, user_id=user, merge=False) as tx:
            for conv in conversions:
                mark = tx.savepoint()
                try:
                    if isinstance(conv, SalesforceError):
                        raise conv
                    out = tx.convert_lead(conv)
                except SalesforceError as err:
                    tx.rollback_to(mark)
                    lead = conv.lead_id if isinstance(conv, LeadConversion) else None
                    results.append(_failure(lead, err))
                else:
                    results.append(_success(out))
        xml = (_envelope_head(fault=False) + "<soapenv:Header>" + self._limit_info()
               + "</soapenv:Header><soapenv:Body><convertLeadResponse>" + "".join(results)
               + "</convertLeadResponse></soapenv:Body></soapenv:Envelope>")
        return web.Response(text=xml, content_type="text/xml", charset="utf-8")

    def _session(self, header: ET.Element | None) -> str:
        token = None
        if header is not None:
            el = header.find(f"{{{PARTNER}}}SessionHeader/{{{PARTNER}}}sessionId")
            token = _text(el) if el is not None else None
        if not token:
            raise SoapFault("INVALID_SESSION_ID",
                            "Invalid Session ID found in SessionHeader: Illegal Session")
        status = self.check_session(token)
        if status == "expired":
            raise SoapFault("INVALID_SESSION_ID", "Session expired or invalid")
        if status != "ok":
            raise SoapFault("INVALID_SESSION_ID",
                            "Invalid Session ID found in SessionHeader: Illegal Session")
        return self.user_of(token) or self.state.integration_user_id

    def _limit_info(self) -> str:
        u = self.state.usage
        return ("<LimitInfoHeader><limitInfo>"
                f"<current>{u.used}</current><limit>{u.daily_max}</limit>"
                "<type>API REQUESTS</type></limitInfo></LimitInfoHeader>")


def _origin(header: ET.Element | None, version: str) -> str:
    origin = f"com/salesforce/api/soap/{version}"
    if header is not None:
        el = header.find(f"{{{PARTNER}}}CallOptions/{{{PARTNER}}}client")
        client = _text(el) if el is not None else None
        if client:
            return f"{origin};client={client}"
    return origin


def _conversion(el: ET.Element) -> LeadConversion | SalesforceError:
    """One leadConverts element as a LeadConversion, or the error its result reports."""
    ns, name = _local(el.tag)
    if ns != PARTNER or name != "leadConverts":
        raise SoapFault("", f"Unexpected element {el.tag} in convertLead; expected "
                        f"{{{PARTNER}}}leadConverts", client=True)
    values: dict[str, Any] = {}
    for child in el:
        cns, field = _local(child.tag)
        if cns != PARTNER:
            raise SoapFault("", f"Unexpected element {child.tag} in leadConverts", client=True)
        if field in _NOT_SERVED:
            raise SoapFault("UNKNOWN_EXCEPTION",
                            f"LeadConvert.{field} is not served by the emulator")
        text = _text(child)
        if field in _BOOL_FIELDS:
            if text is None:
                continue
            if text.lower() not in _BOOLEANS:
                raise SoapFault("", f"Unable to parse boolean value '{text}' for {field}",
                                client=True)
            values[field] = _BOOLEANS[text.lower()]
        elif field in _ID_FIELDS or field in _TEXT_FIELDS:
            values[field] = text or None
        else:
            raise SoapFault("", f"Unexpected element {child.tag} during simple type "
                            "deserialization", client=True)
    missing = [f for f in ("leadId", "convertedStatus") if not values.get(f)]
    if missing:
        return SalesforceError(400, "REQUIRED_FIELD_MISSING",
                               f"Required fields are missing: [{', '.join(missing)}]", missing)
    for f in _ID_FIELDS:
        value = values.get(f)
        if value is not None and not is_valid_id(value):
            return SalesforceError(400, "INVALID_CROSS_REFERENCE_KEY",
                                   f"invalid cross reference id: {value}", [f])
    return LeadConversion(
        to18(values["leadId"]), values["convertedStatus"],
        account_id=_id18(values.get("accountId")), contact_id=_id18(values.get("contactId")),
        owner_id=_id18(values.get("ownerId")),
        create_opportunity=not values.get("doNotCreateOpportunity", False),
        opportunity_name=values.get("opportunityName"),
        overwrite_lead_source=bool(values.get("overwriteLeadSource", False)))


def _id18(value: str | None) -> str | None:
    return to18(value) if value else None


def _id_element(name: str, value: str | None) -> str:
    if value is None:
        return f'<{name} xsi:nil="true"/>'
    return f"<{name}>{escape(value)}</{name}>"


def _success(out: dict[str, str | None]) -> str:
    return ("<result>" + _id_element("accountId", out["accountId"])
            + _id_element("contactId", out["contactId"])
            + _id_element("leadId", out["leadId"])
            + _id_element("opportunityId", out["opportunityId"])
            + "<success>true</success></result>")


def _failure(lead_id: str | None, err: SalesforceError) -> str:
    code = "INVALID_CROSS_REFERENCE_KEY" if err.error_code == "NOT_FOUND" else err.error_code
    message = "invalid cross reference id" if err.error_code == "NOT_FOUND" else err.message
    fields = "".join(f"<fields>{escape(f)}</fields>" for f in err.fields or [])
    return ('<result><accountId xsi:nil="true"/><contactId xsi:nil="true"/>'
            f"<errors>{fields}<message>{escape(message)}</message>"
            f"<statusCode>{code}</statusCode></errors>"
            + _id_element("leadId", lead_id)
            + '<opportunityId xsi:nil="true"/><success>false</success></result>')


def _envelope(raw: bytes) -> tuple[ET.Element | None, ET.Element]:
    """(Header, Body) of a SOAP 1.1 envelope; a client fault for anything else."""
    if b"<!DOCTYPE" in raw.upper():
        raise SoapFault("", "DOCTYPE is not allowed in a SOAP message", client=True)
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise SoapFault("", f"Could not parse the request: {exc}", client=True) from None
    if root.tag != f"{{{SOAPENV}}}Envelope":
        raise SoapFault("", "Expected a SOAP 1.1 Envelope "
                        f"({{{SOAPENV}}}Envelope), got {root.tag}", client=True)
    header = root.find(f"{{{SOAPENV}}}Header")
    body = root.find(f"{{{SOAPENV}}}Body")
    if body is None or len(body) == 0:
        raise SoapFault("", "The SOAP Body is missing or empty", client=True)
    return header, body


def _convert_lead_call(call: ET.Element) -> list[LeadConversion | SalesforceError]:
    """The conversions a convertLead call asks for (the only operation served)."""
    ns, name = _local(call.tag)
    if ns != PARTNER or name != "convertLead":
        raise SoapFault("", f"No operation available for request {call.tag}, please "
                        "check the WSDL for the service.", client=True)
    conversions = [_conversion(el) for el in call]
    if not conversions:
        raise SoapFault("", "convertLead needs at least one leadConverts element", client=True)
    if len(conversions) > MAX_LEADS:
        raise SoapFault("LIMIT_EXCEEDED", f"Too many leads to convert: "
                        f"{len(conversions)}; the maximum is {MAX_LEADS}")
    return conversions
