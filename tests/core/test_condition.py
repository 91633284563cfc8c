"""Event-rule conditions evaluated in process like a SOQL WHERE (docs/events.md §3)."""

from __future__ import annotations

from typing import Any

import pytest

from streamsync.core.condition import compile_condition
from streamsync.errors import SoqlError


def holds(text: str, **values: Any) -> bool:
    return compile_condition(text).holds({k.lower(): v for k, v in values.items()})


def test_equality_is_case_insensitive_and_a_null_field_is_not_equal() -> None:
    assert holds("StageName = 'Closed Won'", StageName="closed won")
    assert not holds("StageName = 'Closed Won'", StageName="Closed Lost")
    assert not holds("StageName = 'Closed Won'", StageName=None)
    assert holds("StageName != 'Closed Won'", StageName=None)
    assert holds("StageName = null", StageName=None)
    assert not holds("StageName != null", StageName=None)


def test_numbers_booleans_and_dates_compare_by_type() -> None:
    assert holds("Amount > 1000", Amount=1500.0)
    assert not holds("Amount > 1000", Amount=1000)
    assert holds("Amount >= 1000.5 AND IsWon = true", Amount=1000.5, IsWon=True)
    assert not holds("IsWon = true", IsWon=False)
    assert holds("CloseDate < 2025-01-01", CloseDate="2024-12-31")
    assert holds("LastModifiedDate >= 2024-05-01T00:00:00Z",
                 LastModifiedDate="2024-05-01T10:00:00.000+0000")
    assert not holds("LastModifiedDate >= 2024-05-01T00:00:00Z",
                     LastModifiedDate="2024-04-30T23:59:59Z")


def test_in_like_includes_not_and_parentheses() -> None:
    assert holds("Status IN ('Qualified', 'Working')", Status="qualified")
    assert holds("Status NOT IN ('Qualified')", Status=None)
    assert holds("Email LIKE '%@example.com'", Email="a@EXAMPLE.com")
    assert not holds("Email LIKE 'a\\_b%'", Email="axb@x.com")
    assert holds("Email LIKE 'a\\_b%'", Email="a_b@x.com")
    assert holds("Interests__c INCLUDES ('golf;tennis', 'chess')", Interests__c="Tennis;Golf")
    assert not holds("Interests__c EXCLUDES ('chess')", Interests__c="chess;golf")
    assert holds("NOT (Status = 'Open' OR Rating = 'Cold')", Status="Working", Rating="Hot")


def test_relative_dates_and_unsafe_text_are_refused() -> None:
    with pytest.raises(SoqlError, match="relative date"):
        compile_condition("CloseDate = TODAY")
    with pytest.raises(SoqlError, match="relative date"):
        compile_condition("CloseDate > LAST_N_DAYS:7")
    with pytest.raises(SoqlError):
        compile_condition("Name = 'x'; DELETE")
