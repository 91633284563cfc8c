"""Screenshot of the status page for the README: runs `streamsync demo --small` and, near the end
of its live changes, has headless Chromium capture the page (server-rendered, so the browser's
own `--screenshot` suffices). Usage: python scripts/status_page_screenshot.py [OUT.png]
[--duration S]; prints JSON with the file and its size."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", nargs="?", default=str(ROOT / "docs" / "status-page.png"))
    parser.add_argument("--duration", type=float, default=75.0,
                        help="seconds of live changes (over a minute: two chart points)")
    parser.add_argument("--size", default="1000,1350", help="window width,height")
    args = parser.parse_args()
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(b)), None)
    if browser is None:
        sys.exit("no chromium: `sudo apt-get install --no-install-recommends chromium`")
    demo = subprocess.Popen(
        [sys.executable, "-m", "streamsync", "demo", "--small", "--duration", str(args.duration)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert demo.stdout is not None
    url = None
    for line in demo.stdout:
        found = re.search(r"status page: (\S+)", line)
        if found:
            url = found.group(1)
            break
    if url is None:
        sys.exit("the demo printed no status page address")
    drain = threading.Thread(target=demo.stdout.read, daemon=True)
    drain.start()
    time.sleep(max(1.0, args.duration - 3.0))
    out = Path(args.out).resolve()
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}",
                        f"--window-size={args.size}", f"--screenshot={out}", url],
                       check=True, capture_output=True, timeout=60)
    code = demo.wait(timeout=300)
    print(json.dumps({"file": str(out), "bytes": out.stat().st_size, "demo_exit": code}))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
