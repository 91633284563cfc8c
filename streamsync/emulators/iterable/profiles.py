"""A project's user profiles, identity indexes, field-type registry and write history."""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .validation import DATE, STRING

ProjectType = Literal["email", "userId", "hybrid"]
PROJECT_TYPES: Final[tuple[str, ...]] = ("email", "userId", "hybrid")
PLACEHOLDER_DOMAIN: Final = "placeholder.email"
# Fields Iterable keeps on every profile; they are in the schema from the start.
MANAGED_FIELDS: Final[dict[str, str]] = {
    "email": STRING,
    "userId": STRING,
    "signupDate": DATE,
    "profileUpdatedAt": DATE,
}


# The subscription arrays of a profile (request and profile names), managed by Iterable.
SUBSCRIPTION_FIELDS: Final[tuple[str, ...]] = (
    "emailListIds",
    "unsubscribedChannelIds",
    "unsubscribedMessageTypeIds",
    "subscribedMessageTypeIds",
)


@dataclass
class Subscriptions:
    """A user's subscription state: static lists, opted-out channels and types, opted-in types."""

    email_list_ids: list[int] = field(default_factory=list)
    unsubscribed_channel_ids: list[int] = field(default_factory=list)
    unsubscribed_message_type_ids: list[int] = field(default_factory=list)
    subscribed_message_type_ids: list[int] = field(default_factory=list)

    def get(self, name: str) -> list[int]:
        """One array by its API name (`userListIds` is the list array of userID projects)."""
        if name in ("emailListIds", "userListIds"):
            return self.email_list_ids
        return {
            "unsubscribedChannelIds": self.unsubscribed_channel_ids,
            "unsubscribedMessageTypeIds": self.unsubscribed_message_type_ids,
            "subscribedMessageTypeIds": self.subscribed_message_type_ids,
        }[name]

    def set(self, name: str, ids: list[int]) -> None:
        """Replace one array (duplicates dropped, order kept)."""
        unique = list(dict.fromkeys(ids))
        if name in ("emailListIds", "userListIds"):
            self.email_list_ids = unique
        elif name == "unsubscribedChannelIds":
            self.unsubscribed_channel_ids = unique
        elif name == "unsubscribedMessageTypeIds":
            self.unsubscribed_message_type_ids = unique
        elif name == "subscribedMessageTypeIds":
            self.subscribed_message_type_ids = unique
        else:
            raise KeyError(name)

    def view(self, list_field: str = "emailListIds") -> dict[str, list[int]]:
        """The four arrays under their API names."""
        return {
            list_field: list(self.email_list_ids),
            "unsubscribedChannelIds": list(self.unsubscribed_channel_ids),
            "unsubscribedMessageTypeIds": list(self.unsubscribed_message_type_ids),
            "subscribedMessageTypeIds": list(self.subscribed_message_type_ids),
        }


def iterable_timestamp(wall_s: float) -> str:
    """A wall-clock time in the format Iterable writes dates: `2016-08-02 18:53:45 +00:00`."""
    return time.strftime("%Y-%m-%d %H:%M:%S +00:00", time.gmtime(wall_s))


def placeholder_email(user_id: str) -> str:
    """The `@placeholder.email` address an email-based project gives a user known by userId."""
    digest = hashlib.sha1(user_id.encode("utf-8")).hexdigest()[:20]
    return f"{digest}@{PLACEHOLDER_DOMAIN}"


class Profile:
    """One user: identifiers, custom data fields and bookkeeping times."""

    __slots__ = ("iid", "email", "user_id", "data", "signup_wall", "updated_wall", "subs")

    def __init__(self, iid: int, email: str | None, user_id: str | None, wall_s: float) -> None:
        self.iid = iid
        self.email = email
        self.user_id = user_id
        self.data: dict[str, Any] = {}
        self.signup_wall = wall_s
        self.updated_wall = wall_s
        self.subs: Subscriptions | None = None

    def subscriptions(self) -> Subscriptions:
        """The user's subscription state, created empty (opted in everywhere) on first use."""
        if self.subs is None:
            self.subs = Subscriptions()
        return self.subs

    def api_view(self, list_field: str = "emailListIds") -> dict[str, Any]:
        """The `user` object of GET /api/users/... (ApiResponseUser).

        Subscription arrays sit inside `dataFields`, as observed, once the user has any
        subscription state (a user never touched by a subscription call shows none).
        """
        fields: dict[str, Any] = dict(self.data)
        if self.subs is not None:
            fields.update(self.subs.view(list_field))
        user: dict[str, Any] = {}
        if self.email is not None:
            user["email"] = fields["email"] = self.email
        if self.user_id is not None:
            user["userId"] = fields["userId"] = self.user_id
        fields["signupDate"] = iterable_timestamp(self.signup_wall)
        fields["profileUpdatedAt"] = iterable_timestamp(self.updated_wall)
        user["dataFields"] = fields
        return user

    def snapshot_view(self) -> dict[str, Any]:
        """Identifiers and custom fields only, for comparing with the source system."""
        return {"email": self.email, "userId": self.user_id, "dataFields": dict(self.data)}


