"""`streamsync backfill --lists` (issue 14, item 3): every mapped list brought to its Campaign's
current members, adds and removals, resumable after an interruption; over real HTTP against
both emulators, with a real SQLite store."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from streamsync.config import Config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.iterable.api_lists import members
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.errors import WritesFailed
from streamsync.runtime.lists.backfill import ListsSummary, run_lists_backfill
from tests.conftest import build_config, production_components

pytestmark = [pytest.mark.salesforce(seed_accounts=2, seed_contacts=8, seed_leads=8),
              pytest.mark.timeout(60)]
SUBSCRIBE = "POST /api/lists/subscribe"
UNSUBSCRIBE = "POST /api/lists/unsubscribe"


def on_list(it: IterableEmulator, list_id: int) -> set[str]:
    return {str(p.email) for p in members(it.project, list_id)}


def people(sf: SalesforceEmulator, sobject: str) -> list[str]:
    extra = " AND IsConverted = false" if sobject == "Lead" else ""
    return sf.select_ids(sobject, "IsDeleted = false AND Email != null" + extra)


def email(sf: SalesforceEmulator, sobject: str, record_id: str) -> str:
    record = sf.state.record(sobject, record_id)
    assert record is not None
    return str(record["Email"]).lower()


def add(sf: SalesforceEmulator, campaign: str, person: str, status: str | None = None) -> str:
    values = {"CampaignId": campaign,
              ("LeadId" if person.startswith("00Q") else "ContactId"): person}
    if status is not None:
        values["Status"] = status
    return sf.state.create("CampaignMember", values)


async def subscribe_directly(it: IterableEmulator, list_id: int, emails: list[str]) -> None:
    """Someone else put these users on the list (not a Campaign member)."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{it.base_url}/api/lists/subscribe",
                             headers={"Api-Key": it.api_key},
                             json={"listId": list_id,
                                   "subscribers": [{"email": e} for e in emails]}) as r:
            assert r.status == 200, await r.text()


async def backfill(config: Config, *, resume: bool = False, page_size: int = 2000
                   ) -> ListsSummary:
    async with production_components(config) as parts:
        return await run_lists_backfill(config, parts, resume=resume, page_size=page_size)


def lists_config(sf: SalesforceEmulator, it: IterableEmulator, tmp_path: Path,
                 *entries: dict[str, Any]) -> Config:
    return build_config(sf, it, tmp_path, lists={"campaigns": list(entries)})


