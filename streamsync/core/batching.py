"""Cut mapped users into Iterable bulkUpdate bodies by user count and encoded byte size."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from streamsync.errors import RecordError
from streamsync.models import DeadLetterReason, MappedUser

DEFAULT_MAX_USERS: Final = 1_000
DEFAULT_MAX_BYTES: Final = 4_000_000   # Iterable's cap is 4 MB (docs/iterable.md §1); stay under
_HEAD: Final = b'{"users":['


def encode_part(value: Any) -> bytes:
    """`value` as compact JSON, in a bytes object of its own size, for a part held until its
    batch is sent. orjson returns each result in a buffer far larger than the text (4 KiB for
    a 200-byte event, 64 KiB for 5 KB): a thousand parts held cost 4 MB instead of 0.2 MB,
    which is what raised the service's RSS in a long event burst (docs/events.md §8)."""
    return bytes(memoryview(orjson.dumps(value)))


@dataclass(frozen=True, slots=True)
class Batch:
    """One bulkUpdate request: its users and the exact JSON body to send."""

    users: tuple[MappedUser, ...]
    body: bytes


class BatchCutter:
    """Streams users in, hands complete batches out; each user is encoded exactly once."""

    def __init__(self, max_users: int = DEFAULT_MAX_USERS, max_bytes: int = DEFAULT_MAX_BYTES,
                 envelope: Mapping[str, Any] | None = None) -> None:
        if max_users < 1:
            raise ValueError("max_users must be at least 1")
        extra = orjson.dumps(dict(envelope or {}))
        if "users" in (envelope or {}):
            raise ValueError("the envelope cannot override `users`")
        # Body layout: {"users":[u1,u2,...]<,"k":v...>}
        self._tail = b"]" + (b"," + extra[1:] if extra != b"{}" else b"}")
        self._overhead = len(_HEAD) + len(self._tail)
        if max_bytes <= self._overhead + 2:
            raise ValueError("max_bytes is too small for the request envelope")
        self.max_users = max_users
        self.max_bytes = max_bytes
        self._users: list[MappedUser] = []
        self._parts: list[bytes] = []
        self._size = self._overhead

    def __len__(self) -> int:
        return len(self._users)

    def add(self, user: MappedUser) -> Batch | None:
        """Add one user; returns the batch it closed, if adding it would overflow one.

        A user that alone would exceed `max_bytes` raises RecordError("too_large").
        """
        part = encode_part(user.payload)
        if self._overhead + len(part) > self.max_bytes:
            raise RecordError(DeadLetterReason.TOO_LARGE,
                              f"{user.object_name} {user.sf_id}: {len(part)} bytes encoded, "
                              f"over the {self.max_bytes}-byte request cap")
        closed = None
        added = len(part) + (1 if self._parts else 0)
        if self._parts and (len(self._parts) >= self.max_users
                            or self._size + added > self.max_bytes):
            closed = self.flush()
            added = len(part)
        self._users.append(user)
        self._parts.append(part)
        self._size += added
        return closed

    def flush(self) -> Batch | None:
        """The pending users as a batch (None when empty)."""
        if not self._parts:
            return None
        batch = Batch(tuple(self._users), _HEAD + b",".join(self._parts) + self._tail)
        self._users, self._parts, self._size = [], [], self._overhead
        return batch


def cut_batches(users: Iterable[MappedUser], max_users: int = DEFAULT_MAX_USERS,
                max_bytes: int = DEFAULT_MAX_BYTES, envelope: Mapping[str, Any] | None = None,
                ) -> tuple[list[Batch], list[tuple[MappedUser, RecordError]]]:
    """All users cut into batches, plus the users too large to send at all."""
    cutter = BatchCutter(max_users, max_bytes, envelope)
    batches: list[Batch] = []
    rejected: list[tuple[MappedUser, RecordError]] = []
    for user in users:
        try:
            closed = cutter.add(user)
        except RecordError as exc:
            rejected.append((user, exc))
            continue
        if closed is not None:
            batches.append(closed)
    last = cutter.flush()
    if last is not None:
        batches.append(last)
    return batches, rejected
