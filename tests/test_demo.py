"""`make demo` in a short mode: backfill, live changes, and a final check that passes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_short_mode_ends_with_every_profile_matching(tmp_path: Path) -> None:
    err = (tmp_path / "stderr").open("w+")  # a file: a full pipe would block the demo
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamsync", "--log-level", "info", "demo", "--small",
         "--duration", "3"],
        stdout=subprocess.PIPE, stderr=err, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    lines = []
    page = None
    for line in proc.stdout:  # the status page answers while the demo runs
        lines.append(line)
        found = re.search(r"status page: (http://127\.0\.0\.1:\d+/)", line)
        if found and page is None:
            with urllib.request.urlopen(found.group(1), timeout=10) as r:
                page = (r.status, r.read().decode())
    proc.wait(timeout=180)
    err.seek(0)
    stderr = err.read()
    err.close()
    out = "".join(lines)
    assert page is not None, out
    assert page[0] == 200 and "<title>streamsync status</title>" in page[1]
    assert proc.returncode == 0, out[-3000:] + stderr[-3000:]
    assert "== 1. Backfill" in out and "== 2. Real time" in out
    assert "mismatches: 0" in out
    assert "Every Iterable profile matches Salesforce, and no opted-out record" in out
    # a list filling live, then equal to its Campaign's members
    sizes = [int(n) for n in re.findall(r"list 'Demo webinar'=(\d+)", out)]
    assert sizes and max(sizes) > 0, out
    assert "lists_compared: 1" in out and "list_mismatches: 0" in out
    assert "consent_mismatches: 0" in out and "consent_opted_out_checked: " in out
    assert "'iterable_unsubscribe': 2" in out  # clicks in Iterable, written back
    assert "Traceback" not in stderr
    # the global --log-level reaches the demo (structured JSON lines off a terminal)
    assert '"level":"info"' in stderr.replace(" ", "")
