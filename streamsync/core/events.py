"""CometD CDC messages → frozen `ChangeEvent`s; malformed input becomes a clear `MalformedEvent`."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from streamsync.core.ids import KEY_PREFIXES, id_or_none
from streamsync.errors import MalformedEvent, UnexpectedEntity
from streamsync.models import ChangeEvent, ChangeType, SfId

_WILDCARD_RE: Final = re.compile(r"([0-9A-Za-z]{3})\*")
_ENTITY_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,79}")
_CHANNEL_RE: Final = re.compile(r"/[A-Za-z0-9_/]{1,200}")
MAX_RECORD_IDS: Final = 100_000


def channel_for(entity: str) -> str:
    """The per-object CDC channel: `/data/LeadChangeEvent`, `/data/Foo__ChangeEvent`."""
    base = entity[:-3] + "__" if entity.endswith("__c") else entity
    return f"/data/{base}ChangeEvent"


def _int(value: Any, name: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"{name} must be an integer, got {value!r:.40}")


def _str(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    return value


def payload_of(message: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A delivered message's change event body (`data.payload`), or None when it has none."""
    data = message.get("data")
    payload = data.get("payload") if isinstance(data, Mapping) else None
    return payload if isinstance(payload, Mapping) else None


def parse_event(message: Mapping[str, Any],
                expected_entities: Iterable[str] | None = None) -> ChangeEvent:
    """Parse one delivered CDC message: `{"channel", "data": {"payload", "event"}}`."""
    if not isinstance(message, Mapping):
        raise MalformedEvent(f"message is a {type(message).__name__}, not an object")
    channel = message.get("channel")
    if not isinstance(channel, str) or not _CHANNEL_RE.fullmatch(channel):
        raise MalformedEvent(f"missing or invalid channel {channel!r:.60}")
    data = message.get("data")
    if not isinstance(data, Mapping):
        raise MalformedEvent("message has no data object", channel=channel)
    event = data.get("event")
    try:
        replay_id = _int(event.get("replayId") if isinstance(event, Mapping) else None,
                         "data.event.replayId")
    except ValueError as exc:
        raise MalformedEvent(str(exc), channel=channel) from None
    assert replay_id is not None
    try:
        return _parse_payload(data.get("payload"), channel, replay_id, expected_entities)
    except ValueError as exc:
        raise MalformedEvent(str(exc), channel=channel, replay_id=replay_id) from None


def _parse_payload(payload: Any, channel: str, replay_id: int,
                   expected_entities: Iterable[str] | None) -> ChangeEvent:
    if not isinstance(payload, Mapping):
        raise ValueError("data.payload is missing or not an object")
    header = payload.get("ChangeEventHeader")
    if not isinstance(header, Mapping):
        raise ValueError("data.payload.ChangeEventHeader is missing or not an object")
    entity = header.get("entityName")
    if not isinstance(entity, str) or not _ENTITY_RE.fullmatch(entity):
        raise ValueError(f"invalid entityName {entity!r:.60}")
    change_type = header.get("changeType")
    if not isinstance(change_type, str) or change_type not in ChangeType.ALL:
        raise ValueError(f"unknown changeType {change_type!r:.40}")
    if channel.startswith("/data/") and channel.endswith("ChangeEvent") \
            and channel != channel_for(entity):
        raise ValueError(f"entity {entity!r} does not belong on channel {channel}")
    if expected_entities is not None and entity not in set(expected_entities):
        raise UnexpectedEntity(entity, channel=channel, replay_id=replay_id)
    ids, wildcards, unexpected = _record_ids(header.get("recordIds"), entity, change_type)
    commit_ts = _int(header.get("commitTimestamp"), "commitTimestamp")
    assert commit_ts is not None
    if commit_ts < 0:
        raise ValueError("commitTimestamp must not be negative")
    changed = header.get("changedFields") or []
    if not isinstance(changed, list) or not all(isinstance(f, str) for f in changed):
        raise ValueError("changedFields must be a list of strings")
    return ChangeEvent(
        channel=channel,
        replay_id=replay_id,
        entity=entity,
        change_type=change_type,
        record_ids=ids,
        wildcard_prefixes=wildcards,
        unexpected_ids=unexpected,
        commit_timestamp_ms=commit_ts,
        commit_number=_int(header.get("commitNumber"), "commitNumber", optional=True),
        transaction_key=_str(header.get("transactionKey"), "transactionKey"),
        sequence_number=_int(header.get("sequenceNumber"), "sequenceNumber", optional=True),
        change_origin=_str(header.get("changeOrigin"), "changeOrigin"),
        commit_user=_str(header.get("commitUser"), "commitUser"),
        changed_fields=tuple(changed),
    )


def _record_ids(raw: Any, entity: str, change_type: str
                ) -> tuple[tuple[SfId, ...], tuple[str, ...], tuple[SfId, ...]]:
    if change_type == ChangeType.GAP_OVERFLOW:
        return (), (), ()  # overflow: no record ids, a dummy at most (docs/salesforce.md §2.5)
    if not isinstance(raw, list):
        raise ValueError("recordIds must be a list")
    if len(raw) > MAX_RECORD_IDS:
        raise ValueError(f"recordIds holds {len(raw)} ids (more than {MAX_RECORD_IDS})")
    ids: dict[SfId, None] = {}
    wildcards: dict[str, None] = {}
    unexpected: dict[SfId, None] = {}
    for value in raw:
        if isinstance(value, str) and (m := _WILDCARD_RE.fullmatch(value)):
            wildcards[m[1]] = None
            continue
        sf_id = id_or_none(value)
        if sf_id is None:
            raise ValueError(f"invalid record id {value!r:.40} in recordIds")
        owner = KEY_PREFIXES.get(sf_id[:3])
        if owner is not None and owner != entity:
            unexpected[sf_id] = None
        else:
            ids[sf_id] = None
    if not ids and not wildcards and not unexpected:
        raise ValueError("recordIds is empty")
    return tuple(ids), tuple(wildcards), tuple(unexpected)


def origin_client(change_origin: str) -> str | None:
    """The `client=` value of a changeOrigin such as `com/salesforce/api/rest/66.0;client=X`."""
    for part in change_origin.split(";")[1:]:
        key, sep, value = part.strip().partition("=")
        if sep and key.strip().lower() == "client":
            return value.strip()
    return None


def is_echo(event: ChangeEvent, client_id: str | None) -> bool:
    """True when the change was made by our own client id (echo suppression)."""
    if not client_id:
        return False
    return origin_client(event.change_origin) == client_id
