"""Salesforce record ids: validation, 15→18 conversion with the case checksum, key prefixes
(docs/salesforce.md §7)."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Final

from streamsync.errors import RecordError
from streamsync.models import SfId

_CHECKSUM_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ID_RE: Final = re.compile(r"[0-9A-Za-z]{15}(?:[0-9A-Za-z]{3})?")
_PREFIX_RE: Final = re.compile(r"[0-9A-Za-z]{3}")
_UPPER_BITS: Final = str.maketrans(string.ascii_uppercase + string.ascii_lowercase + string.digits,
                                   "1" * 26 + "0" * 36)

KEY_PREFIXES: Final[dict[str, str]] = {
    "001": "Account",
    "003": "Contact",
    "005": "User",
    "006": "Opportunity",
    "00D": "Organization",
    "00G": "Group",
    "00Q": "Lead",
}
ID_CACHE_SIZE: Final = 8_192
"""Ids whose validation and 18-character form are remembered (a few leases' worth, ~2 MB)."""
PREFIX_OF: Final[dict[str, str]] = {name: prefix for prefix, name in KEY_PREFIXES.items()}


def checksum(id15: str) -> str:
    """The three case-checksum characters of a 15-character id."""
    if len(id15) != 15:
        raise ValueError(f"a 15-character id is needed, got {len(id15)} characters")
    bits = id15.translate(_UPPER_BITS)  # '1' for A-Z, '0' for a-z and 0-9
    try:
        return (_CHECKSUM_ALPHABET[int(bits[4::-1], 2)]
                + _CHECKSUM_ALPHABET[int(bits[9:4:-1], 2)]
                + _CHECKSUM_ALPHABET[int(bits[14:9:-1], 2)])
    except ValueError:
        raise ValueError(f"not a base-62 id: {id15!r}") from None


@lru_cache(maxsize=ID_CACHE_SIZE)
def _id18_of(value: str) -> str | None:
    """The 18-character form of a valid id string, None for an invalid one (cached: a burst
    handles each id several times, in ingest, the queue, the read and the settle)."""
    if not _ID_RE.fullmatch(value):
        return None
    if len(value) == 18:
        return value if checksum(value[:15]) == value[15:] else None
    return value + checksum(value)


def is_valid_id(value: object) -> bool:
    """A base-62 15-character id, or an 18-character id whose checksum matches."""
    return _checked(value) is not None


def _checked(value: object) -> str | None:
    """`_id18_of` for strings of an id's length (nothing else reaches the cache)."""
    return _id18_of(value) if isinstance(value, str) and len(value) in (15, 18) else None


def to_18(value: object) -> str:
    """The 18-character form of a valid id; RecordError("invalid_id") otherwise."""
    id18 = _checked(value)
    if id18 is None:
        shown = repr(value)[:40]
        raise RecordError("invalid_id", f"not a Salesforce id: {shown}")
    return id18


def parse_id(value: object) -> SfId:
    """`value` as an SfId (18 characters); RecordError("invalid_id") if it is no valid id."""
    return SfId(to_18(value))


def id_or_none(value: object) -> SfId | None:
    """`value` as an SfId, or None if it is no valid id (a missing or null field)."""
    id18 = _checked(value)
    return None if id18 is None else SfId(id18)


def row_id(row: Mapping[str, Any], field: str = "Id") -> SfId | None:
    """The id in a SOQL row's `field` as an SfId; None when absent, null or not an id."""
    return id_or_none(row.get(field))


def key_prefix(sf_id: str) -> str:
    """The first three characters, which name the object type."""
    return sf_id[:3]


def object_for_id(sf_id: str) -> str | None:
    """The object a key prefix belongs to, for the standard objects streamsync knows."""
    return KEY_PREFIXES.get(sf_id[:3])


def is_key_prefix(value: str) -> bool:
    """Three base-62 characters."""
    return bool(_PREFIX_RE.fullmatch(value))
