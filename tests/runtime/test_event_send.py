"""The send step's batches: what they hold in memory while a lease waits for its sends."""

from __future__ import annotations

import tracemalloc

import orjson

from streamsync.adapters.store.events import PendingEvent
from streamsync.models import EventCandidate
from streamsync.runtime.event_send import _body, cut_batches


def _pending(i: int) -> PendingEvent:
    event_id = f"{i:040x}"
    item = {"id": event_id, "eventName": "lead_title", "email": f"lead{i}@example.com",
            "createdAt": 1_764_950_000, "dataFields": {"title": f"VP {i}", "company": "Acme"}}
    candidate = EventCandidate(event_id, "title", "Lead", f"00Q{i:015d}", "UPDATE",
                               1_764_950_000_000, True, {}, False)
    return PendingEvent(candidate, item, 0, 0.0, "token")


def test_batches_hold_about_their_encoded_size() -> None:
    """A send loop holds its lease's encoded events until the batch is sent: about their own
    size, not orjson's buffer each (4 KiB an event: 4 MB for a lease of a thousand)."""
    leased = [_pending(i) for i in range(1000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        batches = cut_batches(leased, 1000, 4_000_000)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    encoded = sum(len(part) for batch in batches for _, part in batch)
    assert encoded > 150_000
    assert held < 2 * encoded, (held, encoded)


def test_batches_cut_by_count_and_size_in_order() -> None:
    leased = [_pending(i) for i in range(2500)]
    by_count = cut_batches(leased, 1000, 4_000_000)
    assert [len(b) for b in by_count] == [1000, 1000, 500]
    assert [p for b in by_count for p, _ in b] == leased
    for batch in by_count:
        assert orjson.loads(_body(batch)) == {"events": [p.payload for p, _ in batch]}
    by_size = cut_batches(leased[:100], 1000, 10_000)
    assert all(len(_body(b)) <= 10_000 for b in by_size)
    assert [p for b in by_size for p, _ in b] == leased[:100]
