"""Salesforce id validation, 15→18 conversion and key prefixes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamsync.core.ids import (
    checksum,
    id_or_none,
    is_valid_id,
    object_for_id,
    parse_id,
    row_id,
    to_18,
)
from streamsync.errors import RecordError

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@pytest.mark.parametrize(
    ("id15", "id18"),
    [
        ("a0RE000000IJmcN", "a0RE000000IJmcNMAT"),
        ("001M000000qfPyS", "001M000000qfPySIAU"),
        ("aaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaAAA"),
        ("aBcDEfgHIJKLMNO", "aBcDEfgHIJKLMNO025"),
    ],
)
def test_known_vectors(id15: str, id18: str) -> None:
    assert to_18(id15) == id18
    assert to_18(id18) == id18
    assert is_valid_id(id15) and is_valid_id(id18)


@pytest.mark.parametrize(
    "bad",
    ["", "001", "001M000000qfPy", "001M000000qfPySIA", "001M000000qfPySIAX",  # bad checksum
     "001M000000qfPyS!", "001M000000qfPy S", "001M000000qfPyS\n", "' OR Id != '",
     "001M000000qfPySIAU' OR Id != '", "00１M000000qfPyS", None, 123, b"001M000000qfPyS"],
)
def test_invalid_ids(bad: object) -> None:
    assert not is_valid_id(bad)
    with pytest.raises(RecordError) as exc:
        to_18(bad)
    assert exc.value.reason == "invalid_id"


def test_key_prefixes() -> None:
    assert object_for_id("001M000000qfPySIAU") == "Account"
    assert object_for_id("003000000000001AAA") == "Contact"
    assert object_for_id("00Q000000000001AAA") == "Lead"
    assert object_for_id("005000000000001AAA") == "User"
    assert object_for_id("00G000000000001AAA") == "Group"
    assert object_for_id("a0RE000000IJmcNMAT") is None


@given(st.text(alphabet=BASE62, min_size=15, max_size=15))
def test_to_18_round_trip(id15: str) -> None:
    id18 = to_18(id15)
    assert id18[:15] == id15 and len(id18) == 18
    assert is_valid_id(id18)
    assert checksum(id15) == id18[15:]
    # The checksum encodes the case: swapping the case of any letter changes it.
    letters = [i for i, c in enumerate(id15) if c.isalpha()]
    if letters:
        i = letters[0]
        flipped = id15[:i] + id15[i].swapcase() + id15[i + 1:]
        assert not is_valid_id(flipped + id18[15:])


def test_parse_id_returns_the_18_character_form_once_for_both_forms() -> None:
    assert parse_id("001M000000qfPyS") == "001M000000qfPySIAU"
    assert parse_id("001M000000qfPySIAU") == "001M000000qfPySIAU"
    assert parse_id(parse_id("001M000000qfPyS")) == "001M000000qfPySIAU"


@pytest.mark.parametrize("bad", [None, "", "001M000000qfPy", "001M000000qfPySIAX",
                                 "001M000000qfPy$", 1234567890123456, "001M000000qfPyS "])
def test_parse_id_refuses_what_is_not_an_id(bad: object) -> None:
    with pytest.raises(RecordError) as caught:
        parse_id(bad)
    assert caught.value.reason == "invalid_id"
    assert id_or_none(bad) is None


def test_row_id_reads_a_soql_rows_id_fields() -> None:
    row = {"Id": "00QM000000qfPyS", "ConvertedContactId": None, "OwnerId": "nope"}
    assert row_id(row) == "00QM000000qfPySMAU"
    assert row_id(row, "ConvertedContactId") is None
    assert row_id(row, "OwnerId") is None
    assert row_id(row, "Missing") is None
