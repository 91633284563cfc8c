"""scripts/bench_events.py's events phase: a small run end to end prints the keys issue 14
item 6 names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_events.py"
REQUIRED_KEYS = ("event_latency_p50_s", "event_latency_p99_s", "event_burst_ratio",
                 "event_burst_sustained_ratio", "event_burst_ratio_bound",
                 "event_long_burst_ratio", "duplicate_events", "peak_rss_mb",
                 "event_burst_service_cpu_s", "event_burst_salesforce_emulator_cpu_s",
                 "event_burst_iterable_emulator_cpu_s")


@pytest.mark.timeout(180)
def test_a_small_run_prints_every_key_and_no_event_is_missing_or_doubled() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--phases", "events", "--rate", "50", "--duration", "2",
         "--burst", "1000", "--long-burst", "1500", "--members", "1"],
        capture_output=True, text=True, timeout=170, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert all(key in result for key in REQUIRED_KEYS), result
    assert result["duplicate_events"] == 0 and result["missing_events"] == 0
    assert result["event_qualifying_changes"] == result["events_stored"] > 2500
    assert result["event_long_burst_changes"] > 1400  # Leads the first burst changed too
    assert 0 < result["event_latency_p50_s"] <= result["event_latency_p99_s"]
    assert result["event_burst_service_cpu_s"] > 0  # the service decided and sent 1,000
