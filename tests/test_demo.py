"""`make demo` in a short mode: backfill, live changes, and a final check that passes."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_short_mode_ends_with_every_profile_matching() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streamsync", "--log-level", "info", "demo", "--small",
         "--duration", "3"],
        capture_output=True, text=True, timeout=180, check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "== 1. Backfill" in out and "== 2. Real time" in out
    assert "mismatches: 0" in out
    assert "Every Iterable profile matches Salesforce." in out
    assert "Traceback" not in proc.stderr
    # the global --log-level reaches the demo (structured JSON lines off a terminal)
    assert '"level":"info"' in proc.stderr.replace(" ", "")
