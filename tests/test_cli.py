"""The command line as a real subprocess: config errors, status, dlq, replay ids, --help."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamsync.adapters.store import BackfillWindow, QueueInput, Store
from streamsync.cli import build_parser, main
from streamsync.cli.replay import REPLAY_EARLIEST, REPLAY_NEW, parse_replay_start
from streamsync.errors import UsageError as CliUsageError

SF_SECRET = "sf-client-secret-0123456789"
IT_KEY = "iterable-api-key-abcdef987654"
NOW = time.time()


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any STREAMSYNC_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STREAMSYNC_") and k != "CREDENTIALS_DIRECTORY"}
    env.update(extra)
    return env


def secret_env() -> dict[str, str]:
    return clean_env(STREAMSYNC_SF_CLIENT_SECRET=SF_SECRET, STREAMSYNC_ITERABLE_API_KEY=IT_KEY)


def write_config(tmp_path: Path, *, login_url: str = "http://127.0.0.1:9",
                 iterable_url: str = "http://127.0.0.1:9", extra: str = "",
                 db: str = "streamsync.db") -> Path:
    """A config.toml with client-credentials auth; `extra` is appended verbatim."""
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[salesforce]
login_url = "{login_url}"
auth = "client_credentials"
client_id = "3MVG9emulator.consumer.key"
timeout_s = 10.0

[iterable]
base_url = "{iterable_url}"
project_type = "email"
timeout_s = 10.0

[queue]
path = "{db}"

[health]
enabled = false
{extra}
""", encoding="utf-8")
    return path


