"""Custom events across kill -9 (issue 14 item 2): `streamsync run` as a real subprocess is
killed at random moments while Opportunities move to Closed Won; in the end every qualifying
change produced exactly one event (by id), and nothing else did."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import aiohttp
import pytest

from streamsync.adapters.iterable import IterableClient
from streamsync.adapters.store import Store
from streamsync.config import load_config
from streamsync.core.event_rules import event_id
from streamsync.core.verify_events import value_transitions
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.emulators.salesforce.actions import set_stage
from streamsync.runtime.final_state import read_events as final_state_events
from tests.conftest import production_components
from tests.e2e.harness import backfill, wait_for
from tests.e2e.process import ServiceProcess, service_config_data, service_env, toml_dumps

pytestmark = [
    pytest.mark.salesforce(long_poll_s=1.0, seed_accounts=4, seed_contacts=16, seed_leads=4,
                           seed_users=3, seed_queues=1, seed_opportunities=40),
    pytest.mark.timeout(120),
]

RULE = """
[[events]]
name = "opportunity-won"
object = "Opportunity"
trigger = "update"
changed_fields = ["StageName"]
condition = "StageName = 'Closed Won'"
event_name = "opportunityWon"
profile = "primary_contact_role"
[events.mapping]
"Name" = "dataFields.opportunityName"
"""
KILLS = 4


def expected_ids(sf: SalesforceEmulator) -> set[str]:
    """Every change that set StageName to Closed Won (its CDC body says so), by event id."""
    out = set()
    for body in sf.state.event_log:
        header = body["ChangeEventHeader"]
        if header["entityName"] == "Opportunity" and header["changeType"] == "UPDATE" \
                and body.get("StageName") == "Closed Won":
            out.update(event_id("opportunity-won", rid, header["transactionKey"])
                       for rid in header["recordIds"])
    return out


async def read_events(client: IterableClient, emails: set[str]) -> list[dict[str, object]]:
    found = []
    for email in sorted(emails):
        found.extend(e for e in await client.user_events(email=email)
                     if e.get("eventName") == "opportunityWon")
    return found


async def test_kill_9_at_random_moments_fires_each_qualifying_change_exactly_once(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    sf = sf_emulator
    data = service_config_data(sf, iterable_emulator, tmp_path)
    config_path = tmp_path / "config.toml"
    config_path.write_text(toml_dumps(data) + RULE, encoding="utf-8")
    env = service_env(sf, iterable_emulator)
    config = load_config(config_path, env)
    await backfill(config)
    rng = random.Random(14)
    runs: list[ServiceProcess] = []

    async def spawn() -> ServiceProcess:
        proc = ServiceProcess(config_path, env, tmp_path / f"run-{len(runs)}.log")
        runs.append(proc)
        await proc.start()
        await wait_for(lambda: _ready(proc), 30.0, "the service to be ready")
        return proc

    opportunities = sf.select_ids("Opportunity", "IsClosed = false AND IsDeleted = false", 40)
    won: list[str] = []
    try:
        for _ in range(KILLS):
            proc = await spawn()
            for _ in range(rng.randint(3, 6)):
                opp = opportunities.pop()
                set_stage(sf.state, opp, "Closed Won")
                won.append(opp)
                sf.state.update("Opportunity", rng.choice(won), {"NextStep": f"n{rng.random()}"})
                await asyncio.sleep(rng.uniform(0.0, 0.3))
            assert await proc.kill() == -9
        final = await spawn()
        expected = expected_ids(sf)
        assert len(expected) == len(won)
        emails = {_primary_email(sf, opp) for opp in won}
        async with aiohttp.ClientSession() as session:
            client = IterableClient(session, iterable_emulator.base_url,
                                    iterable_emulator.api_key)
            found: list[dict[str, object]] = []

            async def all_there() -> bool:
                nonlocal found
                found = await read_events(client, emails)
                return {str(e["_id"]) for e in found} >= expected

            await wait_for(all_there, 40.0, "every qualifying change's event", poll_s=0.2)
            store = await Store.open(config.queue.path)
            try:
                async def settled() -> bool:
                    counts = await store.event_counts()
                    return not counts.get("new") and not counts.get("ready")

                await wait_for(settled, 20.0, "the event rows to settle")
            finally:
                await store.close()
            found = await read_events(client, emails)
        ids = [str(e["_id"]) for e in found]
        assert sorted(ids) == sorted(expected)  # exactly one each, and nothing else
        # The shared final-state check (core/verify_events.py): ids, users, times and data.
        changes = value_transitions(sf.state.event_log, rule="opportunity-won",
                                    entity="Opportunity", field_name="StageName",
                                    value="Closed Won")
        async with production_components(config) as parts:
            report = await final_state_events(parts, changes)
        assert report.ok and report.expected == len(won), report.mismatches[:5]
        code, _ = await final.terminate(20.0)
        assert code == 0
    finally:
        for proc in runs:
            await proc.ensure_dead()


async def _ready(proc: ServiceProcess) -> bool:
    if proc.proc is not None and proc.proc.returncode is not None:
        raise AssertionError(f"the service exited with {proc.proc.returncode}:\n"
                             + proc.log_text()[-3000:])
    return proc.saw("service.ready")


def _primary_email(sf: SalesforceEmulator, opportunity_id: str) -> str:
    [role_id] = sf.select_ids("OpportunityContactRole",
                              f"OpportunityId = '{opportunity_id}' AND IsPrimary = true", 1)
    role = sf.state.record("OpportunityContactRole", role_id)
    assert role is not None
    contact = sf.state.record("Contact", role["ContactId"])
    assert contact is not None and contact["Email"]
    return str(contact["Email"]).lower()


