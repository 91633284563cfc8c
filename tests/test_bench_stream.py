"""scripts/bench_stream.py: its measurement helpers, and a smoke run of `--quick` end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.script_loader import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_stream.py"
REQUIRED_KEYS = ("latency_p50_s", "latency_p99_s", "burst_users_per_s", "ceiling_users_per_s",
                 "burst_ratio_to_ceiling", "iterable_429s", "peak_rss_mb",
                 "sf_api_calls_per_1000_changes")


bench = load_script("bench_stream.py")


def _entry(first_name: str, received: float, applied: bool = True) -> dict[str, Any]:
    return {"received_wall": received, "request_no": int(received * 10),
            "applied_wall": received + 0.01 if applied else None,
            "outcome": "updated" if applied else "rejected: invalidEmail",
            "dataFields": {"firstName": first_name}}


def test_receipts_match_each_change_by_email_and_its_unique_value() -> None:
    lead_a, lead_b, lead_c = "00Q8W0000000001UAA", "00Q8W0000000002UAA", "00Q8W0000000003UAA"
    emails = {lead_a: "A@example.org", lead_b: "b@example.org", lead_c: None}
    history = {
        # an older write and a refused one carry other values or were not applied
        "a@example.org": [_entry("Old", 90.0), _entry("Burst 1", 100.5, applied=False),
                          _entry("Burst 1", 100.8), _entry("Burst 1", 101.9)],
        "b@example.org": [_entry("Burst 9", 100.4)],  # Burst 2 never arrived
    }
    changes = [(lead_a, "Burst 1", 100.0), (lead_b, "Burst 2", 100.1),
               (lead_c, "Burst 3", 100.2)]
    latencies, received, no_email, missing = bench.receipts(changes, emails, history)
    assert latencies == [pytest.approx(0.8)]  # the first applied write with the value
    assert received == {1008: 100.8}
    assert (no_email, missing) == (1, 1)


def test_event_log_reads_compound_first_names_and_merged_record_ids() -> None:
    log = bench.EventLog(None, "http://unused")
    header = {"entityName": "Lead", "changeType": "UPDATE", "commitTimestamp": 1_700_000_000_250,
              "commitNumber": 7, "sequenceNumber": 1,
              "recordIds": ["00Q8W0000000001", "00Q8W0000000002UAA"]}
    log.events[(7, 1)] = {"ChangeEventHeader": header, "Name": {"FirstName": "Mass x1"}}
    other = {**header, "commitNumber": 8, "recordIds": ["00Q8W0000000003UAA"]}
    log.events[(8, 1)] = {"ChangeEventHeader": other, "Name": {"FirstName": "Burst 4"}}
    contact = {**header, "entityName": "Contact", "commitNumber": 9}
    log.events[(9, 1)] = {"ChangeEventHeader": contact, "Name": {"FirstName": "Mass x1"}}
    assert log.lead_changes("Mass x1") == [
        ("00Q8W0000000001UAA", "Mass x1", 1_700_000_000.25),
        ("00Q8W0000000002UAA", "Mass x1", 1_700_000_000.25)]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert bench.percentile(values, 0.5) == 50.0
    assert bench.percentile(values, 0.99) == 99.0
    assert bench.percentile([3.0], 0.99) == 3.0


def test_overrides_become_toml_values_and_bad_ones_are_refused(tmp_path: Path) -> None:
    overrides = bench.parse_overrides(["flush.linger_ms=50", "logging.level=WARNING",
                                       "iterable.update_only=true"])
    assert overrides == {"flush": {"linger_ms": "50"}, "logging": {"level": '"WARNING"'},
                         "iterable": {"update_only": "true"}}
    with pytest.raises(bench.BenchError, match="section.key=value"):
        bench.parse_overrides(["linger_ms=50"])
    config = tmp_path / "config.toml"
    sf = {"instance_url": "http://127.0.0.1:1", "client_id": "cid", "api_version": "66.0"}
    it = {"base_url": "http://127.0.0.1:2"}
    bench.write_config(config, sf, it, 8123, overrides)
    from streamsync.config import load_config

    loaded = load_config(config, env={"STREAMSYNC_SF_CLIENT_SECRET": "s",
                                      "STREAMSYNC_ITERABLE_API_KEY": "k"})
    assert loaded.flush.linger_ms == 50 and loaded.health.port == 8123
    assert loaded.salesforce.login_url == "http://127.0.0.1:1"
    assert loaded.queue.path == str(tmp_path / "streamsync.db")


@pytest.mark.slow
def test_quick_run_prints_one_json_object_with_sane_figures() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True,
                          text=True, timeout=110, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    result = orjson.loads(proc.stdout.strip().splitlines()[-1])
    missing = [key for key in REQUIRED_KEYS if key not in result]
    assert not missing, f"missing keys {missing} in {result}"
    assert 0 < result["latency_p50_s"] <= result["latency_p99_s"] < 60
    assert result["stream_changes_seen_in_event_log"] == result["stream_changes"]
    assert result["stream_changes_measured"] > 0.9 * result["stream_changes"]
    assert result["stream_changes_missing"] == 0 and result["burst_changes_missing"] == 0
    assert result["ceiling_users_per_s"] == 5000.0
    assert 0 < result["burst_users_per_s"] <= 1.5 * result["ceiling_users_per_s"]
    assert result["burst_ratio_to_ceiling"] == pytest.approx(
        result["burst_users_per_s"] / result["ceiling_users_per_s"], abs=0.001)
    assert result["iterable_429s"] >= 0
    assert 20 < result["peak_rss_mb"] < 2000
    assert 0 < result["sf_api_calls_per_1000_changes"] < 1000
    assert result["service_exit_code"] == 0
