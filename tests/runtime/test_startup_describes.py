"""Start-up against Salesforce's describe (issue 10, items 2 and 5): `run` refuses a mapped
field or relationship the org does not have, naming it; an outage at start is waited out; a
backfill that cannot get the describes gives up instead of guessing field types."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from streamsync.adapters.store import Store
from streamsync.config import Config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.errors import ConfigError, TransientError
from streamsync.runtime.app import Service
from streamsync.runtime.describes import BOUNDED_ATTEMPTS, startup_mappings
from tests.conftest import Clients, MakeConfig
from tests.test_cli_remote import emulator_config, emulator_env, run_cli

DESCRIBE_PATH = "/services/data/v66.0/sobjects/"
FAST_INGEST = {"watchdog_s": 5.0, "long_poll_timeout_s": 3.0}


async def test_run_refuses_a_mapped_field_salesforce_does_not_have(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    extra = """
[objects.Lead]
mapping = { Email = "email", FristName = "dataFields.firstName" }

[objects.Contact]
mapping = { Email = "email", "Acount.Name" = "dataFields.company" }
"""
    config = emulator_config(tmp_path, sf_emulator, iterable_emulator, extra)
    started = time.monotonic()
    code, out, err = await run_cli("run", "--config", str(config),
                                   env=emulator_env(sf_emulator, iterable_emulator))
    assert code == 2, (out, err)
    assert time.monotonic() - started < 30
    assert "Traceback" not in err
    refusal = [line for line in err.splitlines() if "refusing to start" in line]
    assert len(refusal) == 1, err
    assert "objects.Lead.mapping.FristName: Lead has no field 'FristName'" in refusal[0]
    assert "did you mean FirstName?" in refusal[0]
    assert ("objects.Contact.mapping.\"Acount.Name\": Contact has no relationship 'Acount'"
            in refusal[0])
    assert iterable_emulator.state.count("POST /api/users/bulkUpdate") == 0


async def test_run_refuses_an_email_source_that_is_not_text(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    extra = """
[objects.Lead]
mapping = { CreatedDate = "email", LastName = "dataFields.lastName" }
"""
    config = emulator_config(tmp_path, sf_emulator, iterable_emulator, extra)
    code, out, err = await run_cli("run", "--config", str(config),
                                   env=emulator_env(sf_emulator, iterable_emulator))
    assert code == 2 and "Traceback" not in err, (out, err)
    assert "objects.Lead.mapping.CreatedDate: CreatedDate is of type 'datetime'" in err


@pytest.mark.salesforce(long_poll_s=1.0)
async def test_run_waits_out_a_salesforce_outage_at_start(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    config = make_config(sf_emulator, iterable_emulator, tmp_path, ingest=FAST_INGEST,
                         health={"enabled": True, "port": 0})
    outage = sf_emulator.faults.fail_next(DESCRIBE_PATH, 2, status=503)
    service = Service(config, shutdown_s=5.0)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        deadline = time.monotonic() + 30
        while not (service.ingest is not None and service.ingest.subscribed):
            assert not task.done(), f"the service exited with {task.result()}"
            assert time.monotonic() < deadline, "the service never subscribed"
            await asyncio.sleep(0.05)
        assert outage.hits == 2
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0


async def test_stop_during_a_salesforce_outage_at_start_exits_cleanly(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    config = make_config(sf_emulator, iterable_emulator, tmp_path,
                         health={"enabled": True, "port": 0})
    sf_emulator.faults.fail_next(DESCRIBE_PATH, 1000, status=503)
    service = Service(config, shutdown_s=5.0)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    deadline = time.monotonic() + 20
    while service.health is None or service.health.port is None:
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as http:  # health answers while Salesforce is down
        async with http.get(f"http://127.0.0.1:{service.health.port}/readyz") as r:
            assert r.status == 503
    await asyncio.sleep(1.5)  # at least one retry
    assert not task.done()
    stop.set()
    assert await asyncio.wait_for(task, 10) == 0


async def test_without_a_stop_event_describe_failures_are_retried_then_raised(
        sf_emulator: SalesforceEmulator, config: Config, clients: Clients,
        retry_waits: list[float]) -> None:
    sf_emulator.faults.fail_next(DESCRIBE_PATH, 1000, status=503)
    with pytest.raises(TransientError, match="HTTP 503"):
        await startup_mappings(config, clients.salesforce)
    assert len(retry_waits) == BOUNDED_ATTEMPTS - 1
    for n, wait in enumerate(retry_waits, start=1):  # 1, 2, 4, 8, 16 s, each plus jitter
        assert 2.0 ** (n - 1) <= wait <= 2.0 ** (n - 1) + 1.0


async def test_startup_mappings_compile_with_the_orgs_types(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig, config: Config, clients: Clients,
        no_retry_waits: None) -> None:
    sf_emulator.faults.fail_next(DESCRIBE_PATH, 1, status=503)
    mappings = await startup_mappings(config, clients.salesforce)
    lead = mappings["Lead"].map({"Id": "00Q000000000001", "Email": "a@example.com",
                                 "LastName": "2024-01-15", "Owner": {"IsActive": True}})
    assert lead.payload["dataFields"]["lastName"] == "2024-01-15"
    typo = make_config(sf_emulator, iterable_emulator, tmp_path,
                       objects={"Lead": {"mapping": {"Email": "email", "Titel": "dataFields.t"}}})
    with pytest.raises(ConfigError, match="objects.Lead.mapping.Titel: Lead has no field"):
        await startup_mappings(typo, clients.salesforce)


async def test_salesforce_login_refused_at_start_exits_1_and_is_kept_for_status(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    config = make_config(sf_emulator, iterable_emulator, tmp_path)
    wrong = config.model_copy(update={"secrets": dataclasses.replace(
        config.secrets, sf_client_secret=SecretStr("not-the-secret"))})
    assert await asyncio.wait_for(Service(wrong, shutdown_s=5.0).run(asyncio.Event()), 20) == 1
    store = await Store.open(config.queue.path)
    try:
        errors = [e.message for e in await store.recent_errors()]
    finally:
        await store.close()
    assert any("startup stopped the service" in m and "AuthError" in m for m in errors), errors
