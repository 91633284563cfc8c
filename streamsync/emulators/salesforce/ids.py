"""Salesforce record ids: 15-character base-62 bodies with the 3-character case checksum."""

from __future__ import annotations

import re

_CHECKSUM_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
# ASCII order, so that equal-width ids sort as strings in creation order.
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ID_RE = re.compile(r"^[0-9A-Za-z]{15}([0-9A-Za-z]{3})?$")

KEY_PREFIXES: dict[str, str] = {
    "Account": "001",
    "Contact": "003",
    "User": "005",
    "Lead": "00Q",
    "Opportunity": "006",
    "OpportunityContactRole": "00K",
    "Campaign": "701",
    "CampaignMember": "00v",
    "Organization": "00D",
    "Group": "00G",
    "BulkJob": "750",
    "QueryLocator": "01g",
}


def checksum(id15: str) -> str:
    """The three checksum characters of a 15-character id."""
    if len(id15) != 15:
        raise ValueError(f"expected a 15-character id, got {len(id15)} characters")
    out = []
    for chunk in range(3):
        bits = 0
        for pos in range(5):
            ch = id15[chunk * 5 + pos]
            if "A" <= ch <= "Z":
                bits |= 1 << pos
        out.append(_CHECKSUM_ALPHABET[bits])
    return "".join(out)


def to18(sf_id: str) -> str:
    """Normalise a 15- or 18-character id to its 18-character form."""
    if len(sf_id) == 18:
        return sf_id
    return sf_id + checksum(sf_id)


def is_valid_id(sf_id: str) -> bool:
    """True for a well-formed 15-character id or an 18-character id with a correct checksum."""
    if not _ID_RE.match(sf_id):
        return False
    return len(sf_id) == 15 or checksum(sf_id[:15]) == sf_id[15:]


def make_id(prefix: str, number: int, pod: str = "8W0") -> str:
    """The 18-character id for `number` under a 3-character key prefix (deterministic)."""
    if len(prefix) != 3 or len(pod) != 3:
        raise ValueError("key prefix and pod must have 3 characters each")
    digits = []
    n = number
    for _ in range(9):
        n, rem = divmod(n, 62)
        digits.append(_BASE62[rem])
    if n:
        raise ValueError(f"id number {number} out of range")
    body = prefix + pod + "".join(reversed(digits))
    return body + checksum(body)


class IdSequence:
    """Hands out rising ids for one key prefix."""

    __slots__ = ("prefix", "pod", "next_number")

    def __init__(self, prefix: str, *, start: int = 1, pod: str = "8W0") -> None:
        self.prefix = prefix
        self.pod = pod
        self.next_number = start

    def next(self) -> str:
        sf_id = make_id(self.prefix, self.next_number, self.pod)
        self.next_number += 1
        return sf_id
