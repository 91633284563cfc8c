"""Batches cut by user count and encoded size; oversized users rejected."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsync.core.batching import BatchCutter, cut_batches
from streamsync.core.mapping import payload_hash
from streamsync.errors import RecordError
from streamsync.models import MappedUser


def _user(i: int, pad: int = 0) -> MappedUser:
    payload = {"email": f"user{i}@example.com", "dataFields": {"pad": "x" * pad, "n": i}}
    return MappedUser("Lead", f"00Q{i:015d}", payload["email"], None,  # type: ignore[arg-type]
                      payload, payload_hash(payload))


def test_cut_by_count() -> None:
    batches, rejected = cut_batches([_user(i) for i in range(2500)], max_users=1000)
    assert [len(b.users) for b in batches] == [1000, 1000, 500]
    assert rejected == []
    for batch in batches:
        body = orjson.loads(batch.body)
        assert body == {"users": [u.payload for u in batch.users]}


def test_cut_by_bytes_including_envelope() -> None:
    users = [_user(i, pad=1000) for i in range(50)]
    cap = 10_000
    batches, _ = cut_batches(users, max_users=1000, max_bytes=cap,
                             envelope={"createNewFields": True, "updateOnly": False})
    assert len(batches) > 1
    for batch in batches:
        assert len(batch.body) <= cap
        body = orjson.loads(batch.body)
        assert body["createNewFields"] is True and body["updateOnly"] is False
        assert len(body["users"]) == len(batch.users)
    assert [u for b in batches for u in b.users] == users
    # each batch is as full as it can be: adding the next user would pass the cap
    for batch, nxt in zip(batches, batches[1:], strict=False):
        assert len(batch.body) + 1 + len(orjson.dumps(nxt.users[0].payload)) > cap


def test_default_cap_is_just_under_four_megabytes() -> None:
    users = [_user(i, pad=30_000) for i in range(300)]  # ~9 MB in total
    batches, rejected = cut_batches(users)
    assert not rejected and len(batches) >= 3
    assert all(len(b.body) <= 4_000_000 for b in batches)


def test_a_single_user_over_the_cap_is_rejected_and_others_proceed() -> None:
    users = [_user(0), _user(1, pad=20_000), _user(2)]
    batches, rejected = cut_batches(users, max_bytes=10_000)
    assert [u.sf_id for b in batches for u in b.users] == [users[0].sf_id, users[2].sf_id]
    assert len(rejected) == 1
    user, err = rejected[0]
    assert user is users[1] and err.reason == "too_large"
    with pytest.raises(RecordError):
        BatchCutter(max_bytes=10_000).add(users[1])


def test_streaming_cutter() -> None:
    cutter = BatchCutter(max_users=2)
    assert cutter.add(_user(0)) is None
    assert cutter.add(_user(1)) is None
    closed = cutter.add(_user(2))
    assert closed is not None and len(closed.users) == 2 and len(cutter) == 1
    last = cutter.flush()
    assert last is not None and len(last.users) == 1
    assert cutter.flush() is None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        BatchCutter(max_users=0)
    with pytest.raises(ValueError):
        BatchCutter(max_bytes=10)
    with pytest.raises(ValueError):
        BatchCutter(envelope={"users": []})


@given(st.lists(st.integers(min_value=0, max_value=3000), max_size=60),
       st.integers(min_value=1, max_value=20), st.integers(min_value=200, max_value=20_000))
@settings(max_examples=150, deadline=None)
def test_batching_properties(pads: list[int], max_users: int, max_bytes: int) -> None:
    users = [_user(i, pad) for i, pad in enumerate(pads)]
    batches, rejected = cut_batches(users, max_users=max_users, max_bytes=max_bytes)
    sent = [u for b in batches for u in b.users]
    order = [int(u.sf_id[3:]) for u in sent]
    assert order == sorted(order)  # order kept
    assert sorted(order + [int(u.sf_id[3:]) for u, _ in rejected]) == list(range(len(users)))
    for batch in batches:
        assert 1 <= len(batch.users) <= max_users
        assert len(batch.body) <= max_bytes
        assert orjson.loads(batch.body)["users"] == [u.payload for u in batch.users]
    for user, err in rejected:
        assert len(orjson.dumps(user.payload)) + len(b'{"users":[]}') > max_bytes
        assert err.reason == "too_large"


def test_cutter_holds_about_its_encoded_size() -> None:
    """The users added and not yet cut hold about their encoded size, not orjson's buffer
    each (4 KiB a 100-byte user: 4 MB for a batch of a thousand)."""
    import tracemalloc

    users = [_user(i) for i in range(1000)]
    cutter = BatchCutter(max_users=1000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for user in users:
            assert cutter.add(user) is None
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    batch = cutter.flush()
    assert batch is not None and len(batch.users) == 1000
    assert held < 2 * len(batch.body), (held, len(batch.body))
