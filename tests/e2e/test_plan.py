"""Issue 15 item 4: `streamsync plan` as a real process against both emulators over loopback:
the field diff, counts, cost and sample profile diffs of a changed config; exit 2 with changes,
0 once applied, 1 on errors; and it writes nothing (both emulators' write counters, the
Salesforce change-event log and the store file are unchanged)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streamsync.cli.exit_codes import EXIT_CHANGES, EXIT_FAILED, EXIT_OK
from streamsync.config import load_config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from tests.e2e.harness import backfill
from tests.e2e.process import REPO_ROOT, service_config_data, service_env, toml_dumps
from tests.runtime.test_resync import run_resyncs

pytestmark = pytest.mark.salesforce(seed_accounts=2, seed_contacts=6, seed_leads=25)

WRITE_KINDS = ("sobject", "composite", "bulk")


async def plan(config: Path, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamsync", "plan", "--config", str(config), *args,
        env=env, cwd=str(REPO_ROOT), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60.0)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def observed(sf: SalesforceEmulator, it: IterableEmulator, store: Path) -> dict[str, Any]:
    """What a write anywhere would change: Iterable's write counters and profiles, Salesforce's
    DML counters and change events, the store's files."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{it.base_url}/__emulator__/writes") as resp:
            writes = await resp.json()
        async with http.get(f"{sf.instance_url}/__emulator__/counters") as resp:
            kinds = (await resp.json())["api"]["by_kind"]
    it.flush()
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(store.parent.glob(store.name + "*"))}
    return {"iterable_writes": writes, "profiles": it.state.snapshot(),
            "salesforce_writes": {k: kinds.get(k, 0) for k in WRITE_KINDS},
            "change_events": len(sf.state.event_log), "store": files}


def write_config(path: Path, sf: SalesforceEmulator, it: IterableEmulator, workdir: Path,
                 lead: dict[str, Any] | None = None) -> Path:
    data = service_config_data(sf, it, workdir)
    if lead is not None:
        data["objects"]["Lead"] = lead
    path.write_text(toml_dumps(data), encoding="utf-8")
    return path


async def test_plan_shows_the_change_writes_nothing_and_exits_2_then_0_once_applied(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    sf, it = sf_emulator, iterable_emulator
    env = service_env(sf, it)
    old_path = write_config(tmp_path / "config.toml", sf, it, tmp_path)
    old = load_config(old_path, env)
    await backfill(old)
    await run_resyncs(old)  # what `run` does at start: records the applied mapping
    mapping = {k: v for k, v in old.objects["Lead"].mapping.items() if k != "LeadSource"}
    mapping["FirstName"] = "dataFields.givenName"
    new_path = write_config(tmp_path / "new.toml", sf, it, tmp_path, lead={
        "mapping": mapping, "filter": "Status != 'Closed - Not Converted'",
        "out_of_scope": "flag"})
    store = Path(old.queue.path)
    before = await observed(sf, it, store)

    code, out, err = await plan(new_path, env, "--sample", "2", "--json")
    assert code == EXIT_CHANGES, err
    report = json.loads(out)
    assert await observed(sf, it, store) == before
    lead = next(o for o in report["objects"] if o["object"] == "Lead")
    contact = next(o for o in report["objects"] if o["object"] == "Contact")
    assert contact["action"] == "none" and lead["action"] == "resync"
    kinds = {(c["kind"], c["target"], c["old_target"]) for c in lead["changes"]["fields"]}
    assert kinds == {("renamed", "dataFields.givenName", "dataFields.firstName"),
                     ("removed", "dataFields.leadSource", None)}
    assert set(lead["changes"]["settings"]) == {"filter", "policies"}
    assert lead["clears"] == ["dataFields.firstName", "dataFields.leadSource"]
    in_scope = len(sf.select_ids(
        "Lead", "IsDeleted = false AND Status != 'Closed - Not Converted'"))
    everyone = len(sf.select_ids("Lead", "IsDeleted = false"))
    assert lead["records_in_scope"] == in_scope
    assert lead["out_of_scope"]["records"] == everyone - in_scope
    assert 0 < lead["would_write"] <= in_scope and lead["estimate"].startswith("exact")
    assert lead["cost"]["salesforce_calls"] == 2  # a page in scope, a page left out
    assert lead["cost"]["iterable_requests"] >= 1
    sample = lead["samples"][0]
    record = sf.state.record("Lead", sample["record_id"]) or {}
    assert sample["exists"] and sample["fields"]["givenName"] == {
        "now": None, "would_be": record["FirstName"]}
    assert sample["fields"]["firstName"] == {"now": record["FirstName"], "would_be": None}
    assert all(k.startswith("GET") or "query" in k or "describe" in k or "token" in k
               or "getUser" in k for k in report["calls_made"]), report["calls_made"]

    text_code, text, _ = await plan(new_path, env, "--sample", "1")
    assert text_code == EXIT_CHANGES
    assert "renamed" in text and "dataFields.givenName" in text and "Changes pending" in text

    new = load_config(new_path, env)
    await run_resyncs(new)
    code, out, err = await plan(new_path, env, "--json")
    assert code == EXIT_OK, err
    assert not json.loads(out)["changes"]


async def test_plan_errors_exit_1_never_2(sf_emulator: SalesforceEmulator,
                                         iterable_emulator: IterableEmulator,
                                         tmp_path: Path) -> None:
    env = service_env(sf_emulator, iterable_emulator)
    bad = tmp_path / "bad.toml"
    bad.write_text(toml_dumps(service_config_data(sf_emulator, iterable_emulator, tmp_path))
                   + '\n[objects.Lead.mapping]\nNoSuchField__c = "dataFields.x"\n',
                   encoding="utf-8")
    code, _, err = await plan(bad, env)
    assert code == EXIT_FAILED and "NoSuchField__c" in err
    code, _, err = await plan(tmp_path / "missing.toml", env)
    assert code == EXIT_FAILED and "cannot read config file" in err
    code, _, err = await plan(bad, env, "--no-such-option")
    assert code == EXIT_FAILED
