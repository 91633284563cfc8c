"""Compare each mapped Iterable list with its Salesforce Campaign's members (docs/design.md §8).

Independent of the sync's own decision code: from the Campaign's live CampaignMember rows, a
member counts when its Status is among the configured ones (any, when none are configured) and
has an email, the Contact's once it has a Contact, else the Lead's; the list must hold exactly
those emails (compared lower-case, as Iterable stores them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ListExpectation:
    """One mapped list: its Campaign and the statuses that count (None: all)."""

    list_id: int
    campaign_id: str
    statuses: frozenset[str] | None = None


@dataclass
class ListMismatch:
    """A list that differs from its Campaign: emails missing from it and emails on it that no
    counted member has."""

    list_id: int
    campaign_id: str
    missing: list[str]
    unexpected: list[str]


@dataclass
class ListsReport:
    """The outcome of one comparison of every mapped list."""

    lists: int = 0
    members: int = 0
    mismatches: list[ListMismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> dict[str, Any]:
        return {"lists_compared": self.lists, "list_members_expected": self.members,
                "list_mismatches": len(self.mismatches),
                "list_mismatch_examples": [vars(m) for m in self.mismatches[:10]]}


def _path(row: Mapping[str, Any], path: str) -> Any:
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def expected_emails(rows: Iterable[Mapping[str, Any]], statuses: frozenset[str] | None,
                    lead_email: str = "Lead.Email", contact_email: str = "Contact.Email"
                    ) -> set[str]:
    """The emails the list of a Campaign with these live member rows must hold."""
    out: set[str] = set()
    for row in rows:
        if row.get("IsDeleted") or (statuses is not None and row.get("Status") not in statuses):
            continue
        email = _path(row, contact_email if row.get("ContactId") else lead_email)
        if isinstance(email, str) and email.strip():
            out.add(email.strip().lower())
    return out


def compare_lists(expectations: Iterable[ListExpectation],
                  members: Mapping[str, Sequence[Mapping[str, Any]]],
                  actual: Mapping[int, Iterable[str]], *, lead_email: str = "Lead.Email",
                  contact_email: str = "Contact.Email") -> ListsReport:
    """`members`: each Campaign's live CampaignMember rows; `actual`: each list's users as
    Iterable lists them."""
    report = ListsReport()
    for exp in expectations:
        want = expected_emails(members.get(exp.campaign_id, []), exp.statuses, lead_email,
                               contact_email)
        have = {e.strip().lower() for e in actual.get(exp.list_id, ()) if e.strip()}
        report.lists += 1
        report.members += len(want)
        if want != have:
            report.mismatches.append(ListMismatch(exp.list_id, exp.campaign_id,
                                                  sorted(want - have), sorted(have - want)))
    return report
