"""scripts/bench_consent.py: its phase registry and arguments, the webhook receiver's matching,
and short runs of the Salesforce → Iterable and the Iterable → Salesforce phases end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.script_loader import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_consent.py"


bench = load_script("bench_consent.py")


def test_phases_and_arguments() -> None:
    assert list(bench.PHASES) == ["sf_stream", "sf_burst", "it_webhook", "it_poll",
                                  "consistency"]
    args = bench.parse_args(["--quick"])
    assert (args.rate, args.duration, args.burst) == (50.0, 10.0, 10_000)
    assert bench.parse_args([]).duration == 20.0
    assert list(bench.OPTIONAL_PHASES) == ["sf_burst_long"] and args.long_burst == 50_000
    with pytest.raises(SystemExit):
        bench.parse_args(["--long-burst", "0"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--rate", "0"])


def test_the_receiver_matches_unsubscribes_of_the_channel_first_arrival() -> None:
    hooks = bench.Webhooks()
    def body(email: str, name: str, channels: list[int]) -> dict[str, object]:
        return {"email": email, "eventName": name, "dataFields": {"channelIds": channels}}
    hooks.received += [(1.0, body("A@x.com", "emailUnSubscribe", [39581])),
                       (2.0, body("a@x.com", "emailUnSubscribe", [39581])),
                       (3.0, body("b@x.com", "emailSubscribe", [39581])),
                       (4.0, body("c@x.com", "emailUnSubscribe", [39584]))]
    assert hooks.unsubscribed(39581) == {"a@x.com": 1.0}
    assert hooks.unsubscribed(39581, since=1.5) == {"a@x.com": 2.0}


@pytest.mark.slow
def test_a_short_run_prints_the_salesforce_to_iterable_keys() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--duration", "2", "--burst", "2000",
                           "--phases", "sf_stream,sf_burst"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = orjson.loads(proc.stdout.strip().splitlines()[-1])
    assert result["sf_stream_missing"] == 0 and result["sf_stream_opt_outs"] == 100
    assert 0 < result["sf_to_iterable_p50_s"] <= result["sf_to_iterable_p99_s"]
    assert result["sf_burst_opt_outs"] == 2000 and result["burst_ratio_to_ceiling"] > 0
    assert result["sf_burst_subscription_429s"] == 0 and result["service_exit_code"] == 0


@pytest.mark.slow
def test_the_long_burst_phase_prints_its_own_keys() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--phases", "sf_burst_long",
                           "--long-burst", "1500", "--burst", "1", "--duration", "1"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = orjson.loads(proc.stdout.strip().splitlines()[-1])
    assert result["long_burst_opt_outs"] == 1500 and result["long_burst_ratio_to_ceiling"] > 0
    assert result["long_burst_steady_ratio_to_ceiling"] > 0
    assert result["long_burst_subscription_429s"] == 0 and "burst_ratio_to_ceiling" not in result


@pytest.mark.slow
def test_a_short_run_prints_the_iterable_to_salesforce_keys() -> None:
    # The it_poll phase waits out the export's 30 s poll interval; it is left to the benchmark
    # run (the poller itself: tests/e2e/test_consent_in.py, poller-only and a lost webhook).
    proc = subprocess.run([sys.executable, str(SCRIPT), "--phases",
                           "it_webhook,consistency", "--it-duration", "2", "--burst", "1"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = orjson.loads(proc.stdout.strip().splitlines()[-1])
    assert result["it_webhook_measured"] == result["it_webhook_unsubscribes"] == 40
    assert 0 < result["iterable_to_sf_webhook_p50_s"] <= result["iterable_to_sf_webhook_p99_s"]
    assert "iterable_to_sf_poll_p99_s" not in result
    assert (result["loops"], result["mismatches"]) == (0, 0)
    assert result["leads_checked"] == 40 and result["service_exit_code"] == 0
