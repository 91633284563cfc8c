"""map → skip unchanged → batch → write → identities: the stage shared by flusher and backfill."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from streamsync.adapters.iterable import IterableClient
from streamsync.adapters.store import Identity, IdentityUpdate, StoreAPI
from streamsync.config import Config
from streamsync.core.batching import cut_batches
from streamsync.core.ids import parse_id, row_id
from streamsync.core.mapping import CompiledMapping
from streamsync.errors import ConfigError, RecordError, RetriableError
from streamsync.logs import get_logger
from streamsync.models import MappedUser
from streamsync.runtime.consent_fast import ConsentFastPath
from streamsync.runtime.consent_out import ConsentSync, EarlyConsent
from streamsync.runtime.generations import ForgottenRecords, Generations, RecordGate
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.pipeline_map import (
    delete_users,
    hand_over_to_contacts,
    map_all,
    newer_since_read,
    yield_to_leads,
)
from streamsync.runtime.writer import IterableWriter, WriteOutcome

log = get_logger(__name__)



@dataclass
class SyncOutcome:
    """Per record id: synced, skipped as unchanged, dead (never retry as is), or retry later."""

    synced: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    dead: dict[str, tuple[str, str]] = field(default_factory=dict)
    retry: dict[str, RetriableError] = field(default_factory=dict)
    requests: int = 0
    rate_limited: int = 0

    def absorb(self, written: WriteOutcome) -> None:
        """Take a writer's per-user results (by Salesforce id) and counters."""
        self.synced.extend(u.sf_id for u in written.synced)
        for user, reason, detail in written.dead:
            self.dead[user.sf_id] = (reason, detail)
        for user, error in written.retry:
            self.retry[user.sf_id] = error
        self.requests += written.requests
        self.rate_limited += written.rate_limited



