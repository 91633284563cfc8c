"""A one-minute chaos run (scripts/chaos.py) in `make test`: every fault kind, no mismatch."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.script_loader import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "chaos.py"


chaos = load_script("chaos.py", "chaos_script")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_one_minute_of_chaos_leaves_iterable_equal_to_salesforce(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--minutes", "1", "--seed", "7", "--json-only",
         "--workdir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=230, cwd=ROOT,
    )
    assert proc.stdout.strip(), f"no JSON printed; stderr:\n{proc.stderr[-3000:]}"
    result: dict[str, Any] = orjson.loads(proc.stdout.strip().splitlines()[-1])
    context = f"{result}\nservice log tail:\n" + _tail(tmp_path / "run" / "service.log")

    assert result["mismatches"] == 0, context
    assert result["missing_dead_letters"] == [], context
    assert result["dead_letters_genuine"] == result["dead_letters"], context
    assert result["drained"] is True, context
    assert set(result["faults_injected"]) == set(chaos.FAULT_KINDS), context
    assert all(n >= 1 for n in result["faults_injected"].values()), context
    assert result["changes_total"] > 0
    assert set(result["changes"]) == set(chaos.CHANGE_WEIGHTS), context
    assert result["records_compared"] > 0 and result["matched"] == result["records_compared"]
    assert result["lists_compared"] == 2 and result["list_members_expected"] > 0, context
    assert result["list_mismatches"] == 0, context
    assert result["consent_mismatches"] == 0, context
    assert result["consent_opted_out_checked"] > 0, context
    assert result["consent_inbound_mismatches"] == 0, context
    assert result["consent_drained"] is True, context
    assert result["service_starts"] >= 2  # the kill -9 was followed by a restart
    assert result["service_crashes"] == [], context
    change = result["mapping_change"]  # mid-run: rewritten config.toml, then SIGHUP
    assert change["resyncs_finished"] and change["resync.done"] >= 2, context
    assert result["ok"] is True and proc.returncode == 0, context


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_one_minute_of_chaos_with_two_workers_on_postgresql(tmp_path: Path) -> None:
    """Two service processes share a PostgreSQL store through kill -9 of the leader and of a
    follower, a PostgreSQL restart and a leader cut off past its lease: Iterable ends equal
    to Salesforce, and the leadership really moved."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--minutes", "1", "--seed", "7", "--json-only",
         "--workers", "2", "--store", "postgres", "--workdir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=290, cwd=ROOT,
    )
    assert proc.stdout.strip(), f"no JSON printed; stderr:\n{proc.stderr[-3000:]}"
    result: dict[str, Any] = orjson.loads(proc.stdout.strip().splitlines()[-1])
    context = (f"{result}\nservice logs:\n" + _tail(tmp_path / "run" / "service.log")
               + _tail(tmp_path / "run" / "service1.log"))

    assert result["store"] == "postgres" and result["workers"] == 2, context
    assert result["mismatches"] == 0, context
    assert result["missing_dead_letters"] == [], context
    assert result["dead_letters_genuine"] == result["dead_letters"], context
    assert result["drained"] is True, context
    assert set(result["faults_injected"]) == set(chaos.WORKER_FAULT_KINDS), context
    assert result["records_compared"] > 0 and result["matched"] == result["records_compared"]
    assert result["list_mismatches"] == 0, context
    assert result["consent_mismatches"] == 0 and result["consent_inbound_mismatches"] == 0
    assert result["failovers"] >= 1 and result["deposed"] >= 1, context
    # The leadership, the subscriptions and the flushers survive every fault; a task of
    # another feature that a PostgreSQL restart stops is reported (`crash_causes`), and the
    # run restarts that worker as systemd would.
    assert not [c for c in result["crash_causes"]
                if c["task"] in ("ingest", "leadership", "flusher")], context
    assert result["service_exit_codes"] == [0, 0], context
    assert isinstance(result["duplicate_writes"], int), context
    # Custom events too: each worker runs its own decide loop, and one record's changes are
    # still decided in commit order (docs/events.md §4).
    assert result["events_drained"] is True and result["event_mismatches"] == 0, context
    assert result["events_expected"] > 0, context
    assert result["events_found"] + result["events_lost_to_cdc"] == result["events_expected"]


def test_a_run_of_several_workers_plans_their_own_faults() -> None:
    plan = chaos.plan_faults(random.Random(5), 58.0, chaos.WORKER_FAULT_KINDS)
    kinds = {kind for _, kind in plan}
    assert kinds == set(chaos.WORKER_FAULT_KINDS)
    assert {"kill9_leader", "kill9_follower", "pg_restart", "worker_cut_off"} <= kinds
    assert "kill9" not in kinds  # no single service to kill: a leader or a follower


def test_the_schedule_comes_from_the_seed_alone() -> None:
    plans = [chaos.plan_faults(random.Random(5), 58.0) for _ in range(2)]
    assert plans[0] == plans[1]
    assert {kind for _, kind in plans[0]} == set(chaos.FAULT_KINDS)
    assert all(0 <= t <= 58.0 for t, _ in plans[0])
    other = chaos.plan_faults(random.Random(6), 58.0)
    assert other != plans[0]


def test_the_changes_come_from_the_seed_alone() -> None:
    def kinds(seed: int) -> list[str]:
        model = chaos.Model(leads=[f"00Q{i:015d}" for i in range(50)],
                            contacts=[f"003{i:015d}" for i in range(50)], accounts=["001x"])
        workload = chaos.Workload(None, "", model, random.Random(seed))  # never sends here
        return [workload.choose() for _ in range(200)]

    assert kinds(3) == kinds(3) != kinds(4)
    # nothing deleted yet, no Campaign member to remove or change yet, no deal in the model
    assert set(kinds(3)) == set(chaos.CHANGE_WEIGHTS) - {"undelete", "member_remove",
                                                         "member_status", "opportunity_won",
                                                         "deal_update"}


def test_the_verdict_fails_on_a_mismatch_or_a_dead_letter_that_is_not_genuine() -> None:
    good = {"mismatches": 0, "missing_dead_letters": [], "dead_letters": 2,
            "dead_letters_genuine": 2, "list_mismatches": 0, "consent_mismatches": 0,
            "consent_inbound_mismatches": 0, "event_mismatches": 0}
    assert chaos.verdict(good)
    assert not chaos.verdict({**good, "mismatches": 1})
    assert not chaos.verdict({**good, "dead_letters_genuine": 1})
    assert not chaos.verdict({**good, "missing_dead_letters": ["00Q000000000001AAA"]})
    assert not chaos.verdict({**good, "list_mismatches": 1})
    assert not chaos.verdict({**good, "consent_inbound_mismatches": 1})
    assert not chaos.verdict({**good, "consent_mismatches": 1})
    assert not chaos.verdict({**good, "event_mismatches": 1})


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def test_the_windows_cdc_may_have_lost_come_from_the_replay_invalid_logs(tmp_path: Path) -> None:
    """The verifier excuses a missing event only inside a window a service logged: from the
    commit time of the last event it had stored to the moment it found that replay id purged."""
    log = tmp_path / "service.log"
    log.write_text(
        '{"ts":1796466758.769,"level":"warning","event":"ingest.replay_invalid",'
        '"channel":"/data/LeadChangeEvent","replay_id":"156","since_ms":1796466755676}\n'
        '{"ts":1796466759.0,"level":"info","event":"reconcile.done","object":"Lead"}\n'
        'not json "ingest.replay_invalid"\n')
    assert chaos.cdc_loss_windows([log, tmp_path / "absent.log"]) == [
        ("Lead", 1796466755676, 1796466758769)]
