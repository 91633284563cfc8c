"""Inbound consent events between their core form (core/consent_inbound.py) and their store
row (adapters/store/consent_inbox.py): adapters cannot import core, so runtime converts."""

from __future__ import annotations

from streamsync.adapters.store import ConsentEventRow
from streamsync.adapters.store.consent_inbox import Via
from streamsync.core.consent_inbound import InboundEvent


def to_row(event: InboundEvent, via: Via = "webhook") -> ConsentEventRow:
    """The store row of a parsed event."""
    return ConsentEventRow(event.key, event.event_name, event.email, event.user_id,
                           event.created_ms, event.source, event.channel_ids,
                           event.message_type_ids, event.list_ids, via)


def from_row(row: ConsentEventRow) -> InboundEvent:
    """The event a stored row holds."""
    return InboundEvent(row.key, row.event_name, row.email, row.user_id, row.created_ms,
                        row.source, row.channel_ids, row.message_type_ids, row.list_ids)
