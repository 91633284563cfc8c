"""Final-state check of consent, Salesforce → Iterable (docs/design.md §7).

No Iterable user may still receive a configured group (channel, message type, static list)
while a Salesforce record that maps to them is opted out. A record whose Iterable opt-out came
later is opted in again by the Iterable → Salesforce direction, so in a settled end state every
opted-out record is one whose opt-out stands. Used by `make demo`, the chaos run and the tests,
next to `core/verify.compare`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streamsync.core.consent import opted_out
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
