"""[lists] configuration errors (issue 14, item 3): refused at load with the key named, and
Campaigns or lists that do not exist refused at start (and by check-config) with a clear
message, over real HTTP against both emulators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamsync.config import parse_config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.errors import ConfigError
from streamsync.runtime.check_config import check_config
from streamsync.runtime.lists.start import lists_client, resolved, start_lists
from tests.conftest import build_config, production_components

PEM = "-----BEGIN PRIVATE KEY-----\nMIIEv...\n-----END PRIVATE KEY-----\n"
ENV = {"STREAMSYNC_SF_PRIVATE_KEY": PEM, "STREAMSYNC_ITERABLE_API_KEY": "iterable-key-1234"}
CAMPAIGN = "701000000000001AAA"


def _errors(lists: dict[str, Any], **extra: Any) -> str:
    data = {"salesforce": {"client_id": "ck", "username": "sync@example.com"},
            "lists": lists, **extra}
    with pytest.raises(ConfigError) as exc:
        parse_config(data, ENV)
    return str(exc.value)


@pytest.mark.parametrize(("entry", "expected"), [
    ({"campaign_id": CAMPAIGN, "campaign_name": "X", "list_id": 1},
     "lists.campaigns[0]: give exactly one of campaign_id and campaign_name"),
    ({"list_id": 1}, "lists.campaigns[0]: give exactly one of campaign_id and campaign_name"),
    ({"campaign_id": "00Q000000000001AAA", "list_id": 1},
     "lists.campaigns[0].campaign_id: not a Campaign id"),
    ({"campaign_id": CAMPAIGN}, "a campaign_id needs a list_id or a list_name"),
    ({"campaign_name": "X", "list_id": 3, "create_missing": True},
     "create_missing applies to a list given by name"),
    ({"campaign_name": "X", "statuses": []}, "statuses must be a non-empty list"),
    ({"campaign_name": "X", "list_id": 0}, "lists.campaigns[0].list_id"),
    ({"campaign_name": "X", "lsit_id": 3}, "lists.campaigns[0].lsit_id: unknown key (did you "
                                           "mean list_id?)"),
])
def test_bad_entries_are_refused_at_load_naming_the_key(entry: dict[str, Any],
                                                        expected: str) -> None:
    assert expected in _errors({"campaigns": [entry]})


def test_a_campaign_mapped_twice_and_a_userid_project_are_refused() -> None:
    twice = _errors({"campaigns": [{"campaign_name": "X"}, {"campaign_name": "X"}]})
    assert "lists.campaigns[1]: campaign 'X' is already mapped by lists.campaigns[0]" in twice
    user_id = _errors({"campaigns": [{"campaign_name": "X"}]},
                      iterable={"project_type": "userId"},
                      objects={"Lead": {"identity": "userId"}, "Contact": {"identity": "userId"},
                               "Account": {}})
    assert "lists subscribe members by email" in user_id


async def test_unknown_campaigns_and_lists_are_refused_at_start(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    real = sf_emulator.state.create("Campaign", {"Name": "Real"})
    sf_emulator.state.create("Campaign", {"Name": "Twin"})
    sf_emulator.state.create("Campaign", {"Name": "Twin"})
    sf_emulator.state.create("Campaign", {"Name": "Other"})
    config = build_config(sf_emulator, iterable_emulator, tmp_path, lists={"campaigns": [
        {"campaign_id": "701000000000099AAA", "list_id": 1},
        {"campaign_name": "Nowhere"},
        {"campaign_name": "Twin", "create_missing": True},
        {"campaign_id": real, "list_id": 987654},
        {"campaign_name": "Other", "list_name": "Not there"},
        {"campaign_name": "Real", "list_name": "Again"},
    ]})
    async with production_components(config) as parts:
        with pytest.raises(ConfigError) as exc:
            await start_lists(config, parts)
    message = str(exc.value)
    assert "lists.campaigns[0].campaign_id: no Campaign 701000000000099AAA in Salesforce" \
        in message
    assert "lists.campaigns[1].campaign_name: no Campaign named 'Nowhere' in Salesforce" \
        in message
    assert "lists.campaigns[2].campaign_name: 2 Campaigns are named 'Twin'" in message
    assert "lists.campaigns[3].list_id: no list 987654 in Iterable" in message
    assert "lists.campaigns[4]: no Iterable list named 'Not there' (set create_missing = " \
           "true to create it)" in message
    assert f"lists.campaigns[5]: Campaign {real} is already mapped by lists.campaigns[3]" \
        in message
    catalog = iterable_emulator.messaging_for(iterable_emulator.project).catalog
    assert catalog.lists == {}


async def test_the_check_reports_a_list_it_would_create_without_creating_it(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    sf_emulator.state.create("Campaign", {"Name": "Gala"})
    config = build_config(sf_emulator, iterable_emulator, tmp_path, lists={"campaigns": [
        {"campaign_name": "Gala", "create_missing": True}]})
    async with production_components(config) as parts:
        found = await resolved(config, parts, lists_client(config, parts.iterable),
                               create=False)
    assert found.problems == [] and found.created == ["Gala"]
    assert iterable_emulator.messaging_for(iterable_emulator.project).catalog.lists == {}


async def test_check_config_names_each_bad_entry_and_passes_good_ones(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    sf_emulator.state.create("Campaign", {"Name": "Gala"})
    good = build_config(sf_emulator, iterable_emulator, tmp_path, lists={"campaigns": [
        {"campaign_name": "Gala", "create_missing": True}]})
    report = await check_config(good)
    assert report.ok, report.problems
    assert "lists: 1 Campaign(s) mapped to Iterable lists" in report.passed
    assert any("'Gala' does not exist yet" in w for w in report.warnings)
    bad = build_config(sf_emulator, iterable_emulator, tmp_path, lists={"campaigns": [
        {"campaign_name": "Gala", "list_id": 424242}]})
    report = await check_config(bad)
    assert [(p.component, p.path, p.message) for p in report.problems] == [
        ("lists", "lists.campaigns[0].list_id", "no list 424242 in Iterable")]
