"""The one parser of command-line times (`backfill --since/--until`, `replay --from`).

Zone rules:
- a date-time needs a zone: `Z` (or `z`) or an offset such as `+02:00`
  (`2026-01-02T03:04:05Z`, `2026-01-02T04:04:05+01:00`, fractions of a second allowed);
- a date-time without a zone is refused: guessing the machine's zone, or UTC, would shift the
  range by hours without a word;
- a bare date (`2026-01-02`) is midnight UTC of that day.
The result is always an aware datetime in UTC.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime

EXAMPLE = "2026-01-02T03:04:05Z"
_BARE_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_time(text: str) -> datetime:
    """`text` as an aware UTC datetime under the rules above; ValueError saying why not."""
    raw = text.strip()
    if _BARE_DATE.fullmatch(raw):
        try:
            return datetime.fromisoformat(raw).replace(tzinfo=UTC)
        except ValueError:
            raise ValueError(f"{text!r} is not a date (YYYY-MM-DD)") from None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or an ISO 8601 timestamp "
                         f"(e.g. {EXAMPLE})") from None
    if moment.utcoffset() is None:
        raise ValueError(f"{text!r} has no timezone; add Z or an offset such as +02:00 "
                         f"(e.g. {EXAMPLE})")
    return moment.astimezone(UTC)


def epoch_ms(moment: datetime) -> int:
    """An aware datetime as epoch milliseconds."""
    return int(moment.timestamp() * 1000)


def time_argument(text: str) -> datetime:
    """`parse_time` as an argparse `type` (a bad value is a usage error naming the option)."""
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
