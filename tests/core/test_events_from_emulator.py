"""Every kind of CDC message the Salesforce emulator publishes parses into a ChangeEvent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from streamsync.core.events import is_echo, parse_event
from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig
from streamsync.models import ChangeEvent


@pytest.fixture
async def emu() -> AsyncIterator[SalesforceEmulator]:
    emulator = SalesforceEmulator(SalesforceEmulatorConfig(seed_leads=5, seed_contacts=3,
                                                           seed_accounts=2))
    await emulator.start(host="127.0.0.1", port=0)
    yield emulator
    await emulator.stop()


def _events(emu: SalesforceEmulator, after: int, channel: str | None = None) -> list[ChangeEvent]:
    out = []
    for retained in emu.bus.events_after(after):
        raw = orjson.loads(retained.message(channel or retained.channel))
        out.append(parse_event(raw, expected_entities={"Lead", "Contact", "Account"}))
    return out


async def test_emulator_messages_parse(emu: SalesforceEmulator) -> None:
    start = emu.bus.latest_replay_id
    lead = emu.state.create("Lead", {"LastName": "Kim", "Company": "Acme",
                                     "Email": "kim@example.com"},
                            origin="com/salesforce/api/rest/66.0;client=streamsync")
    emu.state.update("Lead", lead, {"Email": "kim2@example.com"})
    emu.state.delete("Lead", lead)
    emu.state.undelete("Lead", lead)
    others = [emu.state.create("Lead", {"LastName": f"L{i}", "Company": "C"}) for i in range(3)]
    emu.state.mass_update("Lead", others, {"Rating": "Hot"})
    emu.state.convert_lead(others[0])
    emu.bus.publish_gap("Lead", "GAP_UPDATE", [lead[:15]], 1714566896000)
    emu.bus.publish_gap("Account", "GAP_OVERFLOW", [], 1714566896000)

    events = _events(emu, start)
    kinds = [(e.entity, e.change_type) for e in events]
    assert kinds[:4] == [("Lead", "CREATE"), ("Lead", "UPDATE"), ("Lead", "DELETE"),
                         ("Lead", "UNDELETE")]
    assert all(e.record_ids == (lead,) for e in events[:4])
    assert is_echo(events[0], "streamsync") and not is_echo(events[1], "streamsync")
    merged = [e for e in events if e.change_type == "UPDATE" and len(e.record_ids) == 3]
    assert merged and set(merged[0].record_ids) == set(others)
    converted = [k for k in kinds[8:] if k[1] in ("CREATE", "UPDATE")]
    assert ("Account", "CREATE") in converted and ("Contact", "CREATE") in converted
    gap, overflow = events[-2], events[-1]
    assert gap.is_gap and gap.record_ids == (lead,)  # the 15-character id came back as 18
    assert overflow.is_overflow and overflow.record_ids == ()
    replay_ids = [e.replay_id for e in events]
    assert replay_ids == sorted(replay_ids) and len(set(replay_ids)) == len(replay_ids)
    assert all(e.commit_timestamp_ms > 0 for e in events)


async def test_all_changes_channel(emu: SalesforceEmulator) -> None:
    start = emu.bus.latest_replay_id
    emu.state.create("Account", {"Name": "Acme"})
    events = _events(emu, start, channel="/data/ChangeEvents")
    assert [(e.channel, e.entity) for e in events] == [("/data/ChangeEvents", "Account")]
