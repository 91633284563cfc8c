"""Backfill rows get their 18-character Id once, as they enter (runtime/backfill/read.py), so
the window, the writer and the catch-up use it as it is."""

from __future__ import annotations

import pytest

from streamsync.errors import RecordError
from streamsync.runtime.backfill.read import entered


def test_entered_rows_carry_the_18_character_id() -> None:
    rows = entered([{"Id": "003M000000qfPyS", "Email": "a@example.com"},
                    {"Id": "003M000000qfPyTIAU"}])
    assert [r["Id"] for r in rows] == ["003M000000qfPySIAU", "003M000000qfPyTIAU"]
    assert rows[0]["Email"] == "a@example.com"


@pytest.mark.parametrize("row", [{}, {"Id": None}, {"Id": "003M000000qfPySXXX"}])
def test_a_row_without_a_valid_id_is_refused_where_it_enters(row: dict[str, object]) -> None:
    with pytest.raises(RecordError) as caught:
        entered([row])
    assert caught.value.reason == "invalid_id"
