"""Ingest queues only the updates the profile sync can see (runtime/ingest_parts.py
`ChangeRelevance`, core/change_relevance.py): real CDC from the Salesforce emulator over HTTP,
a real SQLite store, the describes the emulator serves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamsync.config import DEFAULT_LEAD_MAPPING, Config
from streamsync.core.mapping import CompiledMapping
from streamsync.emulators.iterable import IterableEmulator
from streamsync.runtime.ingest_parts import ChangeRelevance
from streamsync.runtime.mappings import compile_mappings
from tests.conftest import build_config, emulator_describes
from tests.runtime.test_ingest import LEAD, Rig, pump, queued, replay_id_of, rig, subscribe

__all__ = ["rig"]  # the fixture, used by name


@dataclass
class InForce:
    """What a pipeline holds: the config and mappings in force (a reload swaps both)."""

    config: Config
    mappings: dict[str, CompiledMapping]


def in_force(config: Config) -> InForce:
    return InForce(config, compile_mappings(config, emulator_describes()))


async def test_an_update_of_fields_no_mapping_reads_queues_nothing_and_moves_the_replay_id(
        rig: Rig) -> None:
    ingest = rig.ingest(relevance=ChangeRelevance(in_force(rig.config), emulator_describes()))
    await subscribe(ingest)
    leads = rig.emu.select_ids("Lead", limit=5)
    rig.emu.state.mass_update("Lead", leads, {"Title": "VP Unmapped"})  # Title: not mapped

    [message] = await pump(ingest)

    assert await queued(rig.store) == {}
    assert ingest.stats.ids_unread == 5 and ingest.stats.ids_queued == 0
    assert rig.metrics.registry.get_sample_value(
        "streamsync_changes_unread_total", {"object": "Lead"}) == 5.0
    state = await rig.store.get_replay(LEAD)
    assert state is not None and state.replay_id == replay_id_of(message)


async def test_updates_of_fields_read_are_queued(rig: Rig) -> None:
    """A mapped field, a compound's component, a relationship's lookup, the identity."""
    ingest = rig.ingest(relevance=ChangeRelevance(in_force(rig.config), emulator_describes()))
    await subscribe(ingest)
    owner = rig.emu.select_ids("User", limit=2)[-1]
    first, name, lookup, email, title = rig.emu.select_ids("Lead", limit=5)
    rig.emu.state.update("Lead", first, {"Status": "Working - Contacted"})
    rig.emu.state.update("Lead", name, {"FirstName": "Renamed"})  # changedFields Name.FirstName
    rig.emu.state.update("Lead", lookup, {"OwnerId": owner})      # Owner.Email read through it
    rig.emu.state.update("Lead", email, {"Email": "moved@example.com"})
    rig.emu.state.update("Lead", title, {"Title": "Unmapped"})

    await pump(ingest, want=5)

    assert set(await queued(rig.store)) == {first, name, lookup, email}
    assert ingest.stats.ids_unread == 1


def with_lead(rig: Rig, iterable: IterableEmulator, tmp_path: Path, **lead: Any) -> Config:
    """The rig's config with these settings of [objects.Lead]."""
    return build_config(rig.emu, iterable, tmp_path,
                        objects={"Lead": lead, "Contact": {}, "Account": {}})


async def test_a_filter_field_counts_though_no_mapping_reads_it(
        rig: Rig, iterable_emulator: IterableEmulator, tmp_path: Path) -> None:
    filtered = with_lead(rig, iterable_emulator, tmp_path, filter="Title != 'Intern'")
    ingest = rig.ingest(relevance=ChangeRelevance(in_force(filtered), emulator_describes()))
    await subscribe(ingest)
    lead = rig.emu.select_ids("Lead", limit=1)[0]
    rig.emu.state.update("Lead", lead, {"Title": "Intern"})  # leaves the filter's scope

    await pump(ingest)

    assert set(await queued(rig.store)) == {lead}


async def test_creates_and_deletes_are_queued_whatever_they_carry(rig: Rig) -> None:
    ingest = rig.ingest(relevance=ChangeRelevance(in_force(rig.config), emulator_describes()))
    await subscribe(ingest)
    created = rig.lead("Fresh", Title="Unmapped")
    gone = rig.emu.select_ids("Lead", limit=1)[0]
    rig.emu.state.delete("Lead", gone)

    await pump(ingest, want=2)

    rows = await queued(rig.store)
    assert {rows[created].change_type, rows[gone].change_type} == {"CREATE", "DELETE"}


async def test_a_reloaded_mapping_is_judged_by_at_once(
        rig: Rig, iterable_emulator: IterableEmulator, tmp_path: Path) -> None:
    """The pipeline's mappings swapped (what a reload does): an update of a newly mapped
    field is queued from then on."""
    syncs = in_force(rig.config)
    ingest = rig.ingest(relevance=ChangeRelevance(syncs, emulator_describes()))
    await subscribe(ingest)
    before, after = rig.emu.select_ids("Lead", limit=2)
    rig.emu.state.update("Lead", before, {"Title": "Unmapped"})
    await pump(ingest)
    assert await queued(rig.store) == {}

    reloaded = with_lead(rig, iterable_emulator, tmp_path,
                         mapping={**DEFAULT_LEAD_MAPPING, "Title": "dataFields.title"})
    syncs.config, syncs.mappings = reloaded, compile_mappings(reloaded, emulator_describes())
    rig.emu.state.update("Lead", after, {"Title": "Mapped now"})
    await pump(ingest)

    assert set(await queued(rig.store)) == {after}


async def test_without_a_describe_every_update_is_queued(rig: Rig) -> None:
    """An object whose fields the describes do not say: nothing is skipped."""
    describes = {k: v for k, v in emulator_describes().items() if k != "Lead"}
    ingest = rig.ingest(relevance=ChangeRelevance(in_force(rig.config), describes))
    await subscribe(ingest)
    lead = rig.emu.select_ids("Lead", limit=1)[0]
    rig.emu.state.update("Lead", lead, {"Title": "Unmapped"})

    await pump(ingest)

    assert set(await queued(rig.store)) == {lead}
