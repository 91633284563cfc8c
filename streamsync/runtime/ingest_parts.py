"""What ingest takes from one change besides its replay id: the records to queue (those whose
sync the change can affect), the event-rule candidates, the objects to reconcile and a Lead
conversion to hand over (runtime/ingest.py stores them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from streamsync.adapters.store import IdentityHandover, QueueInput
from streamsync.config import Config, ObjectConfig
from streamsync.core.change_relevance import read_fields, touches
from streamsync.core.event_rules import RuleTrigger
from streamsync.core.events import payload_of
from streamsync.core.ids import KEY_PREFIXES, id_or_none
from streamsync.core.mapping import CompiledMapping
from streamsync.logs import get_logger
from streamsync.models import ChangeEvent, ChangeType, EventCandidate
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.reconcile_scheduler import ReconcileStats
from streamsync.runtime.replay_anchors import ReplayAnchors

log = get_logger("streamsync.runtime.ingest")  # ingest's log, as before the move

Message = dict[str, Any]


@dataclass
class IngestStats(ReconcileStats):
    """Counters of one Ingest (for tests, `status` and logs)."""

    events: int = 0
    malformed: int = 0
    unexpected_entity: int = 0
    echoes: int = 0
    ids_queued: int = 0
    ids_dropped: int = 0
    ids_unread: int = 0  # ids of updates no field of which the object's sync reads
    replay_invalid: int = 0
    store_retries: int = 0


class SyncsInForce(Protocol):
    """The config and compiled mappings in force (the pipeline's; a reload swaps both)."""

    config: Config
    mappings: dict[str, CompiledMapping]


class ChangeRelevance:
    """Whether an UPDATE can change what its object's profile sync sends
    (core/change_relevance.py), judged by the config and mappings in force: after a reload,
    by the new ones (the re-sync the reload schedules reads every record again, so an update
    judged by the old ones just before is not lost)."""

    def __init__(self, syncs: SyncsInForce, describes: Mapping[str, Mapping[str, Any]]) -> None:
        self._syncs = syncs
        self._describes = describes
        self._known: dict[str, tuple[ObjectConfig, CompiledMapping, frozenset[str] | None]] = {}

    def skips(self, event: ChangeEvent) -> bool:
        """True for an UPDATE that changed no field the object's sync reads."""
        if event.change_type != ChangeType.UPDATE:
            return False
        return not touches(event.changed_fields, self._fields(event.entity))

    def _fields(self, name: str) -> frozenset[str] | None:
        obj = self._syncs.config.objects.get(name)
        mapping = self._syncs.mappings.get(name)
        if obj is None or mapping is None or obj.fan_out:
            return None  # a parent's changes reach its children's profiles: every one counts
        known = self._known.get(name)
        if known is not None and known[0] is obj and known[1] is mapping:
            return known[2]
        paths = [*mapping.soql_fields(), *(obj.safe_filter.fields if obj.safe_filter else ())]
        fields = read_fields(name, paths, self._describes)
        self._known[name] = (obj, mapping, fields)
        return fields


def records_to_queue(event: ChangeEvent, queued: Sequence[str],
                     relevance: ChangeRelevance | None, stats: IngestStats, metrics: Metrics
                     ) -> list[QueueInput]:
    """The event's records of `queued` objects (`Config.cdc_objects`), unless its object's sync
    cannot see the change; ids of another object's prefix go to that object when it is
    queued, else are dropped."""
    ids = event.record_ids if event.entity in queued else ()  # else: event rules only
    if ids and relevance is not None and relevance.skips(event):
        stats.ids_unread += len(ids)
        metrics.changes_unread.labels(event.entity).inc(len(ids))
        ids = ()
    items = [QueueInput(event.entity, sf_id, event.change_type) for sf_id in ids]
    for sf_id in event.unexpected_ids:
        owner = KEY_PREFIXES.get(sf_id[:3])
        if owner is not None and owner in queued:
            items.append(QueueInput(owner, sf_id, event.change_type))
        else:
            stats.ids_dropped += 1
            log.warning("ingest.unexpected_id_dropped", channel=event.channel,
                        entity=event.entity, record_id=sf_id, owner=str(owner))
    return items


def objects_to_reconcile(event: ChangeEvent, objects: Sequence[str],
                         stats: IngestStats) -> list[str]:
    """Overflow: the event's object (none for an object only event rules listen to: nothing
    to re-read). Wildcard ids (`003*`): the objects of the prefixes, where configured (the
    event's own object when a prefix is unknown)."""
    if event.is_overflow:
        return [event.entity] if event.entity in objects else []
    out: dict[str, None] = {}
    for prefix in event.wildcard_prefixes:
        owner = KEY_PREFIXES.get(prefix, event.entity)
        if owner in objects:
            out[owner] = None
        else:
            stats.ids_dropped += 1
            log.warning("ingest.unexpected_wildcard_dropped", channel=event.channel,
                        entity=event.entity, prefix=prefix, owner=owner)
    return list(out)


def conversion_of(event: ChangeEvent, message: Message) -> IdentityHandover | None:
    """A Lead conversion event (precedence `contact`; an UPDATE payload carries the fields that
    changed): the Lead's identity goes to the Contact named by ConvertedContactId."""
    if not (event.entity == "Lead" and event.change_type == "UPDATE"
            and len(event.record_ids) == 1):
        return None
    payload = payload_of(message)
    contact_id = None if payload is None else id_or_none(payload.get("ConvertedContactId"))
    if contact_id is None:
        return None
    return IdentityHandover("Lead", event.record_ids[0], "Contact", contact_id)


class EventCandidates:
    """The event-rule candidates of each change (docs/events.md §3); on a channel replayed
    from its oldest retained event, none older than its first subscription."""

    def __init__(self, rules: list[RuleTrigger], anchors: ReplayAnchors) -> None:
        self._rules = rules
        self._anchors = anchors

    def of(self, event: ChangeEvent, message: Message) -> list[EventCandidate]:
        if not self._rules:
            return []
        payload = payload_of(message)
        if payload is None or event.commit_timestamp_ms < \
                self._anchors.event_floor_ms.get(event.channel, 0):
            return []
        return [c for rule in self._rules for c in rule.candidates(event, payload)]


