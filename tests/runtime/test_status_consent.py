"""`status` shows the Iterable consent events on their way to Salesforce (pending, done,
failed) and how far the export poller has read."""

from __future__ import annotations

from streamsync.adapters.store import ConsentEventRow, Store
from streamsync.cli.status import render_status
from streamsync.config import Config
from streamsync.runtime.status import read_status

NOW = 1_796_454_000.0  # 2026-12-05 07:00:00 UTC


def _row(key: str) -> ConsentEventRow:
    return ConsentEventRow(key, "emailUnSubscribe", "a@x.co", None, 1_000, "EmailLink", (1,))


async def test_status_counts_consent_events_and_the_export_cursor(store: Store,
                                                                  config: Config) -> None:
    assert "Consent events" not in render_status(await read_status(store, config, NOW))
    await store.add_consent_events([_row("a"), _row("b"), _row("c")], "webhook", NOW)
    await store.add_exported_events([], "emailUnSubscribe", int(NOW * 1000), NOW)
    await store.settle_consent_events({"a": ("done", "ok"), "b": ("failed", "refused")}, NOW)
    data = await read_status(store, config, NOW)
    assert data["consent_inbox"] == {
        "by_state": {"done": 1, "failed": 1, "pending": 1},
        "export_read_up_to": {"emailUnSubscribe": "2026-12-05T07:00:00Z",
                              "emailSubscribe": None}}
    text = render_status(data)
    assert "Consent events from Iterable: pending 1, done 1, failed 1" in text
    assert "export read up to: emailUnSubscribe 2026-12-05T07:00:00Z" in text