async def test_backfill_adds_missing_members_and_removes_everyone_else(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    sf, it = sf_emulator, iterable_emulator
    campaign = sf.state.create("Campaign", {"Name": "Expo"})
    list_id = it.messaging_for(it.project).catalog.add_list("Expo", None, 0).id
    leads, contacts = people(sf, "Lead"), people(sf, "Contact")
    counted = [add(sf, campaign, p, "Responded") for p in (leads[0], contacts[0], leads[1])]
    add(sf, campaign, contacts[1])  # Status Sent: not counted
    gone = add(sf, campaign, contacts[2], "Responded")
    config = lists_config(sf, it, tmp_path, {"campaign_id": campaign, "list_id": list_id,
                                             "statuses": ["Responded"]})
    await subscribe_directly(it, list_id, ["stranger@example.com",
                                           email(sf, "Contact", contacts[1])])
    first = await backfill(config)
    expected = {email(sf, "Lead", leads[0]), email(sf, "Contact", contacts[0]),
                email(sf, "Lead", leads[1]), email(sf, "Contact", contacts[2])}
    assert on_list(it, list_id) == expected
    assert (first.lists[0].members, first.lists[0].subscribed,
            first.lists[0].unsubscribed) == (5, 4, 2)
    # While nothing listens: a member is deleted, a status changes, someone joins by hand.
    sf.state.delete("CampaignMember", gone)
    sf.state.update("CampaignMember", counted[2], {"Status": "Sent"})
    await subscribe_directly(it, list_id, ["another@example.com"])
    second = await backfill(config)
    assert on_list(it, list_id) == {email(sf, "Lead", leads[0]),
                                    email(sf, "Contact", contacts[0])}
    assert (second.lists[0].subscribed, second.lists[0].unsubscribed) == (0, 3)
    async with production_components(config) as parts:
        rows = await parts.store.list_member_rows(list_id)
    assert sorted(r.member_id[:15] for r in rows) == sorted(m[:15] for m in counted[:2])
    assert {r.state for r in rows} == {"in"}


async def test_an_interrupted_backfill_resumes_after_its_last_confirmed_page(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    sf, it = sf_emulator, iterable_emulator
    campaign = sf.state.create("Campaign", {"Name": "Roadshow"})
    list_id = it.messaging_for(it.project).catalog.add_list("Roadshow", None, 0).id
    everyone = people(sf, "Lead")[:4] + people(sf, "Contact")[:2]
    for person in everyone:
        add(sf, campaign, person)
    config = lists_config(sf, it, tmp_path, {"campaign_id": campaign, "list_id": list_id})
    # Each subscribe takes a while; the run is cancelled (as Ctrl-C or SIGTERM do) once the
    # first page of two members is confirmed, while the second is in flight.
    it.faults.add("slow", "/api/lists/subscribe", 10, delay_s=0.3)
    async with production_components(config) as parts:
        task = asyncio.create_task(run_lists_backfill(config, parts, resume=False, page_size=2))

        async def first_page_confirmed() -> bool:
            state = await parts.store.list_backfill(campaign)
            return state is not None and state.after_id is not None

        while not await first_page_confirmed():
            assert not task.done(), task
            await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert it.state.count(SUBSCRIBE) <= 2
    before = it.state.count(SUBSCRIBE)
    summary = await backfill(config, resume=True, page_size=2)
    assert summary.lists[0].resumed
    # Pages two and three only: the first page is not sent again.
    assert it.state.count(SUBSCRIBE) - before == 2
    assert summary.lists[0].members == 4
    expected = {email(sf, "Lead" if p.startswith("00Q") else "Contact", p) for p in everyone}
    assert on_list(it, list_id) == expected


async def test_a_failing_iterable_stops_the_backfill_resumably(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path, no_retry_waits: None) -> None:
    sf, it = sf_emulator, iterable_emulator
    campaign = sf.state.create("Campaign", {"Name": "Summit"})
    list_id = it.messaging_for(it.project).catalog.add_list("Summit", None, 0).id
    person = people(sf, "Contact")[0]
    add(sf, campaign, person)
    config = lists_config(sf, it, tmp_path, {"campaign_id": campaign, "list_id": list_id})
    it.faults.add("status", "/api/lists/subscribe", 3, status=503)
    with pytest.raises(WritesFailed) as exc:
        await backfill(config)
    assert "--lists --resume" in exc.value.advice
    assert on_list(it, list_id) == set()
    summary = await backfill(config, resume=True)
    assert summary.lists[0].resumed and summary.lists[0].subscribed == 1
    assert on_list(it, list_id) == {email(sf, "Contact", person)}


async def test_the_command_line_runs_it_and_refuses_what_it_cannot_do(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    sf, it = sf_emulator, iterable_emulator
    campaign = sf.state.create("Campaign", {"Name": "Open day"})
    person = people(sf, "Lead")[0]
    add(sf, campaign, person)
    config_file = tmp_path / "config.toml"
    base = (f'[salesforce]\nlogin_url = "{sf.instance_url}"\nauth = "client_credentials"\n'
            f'client_id = "{sf.client_id}"\n[iterable]\nbase_url = "{it.base_url}"\n'
            f'project_type = "email"\n[queue]\npath = "{tmp_path / "s.db"}"\n'
            '[health]\nenabled = false\n')
    config_file.write_text(base + '[[lists.campaigns]]\ncampaign_name = "Open day"\n'
                                  'create_missing = true\n')
    env = {**os.environ, "STREAMSYNC_SF_CLIENT_SECRET": sf.client_secret,
           "STREAMSYNC_ITERABLE_API_KEY": it.api_key or ""}

    async def run(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streamsync.backfill", "--config", str(config_file), *args,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await run("--lists", "--json")
    assert code == 0, err
    [result] = orjson.loads(out)["lists"]
    assert (result["members"], result["subscribed"]) == (1, 1)
    assert on_list(it, result["list_id"]) == {email(sf, "Lead", person)}
    code, _, err = await run("--lists", "--objects", "Lead")
    assert code == 2 and "--lists takes only --resume, --restart and --json" in err
    config_file.write_text(base + '[[lists.campaigns]]\ncampaign_name = "Nope"\n'
                                  'list_id = 1\n')
    code, _, err = await run("--lists")
    assert code == 2
    assert "lists.campaigns[0].campaign_name: no Campaign named 'Nope' in Salesforce" in err
