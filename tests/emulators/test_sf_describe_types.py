"""The Salesforce emulator's describe types match its data: every seeded value of every field,
read over REST, has the JSON shape its describe type promises (the mappings are compiled with
these types, so a wrong one would send a date as text or text as a date)."""

from __future__ import annotations

import re
from typing import Any

import aiohttp

from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig
from streamsync.emulators.salesforce.schema import SCHEMA, STRING_TYPES

DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+0000")


def fits(sf_type: str, value: Any) -> bool:
    """Whether a REST JSON value has the shape of its describe type."""
    if sf_type in STRING_TYPES or sf_type in ("id", "reference"):
        return type(value) is str
    if sf_type == "boolean":
        return type(value) is bool
    if sf_type == "int":
        return type(value) is int
    if sf_type in ("double", "currency", "percent"):
        return type(value) in (int, float)
    if sf_type == "date":
        return type(value) is str and DATE.fullmatch(value) is not None
    if sf_type == "datetime":
        return type(value) is str and DATETIME.fullmatch(value) is not None
    if sf_type == "address":
        return type(value) is dict
    return False


async def test_every_seeded_value_fits_its_describe_type() -> None:
    emu = SalesforceEmulator(SalesforceEmulatorConfig(
        seed_leads=200, seed_contacts=200, seed_accounts=20, seed_users=5, seed_queues=2,
        latency_ms=0))
    await emu.start("127.0.0.1", 0)
    checked: dict[str, set[str]] = {}
    try:
        headers = {"Authorization": f"Bearer {emu.issue_token()}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            for name in SCHEMA:
                describe_url = f"{emu.instance_url}/services/data/v66.0/sobjects/{name}/describe"
                async with http.get(describe_url) as r:
                    types = {f["name"]: f["type"] for f in (await r.json())["fields"]}
                soql = f"SELECT {', '.join(types)} FROM {name}"
                async with http.get(f"{emu.instance_url}/services/data/v66.0/query",
                                    params={"q": soql}) as r:
                    assert r.status == 200, await r.text()
                    records = (await r.json())["records"]
                for record in records:
                    for field, sf_type in types.items():
                        value = record.get(field)
                        if value is None:
                            continue
                        assert fits(sf_type, value), (name, field, sf_type, value)
                        checked.setdefault(name, set()).add(field)
    finally:
        await emu.stop()
    assert {"Title", "LastName", "CreatedDate", "Lead_Score__c", "IsConverted"} <= checked["Lead"]
    assert {"Customer_Since__c", "NumberOfEmployees", "BillingAddress"} <= checked["Account"]
    assert {"IsActive", "CreatedDate"} <= checked["User"]
    assert {"Lead", "Contact", "Account", "User", "Group"} <= set(checked)
