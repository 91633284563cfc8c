"""A project's message channels, message types and static lists (seeded with defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

ChannelType = Literal["Marketing", "Transactional"]
Medium = Literal["Email", "Push", "SMS"]
Policy = Literal["OptIn", "OptOut"]
LIST_TYPES: Final = ("Standard", "Dynamic", "Suppression", "Internal")

# (id, name, channelType, messageMedium); 39581/39582 are the ids of a real export line.
DEFAULT_CHANNELS: Final[tuple[tuple[int, str, ChannelType, Medium], ...]] = (
    (39581, "Marketing Email", "Marketing", "Email"),
    (39582, "Transactional Email", "Transactional", "Email"),
    (39583, "Marketing Push", "Marketing", "Push"),
    (39584, "Marketing SMS", "Marketing", "SMS"),
)
# (id, name, channelId, subscriptionPolicy); every channel has at least one type.
DEFAULT_MESSAGE_TYPES: Final[tuple[tuple[int, str, int, Policy], ...]] = (
    (48921, "Newsletter", 39581, "OptOut"),
    (48922, "Promotions", 39581, "OptOut"),
    (48923, "Product Updates", 39581, "OptIn"),
    (48924, "Receipts", 39582, "OptOut"),
    (48925, "Push Offers", 39583, "OptOut"),
    (48926, "SMS Offers", 39584, "OptOut"),
)


@dataclass
class Channel:
    """A message channel: medium x Marketing/Transactional."""

    id: int
    name: str
    channel_type: ChannelType
    medium: Medium

    def api_view(self) -> dict[str, Any]:
        """`ChannelDetails`."""
        return {
            "id": self.id,
            "name": self.name,
            "channelType": self.channel_type,
            "messageMedium": self.medium,
        }


@dataclass
class MessageType:
    """A message type inside a channel, opt-out (default receive) or opt-in."""

    id: int
    name: str
    channel_id: int
    policy: Policy
    created_ms: int

    def api_view(self) -> dict[str, Any]:
        """`MessageTypeDetails`."""
        return {
            "id": self.id,
            "name": self.name,
            "channelId": self.channel_id,
            "subscriptionPolicy": self.policy,
            "createdAt": self.created_ms,
            "updatedAt": self.created_ms,
        }


@dataclass
class StaticList:
    """A list; membership lives on the users (their `emailListIds`)."""

    id: int
    name: str
    description: str | None
    created_ms: int
    list_type: str = "Standard"

    def api_view(self) -> dict[str, Any]:
        """`ListDetails`."""
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "createdAt": self.created_ms,
            "listType": self.list_type,
        }
        if self.description is not None:
            out["description"] = self.description
        return out


class Catalog:
    """Channels, message types and lists of one project."""

    def __init__(self, created_ms: int, opt_in_types: bool = True) -> None:
        self.channels: dict[int, Channel] = {
            cid: Channel(cid, name, ctype, medium) for cid, name, ctype, medium in DEFAULT_CHANNELS
        }
        self.message_types: dict[int, MessageType] = {
            mid: MessageType(mid, name, chan, policy, created_ms)
            for mid, name, chan, policy in DEFAULT_MESSAGE_TYPES
            if opt_in_types or policy == "OptOut"
        }
        self.lists: dict[int, StaticList] = {}
        self._next_list = 1064898  # the first id of a real POST /api/lists reply
        self._next_channel = max(self.channels) + 1
        self._next_type = max(self.message_types) + 1

    @property
    def opt_in_enabled(self) -> bool:
        """Whether the project has opt-in message types (a CSM-enabled feature)."""
        return any(mt.policy == "OptIn" for mt in self.message_types.values())

    def marketing_channel_ids(self) -> list[int]:
        """Every Marketing channel: what a global unsubscribe opts out of."""
        return [c.id for c in self.channels.values() if c.channel_type == "Marketing"]

    def add_channel(self, name: str, channel_type: ChannelType, medium: Medium) -> Channel:
        """A new channel with the next free id."""
        if channel_type not in ("Marketing", "Transactional"):
            raise ValueError(
                f"channelType must be Marketing or Transactional, got {channel_type!r}"
            )
        if medium not in ("Email", "Push", "SMS"):
            raise ValueError(f"messageMedium must be Email, Push or SMS, got {medium!r}")
        channel = Channel(self._next_channel, name, channel_type, medium)
        self._next_channel += 1
        self.channels[channel.id] = channel
        return channel

    def add_message_type(
        self, name: str, channel_id: int, policy: Policy, created_ms: int
    ) -> MessageType:
        """A new message type in an existing channel."""
        if channel_id not in self.channels:
            raise ValueError(f"no channel {channel_id}")
        if policy not in ("OptIn", "OptOut"):
            raise ValueError(f"subscriptionPolicy must be OptIn or OptOut, got {policy!r}")
        mtype = MessageType(self._next_type, name, channel_id, policy, created_ms)
        self._next_type += 1
        self.message_types[mtype.id] = mtype
        return mtype

    def add_list(
        self, name: str, description: str | None, created_ms: int, list_type: str = "Standard"
    ) -> StaticList:
        """A new list with the next id (names need not be unique)."""
        if list_type not in LIST_TYPES:
            raise ValueError(f"listType must be one of {LIST_TYPES}, got {list_type!r}")
        lst = StaticList(self._next_list, name, description, created_ms, list_type)
        self._next_list += 1
        self.lists[lst.id] = lst
        return lst

    def lists_newest_first(self) -> list[StaticList]:
        """Lists as GET /api/lists orders them (newest first, as observed)."""
        return sorted(self.lists.values(), key=lambda lst: lst.id, reverse=True)
