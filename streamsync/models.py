"""Small frozen value types shared across streamsync's modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, NewType

# An 18-character Salesforce record id, its case checksum verified. Made only by core/ids.py
# (parse_id, id_or_none, row_id), once, where an id enters: a CDC message, a SOQL row.
SfId = NewType("SfId", str)


class DeadLetterReason:
    """Stable reason codes written to the dead-letter table."""

    MISSING_EMAIL: Final = "missing_email"
    INVALID_EMAIL: Final = "invalid_email"
    MISSING_USER_ID: Final = "missing_user_id"
    INVALID_USER_ID: Final = "invalid_user_id"
    INVALID_VALUE: Final = "invalid_value"
    VALUE_TOO_LONG: Final = "value_too_long"
    TOO_LARGE: Final = "too_large"
    TYPE_MISMATCH: Final = "type_mismatch"
    INVALID_DATA: Final = "invalid_data"
    CONFLICT: Final = "conflict"
    FORGOTTEN: Final = "forgotten"
    INVALID_ID: Final = "invalid_id"


class EventProblem:
    """Why a CDC message was skipped (logged and kept for status, never dead-lettered: a
    message names no record that could be retried)."""

    MALFORMED_EVENT: Final = "malformed_event"
    UNKNOWN_ENTITY: Final = "unknown_entity"


class ChangeType:
    """CDC change types as they appear in `ChangeEventHeader.changeType`."""

    CREATE: Final = "CREATE"
    UPDATE: Final = "UPDATE"
    DELETE: Final = "DELETE"
    UNDELETE: Final = "UNDELETE"
    GAP_CREATE: Final = "GAP_CREATE"
    GAP_UPDATE: Final = "GAP_UPDATE"
    GAP_DELETE: Final = "GAP_DELETE"
    GAP_UNDELETE: Final = "GAP_UNDELETE"
    GAP_OVERFLOW: Final = "GAP_OVERFLOW"
    SNAPSHOT: Final = "SNAPSHOT"

    ALL: Final = frozenset({
        "CREATE", "UPDATE", "DELETE", "UNDELETE", "GAP_CREATE", "GAP_UPDATE", "GAP_DELETE",
        "GAP_UNDELETE", "GAP_OVERFLOW", "SNAPSHOT",
    })


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One parsed CDC message: which records of which object changed, and how."""

    channel: str
    replay_id: int
    entity: str
    change_type: str
    record_ids: tuple[SfId, ...]         # in message order, deduplicated
    wildcard_prefixes: tuple[str, ...]   # key prefixes of `001*`-style wildcard ids
    unexpected_ids: tuple[SfId, ...]     # ids whose key prefix belongs to another object
    commit_timestamp_ms: int
    commit_number: int | None
    transaction_key: str
    sequence_number: int | None
    change_origin: str
    commit_user: str
    changed_fields: tuple[str, ...]

    @property
    def is_gap(self) -> bool:
        """A `GAP_*` event (not overflow): the listed records must be re-read."""
        return self.change_type.startswith("GAP_") and not self.is_overflow

    @property
    def is_overflow(self) -> bool:
        """A `GAP_OVERFLOW` event: the whole object must be reconciled."""
        return self.change_type == ChangeType.GAP_OVERFLOW

    @property
    def is_wildcard(self) -> bool:
        """The event names records by key prefix only (`001*`): reconcile the object."""
        return bool(self.wildcard_prefixes)

    @property
    def needs_reconcile(self) -> bool:
        """True when the record ids alone cannot say what changed."""
        return self.is_overflow or self.is_wildcard

    @property
    def is_delete(self) -> bool:
        return self.change_type in (ChangeType.DELETE, ChangeType.GAP_DELETE)


@dataclass(frozen=True, slots=True)
class MappedUser:
    """One Salesforce record mapped to an Iterable bulkUpdate user item."""

    object_name: str
    sf_id: str
    email: str | None
    user_id: str | None
    payload: dict[str, Any]   # the bulkUpdate item: email / userId / dataFields
    payload_hash: str         # stable hash of `payload`, for skipping unchanged records

    @property
    def key(self) -> str:
        """The identifier Iterable reports failures by: the email if sent, else the userId."""
        return self.email if self.email is not None else (self.user_id or "")


@dataclass(frozen=True, slots=True)
class EventCandidate:
    """One (event rule, record) of a CDC change, stored with the change's replay id
    (docs/events.md §3).

    `fires`: the rule's trigger and changed_fields matched (else the row only carries the
    condition's state forward); `values`: the new values (by lower-case field name) of the
    condition fields the change carries; `touches_condition`: the change set one of them."""

    event_id: str
    rule: str
    object_name: str
    record_id: str
    change_type: str
    commit_ts_ms: int
    fires: bool
    values: dict[str, Any]
    touches_condition: bool
