"""The status page in a real headless Chromium against a real Service and both emulators: it
renders, the latency chart gets data points after a few changes, a new dead letter shows up
within seconds (masked), and a screenshot is saved under tests/artifacts/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.contrib.exported import running_service
from tests.headless_chromium import browser_binary, headless_page

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SCREENSHOT = ARTIFACTS / "status-page.png"
DEAD_LETTER_WITHIN_S = 10.0
BAD_EMAIL = "jane.doe@example.c0m"


async def test_the_status_page_in_a_headless_browser(tmp_path: Path) -> None:
    async with running_service(tmp_path, metrics_refresh_s=0.2) as running:
        sf, it = running.sf, running.it
        url = f"{running.health_url}/"
        async with headless_page(tmp_path / "chromium-profile") as page:
            await page.goto(url)
            assert await page.eval("document.title") == "streamsync status"
            await page.until("subscriptions listed",
                             "document.querySelectorAll('#subscriptions td').length > 0")
            assert await page.eval("document.querySelectorAll('#latency-chart circle.pt')"
                                   ".length") == 0

            for contact in sf.select_ids("Contact", "Email != null", limit=3):
                sf.state.update("Contact", contact, {"FirstName": "Charted"})
            await page.until("the latency chart has data points",
                             "document.querySelectorAll('#latency-chart circle.p50').length > 0"
                             " && document.querySelectorAll('#latency-chart circle.p95')"
                             ".length > 0")

            sf.state.create("Contact", {"LastName": "Bad", "Email": BAD_EMAIL})
            took = await page.until(
                "a dead letter on the page",
                "document.querySelectorAll('#dead-letters h3.reason').length > 0 && "
                "document.querySelectorAll('#dead-letters td').length > 0",
                timeout_s=DEAD_LETTER_WITHIN_S)
            text = await page.eval("document.body.innerText")
            assert BAD_EMAIL not in text and "[email]" in text, text
            assert it.api_key not in text and sf.client_secret not in text
            png = await page.screenshot()
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(png)
        print(f"dead letter shown after {took:.1f} s; screenshot: {SCREENSHOT}")
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert running.exit_code == 0


def test_a_missing_browser_fails_and_says_how_to_get_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(pytest.fail.Exception, match="apt-get install"):
        browser_binary()
