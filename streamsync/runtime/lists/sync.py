"""Bringing CampaignMembers' list subscriptions to their current state (docs/design.md §8).

Used by the flusher for queued CampaignMember ids and by the lists backfill for pages of a
Campaign's members. The store is written before Iterable is called, so a crash at any point is
repaired by doing the same work again (subscribe and unsubscribe are idempotent):

1. `Store.plan_list_members`: each wanted (member, list, email) is written 'adding' (or stays
   'in'); every other row of these members becomes 'out'.
2. Rows 'out': their emails leave the list, unless another member still holds the email on
   that list: then it is subscribed instead (idempotent), so a list never loses a person
   another member keeps on it. After an unsubscribe the emails are looked up again: one that
   another member took meanwhile is subscribed again (its own subscribe may have gone first).
   The rows are deleted once Iterable confirmed.
3. Rows 'adding' are subscribed and become 'in'.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from streamsync.adapters.iterable import BulkResult
from streamsync.adapters.iterable_lists import IterableLists, is_unknown_list
from streamsync.adapters.store import ListMember, QueueInput, StoreAPI
from streamsync.config import CAMPAIGN_MEMBER
from streamsync.core.ids import id_or_none
from streamsync.errors import BatchError, BatchTooLarge, RetriableError, Unreachable
from streamsync.logs import get_logger
from streamsync.models import SfId
from streamsync.runtime.breaker import Signals
from streamsync.runtime.flush_read import SALESFORCE
from streamsync.runtime.lists.joiner import SubscribeJoiner
from streamsync.runtime.lists.members import MemberReader, Row
from streamsync.runtime.pipeline import SyncOutcome
from streamsync.runtime.wakeup import QueueSignal
from streamsync.runtime.writer import IterableWriter, WriteOutcome

log = get_logger(__name__)

JOIN_PART = 100
"""Emails per request to the joiner: calls are packed from these parts, so at least 90 % full."""
UNKNOWN_LIST = "unknown_list"
"""Dead-letter reason of members whose list Iterable no longer knows."""


@dataclass
class ListCounts:
    """What one `apply` sent: emails subscribed and unsubscribed, calls made."""

    subscribed: int = 0
    unsubscribed: int = 0
    calls: int = 0
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)
    retry: dict[str, RetriableError] = field(default_factory=dict)


def _email(row: Row, path: str) -> str | None:
    value: object = row
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value.strip().lower() if isinstance(value, str) and value.strip() else None


def _chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def _by_list(rows: Iterable[ListMember]) -> dict[int, list[ListMember]]:
    out: dict[int, list[ListMember]] = defaultdict(list)
    for row in rows:
        out[row.list_id].append(row)
    return out


class ListSync:
    """Sets list subscriptions from CampaignMembers' current state (see the module docstring).

    Iterable calls go through the pipeline writer's `call` (in-place retries of transient
    faults, and Iterable's circuit breaker hears of each call); calls of at most
    `max_subscribers` emails each.
    """

    def __init__(self, *, store: StoreAPI, reader: MemberReader, lists: IterableLists,
                 writer: IterableWriter, max_subscribers: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.reader = reader
        self.lists = lists
        self.writer = writer
        self.max_subscribers = max_subscribers
        self.clock = clock
        self.joiner = SubscribeJoiner(lists.subscribe_when_sent, max_subscribers,
                                      lists.limiter.max_in_flight)

    async def flush(self, record_ids: Sequence[str], signals: Signals) -> SyncOutcome:
        """The flusher's step for leased CampaignMember ids: re-read them (a failed read is
        `Unreachable`: the flusher waits Salesforce out), then set their subscriptions."""
        parsed = [(record_id, id_or_none(record_id)) for record_id in record_ids]
        ids = [sf_id for _, sf_id in parsed if sf_id is not None]
        outcome = SyncOutcome(dead={record_id: ("invalid_id", "not a Salesforce record id")
                                    for record_id, sf_id in parsed if sf_id is None})
        if ids:
            try:
                rows = await self.reader.by_ids(ids)
            except RetriableError as exc:
                raise Unreachable(SALESFORCE, exc) from exc
            signals.ok(SALESFORCE)
            done = await self.sync_members(ids, rows)
            outcome.synced.extend(done.synced)
            outcome.dead.update(done.dead)
            outcome.retry.update(done.retry)
            outcome.requests += done.requests
        return outcome

    async def follow_people(self, object_name: str, records: Sequence[Row],
                            signal: QueueSignal) -> int:
        """After Leads or Contacts were synced: the CampaignMembers subscribed under an email
        their person no longer has are queued again (CDC sends no CampaignMember change for
        it), so the list holds the new email; returns how many."""
        if object_name not in ("Lead", "Contact") or not records:
            return 0
        path = self.reader.lead_email if object_name == "Lead" else self.reader.contact_email
        field = path.split(".", 1)[1]
        current = {str(r["Id"]): _email(r, field) for r in records}
        rows = await self.store.list_members_of_people(list(current))
        stale = sorted({r.member_id for r in rows
                        if r.state != "out" and current.get(r.person_id) != r.email})
        if stale:
            await self.store.enqueue([QueueInput(CAMPAIGN_MEMBER, m) for m in stale],
                                     self.clock(), "fanout")
            signal.notify(len(stale))
            log.info("lists.email_changed", object=object_name, members=len(stale))
        return len(stale)

    async def sync_members(self, member_ids: Sequence[SfId], rows: Sequence[Row]
                           ) -> SyncOutcome:
        """The real-time step: set the subscriptions of these CampaignMembers from `rows`, as
        `MemberReader.by_ids` read them (the flusher does the read)."""
        counts = await self.apply(member_ids, rows)
        outcome = SyncOutcome()
        outcome.dead.update(counts.failed)
        outcome.retry.update(counts.retry)
        outcome.requests = counts.calls
        for member_id in member_ids:
            if member_id not in counts.failed and member_id not in counts.retry:
                outcome.synced.append(member_id)
        return outcome

    async def apply(self, member_ids: Sequence[str], live: Sequence[Row]) -> ListCounts:
        """Set the subscriptions of `member_ids`, of which `live` are the rows Salesforce has
        (the others are deleted or gone)."""
        wanted = [w for row in live if (w := self.reader.want(row)) is not None]
        adding, leaving = await self.store.plan_list_members(member_ids, wanted, self.clock())
        counts = await self.settle_leaving(leaving)
        for list_id, rows in _by_list(adding).items():
            await self._join(list_id, rows, counts)
        return counts

    async def settle_leaving(self, rows: Sequence[ListMember]) -> ListCounts:
        """Unsubscribe these 'out' rows. The person's current email leaves too: the profile
        (and its list memberships) follows an email change in Iterable, while the row keeps
        the email it was subscribed under. A failed Salesforce read is `Unreachable`."""
        counts = ListCounts()
        if not rows:
            return counts
        try:
            current = await self.reader.person_emails({r.person_id for r in rows})
        except RetriableError as exc:
            raise Unreachable(SALESFORCE, exc) from exc
        for list_id, group in _by_list(rows).items():
            owners: dict[str, list[ListMember]] = defaultdict(list)
            for row in group:
                owners[row.email].append(row)
                now = current.get(row.person_id)
                if now is not None and now != row.email:
                    owners[now].append(row)
            await self._leave(list_id, group, owners, counts)
        return counts

    async def remove_strays(self, list_id: int, emails: Sequence[str]) -> ListCounts:
        """Unsubscribe the emails on the list (as Iterable lists them) that no member holds;
        an email a member took meanwhile is subscribed again afterwards."""
        counts = ListCounts()
        found = sorted({e.strip().lower() for e in emails if e.strip()})
        held = await self.store.held_emails(list_id, found)
        strays = [e for e in found if e not in held]
        failed = await self._send(self.lists.unsubscribe, list_id, strays, {}, counts)
        done = [e for e in strays if e not in failed]
        counts.unsubscribed += len(done)
        taken = await self.store.held_emails(list_id, done)
        if taken:
            await self._send(self.lists.subscribe, list_id, sorted(taken), {}, counts)
        if failed and not counts.retry:
            counts.retry["-"] = RetriableError(f"list {list_id}: {len(failed)} stray emails "
                                               "were not unsubscribed")
        return counts

    async def _leave(self, list_id: int, rows: list[ListMember],
                     owners: dict[str, list[ListMember]], counts: ListCounts) -> None:
        emails = sorted(owners)
        held = await self.store.held_emails(list_id, emails)
        keep = [e for e in emails if e in held and any(e == r.email for r in owners[e])]
        gone = [e for e in emails if e not in held]
        failed = await self._send(self.lists.subscribe, list_id, keep, owners, counts)
        failed |= await self._send(self.lists.unsubscribe, list_id, gone, owners, counts)
        counts.unsubscribed += len([e for e in gone if e not in failed])
        taken = await self.store.held_emails(list_id, [e for e in gone if e not in failed])
        if taken:  # another member took the email while it was leaving: put it back
            failed |= await self._send(self.lists.subscribe, list_id, sorted(taken), owners,
                                       counts)
        stuck = {r for e in failed for r in owners.get(e, ())}
        await self.store.drop_list_members([r for r in rows if r not in stuck])

    async def _join(self, list_id: int, rows: list[ListMember], counts: ListCounts) -> None:
        owners: dict[str, list[ListMember]] = defaultdict(list)
        for row in rows:
            owners[row.email].append(row)
        emails = sorted(owners)
        failed = await self._send(self.joiner.subscribe, list_id, emails, owners, counts)
        counts.subscribed += len([e for e in emails if e not in failed])
        await self.store.confirm_list_members([r for r in rows if r.email not in failed])
        refused = [r for r in rows if r.member_id in counts.failed and r.email in failed]
        if refused:  # Iterable refused the email: it was never subscribed
            await self.store.drop_list_members(refused, state="adding")

    async def _send(self, call: Callable[[int, list[str]], Awaitable[BulkResult]],
                    list_id: int, emails: list[str], owners: Mapping[str, list[ListMember]],
                    counts: ListCounts) -> set[str]:
        """Send `emails` in calls of at most `max_subscribers`; returns the emails that did not
        succeed, whose members are marked failed (dead) or to retry in `counts`. Subscribes go
        to the joiner at once in small parts, which it packs into full calls."""
        failed: set[str] = set()
        if call == self.joiner.subscribe:
            parts = await asyncio.gather(*(
                self._send_chunk(call, list_id, chunk, owners, counts)
                for chunk in _chunks(emails, min(JOIN_PART, self.max_subscribers))))
            return failed.union(*parts)
        for chunk in _chunks(emails, self.max_subscribers):
            failed |= await self._send_chunk(call, list_id, chunk, owners, counts)
        return failed

    async def _send_chunk(self, call: Callable[[int, list[str]], Awaitable[BulkResult]],
                          list_id: int, emails: list[str],
                          owners: Mapping[str, list[ListMember]], counts: ListCounts) -> set[str]:
        def members(of: Iterable[str]) -> list[str]:
            return sorted({r.member_id for e in of for r in owners.get(e, ())})

        out = WriteOutcome()
        try:
            result = await self.writer.call(lambda: call(list_id, emails), out)
        except BatchTooLarge:
            if len(emails) == 1:
                raise
            half = len(emails) // 2
            return (await self._send_chunk(call, list_id, emails[:half], owners, counts)
                    | await self._send_chunk(call, list_id, emails[half:], owners, counts))
        except RetriableError as exc:
            for member_id in members(emails) or ["-"]:
                counts.retry[member_id] = exc
            return set(emails)
        except BatchError as exc:
            if is_unknown_list(exc) and call == self.lists.unsubscribe:
                return set()  # the list is gone: nobody is on it
            reason = UNKNOWN_LIST if is_unknown_list(exc) else exc.reason
            log.warning("lists.call_refused", list_id=list_id, emails=len(emails),
                        reason=reason, code=exc.code)
            for member_id in members(emails):
                counts.failed[member_id] = (reason, f"list {list_id}: {exc.code}: {exc.msg}")
            return set(emails)
        finally:
            counts.calls += out.requests
        sent = set(emails)  # a joined reply also names other requests' emails
        refused = {f.key.lower(): f.reason for f in result.failures
                   if f.kind == "email" and f.reason != "not_found" and f.key.lower() in sent}
        for email, reason in refused.items():
            for member_id in members([email]):
                counts.failed[member_id] = (reason, f"list {list_id}: Iterable refused the "
                                                    "email")
        return set(refused)
