"""The CDC echo of our own Salesforce consent write, recognised by its change origin.

streamsync writes an opt-out field to Salesforce only to mirror an Iterable consent event, with
its `Sforce-Call-Options` client name; the CDC event of that write carries the name in
`changeOrigin` (docs/salesforce.md §2.2). The state it states is stored as Iterable's (where it
prevails) before the event's ids are queued, so the re-read finds the two agreeing and nothing
goes back to Iterable (docs/design.md §7).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streamsync.adapters.store import ConsentRow
from streamsync.config import Config
from streamsync.core.consent import ITERABLE, echo_opt_out
from streamsync.core.events import origin_client
from streamsync.models import ChangeEvent


def echoed_consent(config: Config, event: ChangeEvent, message: Mapping[str, Any]
                   ) -> list[ConsentRow]:
    """The consent states an echo of our own write states, one per record (none when the
    event is not ours, not of a consent object, or says nothing certain about opting out)."""
    obj = config.objects.get(event.entity)
    if obj is None or obj.consent is None or event.is_delete:
        return []
    if origin_client(event.change_origin) != config.salesforce.client_name:
        return []
    data = message.get("data")
    payload = data.get("payload") if isinstance(data, Mapping) else None
    if not isinstance(payload, Mapping):
        return []
    value = echo_opt_out(payload, event.changed_fields, obj.consent.opt_out_fields)
    if value is None:
        return []
    return [ConsentRow(event.entity, record_id, value, event.commit_timestamp_ms, ITERABLE)
            for record_id in event.record_ids]
