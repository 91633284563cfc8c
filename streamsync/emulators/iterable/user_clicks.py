"""What a person does in Iterable's UI: click "unsubscribe" in an email, or sign up on a form.

Each acts like the real thing: the subscription state changes, the consent event is recorded
(so the webhook fires and the export shows it) with the attribution of the message clicked.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from .consent import HOSTED_CLICK, ConsentEvent
from .messaging import Messaging, change_subscriptions, with_id, without_id
from .profiles import Profile

Scope = Literal["messageType", "channel", "all"]
CLICK_SOURCE: Final = "EmailLink"
FORM_SOURCE: Final = "WebForm"
HOSTED_PAGE: Final = "https://links.iterable.com/e/unsubscribe"


def unsubscribe_click(
    messaging: Messaging,
    profile: Profile,
    wall_s: float,
    *,
    message_type_id: int | None = None,
    channel_id: int | None = None,
    scope: Scope | None = None,
    campaign_id: int | None = None,
    template_id: int | None = None,
    hosted: bool = False,
) -> list[ConsentEvent]:
    """Unsubscribe as a person clicking the link of a message of `message_type_id` (or one
    sent on `channel_id`): from that type (default), its whole channel, or every marketing
    channel (`scope`). With `hosted`, the hosted page's click event comes first."""
    catalog = messaging.catalog
    if message_type_id is not None:
        if message_type_id not in catalog.message_types:
            raise ValueError(f"no message type {message_type_id}")
        channel_id = catalog.message_types[message_type_id].channel_id
    elif channel_id is None:
        raise ValueError("give messageTypeId or channelId (the message that was clicked)")
    elif channel_id not in catalog.channels:
        raise ValueError(f"no channel {channel_id}")
    scope = scope or ("messageType" if message_type_id is not None else "channel")
    if scope == "messageType" and message_type_id is None:
        raise ValueError("scope messageType needs messageTypeId")
    extra: dict[str, Any] = {}
    for name, value in (("campaignId", campaign_id), ("templateId", template_id),
                        ("messageTypeId", message_type_id), ("channelId", channel_id)):
        if value is not None:
            extra[name] = value
    events: list[ConsentEvent] = []
    if hosted:
        click = {**extra, "ip": "127.0.0.1", "userAgent": "Mozilla/5.0", "url": HOSTED_PAGE}
        events.append(messaging.log.add(HOSTED_CLICK, profile, wall_s, None, extra=click))
    subs = profile.subscriptions()
    values: dict[str, list[int]]
    if scope == "all":
        closed = subs.unsubscribed_channel_ids
        values = {"unsubscribedChannelIds": closed + [
            c for c in catalog.marketing_channel_ids() if c not in closed]}
    elif scope == "channel":
        assert channel_id is not None
        values = {"unsubscribedChannelIds": with_id(subs.unsubscribed_channel_ids, channel_id)}
    else:
        assert message_type_id is not None
        values = _type_values(messaging, profile, message_type_id, subscribe=False)
    events += change_subscriptions(messaging, profile, values, wall_s, CLICK_SOURCE,
                                   FORM_SOURCE, extra)
    return events


def subscribe_click(
    messaging: Messaging,
    profile: Profile,
    wall_s: float,
    *,
    message_type_id: int | None = None,
    channel_id: int | None = None,
    list_id: int | None = None,
) -> list[ConsentEvent]:
    """Subscribe as a person submitting a sign-up or preference form (one group)."""
    catalog = messaging.catalog
    subs = profile.subscriptions()
    if [message_type_id, channel_id, list_id].count(None) != 2:
        raise ValueError("give exactly one of messageTypeId, channelId, listId")
    if message_type_id is not None:
        if message_type_id not in catalog.message_types:
            raise ValueError(f"no message type {message_type_id}")
        values = _type_values(messaging, profile, message_type_id, subscribe=True)
    elif channel_id is not None:
        if channel_id not in catalog.channels:
            raise ValueError(f"no channel {channel_id}")
        values = {"unsubscribedChannelIds": without_id(subs.unsubscribed_channel_ids, channel_id)}
    else:
        assert list_id is not None
        if list_id not in catalog.lists:
            raise ValueError(f"no list {list_id}")
        values = {"emailListIds": with_id(subs.email_list_ids, list_id)}
    return change_subscriptions(messaging, profile, values, wall_s, CLICK_SOURCE, FORM_SOURCE)


def _type_values(
    messaging: Messaging, profile: Profile, type_id: int, subscribe: bool
) -> dict[str, list[int]]:
    subs = profile.subscriptions()
    if messaging.catalog.message_types[type_id].policy == "OptIn":
        ids = subs.subscribed_message_type_ids
        new = with_id(ids, type_id) if subscribe else without_id(ids, type_id)
        return {"subscribedMessageTypeIds": new}
    ids = subs.unsubscribed_message_type_ids
    new = without_id(ids, type_id) if subscribe else with_id(ids, type_id)
    return {"unsubscribedMessageTypeIds": new}


def receives(messaging: Messaging, profile: Profile, message_type_id: int) -> bool:
    """Whether the user would get a message of this type (channel first, then the type)."""
    mtype = messaging.catalog.message_types[message_type_id]
    subs = profile.subs
    if subs is None:
        return mtype.policy == "OptOut"
    if mtype.channel_id in subs.unsubscribed_channel_ids:
        return False
    if mtype.policy == "OptIn":
        return message_type_id in subs.subscribed_message_type_ids
    return message_type_id not in subs.unsubscribed_message_type_ids
