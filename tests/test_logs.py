"""Structured logs: JSON off a terminal, readable on one, and secrets never printed."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from streamsync.logs import REDACTED, get_logger, redactor, setup_logging


@pytest.fixture(autouse=True)
def _restore_root() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_event_and_fields() -> None:
    out = io.StringIO()
    setup_logging("info", stream=out)
    get_logger("t").info("flush.batch_sent", object="Lead", users=3)
    line = orjson.loads(out.getvalue().strip())
    assert line["event"] == "flush.batch_sent"
    assert line["object"] == "Lead" and line["users"] == 3 and line["level"] == "info"


def test_human_format_on_request() -> None:
    out = io.StringIO()
    setup_logging("debug", stream=out, json=False)
    get_logger("t").debug("ingest.event", channel="/data/LeadChangeEvent")
    assert "ingest.event channel=/data/LeadChangeEvent" in out.getvalue()


def test_level_filters() -> None:
    out = io.StringIO()
    setup_logging("warning", stream=out)
    get_logger("t").info("quiet.event")
    assert out.getvalue() == ""


def test_secrets_never_reach_the_output() -> None:
    out = io.StringIO()
    setup_logging("info", stream=out)
    redactor().add("s3cr3t-value-123")
    log = get_logger("t")
    log.info("auth.refreshed", access_token="abc.def", detail="got s3cr3t-value-123 back")
    log.info("text s3cr3t-value-123 in the event")
    text = out.getvalue()
    assert "s3cr3t-value-123" not in text and "abc.def" not in text
    assert text.count(REDACTED) == 3


def test_third_party_debug_logs_stay_quiet_at_debug_level() -> None:
    out = io.StringIO()
    setup_logging("debug", stream=out)
    logging.getLogger("aiosqlite").debug("executing INSERT ... ('jane@example.com',)")
    assert "jane@example.com" not in out.getvalue()