def run_cli(*args: str, env: dict[str, str] | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m streamsync ARGS` in a fresh process (stdin is a pipe, never a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "streamsync", *args],
        env=env if env is not None else secret_env(),
        input=stdin if stdin is not None else "",
        capture_output=True, text=True, timeout=60, check=False,
    )


def assert_clean_failure(proc: subprocess.CompletedProcess[str], code: int) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


def store_call(db: Path, fn: Any) -> Any:
    """Open the store at `db`, await `fn(store)`, close it (from a synchronous test)."""
    async def go() -> Any:
        store = await Store.open(db)
        try:
            return await fn(store)
        finally:
            await store.close()
    return asyncio.run(go())


async def _dead_letter(store: Store, object_name: str, ids: list[str], reason: str,
                       error: str) -> None:
    await store.enqueue([QueueInput(object_name, i) for i in ids], NOW - 100, "cdc")
    leases = await store.lease("test", 1000, 60.0, NOW - 90, objects=[object_name])
    await store.dead_letter([lease for lease in leases if lease.record_id in ids], reason,
                            error, NOW - 80)


# ---------------------------------------------------------------- parsing, help, usage


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["run", "--help"], ["check-config", "--help"], ["status", "--help"],
                 ["dlq", "--help"], ["dlq", "list", "--help"], ["dlq", "retry", "--help"],
                 ["dlq", "purge", "--help"], ["replay", "--help"]):
        assert main(argv) == 0, argv
        out = capsys.readouterr().out
        assert "usage: streamsync" in out, argv
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("streamsync ")


def test_backfill_and_demo_keep_their_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backfill", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: streamsync backfill" in out and "--resume" in out
    assert main(["--log-level", "error", "demo", "--help"]) == 0
    assert "--keep-running" in capsys.readouterr().out
    assert main(["backfill", "--no-such-option"]) == 2


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["dlq"]) == 2
    assert main(["dlq", "list", "--limit", "0"]) == 2
    assert main(["replay", "--channel", "/data/LeadChangeEvent"]) == 2  # --from missing
    err = capsys.readouterr().err
    assert "invalid choice: 'frobnicate'" in err and "must be at least 1" in err


def test_parse_replay_start() -> None:
    assert parse_replay_start("earliest") == REPLAY_EARLIEST == -2
    assert parse_replay_start("NEW") == REPLAY_NEW == -1
    assert parse_replay_start("123456") == 123456
    assert parse_replay_start("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_replay_start("2026-01-02") == datetime(2026, 1, 2, tzinfo=UTC)
    with pytest.raises(CliUsageError):
        parse_replay_start("-7")


def test_logging_options_work_before_and_after_the_command() -> None:
    parser = build_parser()
    args = parser.parse_args(["--log-level", "DEBUG", "status"])
    assert args.log_level == "debug" and args.command == "status"
    args = parser.parse_args(["status", "--log-level", "error", "--log-json"])
    assert args.log_level == "error" and args.log_json is True


# ---------------------------------------------------------------- config errors


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra="\n[flush]\nbatch_idz = 10\nconcurrency = 0\n")
    proc = run_cli("check-config", "--config", str(config))
    assert_clean_failure(proc, 2)
    assert "flush.batch_idz: unknown key (did you mean batch_ids?)" in proc.stderr
    assert "flush.concurrency" in proc.stderr
    assert proc.stdout == ""


def test_secret_in_config_file_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra='\n[objects.Lead]\nmapping = { Email = "email" }\n')
    text = config.read_text().replace('client_id = "3MVG9emulator.consumer.key"',
                                      'client_id = "x"\nclient_secret = "oops"')
    config.write_text(text)
    proc = run_cli("status", "--config", str(config))
    assert_clean_failure(proc, 2)
    assert "salesforce.client_secret: secrets are never read from the config file" in proc.stderr
    assert "STREAMSYNC_SF_CLIENT_SECRET" in proc.stderr


def test_missing_secret_exits_2_naming_the_variable(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    proc = run_cli("check-config", "--config", str(config),
                   env=clean_env(STREAMSYNC_SF_CLIENT_SECRET=SF_SECRET))
    assert_clean_failure(proc, 2)
    assert "STREAMSYNC_ITERABLE_API_KEY" in proc.stderr
    assert "STREAMSYNC_SF_CLIENT_SECRET" not in proc.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    proc = run_cli("run", "--config", str(tmp_path / "nope.toml"))
    assert_clean_failure(proc, 2)
    assert "cannot read config file" in proc.stderr and "nope.toml" in proc.stderr


def test_config_path_from_environment(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    proc = run_cli("status", env={**secret_env(), "STREAMSYNC_CONFIG": str(config)})
    assert_clean_failure(proc, 1)  # found the config; its store does not exist yet
    assert "does not exist" in proc.stderr and str(tmp_path / "streamsync.db") in proc.stderr


# ---------------------------------------------------------------- status


def _populate(db: Path) -> None:
    async def fill(store: Store) -> None:
        await store.record_event("/data/LeadChangeEvent", 4711,
                                 [QueueInput("Lead", f"00Q{i:015d}") for i in range(3)],
                                 commit_ts_ms=int((NOW - 30) * 1000), now=NOW - 20)
        await store.enqueue([QueueInput("Contact", "003000000000000001")], NOW - 10, "fanout")
        await _dead_letter(store, "Contact", ["003000000000000009"], "invalid_email",
                           "email 'x@' is not valid")
        await store.note_error("flusher", f"iterable said no to key {IT_KEY}", NOW - 5)
        await store.start_run("run-0", [], {"objects": ["Contact"]}, NOW - 7200)
        await store.finish_run("run-0", NOW - 3600)
        await store.start_run("run-1", [BackfillWindow("Lead", "2020-01-01", "2021-01-01"),
                                        BackfillWindow("Lead", "2021-01-01", "2022-01-01")],
                              {"objects": ["Lead"]}, NOW - 60)
        await store.save_checkpoint("run-1", BackfillWindow("Lead", "2020-01-01", "2021-01-01"),
                                    "00Q000000000000042", 42, NOW - 50)
        await store.finish_window("run-1", BackfillWindow("Lead", "2021-01-01", "2022-01-01"),
                                  NOW - 40, records_done=7)
    store_call(db, fill)


def test_status_json_and_table_without_secrets(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra='\n[objects.Lead]\n[objects.Contact]\n'
                                          '[objects.Account]\n')
    _populate(tmp_path / "streamsync.db")
    proc = run_cli("status", "--config", str(config), "--json")
    assert proc.returncode == 0, proc.stderr
    data = orjson.loads(proc.stdout)
    assert data["queue"]["depth"] == 4
    assert data["queue"]["by_object"] == {"Contact": 1, "Lead": 3}
    assert data["queue"]["oldest_age_s"] > 0
    channels = {c["channel"]: c for c in data["channels"]}
    assert set(channels) == {"/data/LeadChangeEvent", "/data/ContactChangeEvent",
                             "/data/AccountChangeEvent"}
    lead = channels["/data/LeadChangeEvent"]
    assert lead["replay_id"] == 4711 and lead["object"] == "Lead"
    assert lead["last_event_at"] is not None
    assert channels["/data/ContactChangeEvent"]["replay_id"] is None
    assert data["dead_letters"] == {"total": 1, "by_reason": {"invalid_email": 1}}
    assert len(data["recent_errors"]) == 1
    assert "[redacted]" in data["recent_errors"][0]["message"]
    backfill = data["backfill"]
    assert backfill["run_id"] == "run-1" and backfill["windows_done"] == 1
    assert backfill["records_done"] == 49 and backfill["windows_total"] == 2
    assert [r["run_id"] for r in data["backfill_runs"]] == ["run-1", "run-0"]
    assert data["backfill_runs"][1]["finished_at"] is not None

    table = run_cli("status", "--config", str(config))
    assert table.returncode == 0, table.stderr
    for expected in ("Queue: 4 record(s)", "/data/LeadChangeEvent", "4711", "invalid_email",
                     "run run-1", "00Q000000000000042", "(none: starts with new events)",
                     "earlier runs:", "run-0"):
        assert expected in table.stdout, expected
    for proc_ in (proc, table):
        for secret in (SF_SECRET, IT_KEY):
            assert secret not in proc_.stdout and secret not in proc_.stderr


def test_status_while_the_service_holds_the_store_open(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    db = tmp_path / "streamsync.db"

    async def go() -> subprocess.CompletedProcess[str]:
        store = await Store.open(db)
        try:
            await store.enqueue([QueueInput("Lead", "00Q000000000000001")], NOW, "cdc")
            return await asyncio.to_thread(run_cli, "status", "--config", str(config), "--json")
        finally:
            await store.close()

    proc = asyncio.run(go())
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout)["queue"]["depth"] == 1


def test_status_without_a_store_exits_1(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    proc = run_cli("status", "--config", str(config))
    assert_clean_failure(proc, 1)
    assert "has the service run with this config?" in proc.stderr
    assert not (tmp_path / "streamsync.db").exists()


# ---------------------------------------------------------------- dlq


def _dlq_store(db: Path) -> None:
    async def fill(store: Store) -> None:
        await _dead_letter(store, "Lead", ["00Q000000000000001", "00Q000000000000002"],
                           "invalid_email", "email 'a@' is not valid")
        await _dead_letter(store, "Contact", ["003000000000000003"], "type_mismatch",
                           "dataFields.score: expected long")
    store_call(db, fill)


def test_dlq_list_retry_purge(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    db = tmp_path / "streamsync.db"
    _dlq_store(db)

    listed = run_cli("dlq", "list", "--config", str(config), "--json")
    assert listed.returncode == 0, listed.stderr
    data = orjson.loads(listed.stdout)
    assert data["total"] == 3 and data["shown"] == 3
    assert {r["reason"] for r in data["dead_letters"]} == {"invalid_email", "type_mismatch"}

    one = orjson.loads(run_cli("dlq", "list", "--config", str(config), "--json",
                               "--reason", "invalid_email", "--limit", "1").stdout)
    assert one["total"] == 2 and one["shown"] == 1
    assert one["dead_letters"][0]["object"] == "Lead"

    human = run_cli("dlq", "list", "--config", str(config), "--limit", "2")
    assert "type_mismatch" in human.stdout or "invalid_email" in human.stdout
    assert "(2 of 3 shown; use --limit)" in human.stdout

    retried = run_cli("dlq", "retry", "--config", str(config), "--reason", "type_mismatch")
    assert retried.returncode == 0, retried.stderr
    assert "re-queued 1 dead letter(s) with reason 'type_mismatch'" in retried.stdout

    async def check_retry(store: Store) -> tuple[dict[str, int], dict[str, int], str]:
        leases = await store.lease("check", 10, 60.0, NOW + 10_000, objects=["Contact"])
        await store.release(leases)
        return (await store.dead_letter_counts(), await store.queue_depth_by_object(),
                leases[0].source)

    counts, depth, source = store_call(db, check_retry)
    assert counts == {"invalid_email": 2} and depth == {"Contact": 1} and source == "retry"

    refused = run_cli("dlq", "purge", "--config", str(config))
    assert_clean_failure(refused, 2)
    assert "pass --yes" in refused.stderr and "2 dead letter(s)" in refused.stderr
    purged = run_cli("dlq", "purge", "--config", str(config), "--reason", "invalid_email",
                     "--yes")
    assert purged.returncode == 0, purged.stderr
    assert "purged 2 dead letter(s)" in purged.stdout
    assert store_call(db, lambda s: s.dead_letter_counts()) == {}
    empty = run_cli("dlq", "list", "--config", str(config))
    assert empty.stdout == "no dead letters\n"


# ---------------------------------------------------------------- replay (ids)


def test_replay_sets_where_the_channel_resumes(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra="\n[objects.Lead]\n[objects.Contact]\n")
    db = tmp_path / "streamsync.db"
    channel = "/data/LeadChangeEvent"
    for value, expected in (("12345", 12345), ("earliest", -2), ("new", -1)):
        proc = run_cli("replay", "--config", str(config), "--channel", channel, "--from", value,
                       env=clean_env())  # no secrets needed to set a replay id
        assert proc.returncode == 0, proc.stderr
        assert channel in proc.stdout
        state = store_call(db, lambda s: s.get_replay(channel))
        assert state is not None and state.replay_id == expected
    assert store_call(db, lambda s: s.get_replay("/data/ContactChangeEvent")) is None


def test_replay_refuses_unknown_channel_and_bad_values(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra="\n[objects.Lead]\n")
    proc = run_cli("replay", "--config", str(config), "--channel", "/data/OpportunityChangeEvent",
                   "--from", "new")
    assert_clean_failure(proc, 2)
    assert "not a configured channel" in proc.stderr and "/data/LeadChangeEvent" in proc.stderr
    proc = run_cli("replay", "--config", str(config), "--channel", "/data/LeadChangeEvent",
                   "--from", "yesterday")
    assert_clean_failure(proc, 2)
    assert "--from" in proc.stderr and "ISO 8601" in proc.stderr
    proc = run_cli("replay", "--config", str(config), "--channel", "/data/LeadChangeEvent",
                   "--from", "2026-01-02T03:04:05")
    assert_clean_failure(proc, 2)
    assert "no timezone" in proc.stderr
    proc = run_cli("replay", "--config", str(config), "--channel", "/data/LeadChangeEvent",
                   "--from", "2999-01-01T00:00:00Z")
    assert_clean_failure(proc, 2)
    assert "in the future" in proc.stderr
    assert not (tmp_path / "streamsync.db").exists()


def test_status_of_an_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("STREAMSYNC_")]:
        monkeypatch.delenv(name)
    config = write_config(tmp_path, extra="\n[objects.Lead]\n")
    store_call(tmp_path / "streamsync.db", lambda s: s.queue_stats(NOW))
    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "Queue: 0 record(s); 0 due" in out and "oldest" not in out
    assert "Dead letters: 0" in out and "(never run)" in out
    assert "Recent errors:\n  (none)" in out


def test_status_helpers() -> None:
    from streamsync.cli.durations import duration as age
    from streamsync.cli.output import table
    from streamsync.runtime.status import iso

    assert [age(s) for s in (None, 0, 59.9, 61, 3600 * 5 + 60, 86_400 * 3 + 3600 * 4)] == [
        "-", "0s", "59s", "1m 01s", "5h 01m", "3d 4h"]
    assert iso(0) == "1970-01-01T00:00:00Z" and iso(None) is None
    assert table(["a", "bb"], [["xxx", None], ["y", "line\nbreak"]]).splitlines() == [
        "a    bb", "---  ----------", "xxx  -", "y    line break"]
    assert table(["h"], [["x" * 10]], max_cell=6).splitlines()[-1] == "xxx..."


def test_dlq_unknown_reason_lists_the_known_ones(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    db = tmp_path / "streamsync.db"
    _dlq_store(db)
    for action in (["retry"], ["list"], ["purge", "--yes"]):
        proc = run_cli("dlq", *action, "--config", str(config), "--reason", "invalid_mail")
        assert_clean_failure(proc, 2)
        assert "unknown reason 'invalid_mail'" in proc.stderr
        assert "invalid_email" in proc.stderr and "retries_exhausted" in proc.stderr
        assert "present now: invalid_email (2), type_mismatch (1)" in proc.stderr
    assert store_call(db, lambda s: s.dead_letter_counts()) == {
        "invalid_email": 2, "type_mismatch": 1}
    known_but_absent = run_cli("dlq", "retry", "--config", str(config), "--reason", "conflict")
    assert known_but_absent.returncode == 0, known_but_absent.stderr
    assert "re-queued 0" in known_but_absent.stdout


def test_status_shows_an_error_message_whole(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    message = ("Lead: TransientError: iterable bulkUpdate: network failure "
               "(ClientConnectorError: Cannot connect to host api.iterable.example.com:443 "
               "ssl:default [Connect call failed ('203.0.113.7', 443)])")
    store_call(tmp_path / "streamsync.db", lambda s: s.note_error("flusher", message, NOW))
    proc = run_cli("status", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert message in proc.stdout
