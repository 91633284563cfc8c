"""Lists survive kill -9 (issue 14, item 3): `streamsync run` as a real process is killed with
SIGKILL at random moments while Campaign members are added, removed, change status and are
converted, and list calls are slow (so kills land while they are in flight); after a last
restart every list equals its Campaign's members and nothing is left half-done in the store."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from streamsync.adapters.store import Store
from streamsync.config import load_config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.emulators.salesforce.errors import SalesforceError
from streamsync.runtime.final_state import read_lists
from tests.conftest import production_components
from tests.e2e.harness import wait_caught_up, wait_for
from tests.e2e.process import ServiceProcess, service_config_data, service_env, toml_dumps

pytestmark = [
    pytest.mark.salesforce(long_poll_s=1.0, seed_accounts=2, seed_contacts=25, seed_leads=40,
                           seed_users=2, seed_queues=1),
    pytest.mark.slow,
    pytest.mark.timeout(150),
]

KILLS = 6
CAMPAIGNS = ("Crash all", "Crash responders")


class MemberWorkload:
    """Seeded membership changes: joins, leaves, status changes and member conversions."""

    def __init__(self, sf: SalesforceEmulator, campaigns: list[str], seed: int) -> None:
        self.sf = sf
        self.campaigns = campaigns
        self.rng = random.Random(seed)
        self.done = 0

    def _live(self, sobject: str) -> list[str]:
        extra = " AND IsConverted = false" if sobject == "Lead" else ""
        return self.sf.select_ids(sobject, "IsDeleted = false AND Email != null" + extra)

    def step(self) -> None:
        state, rng = self.sf.state, self.rng
        members = self.sf.select_ids("CampaignMember", "IsDeleted = false")
        roll = rng.random()
        try:
            if roll < 0.55 or not members:
                sobject = rng.choice(("Lead", "Contact"))
                field = "LeadId" if sobject == "Lead" else "ContactId"
                state.create("CampaignMember", {
                    "CampaignId": rng.choice(self.campaigns),
                    field: rng.choice(self._live(sobject)),
                    "Status": rng.choice(("Sent", "Responded"))})
            elif roll < 0.75:
                state.delete("CampaignMember", rng.choice(members))
            elif roll < 0.90:
                state.update("CampaignMember", rng.choice(members),
                             {"Status": rng.choice(("Sent", "Responded"))})
            else:
                leads = self.sf.select_ids("CampaignMember", "IsDeleted = false AND "
                                                             "ContactId = null")
                row = state.record("CampaignMember", rng.choice(leads)) if leads else None
                if row is not None:
                    state.convert_lead(row["LeadId"])
            self.done += 1
        except SalesforceError:
            pass  # already a member, a converted lead: Salesforce refuses it


async def test_kill_9_while_members_change_leaves_every_list_equal_to_its_campaign(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    sf, it = sf_emulator, iterable_emulator
    campaigns = [sf.state.create("Campaign", {"Name": name, "IsActive": True})
                 for name in CAMPAIGNS]
    data = service_config_data(sf, it, tmp_path)
    text = toml_dumps(data) + (
        f'\n[[lists.campaigns]]\ncampaign_name = "{CAMPAIGNS[0]}"\ncreate_missing = true\n'
        f'\n[[lists.campaigns]]\ncampaign_name = "{CAMPAIGNS[1]}"\ncreate_missing = true\n'
        'statuses = ["Responded"]\n')
    config_path = tmp_path / "config.toml"
    config_path.write_text(text)
    env = service_env(sf, it)
    config = load_config(config_path, env)
    it.faults.add("slow", "/api/lists/*", 10_000, delay_s=0.15)  # kills land mid-call
    workload = MemberWorkload(sf, campaigns, seed=14)
    rng = random.Random(3)
    service = ServiceProcess(config_path, env, tmp_path / "service.log")
    store: Store | None = None
    try:
        await service.start()
        catalog = it.messaging_for(it.project).catalog
        await wait_for(lambda: _true(len(catalog.lists) == 2), 30, "the two lists")
        for _ in range(KILLS):
            for _ in range(rng.randint(5, 15)):
                workload.step()
                await asyncio.sleep(0.03)
            await asyncio.sleep(rng.uniform(0.0, 0.4))
            assert await service.kill() == -9
            for _ in range(rng.randint(0, 5)):  # changes while the service is down
                workload.step()
            await service.start()
        for _ in range(20):
            workload.step()
            await asyncio.sleep(0.03)
        store = await Store.open(config.queue.path)
        await wait_caught_up(store, sf, config, 60.0)
        async with production_components(config) as parts:
            report = await read_lists(config, parts)
        assert report.ok and report.lists == 2, report.summary()
        assert report.members > 0 and workload.done > 60
        rows = [r for list_id in catalog.lists for r in await store.list_member_rows(list_id)]
        assert rows and {r.state for r in rows} == {"in"}  # nothing left half-done
    finally:
        await service.ensure_dead()
        if store is not None:
            await store.close()


async def _true(value: bool) -> bool:
    return value
