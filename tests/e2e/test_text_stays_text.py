"""Text stays text (issue 10, item 5), end to end on both emulators: a Lead whose LastName and
Title merely look like dates reaches Iterable as strings, in the backfill (REST and Bulk) and
in the live flush, so Iterable types those fields as strings and later Leads are not rejected.
The mappings are compiled with the org's describe types, fetched at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamsync.adapters.store import Store
from streamsync.config import Config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.runtime.app import open_components
from streamsync.runtime.backfill import Backfill, BackfillOptions
from tests.conftest import build_config
from tests.e2e.harness import InProcessService, wait_caught_up

pytestmark = [pytest.mark.salesforce(long_poll_s=1.0, seed_accounts=2, seed_contacts=4,
                                     seed_leads=4),
              pytest.mark.timeout(60)]

LEAD_MAPPING = {"Email": "email", "Id": "dataFields.sfLeadId", "LastName": "dataFields.lastName",
                "Title": "dataFields.title", "Company": "dataFields.company",
                "CreatedDate": "dataFields.createdAt", "Lead_Score__c": "dataFields.score",
                "Marketing_Opt_In__c": "dataFields.optIn"}
DATE_LIKE = {"LastName": "2024-01-15", "Title": "2023-12-31T23:59:59.000+0000",
             "Company": "00123", "Status": "Open - Not Contacted"}
FAST_INGEST = {"watchdog_s": 5.0, "long_poll_timeout_s": 3.0, "reconcile_overlap_s": 5.0}


def _config(sf: SalesforceEmulator, it: IterableEmulator, tmp_path: Path) -> Config:
    return build_config(sf, it, tmp_path, ingest=FAST_INGEST,
                        objects={"Lead": {"mapping": LEAD_MAPPING}})


def _lead(sf: SalesforceEmulator, email: str, **fields: Any) -> str:
    return sf.state.create("Lead", {**DATE_LIKE, "Email": email, "Lead_Score__c": 12.5,
                                    "Marketing_Opt_In__c": True, **fields})


def _profile(it: IterableEmulator, email: str) -> dict[str, Any]:
    it.flush()
    found = it.state.snapshot().get(email)
    assert found is not None, f"no Iterable profile for {email}"
    data: dict[str, Any] = found["dataFields"]
    return data


async def _iterable_field_types(config: Config) -> dict[str, str]:
    """Iterable's field types through the product's client (GET /api/users/getFields)."""
    async with open_components(config) as parts:
        return await parts.iterable.get_fields()


def _assert_typed_as_in_salesforce(data: dict[str, Any]) -> None:
    assert data["lastName"] == "2024-01-15"
    assert data["title"] == "2023-12-31T23:59:59.000+0000"
    assert data["company"] == "00123"
    assert data["score"] == 12.5 and data["optIn"] is True
    assert data["createdAt"].endswith(" +00:00")  # a datetime field: an Iterable date


def _assert_iterable_types(fields: dict[str, str]) -> None:
    typed = {name.rsplit(".", 1)[-1]: kind for name, kind in fields.items()}
    assert typed["lastName"] == "string" and typed["title"] == "string", fields
    assert typed["company"] == "string" and typed["createdAt"] == "date", fields
    assert typed["optIn"] == "boolean", fields


async def _backfill(config: Config, api: str = "rest") -> None:
    """The production path: describes fetched and mappings compiled by `open_components`."""
    async with open_components(config) as parts:
        summary = await Backfill(
            config=config, store=parts.store, salesforce=parts.salesforce,
            pipeline=parts.pipeline, metrics=parts.metrics, mappings=parts.mappings,
        ).run(BackfillOptions(objects=("Lead",), api=api, catch_up=False))
        assert [d.last_error for d in await parts.store.dead_letters()] == []
    assert summary.status == "finished"


@pytest.mark.parametrize("api", ["rest", "bulk"])
async def test_backfill_sends_date_like_text_as_text(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        api: str) -> None:
    config = _config(sf_emulator, iterable_emulator, tmp_path)
    _lead(sf_emulator, "first.dates@example.com")
    _lead(sf_emulator, "plain.title@example.com", LastName="Plain", Title="VP Sales",
          Company="Acme")
    await _backfill(config, api)
    _assert_typed_as_in_salesforce(_profile(iterable_emulator, "first.dates@example.com"))
    assert _profile(iterable_emulator, "plain.title@example.com")["title"] == "VP Sales"
    _assert_iterable_types(await _iterable_field_types(config))


async def test_live_flush_sends_date_like_text_as_text(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    config = _config(sf_emulator, iterable_emulator, tmp_path)
    await _backfill(config)  # the seeded Leads: Iterable knows lastName and title as strings
    service = InProcessService(config)
    await service.start()
    store = await Store.open(config.queue.path)
    try:
        _lead(sf_emulator, "live.dates@example.com")
        _lead(sf_emulator, "live.plain@example.com", LastName="Plain", Title="VP Sales")
        await wait_caught_up(store, sf_emulator, config, 20.0)
        assert [d.last_error for d in await store.dead_letters()] == []
    finally:
        assert await service.stop() == 0
        await store.close()
    _assert_typed_as_in_salesforce(_profile(iterable_emulator, "live.dates@example.com"))
    assert _profile(iterable_emulator, "live.plain@example.com")["title"] == "VP Sales"
    _assert_iterable_types(await _iterable_field_types(config))
