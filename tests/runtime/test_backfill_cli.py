"""`python -m streamsync.backfill` as a real process: --help, killed with SIGKILL or stopped with
SIGTERM and resumed, an Iterable it cannot write to, a --where Salesforce cannot run."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sqlite3
import sys
from pathlib import Path

import orjson
import pytest

from streamsync.adapters.store import Store
from streamsync.backfill import main
from streamsync.cli import build_parser
from streamsync.config import Config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from tests.conftest import Clients
from tests.runtime.test_backfill import verify

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = ("-c", "--config", "--objects", "--since", "--until", "--where", "--resume", "--restart",
           "--dry-run", "--parallel", "--api", "--json", "--events")


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in OPTIONS:
        assert option in text
    for phrase in ("keyset", "checkpoint", "catch-up", "Bulk API 2.0", "JSON lines",
                   "CreatedDate", "Contacts"):
        assert phrase in text
    subparsers = next(a for a in build_parser()._actions
                      if isinstance(a, argparse._SubParsersAction))
    actions = subparsers.choices["backfill"]._actions
    assert all(a.help for a in actions if a.dest != "help")


def test_resume_and_restart_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--resume", "--restart"]) == 2
    assert "not allowed with" in capsys.readouterr().err


def test_bad_dates_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--since", "yesterday"]) == 2
    assert "not a date" in capsys.readouterr().err


def _write_config(path: Path, sf: SalesforceEmulator, it: IterableEmulator, db: Path) -> None:
    path.write_text(f"""
[salesforce]
login_url = "{sf.instance_url}"
auth = "client_credentials"
client_id = "{sf.client_id}"
api_version = "{sf.config.api_version}"

[iterable]
base_url = "{it.base_url}"
project_type = "email"
rate_limit_per_s = 200
batch_max_users = 200

[queue]
path = "{db}"

[backfill]
page_size = 200
parallel = 2

