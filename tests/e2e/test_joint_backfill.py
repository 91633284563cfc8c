"""Two backfill processes on one run against the emulators (Iterable's real limits): the
second joins, the first is killed with SIGKILL mid-run, the second takes its windows over and
finishes the run; every record reaches Iterable, no 429, and the summary covers the run."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from pathlib import Path

import orjson
import pytest

from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from tests.conftest import Clients, MakeConfig, production_components
from tests.e2e.process import REPO_ROOT, service_env
from tests.e2e.test_shared_budget import BULK, write_backfill_config
from tests.runtime.test_backfill import verify

RECORDS = 2400  # 1,200 Leads + 1,200 Contacts: 80 calls of 30 users at 5/s, about 16 s


def _query(db: Path, sql: str) -> list[tuple[object, ...]]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=1.0) as conn:
            return list(conn.execute(sql).fetchall())
    except sqlite3.OperationalError:  # not created yet
        return []


def _held_by_pid(db: Path) -> dict[int, tuple[int, int]]:
    """Per live lease holder (by pid): windows it holds (not done) and the records
    checkpointed in them."""
    rows = _query(db, "SELECT p.pid, count(*), sum(c.records_done) FROM backfill_checkpoint c "
                      "JOIN backfill_participant p ON p.participant_id = c.lease_owner "
                      "AND p.run_id = c.run_id WHERE c.done = 0 GROUP BY p.pid")
    return {int(str(pid)): (int(str(n)), int(str(done or 0))) for pid, n, done in rows}


async def _until(condition: object, what: str, timeout_s: float = 60.0) -> None:
    assert callable(condition)
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.salesforce(seed_accounts=3, seed_contacts=1200, seed_leads=1200)
@pytest.mark.iterable(rate_limits=True)
async def test_a_second_process_joins_and_finishes_the_run_after_the_first_is_killed(
    sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
    make_config: MakeConfig,
) -> None:
    config_file = write_backfill_config(sf_emulator, iterable_emulator, tmp_path,
                                        backfill={"page_size": 200, "parallel": 2,
                                                  "lease_s": 2.0},
                                        iterable={"rate_limit_per_s": 5.0,
                                                  "batch_max_users": 30})
    db = tmp_path / "streamsync.db"
    env = service_env(sf_emulator, iterable_emulator)
    args = [sys.executable, "-m", "streamsync.backfill", "--config", str(config_file),
            "--objects", "Lead,Contact", "--json"]
    first = await asyncio.create_subprocess_exec(
        *args, env=env, cwd=REPO_ROOT, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    second: asyncio.subprocess.Process | None = None
    try:
        await _until(lambda: _held_by_pid(db).get(first.pid, (0, 0))[1] > 0,
                     "the first backfill to checkpoint")
        second = await asyncio.create_subprocess_exec(
            *args, "--join", env=env, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        joined = second
        # the second holds windows of its own while the first is mid-window: kill the first
        def both_at_work() -> bool:
            held = _held_by_pid(db)
            return held.get(joined.pid, (0, 0))[0] > 0 and held.get(first.pid, (0, 0))[1] > 0

        await _until(both_at_work, "both backfills to hold windows")
        at_kill = _held_by_pid(db)
        first.send_signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
        out, err = await asyncio.wait_for(second.communicate(), 120)
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert second.returncode == 0, err.decode()[-3000:]
    held, done = at_kill.get(first.pid, (0, 0))
    assert held > 0 and done > 0  # it died mid-window, with checkpoints in it
    summary = orjson.loads(out.decode().splitlines()[-1])
    assert summary["status"] == "finished" and summary["participants"] == 2
    assert summary["windows_resumed"] >= 1  # the dead one's windows, from their checkpoints
    run = summary["run"]
    assert run["participants"] == 2
    # the run's counts add up both processes: every record was read by one or the other (a
    # page in flight at the kill is read twice), and more than the survivor read alone
    assert run["records_read"] >= RECORDS > summary["records_read"]
    assert run["records_written"] + run["records_skipped"] + run["dead_lettered"] >= RECORDS
    windows = _query(db, "SELECT count(*), sum(done) FROM backfill_checkpoint")
    assert windows == [(4, 4)]
    assert _query(db, "SELECT count(*) FROM backfill_run WHERE finished_at IS NOT NULL") \
        == [(1,)]
    assert iterable_emulator.state.count(BULK, 429) == 0  # two processes, one budget
    config = make_config(sf_emulator, iterable_emulator, tmp_path)
    async with production_components(config) as parts:
        report = await verify(config, Clients(parts), parts.store, iterable_emulator)
    assert report.ok, report.summary()

