"""The CDC echo of our own Salesforce consent write, recognised by its change origin.

streamsync writes an opt-out field to Salesforce only to mirror an Iterable consent event, with
its `Sforce-Call-Options` client name; the CDC event of that write carries the name in
`changeOrigin` (docs/salesforce.md §2.2). The state it states is stored as Iterable's (where it
prevails) before the event's ids are queued, so the re-read finds the two agreeing and nothing
goes back to Iterable (docs/design.md §7). `consent_of_event` is ingest's consent step: that,
and handing the opt-outs an event settles to the fast path (runtime/consent_fast.py).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from streamsync.adapters.store import ConsentRow, StoreAPI
from streamsync.config import Config
from streamsync.core.consent import ITERABLE, echo_opt_out
from streamsync.core.events import is_echo, payload_of
from streamsync.models import ChangeEvent
from streamsync.runtime.consent_fast import ConsentFastPath
from streamsync.runtime.ingest_batch import EventBatch


def echoed_consent(config: Config, event: ChangeEvent, message: Mapping[str, Any]
                   ) -> list[ConsentRow]:
    """The consent states an echo of our own write states, one per record (none when the
    event is not ours, not of a consent object, or says nothing certain about opting out)."""
    obj = config.objects.get(event.entity)
    if obj is None or obj.consent is None or event.is_delete:
        return []
    if not is_echo(event, config.salesforce.client_name):
        return []
    payload = payload_of(message)
    if payload is None:
        return []
    value = echo_opt_out(payload, event.changed_fields, obj.consent.opt_out_fields)
    if value is None:
        return []
    return [ConsentRow(event.entity, record_id, value, event.commit_timestamp_ms, ITERABLE)
            for record_id in event.record_ids]


async def consent_of_event(config: Config, store: StoreAPI, fast: ConsentFastPath | None,
                           batch: EventBatch, event: ChangeEvent, message: Mapping[str, Any],
                           now: float) -> None:
    """Ingest's consent step for one event: the state an echo of ours states is stored before
    the event's ids are queued (their re-read must find it stored); an opt-out the event
    settles goes to the fast path once the batch is committed (runtime/consent_fast.py)."""
    echoed = echoed_consent(config, event, message)
    if echoed:
        await store.note_consent_states(echoed, now)
    if fast is not None and (hint := fast.hint(event, message)) is not None:
        batch.after(functools.partial(fast.submit, hint))
