"""The pipeline's mapping stage (runtime/pipeline.py `SyncPipeline`): map records, resolve
duplicate identifiers, and the converted-Lead precedence (hand a Lead's identity to its Contact,
or let a Lead's email win over a Contact's)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from streamsync.adapters.store import Identity, IdentityHandover, QueueInput, StoreAPI
from streamsync.config import Config
from streamsync.core.ids import row_id
from streamsync.core.mapping import CompiledMapping, payload_hash
from streamsync.errors import RecordError
from streamsync.logs import get_logger
from streamsync.models import MappedUser
from streamsync.runtime.writer import WriteOutcome

if TYPE_CHECKING:
    from streamsync.adapters.iterable import IterableClient
    from streamsync.runtime.generations import ForgottenRecords
    from streamsync.runtime.pipeline import SyncOutcome
    from streamsync.runtime.writer import IterableWriter

log = get_logger("streamsync.runtime.pipeline")  # the pipeline's log, as before the move

DUPLICATE_ORDER_FIELDS = ("SystemModstamp", "LastModifiedDate")
"""Record fields (when selected) that decide which of two records with one identifier wins."""


def _order_key(record: dict[str, Any]) -> tuple[str, str]:
    stamp = next((str(record[f]) for f in DUPLICATE_ORDER_FIELDS if record.get(f)), "")
    return stamp, str(record.get("Id", ""))


def _with_flag_cleared(config: Config, object_name: str, user: MappedUser) -> MappedUser:
    """With delete_policy = flag, every live record's payload sets the flag to false, so an
    undeleted record's profile is unflagged; so does out_of_scope = flag with its flag, for
    a record back in scope."""
    obj = config.objects[object_name]
    flags = [f for f, on in ((obj.delete_flag_field, obj.delete_policy == "flag"),
                             (obj.out_of_scope_flag_field, obj.out_of_scope == "flag")) if on]
    if not flags:
        return user
    data = dict(user.payload.get("dataFields") or {})
    for flag in flags:
        data = _set_path(data, flag.split(".")[1:], False)
    payload = {**user.payload, "dataFields": data}
    return replace(user, payload=payload, payload_hash=payload_hash(payload))


def map_all(config: Config, mapping: CompiledMapping, object_name: str,
            records: Sequence[dict[str, Any]], out: SyncOutcome,
            converted: list[tuple[str, str | None]]) -> list[MappedUser]:
    """The users to write, one per identifier (the most recently modified record wins);
    records that fail to map go to `out.dead`, converted Leads (precedence `contact`) to
    `converted` and `out.skipped`."""
    contact_first = (object_name == "Lead"
                     and config.converted_precedence() == "contact")
    winners: dict[str, tuple[tuple[str, str], MappedUser]] = {}
    for record in records:
        sf_id = row_id(record)
        if sf_id is None:
            log.warning("pipeline.record_without_id", object=object_name)
            continue
        if contact_first and record.get("IsConverted") and record.get("ConvertedContactId"):
            converted.append((sf_id, row_id(record, "ConvertedContactId")))
            out.skipped.append(sf_id)
            continue
        mapped = mapping.map_or_error(record)
        if isinstance(mapped, RecordError):
            out.dead[sf_id] = (mapped.reason, mapped.detail or str(mapped))
            continue
        mapped = _with_flag_cleared(config, object_name, mapped)
        order = _order_key(record)
        held = winners.get(mapped.key)
        if held is not None:
            loser, winner = (held, (order, mapped)) if held[0] < order else ((order, mapped),
                                                                             held)
            log.warning("pipeline.duplicate_identifier", object=object_name,
                        kept=winner[1].sf_id, skipped=loser[1].sf_id)
            out.skipped.append(loser[1].sf_id)
            winners[mapped.key] = winner
            continue
        winners[mapped.key] = (order, mapped)
    return [user for _, user in winners.values()]


async def hand_over_to_contacts(config: Config, store: StoreAPI, clock: Callable[[], float],
                                converted: Sequence[tuple[str, str | None]]) -> None:
    """Converted Leads (precedence `contact`): each Lead's identity goes to the Contact it
    became when that Contact holds none (it is enqueued so its next sync writes with it);
    otherwise it is dropped. A Lead profile a differently keyed Contact profile already
    replaced is left in Iterable and logged."""
    contact = config.objects.get("Contact")
    if contact is None or not contact.writes_users:
        await store.forget_identity("Lead", [lead for lead, _ in converted])
        return
    leads = await store.identities("Lead", [lead for lead, _ in converted])
    pairs = [(lead, target) for lead, target in converted if lead in leads]
    orphans = [lead for lead, target in converted if lead not in leads or target is None]
    await store.forget_identity("Lead", orphans)
    handed: list[tuple[str, str]] = [(lead, t) for lead, t in pairs if t is not None]
    if not handed:
        return
    held = await store.identities("Contact", [t for _, t in handed])
    taken = await store.hand_over_identities(
        [IdentityHandover("Lead", lead, "Contact", target) for lead, target in handed],
        clock())
    if taken:
        log.info("pipeline.converted_identity_handed_over", records=len(taken))
    for lead, target in handed:
        mine, theirs = leads[lead], held.get(target)
        if theirs is not None and _keys_differ(mine, theirs):
            log.info("pipeline.converted_lead_profile_left", lead_id=lead,
                        contact_id=target, detail="the Lead was converted into a Contact "
                        "that already had a profile under another Iterable key; the Lead's "
                        "profile is no longer updated")


async def yield_to_leads(store: StoreAPI, users: list[MappedUser], out: SyncOutcome
                         ) -> list[MappedUser]:
    """Precedence `lead`: a Contact whose email a synced Lead holds is not written."""
    kept: list[MappedUser] = []
    for user in users:
        owners = await store.find_by_email(user.email) if user.email else []
        if any(o.object_name == "Lead" for o in owners):
            out.skipped.append(user.sf_id)
            log.info("pipeline.lead_precedence", record_id=user.sf_id)
        else:
            kept.append(user)
    return kept


async def newer_since_read(store: StoreAPI, forgotten: ForgottenRecords, object_name: str,
                           users: Sequence[MappedUser], known: Mapping[str, Identity],
                           read_at: float | None, clock: Callable[[], float]) -> set[str]:
    """Records of a page read at `read_at` (a re-sync's; None: not a page) that must not be
    written: the page's state is older than what real time did since (docs/design.md §9).
    - its identity was saved after the read;
    - this process forgot its identity after the read (deleted, or left to a shared profile);
    - it holds no identity while another record's identity, saved since, holds its email (a
      Lead converted after the read: its Contact took the profile over); each of these is
      queued, and real time reads it afresh."""
    if read_at is None:
        return set()
    newer = {u.sf_id for u in users
             if (ident := known.get(u.sf_id)) is not None and ident.synced_at > read_at}
    newer |= forgotten.since(object_name, [u.sf_id for u in users], read_at)
    return newer | await _taken_since(store, object_name, users, known, read_at, clock)


async def _taken_since(store: StoreAPI, object_name: str, users: Sequence[MappedUser],
                       known: Mapping[str, Identity], read_at: float,
                       clock: Callable[[], float]) -> set[str]:
    unknown = [u for u in users if u.sf_id not in known and u.email is not None]
    if not unknown:
        return set()
    since = {str(h.iterable_email).lower() for h in await store.identities_for_users(
        [str(u.email) for u in unknown], []) if h.synced_at > read_at}
    taken = {u.sf_id for u in unknown if str(u.email).lower() in since}
    if taken:
        await store.enqueue([QueueInput(object_name, i, "UPDATE") for i in taken], clock(),
                            "retry")
        log.info("pipeline.profile_taken_since_read", object=object_name, records=len(taken))
    return taken


async def delete_users(writer: IterableWriter, iterable: IterableClient,
                       idents: Sequence[Identity], by_user_id: bool) -> WriteOutcome:
    """Delete each identity's Iterable user (delete policy `delete`), by userId in a userId
    project, else by email; one nothing can name counts as done."""
    out = WriteOutcome()
    for ident in idents:
        user = MappedUser(ident.object_name, ident.record_id, ident.iterable_email,
                          ident.iterable_user_id, {}, "")
        email = None if by_user_id else ident.iterable_email
        user_id = ident.iterable_user_id if email is None else None
        if email is None and user_id is None:
            out.synced.append(user)  # nothing Iterable could know it by
            continue
        await writer.settle(user, partial(iterable.delete_user, email=email, user_id=user_id),
                            out)
    return out


def _keys_differ(a: Identity, b: Identity) -> bool:
    """True when two identities name different Iterable users: by email (case-insensitively)
    when both have one, else by userId."""
    if a.iterable_email and b.iterable_email:
        return a.iterable_email.lower() != b.iterable_email.lower()
    return a.iterable_user_id != b.iterable_user_id


def _set_path(node: dict[str, Any], keys: Sequence[str], value: Any) -> dict[str, Any]:
    """A copy of `node` with `value` set at the nested `keys` (intermediate dicts copied)."""
    out = dict(node)
    if len(keys) == 1:
        out[keys[0]] = value
        return out
    child = out.get(keys[0])
    out[keys[0]] = _set_path(dict(child) if isinstance(child, dict) else {}, keys[1:], value)
    return out
