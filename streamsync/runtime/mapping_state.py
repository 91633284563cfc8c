"""A config's sync descriptions per object, compared with what the store last applied: which
objects owe a re-sync, and what it clears (docs/design.md §9)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streamsync.adapters.store import AppliedMapping, ResyncState, StoreAPI
from streamsync.config import Config, ObjectConfig
from streamsync.core.fingerprint import MappingDiff, describe_mapping, diff, fingerprint
from streamsync.core.mapping import CompiledMapping
from streamsync.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class ObjectSync:
    """One object's sync description under a config, and its fingerprint."""

    object_name: str
    description: dict[str, Any]
    fingerprint: str


def policies_of(obj: ObjectConfig) -> dict[str, str | None]:
    """The object's settings, besides the mapping, that change what is sent or to whom."""
    return {
        "delete_flag_field": obj.delete_flag_field if obj.delete_policy == "flag" else None,
        "out_of_scope": obj.out_of_scope,
        "out_of_scope_flag_field": (obj.out_of_scope_flag_field if obj.out_of_scope == "flag"
                                    else None),
    }


def object_syncs(config: Config, mappings: Mapping[str, CompiledMapping]
                 ) -> dict[str, ObjectSync]:
    """The description and fingerprint of every object that writes users."""
    out: dict[str, ObjectSync] = {}
    for name, mapping in mappings.items():
        obj = config.objects[name]
        description = describe_mapping(mapping, filter_text=obj.filter,
                                       policies=policies_of(obj))
        out[name] = ObjectSync(name, description, fingerprint(description))
    return out


def clears_for(change: MappingDiff, null_policy: str) -> list[str]:
    """Targets a re-sync sends as null: the old names of renamed targets always (a move), and
    removed targets when the null policy is `clear` (else they are left in place)."""
    renamed = [c.old_target for c in change.fields if c.kind == "renamed" and c.old_target]
    removed = [c.target for c in change.fields if c.kind == "removed"]
    return sorted(renamed + (removed if null_policy == "clear" else []))


def cleared_of(applied: AppliedMapping | None) -> list[str]:
    """The targets an applied description keeps clearing (dropped by earlier changes)."""
    if applied is None:
        return []
    return [str(t) for t in applied.description.get("cleared") or ()]


def clears_in_force(syncs: Mapping[str, ObjectSync], owed: Mapping[str, ResyncState],
                    applied: Mapping[str, AppliedMapping]) -> dict[str, list[str]]:
    """Per object the targets its payloads send as null: an owed re-sync's clears, else those
    the applied description keeps (when the config is the applied one). Every writer (run,
    backfill, replay) sends them, so equal records keep equal payload hashes."""
    out: dict[str, list[str]] = {}
    for name, sync in syncs.items():
        state, done = owed.get(name), applied.get(name)
        if state is not None and state.fingerprint == sync.fingerprint:
            out[name] = list(state.clears)
        elif done is not None and done.fingerprint == sync.fingerprint:
            out[name] = cleared_of(done)
    return out


async def with_clears(store: StoreAPI, config: Config,
                      mappings: Mapping[str, CompiledMapping]) -> dict[str, CompiledMapping]:
    """`mappings`, each also sending the clears in force for it (`clears_in_force`)."""
    clears = clears_in_force(object_syncs(config, mappings), await store.resyncs(),
                             await store.applied_mappings())
    return {name: m.with_clears(clears[name]) if clears.get(name) else m
            for name, m in mappings.items()}


def left_in_place(change: MappingDiff, null_policy: str) -> list[str]:
    """Removed targets a re-sync does not clear (null policy `omit`)."""
    if null_policy == "clear":
        return []
    return sorted(c.target for c in change.fields if c.kind == "removed")


def needs_out_of_scope_pass(change: MappingDiff, out_of_scope: str) -> bool:
    """Whether records the filter leaves out must be walked: the filter or the out-of-scope
    policy changed, and the policy acts on them."""
    if out_of_scope == "ignore":
        return False
    return change.filter_changed or "policies" in change.settings or change.first


async def schedule_resyncs(store: StoreAPI, syncs: Mapping[str, ObjectSync], now: float
                           ) -> dict[str, ResyncState]:
    """Compare each object with the store; owe a re-sync of each that changed (resume one
    already owed towards the same fingerprint). A store with nothing applied yet (a first
    run) records the descriptions as applied, with no re-sync: loading it is a backfill.
    Returns the re-syncs now owed for these objects."""
    applied = await store.applied_mappings()
    owed = await store.resyncs()
    out: dict[str, ResyncState] = {}
    for name, sync in syncs.items():
        current = owed.get(name)
        if current is not None and current.fingerprint == sync.fingerprint:
            out[name] = current
            log.info("resync.resumed", object=name, phase=current.phase,
                     records_read=current.records_read)
            continue
        done = applied.get(name)
        if current is None and done is not None and done.fingerprint == sync.fingerprint:
            continue
        if current is None and not applied:
            await store.set_applied_mapping(name, sync.fingerprint, sync.description, now)
            log.info("mapping.recorded", object=name, fingerprint=sync.fingerprint[:12])
            continue
        # A re-sync towards another description is replaced: what it may have sent is
        # compared too, so its targets the new mapping drops are cleared as well.
        out[name] = await _start(store, done, current, sync, now)
    return out


async def _start(store: StoreAPI, done: AppliedMapping | None, replaced: ResyncState | None,
                 sync: ObjectSync, now: float) -> ResyncState:
    change = diff(done.description if done is not None else None, sync.description)
    null_policy = str(sync.description["null_policy"])
    clears = clears_for(change, null_policy) + cleared_of(done)
    if replaced is not None:
        clears += clears_for(diff(replaced.description, sync.description), null_policy)
    state = await store.start_resync(sync.object_name, sync.fingerprint, sync.description,
                                     clears, now)
    kept = left_in_place(change, null_policy)
    log.info("resync.scheduled", object=sync.object_name, fingerprint=sync.fingerprint[:12],
             fields=[f"{c.kind} {c.target}" for c in change.fields],
             settings=sorted(change.settings), clears=list(state.clears))
    if kept:
        log.warning("resync.targets_left_in_place", object=sync.object_name, targets=kept,
                    detail="removed from the mapping, not cleared: null_policy is 'omit'")
    return state
