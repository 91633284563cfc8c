"""Final-state check of consent, both ways (docs/design.md §7).

Salesforce → Iterable (`check_consent`):

No Iterable user may still receive a configured group (channel, message type, static list)
while a Salesforce record that maps to them is opted out. A record whose Iterable opt-out came
later is opted in again by the Iterable → Salesforce direction, so in a settled end state every
opted-out record is one whose opt-out stands. Used by `make demo`, the chaos run and the tests,
next to `core/verify.compare`.

Iterable → Salesforce (`later_iterable_unsubscribes`): no Salesforce record is opted in whose
Iterable user unsubscribed later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streamsync.core.consent import opted_out
from streamsync.core.consent_inbound import ConsentGroups, InboundEvent, decide
from streamsync.core.mapping import CompiledMapping
from streamsync.core.verify import Mismatch
from streamsync.errors import RecordError


@dataclass(frozen=True)
class ConsentPolicy:
    """One object's consent settings as the check needs them (list names resolved to ids)."""

    mapping: CompiledMapping
    opt_out_fields: tuple[str, ...]
    channel_ids: tuple[int, ...] = ()
    message_type_ids: tuple[int, ...] = ()
    list_ids: tuple[int, ...] = ()
    defers_when_converted: bool = False


@dataclass
class ConsentReport:
    """How many opted-out records were checked, and the users still receiving a group."""

    opted_out: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> dict[str, int]:
        return {"consent_opted_out_checked": self.opted_out,
                "consent_mismatches": len(self.mismatches)}


def still_received(policy: ConsentPolicy, subs: Mapping[str, Any],
                   opt_in_types: frozenset[int] = frozenset()) -> list[str]:
    """The configured groups a user with these subscription arrays still gets, e.g.
    `["channel 39581"]` (no state at all: opted in to every channel, in no list)."""
    def ids(name: str) -> set[int]:
        value = subs.get(name)
        return {i for i in value if isinstance(i, int)} if isinstance(value, list) else set()

    channels, types = ids("unsubscribedChannelIds"), ids("unsubscribedMessageTypeIds")
    opted_in, lists = ids("subscribedMessageTypeIds"), ids("emailListIds") | ids("userListIds")
    out = [f"channel {c}" for c in policy.channel_ids if c not in channels]
    out += [f"message type {t}" for t in policy.message_type_ids
            if (t in opted_in if t in opt_in_types else t not in types)]
    out += [f"list {i}" for i in policy.list_ids if i in lists]
    return out


def check_consent(policies: Mapping[str, ConsentPolicy],
                  records: Mapping[str, Iterable[Mapping[str, Any]]],
                  subscriptions: Mapping[str, Mapping[str, Any]],
                  opt_in_types: frozenset[int] = frozenset()) -> ConsentReport:
    """Every live, mappable, opted-out record of a consent object against its Iterable user's
    subscription arrays (`subscriptions`: key → arrays, for users that exist)."""
    report = ConsentReport()
    for object_name, rows in records.items():
        policy = policies.get(object_name)
        if policy is None:
            continue
        for record in rows:
            if record.get("IsDeleted") or not opted_out(record, policy.opt_out_fields):
                continue
            if policy.defers_when_converted and record.get("IsConverted"):
                continue
            try:
                key = policy.mapping.map(record).key
            except RecordError:
                continue
            report.opted_out += 1
            subs = subscriptions.get(key)
            if subs is None:
                continue  # no profile receives nothing (the profile check reports it missing)
            groups = still_received(policy, subs, opt_in_types)
            if groups:
                report.mismatches.append(Mismatch(
                    key, object_name, str(record.get("Id")),
                    "opted out in Salesforce, still subscribed in Iterable to "
                    + ", ".join(groups)))
    return report


# ------------------------------------------------------------------ Iterable → Salesforce


@dataclass(frozen=True, slots=True)
class RecordConsent:
    """One live Salesforce record as the Iterable → Salesforce check needs it: its opt-out now
    and when its opt-out last changed in Salesforce (the commit time of the latest change event
    naming an opt-out field; None when it never changed)."""

    object_name: str
    record_id: str
    email: str
    opted_out: bool
    changed_at_ms: int | None


def later_iterable_unsubscribes(records: Iterable[RecordConsent],
                                events: Iterable[InboundEvent],
                                groups: ConsentGroups) -> list[Mismatch]:
    """Records opted in whose person's latest Iterable event about `groups` is an unsubscribe
    made at or after Salesforce's last opt-out change (Iterable dates to the second; at the same
    second the unsubscribe wins, docs/design.md §7)."""
    latest = decide(events, groups)
    out: list[Mismatch] = []
    for record in records:
        if record.opted_out:
            continue
        email = record.email.strip().lower()
        decision = latest.get(f"email:{email}")
        if decision is None or not decision.opted_out:
            continue
        sf_second = -1 if record.changed_at_ms is None else record.changed_at_ms // 1000
        if decision.event.created_ms // 1000 >= sf_second:
            out.append(Mismatch(email, record.object_name, record.record_id,
                                "unsubscribed in Iterable, later than Salesforce's last opt-out "
                                "change, still opted in in Salesforce"))
    return out
