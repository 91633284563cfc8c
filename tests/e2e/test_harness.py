"""The end-to-end harness itself: the final-state check passes on a faithful copy and fails on
each kind of divergence (wrong field, missing profile, leftover profile, unjustified dead letter),
and the drain wait times out on a stuck queue."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest

from streamsync.adapters.store import QueueInput, Store
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.models import DeadLetterReason
from tests.conftest import build_config
from tests.e2e.harness import E2EError, FinalStateChecker, backfill, wait_drained

pytestmark = pytest.mark.timeout(30)


async def _iterable_post(it: IterableEmulator, path: str, body: dict[str, object]) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            it.base_url + path, json=body, headers={"Api-Key": it.api_key}) as resp:
        assert resp.status == 200, await resp.text()
    it.flush()


async def _iterable_delete(it: IterableEmulator, email: str) -> None:
    async with aiohttp.ClientSession() as session, session.delete(
            f"{it.base_url}/api/users/{email}", headers={"Api-Key": it.api_key}) as resp:
        assert resp.status == 200, await resp.text()
    it.flush()


async def test_check_passes_after_backfill_and_fails_on_every_divergence(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    config = build_config(sf_emulator, iterable_emulator, tmp_path)
    await backfill(config)
    async with FinalStateChecker.open(config, iterable_emulator) as checker:
        state = await checker.assert_consistent(timeout_s=0)
        assert state.records_compared == 24 and state.dead_letters == []

        lead = sf_emulator.select_ids("Lead", "Email != null")[0]
        record = sf_emulator.state.record("Lead", lead)
        assert record is not None
        email = str(record["Email"]).lower()
        await _iterable_post(iterable_emulator, "/api/users/update",
                             {"email": email, "dataFields": {"firstName": "Tampered"}})
        state = await checker.check()
        assert not state.ok and any("fields differ" in m for m in state.real_mismatches)
        with pytest.raises(E2EError, match="firstName"):
            await checker.assert_consistent(timeout_s=0)
        await _iterable_post(iterable_emulator, "/api/users/update",
                             {"email": email, "dataFields": {"firstName": record["FirstName"]}})
        assert (await checker.check()).ok

        await _iterable_post(iterable_emulator, "/api/users/update",
                             {"email": "stranger@example.com", "dataFields": {"x": 1}})
        state = await checker.check()
        assert state.report.unexpected_profiles == {"stranger@example.com"} and not state.ok
        await _iterable_delete(iterable_emulator, "stranger@example.com")

        contact = sf_emulator.select_ids("Contact", "Email != null")[0]
        contact_record = sf_emulator.state.record("Contact", contact)
        assert contact_record is not None
        contact_email = str(contact_record["Email"]).lower()
        await _iterable_delete(iterable_emulator, contact_email)
        state = await checker.check()
        assert any("missing in Iterable" in m for m in state.real_mismatches)


async def test_a_dead_letter_for_a_good_record_is_unjustified(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    config = build_config(sf_emulator, iterable_emulator, tmp_path)
    await backfill(config)
    store = await Store.open(config.queue.path)
    try:
        lead = sf_emulator.select_ids("Lead", "Email != null")[0]
        await store.enqueue([QueueInput("Lead", lead)], time.time(), "cdc")
        leases = await store.lease("test", 10, 60.0, time.time())
        await store.dead_letter(leases, DeadLetterReason.INVALID_EMAIL, "made up", time.time())
        async with FinalStateChecker.open(config, iterable_emulator) as checker:
            state = await checker.check()
        assert [d.record_id for d in state.unjustified_dead] == [lead] and not state.ok
    finally:
        await store.close()


async def test_wait_drained_times_out_on_a_stuck_queue(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "q.db")
    try:
        await wait_drained(store, 0.1)  # empty: returns at once
        await store.enqueue([QueueInput("Lead", "00Q000000000001AAA")], time.time(), "cdc")
        with pytest.raises(E2EError, match="queue to drain"):
            await wait_drained(store, 0.2)
    finally:
        await store.close()