class Project:
    """One Iterable project: its type, settings, users and schema."""

    def __init__(
        self,
        project_id: str,
        project_type: ProjectType,
        name: str | None = None,
        create_new_fields: bool = True,
    ) -> None:
        if project_type not in PROJECT_TYPES:
            raise ValueError(f"unknown project type {project_type!r}; expected {PROJECT_TYPES}")
        self.id = project_id
        self.name = name or f"project_{project_id}"
        self.project_type: ProjectType = project_type
        self.create_new_fields = create_new_fields
        self.fields: dict[str, str] = dict(MANAGED_FIELDS)
        self.by_email: dict[str, Profile] = {}
        self.by_user_id: dict[str, list[Profile]] = {}
        self.forgotten_emails: set[str] = set()
        self.forgotten_user_ids: set[str] = set()
        self.history: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        self._next_iid = 1

    # -- lookups -------------------------------------------------------------------------------

    def get_by_email(self, email: str) -> Profile | None:
        """The user with this (lower-cased) email, if any."""
        return self.by_email.get(email)

    def get_by_user_id(self, user_id: str) -> Profile | None:
        """The first user with this userId, if any (email projects may have several)."""
        found = self.by_user_id.get(user_id)
        return found[0] if found else None

    def profiles(self) -> list[Profile]:
        """Every user once, in creation order."""
        seen: dict[int, Profile] = {p.iid: p for p in self.by_email.values()}
        for group in self.by_user_id.values():
            for p in group:
                seen.setdefault(p.iid, p)
        return [seen[i] for i in sorted(seen)]

    def user_count(self) -> int:
        """How many users the project holds."""
        return len(self.profiles())

    # -- mutations -----------------------------------------------------------------------------

    def create(self, email: str | None, user_id: str | None, wall_s: float) -> Profile:
        """A new user, indexed by its identifiers."""
        profile = Profile(self._next_iid, None, None, wall_s)
        self._next_iid += 1
        if email is not None:
            self.set_email(profile, email)
        if user_id is not None:
            self.set_user_id(profile, user_id)
        return profile

    def set_email(self, profile: Profile, email: str) -> None:
        """Give a user a new email and re-index it."""
        if profile.email is not None and self.by_email.get(profile.email) is profile:
            del self.by_email[profile.email]
        profile.email = email
        self.by_email[email] = profile

    def set_user_id(self, profile: Profile, user_id: str) -> None:
        """Give a user a new userId and re-index it."""
        if profile.user_id is not None:
            self._unindex_user_id(profile)
        profile.user_id = user_id
        self.by_user_id.setdefault(user_id, []).append(profile)

    def _unindex_user_id(self, profile: Profile) -> None:
        assert profile.user_id is not None
        group = self.by_user_id.get(profile.user_id, [])
        rest = [p for p in group if p is not profile]
        if rest:
            self.by_user_id[profile.user_id] = rest
        else:
            self.by_user_id.pop(profile.user_id, None)

    def delete(self, profile: Profile) -> None:
        """Remove a user and its index entries."""
        if profile.email is not None and self.by_email.get(profile.email) is profile:
            del self.by_email[profile.email]
        if profile.user_id is not None:
            self._unindex_user_id(profile)

    def clear_users(self) -> None:
        """Forget every user, forgotten identifier and history entry (the schema stays)."""
        self.by_email.clear()
        self.by_user_id.clear()
        self.forgotten_emails.clear()
        self.forgotten_user_ids.clear()
        self.history.clear()


def merge_data(data: dict[str, Any], update: dict[str, Any], merge_nested: bool) -> None:
    """Apply `update` to a profile's fields: top-level replace (or object merge), null removes."""
    for key, value in update.items():
        if value is None:
            data.pop(key, None)
        elif type(value) is dict:
            old = data.get(key)
            if merge_nested and type(old) is dict:
                data[key] = _merged(old, value)
            else:
                data[key] = _without_nulls(value)
        else:
            data[key] = value


def _merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = dict(old)
    for key, value in new.items():
        if value is None:
            out.pop(key, None)
        elif type(value) is dict and type(out.get(key)) is dict:
            out[key] = _merged(out[key], value)
        else:
            out[key] = _without_nulls(value) if type(value) is dict else value
    return out


def _without_nulls(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: _without_nulls(v) if type(v) is dict else v for k, v in obj.items() if v is not None}
