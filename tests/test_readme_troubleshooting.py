"""README's troubleshooting table names every reason streamsync can dead-letter a record with."""

from __future__ import annotations

import re
from pathlib import Path

from streamsync.runtime.status import KNOWN_DEAD_LETTER_REASONS

README = Path(__file__).resolve().parents[1] / "README.md"


def troubleshooting_rows() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ")]


def test_every_dead_letter_reason_has_a_troubleshooting_row() -> None:
    symptoms = " ".join(row.split("|")[1] for row in troubleshooting_rows())
    named = set(re.findall(r"`([a-z_]+)`", symptoms))
    missing = sorted(KNOWN_DEAD_LETTER_REASONS - named)
    assert not missing, f"README troubleshooting has no row for dead-letter reasons {missing}"


def test_the_known_reasons_are_only_dead_letter_reasons() -> None:
    # Skipped CDC messages are logged, never dead-lettered: they must not pose as reasons.
    assert {"malformed_event", "unknown_entity"}.isdisjoint(KNOWN_DEAD_LETTER_REASONS)
    assert {"invalid_email", "retries_exhausted", "lease_expired", "conflict"} <= (
        KNOWN_DEAD_LETTER_REASONS)
