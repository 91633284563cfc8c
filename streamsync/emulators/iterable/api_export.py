"""Route: GET /api/export/data.json, newline-delimited JSON of subscribe/unsubscribe, hosted
unsubscribe click and custom events (other data types exist but have no data here)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import web

from .consent import CONSENT_EVENTS
from .replies import ApiError

if TYPE_CHECKING:
    from .app import IterableEmulator
    from .messaging import Messaging

EXPORT_PATH: Final = "/api/export/data.json"
CUSTOM_EVENT: Final = "customEvent"
# The swagger's dataTypeName enum (Airbyte also sent `emailUnsubscribe`; both are accepted).
DATA_TYPES: Final = frozenset(
    "emailSend emailOpen emailClick hostedUnsubscribeClick emailComplaint emailBounce "
    "emailSendSkip pushSend pushOpen pushUninstall pushBounce pushSendSkip inAppSend inAppOpen "
    "inAppClick inAppClose inAppDelete inAppDelivery inAppSendSkip inAppRecall inboxSession "
    "inboxMessageImpression smsSend smsBounce smsClick smsReceived smsSendSkip webPushSend "
    "webPushClick webPushSendSkip rcsSend rcsSendSkip emailSubscribe emailUnSubscribe purchase "
    "customEvent user smsUsageInfo embeddedSend embeddedSendSkip embeddedClick embeddedReceived "
    "embeddedImpression embeddedSession unknownSession journeyExit whatsAppBounce whatsAppClick "
    "whatsAppReceived whatsAppSeen whatsAppSend whatsAppSendSkip whatsAppUsageInfo".split()
)
_ALIASES: Final = {"emailUnsubscribe": "emailUnSubscribe"}
RANGES: Final = ("Today", "Yesterday", "BeforeToday", "All")
_DATE_RE: Final = re.compile(
    r"(\d{4}-\d{2}-\d{2})(?:[ T](\d{2}:\d{2}:\d{2})(?:\.\d{1,9})?)?\s*(Z|[+-]\d{2}:?\d{2})?\Z"
)


def parse_export_time(raw: str) -> float:
    """`yyyy-MM-dd HH:mm:ss [ZZ]` (also the ISO 'T' form and a bare date) as epoch seconds."""
    m = _DATE_RE.match(raw.strip())
    if m is None:
        raise ValueError(f"expected yyyy-MM-dd HH:mm:ss [ZZ], got {raw!r}")
    day, clock, offset = m.group(1), m.group(2) or "00:00:00", m.group(3) or "+00:00"
    if offset == "Z":
        offset = "+00:00"
    elif ":" not in offset:
        offset = offset[:3] + ":" + offset[3:]
    return datetime.fromisoformat(f"{day}T{clock}{offset}").timestamp()


def window(query: Any, now: float) -> tuple[float | None, float | None]:
    """The [start, end) of an export in epoch seconds from range or start/endDateTime."""
    start_raw, end_raw = query.get("startDateTime"), query.get("endDateTime")
    if start_raw is not None or end_raw is not None:
        try:
            start = parse_export_time(start_raw) if start_raw is not None else None
            end = parse_export_time(end_raw) if end_raw is not None else None
        except ValueError as exc:
            raise ApiError(400, "BadParams", f"Invalid date: {exc}") from None
        return start, end
    name = query.get("range", "Today")
    if name not in RANGES:
        raise ApiError(400, "BadParams", f"range must be one of {list(RANGES)}, got {name!r}")
    midnight = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    today = midnight.timestamp()
    return {
        "Today": (today, None),
        "Yesterday": ((midnight - timedelta(days=1)).timestamp(), today),
        "BeforeToday": (None, today),
        "All": (None, None),
    }[name]


def field_names(query: Any, name: str) -> list[str]:
    """A repeatable, comma-separated list parameter."""
    out: list[str] = []
    for value in query.getall(name, []):
        out += [f.strip() for f in value.split(",") if f.strip()]
    return out


def rows(
    messaging: Messaging, data_type: str, visible_until: float
) -> list[tuple[float, dict[str, Any]]]:
    """(event time, line) of every exportable record of a data type, oldest first."""
    if data_type in CONSENT_EVENTS:
        return [
            (e.created_wall, e.data_fields()) for e in messaging.log.events
            if e.event_name == data_type and e.created_wall <= visible_until
        ]
    if data_type == CUSTOM_EVENT:
        found = [e for e in messaging.events.by_id.values() if e.received_wall <= visible_until]
        found.sort(key=lambda e: (e.created_ms, e.received_wall))
        return [(e.created_ms / 1000.0, e.api_view()) for e in found]
    return []


def add_export_routes(app: web.Application, emu: IterableEmulator) -> None:
    """Register the export route of one emulator."""

    async def export_json(request: web.Request) -> web.StreamResponse:
        project = emu.auth(request, "exportData")
        query = request.query
        raw_type = query.get("dataTypeName")
        if not raw_type:
            raise ApiError(400, "BadParams", "Missing parameter dataTypeName",
                           {"dataTypeName": "Missing value"})
        data_type = _ALIASES.get(raw_type, raw_type)
        if data_type not in DATA_TYPES:
            raise ApiError(400, "BadParams", f"Invalid dataTypeName {raw_type!r}")
        campaign: int | None = None
        if query.get("campaignId") is not None:
            if not query["campaignId"].isdigit():
                raise ApiError(400, "BadParams", "campaignId must be a number")
            campaign = int(query["campaignId"])
        now = emu.state.wall_clock()
        start, end = window(query, now)
        only, omit = field_names(query, "onlyFields"), set(field_names(query, "omitFields"))
        lines: list[bytes] = []
        visible_until = now - emu.config.export_lag_s
        for at, line in rows(emu.messaging_for(project), data_type, visible_until):
            if (start is not None and at < start) or (end is not None and at >= end):
                continue
            if campaign is not None and line.get("campaignId") != campaign:
                continue
            if only:
                line = {k: line[k] for k in only if k in line}
            if omit:
                line = {k: v for k, v in line.items() if k not in omit}
            lines.append(orjson.dumps(line) + b"\n")
        return web.Response(body=b"".join(lines), content_type="application/x-json-stream")

    app.router.add_get(EXPORT_PATH, export_json, allow_head=False)
