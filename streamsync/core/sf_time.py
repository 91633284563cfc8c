"""Salesforce dateTime values (`2024-01-02T03:04:05.000+0000`, or with `Z`) as Python times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def sf_datetime(value: Any) -> datetime | None:
    """`value` as an aware datetime (UTC when it has no zone), None when it is not one."""
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    if len(text) >= 5 and text[-5] in "+-" and text[-3] != ":":
        text = text[:-2] + ":" + text[-2:]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=UTC)
