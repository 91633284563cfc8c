"""What commands print: secrets masked, JSON with sorted keys, plain-text tables."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import orjson

from streamsync.logs import redactor

MAX_CELL_CHARS = 120


def out(text: str, stream: TextIO | None = None) -> None:
    """Print command output with every configured secret masked."""
    target = stream or sys.stdout
    target.write(redactor().text(text))
    target.flush()


def err(message: str, prefix: str = "streamsync") -> None:
    """One message on stderr, `prefix: message`, secrets masked."""
    out(f"{prefix}: {message.rstrip()}\n", sys.stderr)


def json_text(data: Any) -> str:
    """Indented JSON with sorted keys and a final newline."""
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"


def _cell(value: Any, max_chars: int | None) -> str:
    text = "-" if value is None or value == "" else str(value)
    text = " ".join(text.split())
    if max_chars is None or len(text) <= max_chars:
        return text
    return text[: max_chars - 3] + "..."


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
          max_cell: int | None = MAX_CELL_CHARS) -> str:
    """Left-aligned columns separated by two spaces, with a header underline; cells longer
    than `max_cell` characters are cut (None: never)."""
    cells = [[_cell(v, max_cell) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                 for row in cells)
    return "\n".join(lines)
