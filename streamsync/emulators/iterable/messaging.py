"""Per-project messaging state (catalog, consent log, custom events) and the shared steps of
the subscription, list and event endpoints: finding or creating the user, changing consent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .catalog import Catalog
from .consent import ConsentEvent, ConsentLog, apply_values, record_diff
from .custom_events import EventStore
from .profiles import Profile, Project
from .updates import Rejection, resolve
from .validation import normalize_email, user_id_problem


@dataclass
class Messaging:
    """What one project knows beyond user profiles."""

    catalog: Catalog
    log: ConsentLog = field(default_factory=ConsentLog)
    events: EventStore = field(default_factory=EventStore)

    def reset(self) -> None:
        """Drop consent events and custom events; lists, channels and types stay."""
        self.log.clear()
        self.events.clear()


def find_user(
    project: Project,
    raw_email: str | None,
    user_id: str | None,
    wall_s: float,
    create: bool,
) -> Profile | Rejection:
    """The user a call addresses, created when the project's identity rules allow it."""
    email: str | None = None
    if raw_email is not None:
        email = normalize_email(raw_email)
        if email is None:
            return Rejection("invalidEmails", raw_email, f"Invalid email: {raw_email}")
    refused = _invalid_or_forgotten(project, email, user_id)
    if refused is not None:
        return refused
    ptype = project.project_type
    if ptype == "email" and email is not None:
        user_id = None  # an email-based project identifies by email; userId is not unique
    found = resolve(project, email, user_id)
    if ptype == "hybrid" and email is not None and user_id is not None:
        owner = project.by_email.get(email)
        if owner is not None and owner is not found:
            return Rejection("conflictEmails", email, f"Email {email} belongs to another user")
    if found is not None:
        return found
    if not _may_create(ptype, email, user_id, create):
        return _not_found(ptype, email, user_id)
    return project.create(email, user_id, wall_s)


def _invalid_or_forgotten(project: Project, email: str | None,
                          user_id: str | None) -> Rejection | None:
    """A malformed userId, or an identifier of a GDPR-forgotten user."""
    if user_id is not None:
        problem = user_id_problem(user_id)
        if problem is not None:
            return Rejection("invalidUserIds", user_id, problem)
    if email is not None and email in project.forgotten_emails:
        return Rejection("forgottenEmails", email, "Contact is GDPR forgotten")
    if user_id is not None and user_id in project.forgotten_user_ids:
        return Rejection("forgottenUserIds", user_id, "Contact is GDPR forgotten")
    return None


def _may_create(ptype: str, email: str | None, user_id: str | None, create: bool) -> bool:
    """Whether a call may create the user it addresses under the project's identity rules."""
    return create and (
        (ptype == "email" and email is not None)
        or (ptype == "userId" and user_id is not None)
        or ptype == "hybrid"
    )


def _not_found(ptype: str, email: str | None, user_id: str | None) -> Rejection:
    if email is not None and ptype != "userId":
        return Rejection("notFoundEmails", email, f"User with email {email} does not exist")
    if user_id is not None:
        return Rejection("notFoundUserIds", user_id, f"User with userId {user_id} does not exist")
    assert email is not None
    return Rejection("notFoundEmails", email, "userID-based projects identify users by userId")


def change_subscriptions(
    messaging: Messaging,
    profile: Profile,
    values: dict[str, list[int]],
    wall_s: float,
    unsub_source: str,
    signup_source: str,
    extra: dict[str, Any] | None = None,
) -> list[ConsentEvent]:
    """Overwrite the named arrays of a user; record (and so deliver) the resulting events."""
    diff = apply_values(profile.subscriptions(), values)
    if diff.subscribed or diff.unsubscribed:
        profile.updated_wall = wall_s
    return record_diff(messaging.log, profile, diff, wall_s, unsub_source, signup_source, extra)


def with_id(ids: list[int], group_id: int) -> list[int]:
    """`ids` plus `group_id` (unchanged if present)."""
    return ids if group_id in ids else [*ids, group_id]


def without_id(ids: list[int], group_id: int) -> list[int]:
    """`ids` minus `group_id`."""
    return [i for i in ids if i != group_id]