[health]
enabled = false
""")


def _records_checkpointed(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1.0) as conn:
            row = conn.execute("SELECT coalesce(sum(records_done), 0) FROM "
                               "backfill_checkpoint").fetchone()
    except sqlite3.OperationalError:  # schema not there yet
        return 0
    return int(row[0])


async def _run(args: list[str], env: dict[str, str], module: str = "streamsync.backfill"
               ) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.salesforce(seed_accounts=2, seed_contacts=0, seed_leads=2400)
@pytest.mark.iterable(latency_ms=120.0)
async def test_kill_9_then_resume(
    sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
    config: Config, clients: Clients, store: Store,
) -> None:
    config_obj = config
    db = store.path
    config_file = tmp_path / "config.toml"
    _write_config(config_file, sf_emulator, iterable_emulator, db)
    env = {**os.environ, "STREAMSYNC_SF_CLIENT_SECRET": sf_emulator.client_secret,
           "STREAMSYNC_ITERABLE_API_KEY": iterable_emulator.api_key or ""}
    args = ["--config", str(config_file), "--objects", "Lead", "--json"]

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamsync.backfill", *args, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        for _ in range(600):  # a child process: polling its checkpoints is the only way
            if _records_checkpointed(db) >= 600 or proc.returncode is not None:
                break
            await asyncio.sleep(0.02)
        assert proc.returncode is None, "the backfill finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_at_kill = _records_checkpointed(db)
    assert 600 <= done_at_kill < 2400

    code, _out, err = await _run(args, env)
    assert code == 2 and "--resume" in err                # unfinished: refuses to guess

    code, out, err = await _run([*args, "--resume"], env)
    assert code == 0, err
    summary = orjson.loads(out.splitlines()[-1])
    assert "resuming" in err
    assert summary["status"] == "finished" and summary["windows_resumed"] >= 1
    assert summary["records_read"] == 2400 - done_at_kill   # checkpointed pages are not re-read
    # every Lead with a valid email reached Iterable; in-flight pages at most were sent twice
    report = await verify(config_obj, clients, store, iterable_emulator, ("Lead",))
    assert report.ok, report.summary()
    dead = sum((await store.dead_letter_counts()).values())
    resent = iterable_emulator.state.users_received - (2400 - dead)
    assert 0 <= resent <= 2 * 2 * 220    # 2 windows x write_depth 2 calls of ~200 users

    code, out, err = await _run(args, env)
    assert code == 0 and "already finished" in err


def test_mounted_as_streamsync_backfill(capsys: pytest.CaptureFixture[str]) -> None:
    from streamsync import cli
    assert cli.main(["backfill", "--help"]) == 0
    assert "--resume" in capsys.readouterr().out


def _env(sf: SalesforceEmulator, it: IterableEmulator) -> dict[str, str]:
    return {**os.environ, "STREAMSYNC_SF_CLIENT_SECRET": sf.client_secret,
            "STREAMSYNC_ITERABLE_API_KEY": it.api_key or ""}


async def _run_state(db: Path) -> list[tuple[str, bool]]:
    """(run id, finished) of every backfill run in the store, newest first."""
    store = await Store.open(db, create=False)
    try:
        return [(run.run_id, run.finished) for run in await store.runs(limit=10)]
    finally:
        await store.close()


@pytest.mark.salesforce(seed_accounts=2, seed_contacts=0, seed_leads=2400)
@pytest.mark.iterable(latency_ms=120.0)
async def test_sigterm_stops_like_ctrl_c_keeping_the_checkpoints(
    sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
) -> None:
    db = tmp_path / "streamsync.db"
    config_file = tmp_path / "config.toml"
    _write_config(config_file, sf_emulator, iterable_emulator, db)
    env = _env(sf_emulator, iterable_emulator)
    args = ["--config", str(config_file), "--objects", "Lead", "--json"]
    errors = tmp_path / "stderr.txt"
    with errors.open("wb") as err_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streamsync.backfill", *args, env=env, cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=err_file)
    try:
        for _ in range(600):  # a child process: polling its checkpoints is the only way
            if _records_checkpointed(db) >= 600 or proc.returncode is not None:
                break
            await asyncio.sleep(0.02)
        assert proc.returncode is None, "the backfill finished before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err = errors.read_text()
    assert code == 130, err
    assert "stopped by SIGTERM" in err and "--resume" in err and "Traceback" not in err
    done_at_stop = _records_checkpointed(db)
    assert 600 <= done_at_stop < 2400
    [(run_id, finished)] = await _run_state(db)
    assert not finished

    # resumed through `streamsync backfill -c`, the global --log-level reaching the backfill
    code, out, err = await _run(["--log-level", "info", "backfill", "-c", str(config_file),
                                 "--objects", "Lead", "--json", "--resume"], env,
                                module="streamsync")
    assert code == 0, err
    summary = orjson.loads(out.splitlines()[-1])
    assert summary["run_id"] == run_id and summary["status"] == "finished"
    assert summary["records_read"] == 2400 - done_at_stop
    assert '"event":"backfill.started"' in err.replace(" ", "")   # an INFO line


@pytest.mark.salesforce(seed_accounts=2, seed_contacts=0, seed_leads=300)
async def test_an_iterable_it_cannot_write_to_fails_the_run_and_says_what_to_do(
    sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
) -> None:
    db = tmp_path / "streamsync.db"
    config_file = tmp_path / "config.toml"
    env = _env(sf_emulator, iterable_emulator)
    args = ["--config", str(config_file), "--objects", "Lead"]
    with socket.socket() as probe:       # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    _write_config(config_file, sf_emulator, iterable_emulator, db)
    config_file.write_text(config_file.read_text().replace(iterable_emulator.base_url, closed))

    code, _out, err = await _run(args, env)
    assert code == 1, err
    assert "what to do" in err and closed in err and "finished" not in err
    assert "Traceback" not in err
    assert all(not finished for _run_id, finished in await _run_state(db))

    iterable_emulator.state.disable_key(iterable_emulator.api_key)
    _write_config(config_file, sf_emulator, iterable_emulator, db)
    code, _out, err = await _run(args, env)
    assert code == 1, err
    assert "refused the API key" in err and "STREAMSYNC_ITERABLE_API_KEY" in err
    assert iterable_emulator.state.users_received == 0

    # once Iterable takes writes, the backfill runs: nothing was marked finished meanwhile
    iterable_emulator.state.keys[iterable_emulator.api_key].enabled = True
    code, out, err = await _run([*args, "--json"], env)
    assert code == 0, err
    assert orjson.loads(out.splitlines()[-1])["status"] == "finished"


@pytest.mark.salesforce(seed_accounts=2, seed_contacts=0, seed_leads=50)
@pytest.mark.parametrize(("where", "says"), [
    ("Nope = 1", "Lead has no field 'Nope'"),
    ("IsConverted = 'yes'", "Salesforce rejected the query"),
])
async def test_an_invalid_where_is_a_usage_error(
    sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
    where: str, says: str,
) -> None:
    db = tmp_path / "streamsync.db"
    config_file = tmp_path / "config.toml"
    _write_config(config_file, sf_emulator, iterable_emulator, db)
    code, out, err = await _run(["--config", str(config_file), "--objects", "Lead",
                                 "--where", where], _env(sf_emulator, iterable_emulator))
    assert code == 2, err
    assert says in err and "--where" in err
    assert "--resume" not in err and "retry" not in err and "Traceback" not in err
    assert await _run_state(db) == []
