"""The consent inbox and export cursors in a real SQLite store: dedupe by key, settling,
retries that never fail an event, pruning."""

from __future__ import annotations

import pytest

from streamsync.adapters.store import ConsentEventRow, IdentityUpdate
from streamsync.errors import LeadershipLost
from tests.store_backends import StoreSpace

T0 = 1_796_454_000.0


def _row(key: str, at_ms: int = 1_000, name: str = "emailUnSubscribe") -> ConsentEventRow:
    return ConsentEventRow(key, name, "a@x.co", None, at_ms, "EmailLink", (39581,), (), (7, 8))


async def test_inbox_lifecycle(store_space: StoreSpace) -> None:
    store = await store_space.open()
    try:
        assert await store.add_consent_events([_row("k1", 2_000), _row("k2", 1_000)],
                                              "webhook", T0) == 2
        assert await store.add_consent_events([_row("k1", 2_000)], "webhook", T0) == 0
        due = await store.due_consent_events(T0)
        assert [(r.key, r.deliveries, r.list_ids, r.via) for r in due] == [
            ("k2", 1, (7, 8), "webhook"), ("k1", 2, (7, 8), "webhook")]
        await store.retry_consent_events(["k2"], "salesforce down", T0, 5.0)
        assert [r.key for r in await store.due_consent_events(T0 + 1)] == ["k1"]
        assert await store.next_consent_due() == T0
        await store.settle_consent_events({"k1": ("done", "applied to Lead 00Q")}, T0 + 1)
        assert await store.next_consent_due() == T0 + 5.0
        assert [(r.key, r.attempts) for r in await store.due_consent_events(T0 + 5)] == [
            ("k2", 1)]
        await store.settle_consent_events({"k2": ("failed", "ENTITY_IS_DELETED")}, T0 + 6)
        assert await store.consent_inbox_counts() == {"done": 1, "failed": 1}
        found = await store.consent_events(["k1", "k2", "nope"])
        assert (found["k1"].state, found["k1"].outcome) == ("done", "applied to Lead 00Q")
        # A late duplicate of a settled event is still a duplicate.
        assert await store.add_consent_events([_row("k1", 2_000)], "export", T0 + 7) == 0
        assert await store.prune_consent_events(T0 + 2) == 1
        assert await store.add_consent_events([_row("k1", 2_000)], "export", T0 + 8) == 1
        with pytest.raises(ValueError):
            await store.settle_consent_events({"k1": ("pending", "x")}, T0)
    finally:
        await store.close()


async def test_the_cursor_moves_with_its_window_in_one_transaction(
        store_space: StoreSpace) -> None:
    store = await store_space.open()
    try:
        assert await store.consent_cursor("emailUnSubscribe") is None
        assert await store.add_exported_events([_row("k1")], "emailUnSubscribe", 5_000, T0) == 1
        assert await store.add_exported_events([], "emailSubscribe", 6_000, T0) == 0
        assert await store.consent_cursor("emailUnSubscribe") == 5_000
        assert await store.consent_cursor("emailSubscribe") == 6_000
        assert (await store.due_consent_events(T0))[0].via == "export"
    finally:
        await store.close()


async def test_identities_are_found_by_email_or_user_id(store_space: StoreSpace) -> None:
    store = await store_space.open()
    try:
        await store.save_identities([
            IdentityUpdate("Lead", "00Q1", "Ann@X.io", None, "h"),
            IdentityUpdate("Contact", "0031", "bob@x.io", "u-2", "h"),
            IdentityUpdate("Contact", "0032", None, "u-3", "h")], T0)
        found = await store.identities_for_users(["ann@x.io"], ["u-3", "u-9"])
        assert sorted(i.record_id for i in found) == ["0032", "00Q1"]
        assert await store.identities_for_users([], []) == []
    finally:
        await store.close()


async def test_webhook_events_come_due_before_an_exported_backlog_and_a_window_inserts_once(
        store_space: StoreSpace) -> None:
    store = await store_space.open()
    try:
        window = [_row(f"x{i}", 1_000 + i) for i in range(600)]
        assert await store.add_exported_events(window + window[:3], "emailUnSubscribe",
                                               9_000, T0) == 600
        assert await store.add_exported_events(window, "emailUnSubscribe", 9_500, T0) == 0
        assert await store.add_consent_events([_row("fresh", 50_000)], "webhook", T0) == 1
        due = await store.due_consent_events(T0, limit=3)
        assert [(r.key, r.via) for r in due] == [("fresh", "webhook"), ("x0", "export"),
                                                 ("x1", "export")]
        # Re-reads of the lookback count as deliveries: the first three were seen three times.
        counts = await store.consent_events(["x0", "x3"])
        assert (counts["x0"].deliveries, counts["x3"].deliveries) == (3, 2)
    finally:
        await store.close()


async def test_a_fenced_window_commits_only_under_the_current_lease_token(
        store_space: StoreSpace) -> None:
    """A poller deposed from the consent/inbound lease moves neither the cursor nor the inbox."""
    store = await store_space.open()
    try:
        old = await store.acquire_channel("consent/inbound", "w1", 5.0, T0, take_over=False)
        assert old is not None
        assert await store.add_exported_events([_row("k1")], "emailUnSubscribe", 5_000, T0,
                                               fence=("consent/inbound", old.token)) == 1
        new = await store.acquire_channel("consent/inbound", "w2", 5.0, T0 + 10,
                                          take_over=False)  # w1's lease ran out
        assert new is not None and new.token > old.token
        with pytest.raises(LeadershipLost):
            await store.add_exported_events([_row("k2")], "emailUnSubscribe", 9_000, T0 + 10,
                                            fence=("consent/inbound", old.token))
        assert await store.consent_cursor("emailUnSubscribe") == 5_000
        assert set(await store.consent_events(["k1", "k2"])) == {"k1"}
        assert await store.add_exported_events([_row("k2")], "emailUnSubscribe", 9_000, T0 + 10,
                                               fence=("consent/inbound", new.token)) == 1
        assert await store.consent_cursor("emailUnSubscribe") == 9_000
    finally:
        await store.close()
