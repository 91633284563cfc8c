"""`streamsync run` as a real subprocess meets an error no retry can fix: it must stop with a
non-zero exit code, log `service.task_fatal` naming the cause, and leave the error for `status`.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from tests.e2e.process import ServiceProcess, service_config_data, service_env, toml_dumps

TIMEOUT_S = 60.0


def _write_config(sf: SalesforceEmulator, it: IterableEmulator, workdir: Path,
                  **sections: dict[str, object]) -> Path:
    path = workdir / "config.toml"
    path.write_text(toml_dumps(service_config_data(sf, it, workdir, **sections)),
                    encoding="utf-8")
    return path


def _events(text: str) -> list[dict[str, object]]:
    out = []
    for line in text.splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


async def _until_logged(proc: ServiceProcess, event: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not proc.saw(event):
        if proc.proc is not None and proc.proc.returncode is not None:
            raise AssertionError(f"exited before {event!r}:\n{proc.log_text()}")
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no {event!r} in time:\n{proc.log_text()}")
        await asyncio.sleep(0.05)


async def _status(config: Path, env: dict[str, str]) -> dict[str, object]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamsync", "status", "--config", str(config), "--json",
        env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    assert proc.returncode == 0, err.decode()
    data: dict[str, object] = orjson.loads(out)
    return data


async def _run_until_exit(sf: SalesforceEmulator, it: IterableEmulator, tmp_path: Path,
                          provoke: object, **sections: dict[str, object]
                          ) -> tuple[int, list[dict[str, object]], dict[str, object]]:
    """Start `run`, wait until ready, call `provoke()`, wait for the process to end by itself;
    (exit code, its log records, `status --json`)."""
    config = _write_config(sf, it, tmp_path, **sections)
    env = service_env(sf, it)
    proc = ServiceProcess(config, env, tmp_path / "run.log")
    await proc.start()
    try:
        await _until_logged(proc, "service.ready")
        assert callable(provoke)
        await provoke()
        code = await proc.wait(TIMEOUT_S)
    finally:
        await proc.ensure_dead()
    return code, _events(proc.log_text()), await _status(config, env)


def _fatal_lines(records: list[dict[str, object]]) -> list[dict[str, object]]:
    return [r for r in records if r.get("event") == "service.task_fatal"]


@pytest.mark.salesforce(long_poll_s=0.5)
async def test_iterable_key_revoked_while_running_exits_non_zero(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    contact_id = sf_emulator.select_ids("Contact", "Email != null", limit=1)[0]

    async def revoke_then_change() -> None:
        async with aiohttp.ClientSession() as http, http.post(
                f"{iterable_emulator.control_url}/keys/disable",
                json={"api_key": iterable_emulator.api_key}) as reply:
            assert reply.status == 200
        sf_emulator.state.update("Contact", contact_id, {"FirstName": "Revoked"})

    code, records, status = await _run_until_exit(
        sf_emulator, iterable_emulator, tmp_path, revoke_then_change)
    assert code != 0
    fatal = _fatal_lines(records)
    assert fatal, records[-10:]
    assert "API key was refused" in str(fatal[0]["error"])
    errors = status["recent_errors"]
    assert isinstance(errors, list)
    assert any("API key was refused" in e["message"] for e in errors), errors
    queue = status["queue"]
    assert isinstance(queue, dict) and queue["depth"] >= 1  # the record waits, not lost


@pytest.mark.salesforce(long_poll_s=0.5)
async def test_salesforce_invalid_field_at_run_time_exits_non_zero(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    """A mapped field Salesforce stops accepting while the service runs (deleted, or its field
    permission removed): the re-read answers 400 INVALID_FIELD."""
    contact_id = sf_emulator.select_ids("Contact", "Email != null", limit=1)[0]
    path = f"/services/data/v{sf_emulator.config.api_version}/queryAll"

    async def break_field_then_change() -> None:
        sf_emulator.faults.fail_next(path, 1000, status=400, body=[{
            "errorCode": "INVALID_FIELD",
            "message": "No such column 'FristName' on entity 'Contact'."}])
        sf_emulator.state.update("Contact", contact_id, {"FirstName": "Invalid"})

    code, records, status = await _run_until_exit(
        sf_emulator, iterable_emulator, tmp_path, break_field_then_change)
    assert code != 0
    fatal = _fatal_lines(records)
    assert fatal and "INVALID_FIELD" in str(fatal[0]["error"]), records[-10:]
    errors = status["recent_errors"]
    assert isinstance(errors, list)
    assert any("INVALID_FIELD" in e["message"] for e in errors), errors


async def test_iterable_key_refused_at_start_exits_non_zero_at_once(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    """Nothing is queued: the refusal must not wait for the first change to show."""
    iterable_emulator.state.disable_key(iterable_emulator.api_key)
    config = _write_config(sf_emulator, iterable_emulator, tmp_path)
    env = service_env(sf_emulator, iterable_emulator)
    proc = ServiceProcess(config, env, tmp_path / "run.log")
    await proc.start()
    try:
        code = await proc.wait(TIMEOUT_S)
    finally:
        await proc.ensure_dead()
    records = _events(proc.log_text())
    assert code == 1, proc.log_text()
    fatal = _fatal_lines(records)
    assert fatal and "API key was refused" in str(fatal[0]["error"]), records
    assert "Traceback" not in proc.log_text()
    status = await _status(config, env)
    errors = status["recent_errors"]
    assert isinstance(errors, list)
    assert any("API key was refused" in e["message"] for e in errors), errors
