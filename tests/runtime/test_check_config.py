"""check-config (issue 10, item 9): the checks it could not run are named, a refused Iterable
key names its environment variable, the field mapped to `email` must hold text, and a rate
above Iterable's published bulkUpdate limit is a warning."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import orjson

from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.runtime.check_config import check_config
from tests.conftest import MakeConfig
from tests.test_cli import clean_env, write_config
from tests.test_cli_remote import emulator_config, emulator_env, run_cli


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_failed_login_names_the_checks_that_did_not_run(
        iterable_emulator: IterableEmulator, tmp_path: Path) -> None:
    config = write_config(tmp_path, login_url=f"http://127.0.0.1:{_closed_port()}",
                          iterable_url=iterable_emulator.base_url)
    env = clean_env(STREAMSYNC_SF_CLIENT_SECRET="whatever-secret",
                    STREAMSYNC_ITERABLE_API_KEY=iterable_emulator.api_key)
    code, out, err = await run_cli("check-config", "--config", str(config), env=env)
    assert code == 1, (out, err)
    assert "skipped  mappings not checked: Salesforce login failed" in out
    assert "skipped  trial queries not run: Salesforce login failed" in out
    assert "configuration ok" not in out
    code, out, _ = await run_cli("check-config", "--config", str(config), "--json", env=env)
    assert "mappings not checked: Salesforce login failed" in orjson.loads(out)["skipped"]


async def test_refused_iterable_key_names_its_environment_variable(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    config = make_config(sf_emulator, iterable_emulator, tmp_path)
    iterable_emulator.state.disable_key(iterable_emulator.api_key)
    report = await check_config(config)
    [problem] = [p for p in report.problems if p.component == "iterable"]
    assert problem.path == "STREAMSYNC_ITERABLE_API_KEY"
    assert "the API key was refused" in problem.message
    assert "STREAMSYNC_ITERABLE_API_KEY" in problem.message


async def test_unreachable_iterable_is_named_by_its_url_and_skipped(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    config = make_config(sf_emulator, iterable_emulator, tmp_path,
                         iterable={"base_url": f"http://127.0.0.1:{_closed_port()}",
                                   "timeout_s": 2.0})
    report = await check_config(config)
    [problem] = [p for p in report.problems if p.component == "iterable"]
    assert problem.path == "iterable.base_url"
    assert "Iterable API key not checked: Iterable could not be reached" in report.skipped


async def test_a_date_field_mapped_to_email_is_a_problem(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    extra = """
[objects.Lead]
mapping = { CreatedDate = "email", LastName = "dataFields.lastName" }
"""
    config = emulator_config(tmp_path, sf_emulator, iterable_emulator, extra)
    code, out, err = await run_cli("check-config", "--config", str(config), "--json",
                                   env=emulator_env(sf_emulator, iterable_emulator))
    assert code == 1, (out, err)
    report = orjson.loads(out)
    [problem] = report["problems"]
    assert (problem["subject"], problem["path"]) == ("Lead", "mapping.CreatedDate")
    assert "type 'datetime', not an email or string field" in problem["message"]
    assert "invalid_email" in problem["message"]
    assert "Lead: trial query not run: its configuration has problems" in report["skipped"]


async def test_rate_above_iterables_published_limit_is_a_warning(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    fast = await check_config(make_config(sf_emulator, iterable_emulator, tmp_path,
                                          iterable={"rate_limit_per_s": 20}))
    assert fast.ok
    assert any("iterable.rate_limit_per_s = 20 exceeds Iterable's published limit of 5"
               in w for w in fast.warnings), fast.warnings
    at_limit = await check_config(make_config(sf_emulator, iterable_emulator, tmp_path,
                                              iterable={"rate_limit_per_s": 5}))
    assert not any("rate_limit_per_s" in w for w in at_limit.warnings)


async def test_a_text_field_iterable_already_types_as_a_date_is_a_problem(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    """A project an earlier version poisoned (a Title once sent as a date): every Lead whose
    Title is not a date would be rejected, so check-config says so."""
    users = [{"email": "early@example.com",
              "dataFields": {"title": "2023-12-31 23:59:59 +00:00", "score": 1.5,
                             "Company": {"Name": "Acme"}, "optIn": "yes"}}]
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{iterable_emulator.base_url}/api/users/bulkUpdate",
                             json={"users": users},
                             headers={"Api-Key": iterable_emulator.api_key}) as r:
            assert r.status == 200, await r.text()
    iterable_emulator.flush()
    config = make_config(sf_emulator, iterable_emulator, tmp_path, objects={"Lead": {"mapping": {
        "Email": "email", "Title": "dataFields.title", "Lead_Score__c": "dataFields.score",
        "Company": "dataFields.Company.Name", "Marketing_Opt_In__c": "dataFields.optIn",
        "CreatedDate": "dataFields.created"}}})
    report = await check_config(config)
    found = {(p.subject, p.path): p.message for p in report.problems}
    assert set(found) == {("Lead", "mapping.Title"), ("Lead", "mapping.Marketing_Opt_In__c")}
    assert "field 'title' is of type 'date'" in found[("Lead", "mapping.Title")]
    assert "string in Salesforce" in found[("Lead", "mapping.Title")]
    assert "is sent as boolean" in found[("Lead", "mapping.Marketing_Opt_In__c")]
