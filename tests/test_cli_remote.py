"""The command line against the Salesforce and Iterable emulators: check-config, replay --from a
timestamp, run. The emulators run in this process; the CLI runs as a real subprocess."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from pathlib import Path

import orjson
import pytest

from streamsync.adapters.store import Store
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from tests.test_cli import clean_env, write_config

TIMEOUT_S = 60.0


def emulator_env(sf: SalesforceEmulator, it: IterableEmulator, **extra: str) -> dict[str, str]:
    return clean_env(**{"STREAMSYNC_SF_CLIENT_SECRET": sf.client_secret,
                        "STREAMSYNC_ITERABLE_API_KEY": it.api_key, **extra})


def emulator_config(tmp_path: Path, sf: SalesforceEmulator, it: IterableEmulator,
                    extra: str = "") -> Path:
    return write_config(tmp_path, login_url=sf.instance_url, iterable_url=it.base_url,
                        extra=extra)


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """`python -m streamsync ARGS` as a subprocess, awaited so the emulators keep serving."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamsync", *args, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ---------------------------------------------------------------- check-config


async def test_check_config_passes_with_default_mappings(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    config = emulator_config(tmp_path, sf_emulator, iterable_emulator)
    code, out, err = await run_cli("check-config", "--config", str(config),
                                   env=emulator_env(sf_emulator, iterable_emulator))
    assert code == 0, (out, err)
    assert err == ""  # nothing left unclosed, no log noise at the default level
    assert "configuration ok" in out
    assert "logged in with the client_credentials flow" in out
    assert "API key accepted" in out
    assert "Lead: query ok, 12 record(s) in total" in out  # conftest's default seed
    assert sf_emulator.client_secret not in out + err
    assert iterable_emulator.api_key not in out + err


async def test_check_config_reports_every_problem_at_once(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    extra = """
[objects.Lead]
filter = "Statuz = 'Open'"
mapping = { Email = "email", FirstNme = "dataFields.firstName", "Ownr.Name" = "dataFields.owner" }

[objects.Contact]
mapping = { Email = "email", "Account.Nmae" = "dataFields.company" }

[objects.Account]
filter = "NumberOfEmployees = 'many'"

[objects.Widget__c]
mapping = { Email__c = "email" }
"""
    config = emulator_config(tmp_path, sf_emulator, iterable_emulator, extra)
    env = emulator_env(sf_emulator, iterable_emulator)
    env["STREAMSYNC_ITERABLE_API_KEY"] = "not-the-key-0000"
    code, out, err = await run_cli("check-config", "--config", str(config), "--json", env=env)
    assert code == 1, (out, err)
    assert "Traceback" not in err
    report = orjson.loads(out)
    found = {(p["subject"], p["path"]) for p in report["problems"]}
    assert {("Lead", "filter"), ("Lead", "mapping.FirstNme"), ("Lead", 'mapping."Ownr.Name"'),
            ("Contact", 'mapping."Account.Nmae"'), ("Widget__c", "(object)"),
            ("Account", "filter"), ("api key", "STREAMSYNC_ITERABLE_API_KEY")} <= found, found
    by_path = {p["path"]: p["message"] for p in report["problems"]}
    account = [p for p in report["problems"] if p["subject"] == "Account"]
    assert "Salesforce rejected the query" in account[0]["message"]
    assert "NumberOfEmployees" in account[0]["message"]
    assert "did you mean FirstName?" in by_path["mapping.FirstNme"]
    assert "the API key was refused" in by_path["STREAMSYNC_ITERABLE_API_KEY"]
    assert "iterable.base_url" not in by_path
    assert f"{len(report['problems'])} problem(s) found" in err

    code, table, err = await run_cli("check-config", "--config", str(config), env=env)
    assert code == 1
    for expected in ("Lead", "mapping.FirstNme", "Widget__c", "Contact", "api key"):
        assert expected in table, expected


async def test_check_config_unreachable_salesforce_is_a_problem_not_a_crash(
        iterable_emulator: IterableEmulator, tmp_path: Path) -> None:
    config = write_config(tmp_path, login_url=f"http://127.0.0.1:{closed_port()}",
                          iterable_url=iterable_emulator.base_url)
    env = clean_env(STREAMSYNC_SF_CLIENT_SECRET="whatever-secret",
                    STREAMSYNC_ITERABLE_API_KEY=iterable_emulator.api_key)
    code, out, err = await run_cli("check-config", "--config", str(config), env=env)
    assert code == 1, (out, err)
    assert "Traceback" not in err
    assert "network failure" in out and "salesforce.auth" in out
    assert "API key accepted" in out  # the other checks still ran


async def test_check_config_wrong_salesforce_secret(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    config = emulator_config(tmp_path, sf_emulator, iterable_emulator)
    env = emulator_env(sf_emulator, iterable_emulator,
                       STREAMSYNC_SF_CLIENT_SECRET="wrong-secret-value")
    code, out, err = await run_cli("check-config", "--config", str(config), env=env)
    assert code == 1, (out, err)
    assert "login" in out and "Traceback" not in err
    assert "wrong-secret-value" not in out + err


# ---------------------------------------------------------------- replay --from <timestamp>


@pytest.mark.salesforce(seed_leads=25, seed_contacts=4, seed_accounts=2)
async def test_replay_from_timestamp_queues_records_modified_since(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    config = emulator_config(tmp_path, sf_emulator, iterable_emulator)
    db = tmp_path / "streamsync.db"
    store = await Store.open(db)
    await store.set_replay("/data/LeadChangeEvent", 99, time.time())
    await store.close()
    # Seeded rows were modified long ago; these changed during the "outage".
    leads = sorted(sf_emulator.select_ids("Lead"))
    changed, deleted = leads[:4], leads[4]
    for sf_id in changed:
        sf_emulator.state.update("Lead", sf_id, {"Status": "Working - Contacted"})
    sf_emulator.state.delete("Lead", deleted)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 600))
    code, out, err = await run_cli(
        "replay", "--config", str(config), "--channel", "/data/LeadChangeEvent", "--from", since,
        env=emulator_env(sf_emulator, iterable_emulator))
    assert code == 0, (out, err)
    assert err == ""
    assert "Lead: queued 5 record(s)" in out
    store = await Store.open(db, create=False)
    try:
        assert await store.queue_depth_by_object() == {"Lead": 5}
        leases = await store.lease("check", 100, 60.0, time.time())
        assert {lease.source for lease in leases} == {"reconcile"}
        assert {lease.record_id: lease.change_type for lease in leases} == {
            **{sf_id: "UPDATE" for sf_id in changed}, deleted: "DELETE"}
        state = await store.get_replay("/data/LeadChangeEvent")
        assert state is not None and state.replay_id == -1
    finally:
        await store.close()


async def test_replay_from_timestamp_needs_secrets(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    config = emulator_config(tmp_path, sf_emulator, iterable_emulator)
    code, out, err = await run_cli(
        "replay", "--config", str(config), "--channel", "/data/LeadChangeEvent",
        "--from", "2026-01-01", env=clean_env())
    assert code == 2 and "STREAMSYNC_SF_CLIENT_SECRET" in err and "Traceback" not in err


# ---------------------------------------------------------------- run


async def _read_until(stream: asyncio.StreamReader, event: str, seen: list[str]) -> None:
    """Read JSON log lines until one has `event` (the service logs JSON off a terminal)."""
    while True:
        line = await stream.readline()
        if not line:
            raise AssertionError(f"stderr closed before {event!r}:\n" + "".join(seen))
        text = line.decode()
        seen.append(text)
        try:
            record = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            return


@pytest.mark.salesforce(long_poll_s=0.5)
async def test_run_serves_until_sigterm_and_status_works_meanwhile(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    config = emulator_config(tmp_path, sf_emulator, iterable_emulator)
    env = emulator_env(sf_emulator, iterable_emulator)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamsync", "run", "--config", str(config), env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        await asyncio.wait_for(_read_until(proc.stderr, "service.ready", seen), TIMEOUT_S)
        code, out, err = await run_cli("status", "--config", str(config), "--json", env=env)
        assert code == 0, err
        channels = {c["channel"] for c in orjson.loads(out)["channels"]}
        assert "/data/LeadChangeEvent" in channels
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(_read_until(proc.stderr, "service.stopped", seen), TIMEOUT_S)
        assert await asyncio.wait_for(proc.wait(), TIMEOUT_S) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    logs = "".join(seen)
    assert sf_emulator.client_secret not in logs and iterable_emulator.api_key not in logs


async def test_check_config_prints_config_warnings(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    config = emulator_config(tmp_path, sf_emulator, iterable_emulator)
    config.write_text(config.read_text().replace(
        'auth = "client_credentials"', f'auth = "password"\nusername = "{sf_emulator.username}"'))
    env = emulator_env(sf_emulator, iterable_emulator,
                       STREAMSYNC_SF_PASSWORD=sf_emulator.password)
    code, out, err = await run_cli("check-config", "--config", str(config), "--log-level",
                                   "info", env=env)
    assert code == 0, (out, err)
    assert "warning  salesforce.auth = 'password'" in out and "2027-02-20" in out
    assert "logged in with the password flow" in out
    events = [orjson.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "check.done" in events  # logs are JSON lines off a terminal
    assert sf_emulator.password not in out + err


async def test_check_config_describe_failure_is_one_clear_problem(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    config = emulator_config(tmp_path, sf_emulator, iterable_emulator)
    sf_emulator.faults.fail_next("/services/data/v66.0/sobjects/", 1, status=503)
    code, out, err = await run_cli("check-config", "--config", str(config), "--json",
                                   env=emulator_env(sf_emulator, iterable_emulator))
    assert code == 1, (out, err)
    problems = orjson.loads(out)["problems"]
    assert len(problems) == 1, problems
    assert problems[0]["subject"] == "describe" and "HTTP 503" in problems[0]["message"]
