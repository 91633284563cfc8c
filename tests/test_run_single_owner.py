"""One `streamsync run` per store, as real processes: a second one is refused naming the first,
`status` and `dlq` still work beside it, and a restart after kill -9 reclaims the dead run's
leases at once instead of after `queue.lease_s`."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import orjson
import pytest

from streamsync.adapters.store import QueueInput, Store
from streamsync.core.ids import to_18
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from tests.e2e.process import ServiceProcess, service_config_data, service_env, toml_dumps

TIMEOUT_S = 60.0


def _config(sf: SalesforceEmulator, it: IterableEmulator, workdir: Path,
            **sections: dict[str, object]) -> Path:
    path = workdir / "config.toml"
    path.write_text(toml_dumps(service_config_data(sf, it, workdir, **sections)),
                    encoding="utf-8")
    return path


async def _cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamsync", *args, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _until(predicate: object, what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert callable(predicate)
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not in {timeout_s} s")


@pytest.mark.salesforce(long_poll_s=0.5)
async def test_a_second_run_on_the_same_store_is_refused_naming_the_first(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    config = _config(sf_emulator, iterable_emulator, tmp_path)
    env = {**service_env(sf_emulator, iterable_emulator), "STREAMSYNC_CONFIG": str(config)}
    first = ServiceProcess(config, env, tmp_path / "first.log")
    await first.start()
    try:
        await _until(lambda: first.saw("service.ready"), "first run ready")
        code, out, err = await _cli("run", "--config", str(config), env=env)
        assert code == 1, (out, err)
        assert f"pid {first.pid} on {os.uname().nodename}" in err, err
        assert "running since" in err and "Traceback" not in err
        for args in (("status", "--json"), ("dlq", "list")):  # beside the service: fine
            code, out, err = await _cli(*args, "--config", str(config), env=env)
            assert code == 0, (args, err)
        assert first.proc is not None and first.proc.returncode is None  # undisturbed
        code, _ = await first.terminate(30.0)
        assert code == 0
    finally:
        await first.ensure_dead()


@pytest.mark.salesforce(long_poll_s=0.5)
async def test_restart_after_kill_reclaims_the_dead_runs_leases_at_once(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    """The dead run's lease would last 10 minutes: the new owner takes it back at start."""
    config = _config(sf_emulator, iterable_emulator, tmp_path, queue={"lease_s": 600.0})
    contact_id = to_18(sf_emulator.select_ids("Contact", "Email != null", limit=1)[0])
    sf_emulator.state.update("Contact", contact_id, {"FirstName": "Reclaimed"})
    record = sf_emulator.state.record("Contact", contact_id)
    assert record is not None
    email = str(record["Email"]).lower()
    async with await Store.open(tmp_path / "streamsync.db") as store:
        # New events only: the record can reach Iterable through the reclaimed lease alone.
        await store.set_replay("/data/ContactChangeEvent", -1, time.time())
        await store.enqueue([QueueInput("Contact", contact_id)], time.time(), "cdc")
        [lease] = await store.lease("service", 10, 600.0, time.time())  # then kill -9
        assert lease.record_id == contact_id
    proc = ServiceProcess(config, service_env(sf_emulator, iterable_emulator),
                          tmp_path / "run.log")
    await proc.start()
    try:
        def synced() -> bool:
            profile = iterable_emulator.state.snapshot().get(email)
            return bool(profile and profile["dataFields"].get("firstName") == "Reclaimed")

        await _until(synced, "the leased record synced", timeout_s=45.0)
        assert proc.saw("store.leases_reclaimed")
        code, _ = await proc.terminate(30.0)
        assert code == 0
    finally:
        await proc.ensure_dead()
    logs = [orjson.loads(line) for line in proc.log_text().splitlines() if line.startswith("{")]
    [reclaimed] = [r for r in logs if r.get("event") == "store.leases_reclaimed"]
    assert reclaimed["records"] == 1


@pytest.mark.salesforce(long_poll_s=0.5)
async def test_a_store_lost_while_stopped_skips_no_change_made_meanwhile(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    config = _config(sf_emulator, iterable_emulator, tmp_path)
    env = service_env(sf_emulator, iterable_emulator)
    contact_id = to_18(sf_emulator.select_ids("Contact", "Email != null", limit=1)[0])
    record = sf_emulator.state.record("Contact", contact_id)
    assert record is not None
    email = str(record["Email"]).lower()

    def first_name() -> object:
        profile = iterable_emulator.state.snapshot().get(email)
        return profile["dataFields"].get("firstName") if profile else None

    first = ServiceProcess(config, env, tmp_path / "first.log")
    await first.start()
    try:
        await _until(lambda: first.saw("service.ready"), "first run ready")
        sf_emulator.state.update("Contact", contact_id, {"FirstName": "BeforeTheLoss"})
        await _until(lambda: first_name() == "BeforeTheLoss", "synced before the loss")
        assert (await first.terminate(30.0))[0] == 0
    finally:
        await first.ensure_dead()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"streamsync.db{suffix}").unlink(missing_ok=True)
    sf_emulator.state.update("Contact", contact_id, {"FirstName": "WhileDown"})

    second = ServiceProcess(config, env, tmp_path / "second.log")
    await second.start()
    try:
        await _until(lambda: first_name() == "WhileDown", "the change made while down synced")
        assert (await second.terminate(30.0))[0] == 0
    finally:
        await second.ensure_dead()
    logs = [orjson.loads(line) for line in second.log_text().splitlines()
            if line.startswith("{")]
    levels = {r.get("event"): r.get("level") for r in logs}
    assert levels.get("store.missing") == "error", logs[:5]
    assert levels.get("ingest.first_subscription_from_earliest") == "warning"
