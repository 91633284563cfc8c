"""Subscribe/unsubscribe events: how a change of subscription state becomes events, and their
shapes in a system-webhook body and an export line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from .profiles import Profile, Subscriptions, iterable_timestamp

SUBSCRIBE: Final = "emailSubscribe"
UNSUBSCRIBE: Final = "emailUnSubscribe"
HOSTED_CLICK: Final = "hostedUnsubscribeClick"
CONSENT_EVENTS: Final[tuple[str, ...]] = (SUBSCRIBE, UNSUBSCRIBE, HOSTED_CLICK)


@dataclass
class ConsentEvent:
    """One emailSubscribe / emailUnSubscribe / hostedUnsubscribeClick, as Iterable records it.

    `channel_ids`, `message_type_ids`, `email_list_ids` are the groups this event changed;
    `source` is the unsubSource (unsubscribe) or signupSource (subscribe); `extra` holds the
    attribution fields (campaignId, templateId, messageTypeId, channelId, ip, url, ...).
    """

    seq: int
    event_name: str
    email: str | None
    user_id: str | None
    created_wall: float
    source: str | None
    channel_ids: list[int] = field(default_factory=list)
    message_type_ids: list[int] = field(default_factory=list)
    email_list_ids: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    profile_updated_wall: float | None = None

    def data_fields(self) -> dict[str, Any]:
        """The event's fields: the webhook's `dataFields` and the export line's body."""
        out: dict[str, Any] = {}
        if self.email is not None:
            out["email"] = self.email
        if self.user_id is not None:
            out["userId"] = self.user_id
        out["createdAt"] = iterable_timestamp(self.created_wall)
        if self.event_name == HOSTED_CLICK:
            out.update(self.extra)
            return out
        if self.event_name == SUBSCRIBE:
            out["signupSource"] = self.source
            if self.profile_updated_wall is not None:
                out["profileUpdatedAt"] = iterable_timestamp(self.profile_updated_wall)
        else:
            out["unsubSource"] = self.source
        out["emailListIds"] = list(self.email_list_ids)
        out["channelIds"] = list(self.channel_ids)
        out["messageTypeIds"] = list(self.message_type_ids)
        out.update(self.extra)
        return out

    def webhook_body(self) -> dict[str, Any]:
        """The system-webhook POST body: email, userId?, eventName, dataFields (repeats email)."""
        body: dict[str, Any] = {}
        if self.email is not None:
            body["email"] = self.email
        if self.user_id is not None:
            body["userId"] = self.user_id
        body["eventName"] = self.event_name
        body["dataFields"] = self.data_fields()
        return body

    def record(self) -> dict[str, Any]:
        """A JSON-ready view for the control API."""
        return {"seq": self.seq, "eventName": self.event_name, **self.data_fields()}


Listener = Callable[[ConsentEvent], None]


class ConsentLog:
    """Every consent event of a project in order; listeners (the webhook sender) see each one."""

    def __init__(self) -> None:
        self.events: list[ConsentEvent] = []
        self.listeners: list[Listener] = []
        self._seq = 0

    def add(
        self,
        event_name: str,
        profile: Profile,
        wall_s: float,
        source: str | None,
        *,
        channel_ids: list[int] | None = None,
        message_type_ids: list[int] | None = None,
        email_list_ids: list[int] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ConsentEvent:
        """Record one event and hand it to the listeners."""
        self._seq += 1
        event = ConsentEvent(
            self._seq,
            event_name,
            profile.email,
            profile.user_id,
            wall_s,
            source,
            list(channel_ids or []),
            list(message_type_ids or []),
            list(email_list_ids or []),
            dict(extra or {}),
            profile.updated_wall if event_name == SUBSCRIBE else None,
        )
        self.events.append(event)
        for listener in self.listeners:
            listener(event)
        return event

    def clear(self) -> None:
        """Forget every event (listeners stay)."""
        self.events.clear()


@dataclass
class SubscriptionDiff:
    """Groups a change opted the user out of and into."""

    out_channels: list[int] = field(default_factory=list)
    out_types: list[int] = field(default_factory=list)
    out_lists: list[int] = field(default_factory=list)
    in_channels: list[int] = field(default_factory=list)
    in_types: list[int] = field(default_factory=list)
    in_lists: list[int] = field(default_factory=list)

    @property
    def unsubscribed(self) -> bool:
        """Whether the change opted out of anything."""
        return bool(self.out_channels or self.out_types or self.out_lists)

    @property
    def subscribed(self) -> bool:
        """Whether the change opted into anything."""
        return bool(self.in_channels or self.in_types or self.in_lists)


def _added(old: list[int], new: list[int]) -> list[int]:
    before = set(old)
    return [i for i in new if i not in before]


def apply_values(subs: Subscriptions, values: dict[str, list[int]]) -> SubscriptionDiff:
    """Overwrite the arrays named in `values`; what was opted out of and into."""
    diff = SubscriptionDiff()
    for name, new in values.items():
        old = list(subs.get(name))
        subs.set(name, new)
        new = subs.get(name)
        added, removed = _added(old, new), _added(new, old)
        if name in ("emailListIds", "userListIds"):
            diff.in_lists += added
            diff.out_lists += removed
        elif name == "unsubscribedChannelIds":
            diff.out_channels += added
            diff.in_channels += removed
        elif name == "unsubscribedMessageTypeIds":
            diff.out_types += added
            diff.in_types += removed
        else:  # subscribedMessageTypeIds
            diff.in_types += added
            diff.out_types += removed
    return diff


def record_diff(
    log: ConsentLog,
    profile: Profile,
    diff: SubscriptionDiff,
    wall_s: float,
    unsub_source: str,
    signup_source: str,
    extra: dict[str, Any] | None = None,
) -> list[ConsentEvent]:
    """The events of a change: one unsubscribe and/or one subscribe."""
    events: list[ConsentEvent] = []
    if diff.unsubscribed:
        events.append(
            log.add(
                UNSUBSCRIBE, profile, wall_s, unsub_source,
                channel_ids=diff.out_channels, message_type_ids=diff.out_types,
                email_list_ids=diff.out_lists, extra=extra,
            )
        )
    if diff.subscribed:
        events.append(
            log.add(
                SUBSCRIBE, profile, wall_s, signup_source,
                channel_ids=diff.in_channels, message_type_ids=diff.in_types,
                email_list_ids=diff.in_lists, extra=extra,
            )
        )
    return events
