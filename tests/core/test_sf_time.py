"""Salesforce dateTime parsing, shared by consent (epoch ms) and the backfill (datetimes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from streamsync.core.consent import stamp_ms
from streamsync.core.sf_time import sf_datetime

NOON = datetime(2024, 1, 2, 12, 0, 5, tzinfo=UTC)


@pytest.mark.parametrize("text", ["2024-01-02T12:00:05.000+0000", "2024-01-02T12:00:05Z",
                                  "2024-01-02T12:00:05.000+00:00", "2024-01-02T12:00:05",
                                  "2024-01-02T14:00:05.000+0200"])
def test_every_spelling_salesforce_sends_is_the_same_moment(text: str) -> None:
    assert sf_datetime(text) == NOON
    assert stamp_ms(text) == int(NOON.timestamp() * 1000)


def test_the_offset_is_kept() -> None:
    moment = sf_datetime("2024-01-02T14:00:05.000+0200")
    assert moment is not None and moment.utcoffset() == timedelta(hours=2)
    assert moment.tzinfo == timezone(timedelta(hours=2))


@pytest.mark.parametrize("value", [None, "", "yesterday", "2024-13-40T00:00:00Z", 17, 1.5])
def test_anything_else_is_none(value: object) -> None:
    assert sf_datetime(value) is None and stamp_ms(value) is None
