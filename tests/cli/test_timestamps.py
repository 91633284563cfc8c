"""The one time parser (streamsync/cli/timestamps.py) and its zone rules, on every option that
takes a time: `backfill --since/--until` and `replay --from`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streamsync.cli import build_parser, main
from streamsync.cli.exit_codes import EXIT_USAGE
from streamsync.cli.replay import parse_replay_start
from streamsync.cli.timestamps import epoch_ms, parse_time
from streamsync.errors import UsageError

MOMENT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-01-02T03:04:05Z", MOMENT),
    ("2026-01-02T03:04:05z", MOMENT),
    (" 2026-01-02T03:04:05+00:00 ", MOMENT),
    ("2026-01-02T04:04:05+01:00", MOMENT),
    ("2026-01-01T22:04:05-05:00", MOMENT),
    ("2026-01-02T03:04:05.250Z", MOMENT + timedelta(milliseconds=250)),
    ("2026-01-02", datetime(2026, 1, 2, tzinfo=UTC)),          # a bare date: midnight UTC
])
def test_accepted_times_are_utc(text: str, expected: datetime) -> None:
    parsed = parse_time(text)
    assert parsed == expected and parsed.utcoffset() == timedelta(0)
    assert parsed.tzinfo is UTC


def test_epoch_ms() -> None:
    assert epoch_ms(parse_time("2026-01-02T03:04:05.250Z")) == 1767323045250
    assert epoch_ms(parse_time("2026-01-02")) == 1767312000000


@pytest.mark.parametrize(("text", "says"), [
    ("2026-01-02T03:04:05", "has no timezone"),      # naive: refused, never guessed
    ("2026-01-02 03:04", "has no timezone"),
    ("yesterday", "not a date (YYYY-MM-DD) or an ISO 8601 timestamp"),
    ("", "not a date"),
    ("2026-13-01", "not a date (YYYY-MM-DD)"),
    ("2026-01-02T25:00:00Z", "ISO 8601"),
])
def test_refused_times_say_why(text: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_time(text)
    assert says in str(info.value)


def test_backfill_and_replay_apply_the_same_rules() -> None:
    args = build_parser().parse_args(["backfill", "--since", "2026-01-02T04:04:05+01:00",
                                      "--until", "2026-02-01"])
    assert args.since == MOMENT and args.until == datetime(2026, 2, 1, tzinfo=UTC)
    assert parse_replay_start("2026-01-02T04:04:05+01:00") == MOMENT
    with pytest.raises(UsageError, match="has no timezone"):
        parse_replay_start("2026-01-02T03:04:05")


@pytest.mark.parametrize("option", ["--since", "--until"])
def test_backfill_refuses_a_time_without_a_zone(
    option: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["backfill", option, "2026-01-02T03:04:05"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert option in err and "has no timezone; add Z or an offset" in err
