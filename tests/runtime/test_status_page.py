"""The status page without a browser: security headers on every answer, masking of dead-letter
details and errors, the shape of /status.json, the latency ring, the rate budget, the ETA."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from streamsync.adapters.ratelimit import RateLimiter
from streamsync.adapters.store import BackfillWindow, Store
from streamsync.config import Config
from streamsync.logs import redactor
from streamsync.runtime.health import SECURITY_HEADERS, HealthServer, Readiness
from streamsync.runtime.latency_window import LatencyWindow
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.statuspage.data import PageData, RateBudget, mask
from streamsync.runtime.statuspage.render import chart_points, page_html

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "frame-ancestors 'none'")
NOW = 1_800_000_000.0
UNCONFIGURED_KEY = "sk_live_9f8e7d6c5b4a39281706f5e4d3c2b1a0ffeeddcc"
LATE_SECRET = "hunter2-not-yet-registered"
EMAIL = "jane.doe@example.org"


@pytest.fixture
async def page(config: Config, store: Store) -> AsyncIterator[tuple[PageData, str]]:
    """A HealthServer serving the page over a real store; yields the data source and base URL."""
    metrics = Metrics()
    data = PageData(config, metrics, lambda: Readiness(True), clock=lambda: NOW)
    data.attach(store, RateLimiter(5.0))
    server = HealthServer(metrics, lambda: Readiness(True), page=data.read)
    port = await server.start()
    try:
        yield data, f"http://127.0.0.1:{port}"
    finally:
        await server.stop()


async def _get(url: str) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, dict(r.headers), await r.text()


@pytest.mark.parametrize("path", ["/", "/status.json", "/status.json?html=1",
                                  "/static/page.js", "/static/page.css", "/healthz",
                                  "/metrics", "/static/nope.js", "/nowhere"])
async def test_every_answer_carries_the_security_headers(
        page: tuple[PageData, str], path: str) -> None:
    status, headers, _ = await _get(page[1] + path)
    assert status == (404 if "no" in path else 200)
    assert headers["Content-Security-Policy"] == CSP
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert set(SECURITY_HEADERS) <= set(headers)


async def test_the_page_loads_only_its_own_script_and_stylesheet(
        page: tuple[PageData, str]) -> None:
    status, headers, html = await _get(page[1] + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert re.findall(r'(?:src|href)="([^"]+)"', html) == ["/static/page.css",
                                                           "/static/page.js"]
    assert "<script>" not in html and "style=" not in html  # nothing inline: CSP forbids it
    for asset, kind in (("page.js", "text/javascript"), ("page.css", "text/css")):
        status, headers, body = await _get(f"{page[1]}/static/{asset}")
        assert status == 200 and headers["Content-Type"].startswith(kind) and body
        assert "http://" not in body and "https://" not in body


async def test_dead_letter_details_and_errors_are_masked(
        page: tuple[PageData, str], store: Store) -> None:
    detail = (f"rejected {EMAIL}: Api-Key {UNCONFIGURED_KEY} token={LATE_SECRET} "
              f"Authorization: Bearer abc.def.ghi")
    await store.add_dead_letters("Contact", {"003000000000001AAA": ("invalid_email", detail)},
                                 NOW - 5, change_type="CREATE")
    await store.note_error("flusher", f"Iterable refused {EMAIL} with key {UNCONFIGURED_KEY}",
                           NOW - 3)
    redactor().add(LATE_SECRET)  # stored raw before it was known: masked when shown
    for path in ("/", "/status.json", "/status.json?html=1"):
        _, _, body = await _get(page[1] + path)
        for secret in (EMAIL, UNCONFIGURED_KEY, LATE_SECRET, "abc.def.ghi"):
            assert secret not in body, (path, secret)
        assert "003000000000001AAA" in body and "[email]" in body
    data = await page[0].read()
    example = data["dead_letters"]["examples"]["invalid_email"][0]
    assert example["record_id"] == "003000000000001AAA"
    assert example["last_error"].startswith("rejected [email]: Api-Key [redacted]")
    assert data["recent_errors"][0]["message"].startswith("Iterable refused [email] with key")


def test_mask_keeps_salesforce_ids_and_plain_words() -> None:
    text = ("Contact 0038W000000000DQAQ (00Q8W00000ABCDE) not found at "
            "https://na1.example.com/services/data/v66.0/sobjects/Contact/describe")
    assert mask(text) == text
    assert mask("password: s3cret!") == "[redacted]"


async def test_status_json_shape(page: tuple[PageData, str], store: Store,
                                 config: Config) -> None:
    data_source, base = page
    window = BackfillWindow("Lead", "2024-01-01", "2024-02-01")
    other = BackfillWindow("Lead", "2024-02-01", "2024-03-01")
    await store.start_run("run-1", [window, other], {"objects": ["Lead"]}, NOW - 100)
    await store.finish_window("run-1", window, NOW - 40, records_done=250)
    data_source.metrics.observe_commit_to_iterable(0.4, NOW - 30)
    data_source.metrics.observe_commit_to_iterable(1.2, NOW - 29)
    async with aiohttp.ClientSession() as http, http.get(base + "/status.json") as r:
        data: dict[str, Any] = await r.json()
    assert {"generated_at", "ready", "queue", "channels", "dead_letters", "recent_errors",
            "backfill", "latency", "iterable"} <= set(data)
    assert "store" not in data  # no file path
    assert {c["object"] for c in data["channels"]} == set(config.objects)
    assert data["backfill"]["windows_done"] == 1 and data["backfill"]["windows_total"] == 2
    assert data["backfill"]["progress"] == 0.5 and data["backfill"]["eta_s"] == 100.0
    assert len(data["latency"]) == 1
    assert data["latency"][0]["count"] == 2 and data["latency"][0]["p95_s"] == 1.2
    assert data["iterable"]["budget"]["limit_per_s"] == 5.0
    assert data["iterable"]["requests_429_total"] == 0


async def test_page_before_the_store_is_open_says_starting(config: Config) -> None:
    data = await PageData(config, Metrics(), lambda: Readiness(False, "starting")).read()
    assert data["starting"] is True
    assert "not ready: starting" in page_html(data)


def test_latency_window_quantiles_per_minute_and_forgets_after_an_hour() -> None:
    window = LatencyWindow(cap=50)
    base = 60.0 * 1000
    for i in range(1, 101):  # 100 samples in one minute: a reservoir of 50 is kept
        window.observe(float(i), base + 1)
    window.observe(0.5, base + 61)
    minutes = window.minutes_of(base + 61)
    assert [m.count for m in minutes] == [100, 1]
    assert 20 <= minutes[0].p50_s <= 80 and minutes[0].p95_s >= 80
    assert minutes[1].p50_s == minutes[1].p95_s == 0.5
    assert [m.count for m in window.minutes_of(base + 60 * 60 + 1)] == [1]
    window.observe(2.0, base + 60 * 61)
    assert [m.minute_start for m in window.minutes_of(base + 60 * 61)] == [base + 60 * 61]


def test_chart_points_span_the_hour_newest_at_the_right() -> None:
    latency = [{"minute": "2027-01-15T08:00:00Z", "p50_s": 1.0, "p95_s": 2.0},
               {"minute": "2027-01-15T08:59:00Z", "p50_s": 0.5, "p95_s": 1.0}]
    p95 = chart_points(latency, "p95_s")
    assert p95[0][0] < p95[1][0] and p95[0][1] < p95[1][1]  # older, higher
    assert chart_points([], "p50_s") == []


def test_rate_budget_measures_the_last_minute() -> None:
    limiter = RateLimiter(10.0)
    budget = RateBudget()
    assert budget.read(limiter, 100.0)["used_fraction"] is None
    for _ in range(300):
        limiter.reserve()
    read = budget.read(limiter, 160.0)
    assert read["used_per_s"] == 5.0 and read["used_fraction"] == 0.5


def test_every_static_file_is_package_data_so_an_installed_wheel_serves_it() -> None:
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["streamsync.runtime.statuspage"]
    static = root / "streamsync" / "runtime" / "statuspage" / "static"
    files = sorted(p.relative_to(static.parent).as_posix() for p in static.iterdir())
    assert files == ["static/page.css", "static/page.js"]
    assert all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files)


async def test_the_service_samples_the_rate_budget_before_anyone_reads_the_page(
        config: Config) -> None:
    clock = iter([100.0, 130.0, 160.0])
    limiter = RateLimiter(10.0)
    data = PageData(config, Metrics(), lambda: Readiness(True), clock=lambda: next(clock))
    data.attach(None, limiter)
    data.sample()
    for _ in range(120):
        limiter.reserve()
    data.sample()
    assert data.budget.read(limiter, 160.0)["used_per_s"] == 2.0
