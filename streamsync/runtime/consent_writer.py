"""Consent writes to Iterable: one `PUT /api/subscriptions/{group}/{id}` per group and batch.

Each call changes one subscription group of many users and nothing else on their profiles, so a
channel the user unsubscribed from (or a list they joined) in Iterable stays as they left it
(docs/iterable.md §12). Retries, the circuit breaker and the per-user outcome are the profile
writer's (`runtime/writer.py` `IterableWriter.call`, `WriteOutcome`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from streamsync.adapters.iterable import IterableClient, UserFailure
from streamsync.config import Config, ObjectConsent
from streamsync.errors import BatchError, RetriableError, UnknownList
from streamsync.logs import get_logger
from streamsync.models import MappedUser
from streamsync.runtime.writer import IterableWriter, WriteOutcome

log = get_logger(__name__)

CONSENT_REJECTED = "consent_rejected"
"""Dead-letter reason: Iterable refused a subscription call for these users as a whole."""
CONSENT_CONFIG = "consent_config"
"""Dead-letter reason: a configured list name matches no single Iterable list."""


@dataclass(frozen=True, slots=True)
class Groups:
    """The subscription groups an object's consent changes, by Iterable id."""

    channels: tuple[int, ...] = ()
    message_types: tuple[int, ...] = ()
    lists: tuple[int, ...] = ()

    def pairs(self) -> list[tuple[str, int]]:
        """(subscription group, id) of every group, channels first."""
        return ([("messageChannel", i) for i in self.channels]
                + [("messageType", i) for i in self.message_types]
                + [("emailList", i) for i in self.lists])


def list_ids(names: Sequence[int | str], lists: Sequence[dict[str, object]]
             ) -> tuple[int, ...]:
    """Configured list names or ids as ids; a name must match exactly one list (names are not
    unique in Iterable, docs/iterable.md §12), case-insensitively. Raises UnknownList."""
    by_name: dict[str, list[int]] = {}
    for item in lists:
        name, ident = item.get("name"), item.get("id")
        if isinstance(name, str) and isinstance(ident, int) and not isinstance(ident, bool):
            by_name.setdefault(name.strip().lower(), []).append(ident)
    out: list[int] = []
    for entry in names:
        if isinstance(entry, int):
            out.append(entry)
            continue
        found = by_name.get(entry.strip().lower(), [])
        if len(found) != 1:
            how = "no Iterable list" if not found else f"{len(found)} Iterable lists {found}"
            raise UnknownList(f"list {entry!r} matches {how}: name it by id instead")
        out.append(found[0])
    return tuple(dict.fromkeys(out))


class ConsentWriter:
    """Unsubscribes or re-subscribes users from the groups of their object's consent."""

    def __init__(self, *, config: Config, iterable: IterableClient,
                 writer: IterableWriter) -> None:
        self.config = config
        self.iterable = iterable
        self.writer = writer
        self._groups: dict[str, Groups] = {}
        self._lock = asyncio.Lock()

    async def groups(self, object_name: str, consent: ObjectConsent) -> Groups:
        """The object's groups; list names are looked up once (GET /api/lists)."""
        async with self._lock:
            known = self._groups.get(object_name)
            if known is not None:
                return known
            lists: tuple[int, ...] = ()
            if any(isinstance(e, str) for e in consent.remove_from_lists):
                lists = list_ids(consent.remove_from_lists, await self.iterable.get_lists())
            else:
                lists = tuple(int(e) for e in consent.remove_from_lists)
            groups = Groups(tuple(consent.unsubscribe_channel_ids),
                            tuple(consent.unsubscribe_message_type_ids), lists)
            self._groups[object_name] = groups
            return groups

    async def apply(self, object_name: str, users: Sequence[MappedUser], *,
                    subscribe: bool) -> WriteOutcome:
        """Change every group of the object for `users`; each user lands in exactly one list
        of the outcome (retry if any call for them failed transiently, else dead if any
        refused them, else synced)."""
        out = WriteOutcome()
        consent = self.config.objects[object_name].consent
        if not users or consent is None:
            return out
        try:
            groups = await self.groups(object_name, consent)
        except RetriableError as exc:
            out.retry.extend((u, exc) for u in users)
            return out
        except UnknownList as exc:
            out.dead.extend((u, CONSENT_CONFIG, str(exc)) for u in users)
            return out
        size = self.config.consent.batch_max_users
        calls = [(group, gid, users[i:i + size]) for group, gid in groups.pairs()
                 for i in range(0, len(users), size)]
        retry: dict[str, RetriableError] = {}
        dead: dict[str, tuple[str, str]] = {}
        for part in await asyncio.gather(*(self._call(g, i, chunk, subscribe, out)
                                           for g, i, chunk in calls)):
            for user, fate in part:
                if isinstance(fate, RetriableError):
                    retry.setdefault(user.sf_id, fate)
                elif fate is not None:
                    dead.setdefault(user.sf_id, fate)
        for user in users:
            if user.sf_id in retry:
                out.retry.append((user, retry[user.sf_id]))
            elif user.sf_id in dead:
                out.dead.append((user, *dead[user.sf_id]))
            else:
                out.synced.append(user)
        return out

    def _by_user_id(self, user: MappedUser) -> bool:
        return self.config.iterable.project_type == "userId" or user.email is None

    async def _call(self, group: str, group_id: int, users: Sequence[MappedUser],
                    subscribe: bool, out: WriteOutcome
                    ) -> list[tuple[MappedUser, RetriableError | tuple[str, str] | None]]:
        emails = [u.email for u in users if u.email is not None and not self._by_user_id(u)]
        user_ids = [u.user_id for u in users if u.user_id is not None and self._by_user_id(u)]
        try:
            failures = await self.writer.call(
                lambda: self.iterable.update_subscription_group(
                    group, group_id, subscribe=subscribe, emails=emails, user_ids=user_ids),
                out)
        except RetriableError as exc:
            return [(u, exc) for u in users]
        except BatchError as exc:
            detail = f"{group} {group_id}: {exc.code}: {exc.msg}"
            log.warning("consent.call_refused", group=group, group_id=group_id,
                        users=len(users), code=exc.code)
            return [(u, (CONSENT_REJECTED, detail)) for u in users]
        return [(u, self._failure(u, failures, group, group_id)) for u in users]

    def _failure(self, user: MappedUser, failures: Sequence[UserFailure], group: str,
                 group_id: int) -> tuple[str, str] | None:
        by_user_id = self._by_user_id(user)
        key = user.user_id if by_user_id else (user.email or "").lower()
        for failure in failures:
            mine = (failure.kind == "userId") == by_user_id
            if mine and (failure.key if by_user_id else failure.key.lower()) == key:
                return failure.reason, (f"iterable {group} {group_id}: reported "
                                        f"{user.key!r} as {failure.reason}")
        return None
