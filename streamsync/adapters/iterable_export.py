"""Iterable's export API for subscription events: `GET /api/export/data.json` of one data type
within `[startDateTime, endDateTime)` (docs/iterable.md §14). 4 requests/minute per project: the
caller paces its polls; a 429 is a RateLimited with the server's Retry-After."""

from __future__ import annotations

from typing import Any

import orjson

from streamsync.adapters.iterable import IterableClient
from streamsync.errors import TransientError

EXPORT_PATH = "/api/export/data.json"
EXPORT = "exportData"
"""The endpoint name export calls are counted under."""


async def export_lines(client: IterableClient, data_type: str, start: str, end: str
                       ) -> list[Any]:
    """Every line of one export window, parsed (one JSON value per line, oldest first).

    `start` and `end` are `yyyy-MM-dd HH:mm:ss` (UTC). A line that is not JSON means a cut
    reply: TransientError, so the window is read again rather than half stored.
    """
    resp = await client._call("GET", EXPORT_PATH, EXPORT, params={
        "dataTypeName": data_type, "startDateTime": start, "endDateTime": end})
    out: list[Any] = []
    for number, line in enumerate(resp.body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            raise TransientError(f"iterable {EXPORT}: line {number} of the {data_type} export "
                                 "is not JSON (a cut reply)") from None
    return out