class SyncPipeline:
    """Turns Salesforce records of one object into confirmed Iterable profile writes.

    Duplicate identifiers in one call (two records mapping to one email or userId) are resolved
    on purpose: the most recently modified record (SystemModstamp, then Id) is written and the
    others are skipped with a `pipeline.duplicate_identifier` log line. A converted Lead is not
    written when the configured precedence is `contact` (the Contact it became owns the
    profile): its identity is handed to that Contact when the Contact has none yet (with no
    payload hash, and the Contact enqueued), so the Contact's first sync moves that profile
    (updateEmail) or flags it when deleted, and the Lead's later deletion cannot touch it.
    With precedence `lead`, a Contact whose email a synced Lead holds is not written instead.
    """

    def __init__(self, *, config: Config, store: StoreAPI, iterable: IterableClient,
                 metrics: Metrics, mappings: dict[str, CompiledMapping],
                 clock: Callable[[], float] = time.time,
                 writer: IterableWriter | None = None) -> None:
        self.config = config
        self.store = store
        self.iterable = iterable
        self.metrics = metrics
        self.mappings = mappings
        self.clock = clock
        self.writer = writer or IterableWriter(iterable, envelope=config.iterable.bulk_envelope())
        self.generations, self.gate = Generations(), RecordGate()  # runtime/generations.py
        self.forgotten = ForgottenRecords()
        self.consent = ConsentSync(config=config, store=store, iterable=iterable,
                                   writer=self.writer, clock=clock)
        self.consent_fast = ConsentFastPath(self.consent, self.gate, lambda: self.config)

    # -- records that exist ------------------------------------------------------------------

    def _mapping(self, object_name: str) -> CompiledMapping:
        mapping = self.mappings.get(object_name)
        if mapping is None:
            raise ConfigError(f"objects.{object_name}: no mapping compiled for this object "
                              "(it does not write Iterable users)")
        return mapping

    async def sync_records(self, object_name: str, records: Sequence[dict[str, Any]], *,
                           source: str, force: bool = False,
                           read_at: float | None = None) -> SyncOutcome:
        """Map, skip unchanged (unless `force`) or newer since `read_at` (a re-sync page's read),
        keep profiles across email changes, write in batches, attribute per-user failures, save
        confirmed identities; wait first for records the consent fast path is sending."""
        ids = await self.consent_fast.settled(object_name, [str(r.get("Id")) for r in records])
        async with self.gate.hold(object_name, ids):
            with self.generations.call():
                return await self._sync_records(object_name, records, source=source,
                                                force=force, read_at=read_at)

    async def _sync_records(self, object_name: str, records: Sequence[dict[str, Any]], *,
                            source: str, force: bool, read_at: float | None) -> SyncOutcome:
        out = SyncOutcome()
        converted: list[tuple[str, str | None]] = []
        users = map_all(self.config, self._mapping(object_name), object_name, records, out,
                        converted)
        if converted:
            await hand_over_to_contacts(self.config, self.store, self.clock, converted)
        if object_name == "Contact" and self.config.converted_precedence() == "lead":
            users = await yield_to_leads(self.store, users, out)
        known = await self.store.identities(object_name, [u.sf_id for u in users])
        by_id: dict[str, dict[str, Any]] = {
            sf_id: r for r in records if (sf_id := row_id(r)) is not None}
        early = self.consent.start_early(object_name, by_id, users, known)  # docs/design.md §7
        try:
            out = await self._write_users(object_name, users, known, by_id, out, force=force,
                                          read_at=read_at, early=early)
        finally:
            if early is not None:
                await early.cancel()  # a no-op once apply collected it
        self._count(object_name, out, source)
        return out

    async def _write_users(self, object_name: str, users: Sequence[MappedUser],
                           known: Mapping[str, Identity],
                           by_id: Mapping[str, Mapping[str, Any]], out: SyncOutcome, *,
                           force: bool, read_at: float | None,
                           early: EarlyConsent | None) -> SyncOutcome:
        bulk: list[MappedUser] = []
        moves: list[tuple[MappedUser, str]] = []
        newer = await newer_since_read(self.store, self.forgotten, object_name, users, known,
                                       read_at, self.clock)
        for user in users:
            ident = known.get(user.sf_id)
            if user.sf_id in newer or (ident is not None and not force
                                       and ident.payload_hash == user.payload_hash):
                out.skipped.append(user.sf_id)
                continue
            old = ident.iterable_email if ident is not None else None
            if old is not None and user.email is not None and old.lower() != user.email:
                if self.config.iterable.project_type == "hybrid":
                    bulk.append(_email_in_data_fields(user, old.lower()))
                elif self.config.iterable.project_type != "userId":
                    moves.append((user, old))
                    continue
                else:
                    bulk.append(user)
                log.info("pipeline.email_change", object=object_name, record_id=user.sf_id)
                continue
            bulk.append(user)
        batches, too_large = cut_batches(bulk, self.config.iterable.batch_max_users,
                                         self.config.iterable.batch_max_bytes,
                                         self.config.iterable.bulk_envelope())
        for user, exc in too_large:
            out.dead[user.sf_id] = (exc.reason, exc.detail)
        written = await self.writer.write(batches)
        for user, old in moves:
            written.extend(await self._move_email(user, old))
        out.absorb(written)
        originals = {u.sf_id: u for u in users}
        await self.store.save_identities(
            [IdentityUpdate(object_name, u.sf_id, originals[u.sf_id].email,
                            originals[u.sf_id].user_id, originals[u.sf_id].payload_hash)
             for u in written.synced], self.clock())
        if self.config.objects[object_name].consent is not None:  # docs/design.md §7
            await self.consent.apply(object_name, by_id, users, out, early)
        return out

    async def _move_email(self, user: MappedUser, old_email: str) -> WriteOutcome:
        """Email-based project: updateEmail keeps the profile, then the update goes by the single
        path too (Iterable does not order bulk and single-user writes of one user)."""
        out = WriteOutcome()
        assert user.email is not None
        try:
            await self.writer.call(
                lambda: self.iterable.update_email(user.email or "", current_email=old_email),
                out)
        except RetriableError as exc:
            out.retry.append((user, exc))
            return out
        except RecordError as exc:
            if exc.reason != "not_found":
                out.dead.append((user, exc.reason, exc.detail or str(exc)))
                return out
            log.info("pipeline.email_change_no_profile", object=user.object_name,
                     record_id=user.sf_id)
        out.extend(await self.writer.update_single(user))
        return out

    # -- records that are gone ---------------------------------------------------------------

    async def sync_deleted(self, object_name: str, record_ids: Sequence[str], *,
                           source: str, current: Mapping[str, Mapping[str, Any]] | None = None,
                           out_of_scope: bool = False) -> SyncOutcome:
        """Apply the object's delete policy (delete / flag / ignore) using the identity table.

        A profile another synced record still maps to (the same email) is left alone; only
        this record's identity is forgotten. `current`: the deleted rows Salesforce still
        returns (queryAll), by 18-char Id; with `flag`, a profile whose record's email changed
        before the delete was seen moves to that email as it is flagged. `out_of_scope`: the
        records left a changed filter; the object's `out_of_scope` policy and flag apply.
        """
        ids = await self.consent_fast.settled(object_name, [parse_id(i) for i in record_ids])
        async with self.gate.hold(object_name, ids):  # a re-sync page may hold one of them
            with self.generations.call():
                return await self._sync_deleted(object_name, ids, source=source,
                                                current=current, out_of_scope=out_of_scope)

    async def _sync_deleted(self, object_name: str, ids: Sequence[str], *, source: str,
                            current: Mapping[str, Mapping[str, Any]] | None,
                            out_of_scope: bool) -> SyncOutcome:
        out = SyncOutcome()
        obj = self.config.objects[object_name]
        policy = obj.out_of_scope if out_of_scope else obj.delete_policy
        flag_field = obj.out_of_scope_flag_field if out_of_scope else obj.delete_flag_field
        known = await self.store.identities(object_name, ids)
        out.skipped.extend(i for i in ids if i not in known)
        if policy == "ignore" or not obj.writes_users:
            out.skipped.extend(i for i in ids if i in known)
            self._count(object_name, out, source)
            return out
        acting: list[Identity] = []
        shared: list[str] = []
        for ident in known.values():
            if ident.iterable_email and await _shared(self.store, ident):
                shared.append(ident.record_id)
            else:
                acting.append(ident)
        if shared:
            log.info("pipeline.delete_shared_profile", object=object_name, records=len(shared))
            await self._forget(object_name, shared)
            out.skipped.extend(shared)
        if policy == "delete":
            written = await delete_users(self.writer, self.iterable, acting,
                                         self.config.iterable.project_type == "userId")
            await self._forget(object_name, [u.sf_id for u in written.synced])
        else:
            written = await self._flag_users(object_name, acting, flag_field, current or {})
        out.absorb(written)
        self._count(object_name, out, source)
        return out

    async def _forget(self, object_name: str, ids: Sequence[str]) -> None:
        """Forget the records' identities, remembering when (runtime/generations.py)."""
        await self.store.forget_identity(object_name, ids)
        self.forgotten.note(object_name, ids, self.clock())

    async def _flag_users(self, object_name: str, idents: Sequence[Identity],
                          flag_field: str, current: Mapping[str, Mapping[str, Any]]
                          ) -> WriteOutcome:
        mapping = self.mappings.get(object_name)
        out = WriteOutcome()
        users: list[MappedUser] = []
        moves: list[tuple[MappedUser, str]] = []
        emails: dict[str, str | None] = {}  # the email each flagged profile ends up with
        for ident in idents:
            if mapping is None:
                continue
            old = ident.iterable_email
            new = _deleted_email(mapping, current.get(ident.record_id))
            moving = (new is not None and old is not None and new != old.lower()
                      and self.config.iterable.project_type != "userId"
                      and not await self.store.find_by_email(new))  # not another's profile
            try:
                user = mapping.flag_user(ident.record_id, new if moving else old,
                                         ident.iterable_user_id, flag_field)
            except RecordError as exc:
                out.dead.append((MappedUser(object_name, ident.record_id, None, None, {}, ""),
                                 exc.reason, exc.detail))
                continue
            emails[user.sf_id] = user.email
            if not moving:
                users.append(user)
            elif self.config.iterable.project_type == "hybrid":
                assert old is not None
                users.append(_email_in_data_fields(user, old.lower()))
            else:
                assert old is not None
                moves.append((user, old))
        batches, too_large = cut_batches(users, self.config.iterable.batch_max_users,
                                         self.config.iterable.batch_max_bytes,
                                         self.config.iterable.bulk_envelope())
        out.dead.extend((u, exc.reason, exc.detail) for u, exc in too_large)
        out.extend(await self.writer.write(batches))
        for user, old in moves:
            log.info("pipeline.deleted_email_change", object=object_name, record_id=user.sf_id)
            out.extend(await self._move_email(user, old))
        await self.store.save_identities(
            [IdentityUpdate(object_name, u.sf_id, emails.get(u.sf_id, u.email), u.user_id,
                            u.payload_hash) for u in out.synced], self.clock())
        return out

    def _count(self, object_name: str, out: SyncOutcome, source: str) -> None:
        self.metrics.records_synced.labels(object_name).inc(len(out.synced))
        self.metrics.records_skipped.labels(object_name).inc(len(out.skipped))
        if out.dead or out.retry:
            log.info("pipeline.outcome", object=object_name, source=source,
                     synced=len(out.synced), skipped=len(out.skipped), dead=len(out.dead),
                     retry=len(out.retry))



async def _shared(store: StoreAPI, ident: Identity) -> bool:
    """Another synced record maps to this identity's email too."""
    assert ident.iterable_email is not None
    owners = await store.find_by_email(ident.iterable_email)
    return any((o.object_name, o.record_id) != (ident.object_name, ident.record_id)
               for o in owners)


def _deleted_email(mapping: CompiledMapping, record: Mapping[str, Any] | None
                   ) -> str | None:
    """The email a deleted record maps to now, when Salesforce still returns it whole."""
    if record is None:
        return None
    mapped = mapping.map_or_error(dict(record))
    return None if isinstance(mapped, RecordError) else mapped.email


def _email_in_data_fields(user: MappedUser, old_email: str) -> MappedUser:
    """Hybrid projects change a known user's email with `dataFields.email` in an update that
    identifies the user by userId (or, without one, by the old email), so it stays on the
    bulk path with the record's other writes."""
    payload = {k: v for k, v in user.payload.items() if k != "email"}
    if user.user_id is None:
        payload["email"] = old_email
    payload["dataFields"] = {**(payload.get("dataFields") or {}), "email": user.email}
    return replace(user, email=old_email if user.user_id is None else user.email,
                   payload=payload)
