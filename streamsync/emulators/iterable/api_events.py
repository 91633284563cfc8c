"""Routes: events/track, events/trackBulk (upsert by id) and the per-user event reads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from .api_subscriptions import rejection_error
from .custom_events import CustomEvent, created_ms, id_problem, new_event_id
from .messaging import Messaging, find_user
from .profiles import Profile, Project
from .replies import ApiError, envelope
from .updates import Rejection

if TYPE_CHECKING:
    from .app import IterableEmulator

DEFAULT_READ_LIMIT: Final = 30
MAX_READ_LIMIT: Final = 200
_FAILED: Final = ("invalidEmails", "invalidUserIds", "notFoundEmails", "notFoundUserIds",
                  "forgottenEmails", "forgottenUserIds")
_TYPES: Final[dict[str, tuple[type, str]]] = {
    "eventName": (str, "String value expected"),
    "email": (str, "String value expected"),
    "userId": (str, "String value expected"),
    "id": (str, "String value expected"),
    "createdAt": (int, "Number value expected"),
    "campaignId": (int, "Number value expected"),
    "templateId": (int, "Number value expected"),
    "dataFields": (dict, "Object value expected"),
    "createNewFields": (bool, "Boolean value expected"),
}


def check_event(item: Any, where: str, json_errors: dict[str, str],
                param_errors: dict[str, str]) -> dict[str, Any] | None:
    """Type-check one TrackRequest; None when malformed (errors filled in)."""
    if type(item) is not dict:
        json_errors[where] = "Object value expected"
        return None
    ok = True
    for name, (kind, message) in _TYPES.items():
        value = item.get(name)
        if value is not None and type(value) is not kind:
            json_errors[f"{where}.{name}"] = message
            ok = False
    if not ok:
        return None
    if not item.get("eventName"):
        param_errors[f"{where}.eventName"] = "Missing value"
        return None
    if item.get("email") is None and item.get("userId") is None:
        param_errors[where] = "Either email or userId must be provided"
        return None
    if item.get("id") is not None:
        problem = id_problem(item["id"])
        if problem is not None:
            param_errors[f"{where}.id"] = problem
            return None
    return item


class Tracker:
    """Stores the events of one request and sums up the BulkTrackResponse."""

    def __init__(self, emu: IterableEmulator, project: Project, endpoint: str) -> None:
        self.emu = emu
        self.project = project
        self.endpoint = endpoint
        self.messaging: Messaging = emu.messaging_for(project)
        self.success = 0
        self.failed: dict[str, list[str]] = {name: [] for name in _FAILED}
        self.disallowed: dict[str, None] = {}
        self.created: dict[str, None] = {}
        self.filtered: dict[str, None] = {}
        self.disallowed_count = 0

    def track(self, item: dict[str, Any]) -> CustomEvent | Rejection:
        """Store one checked event; its stored form, or why it was not stored."""
        state = self.emu.state
        store = self.messaging.events
        name: str = item["eventName"]
        if not store.name_allowed(name):
            self.disallowed[name] = None
            self.disallowed_count += 1
            key = item.get("email") or item.get("userId") or ""
            return Rejection("disallowed", key, f"Event name {name} is not allowed")
        wall = state.wall_clock()
        found = find_user(self.project, item.get("email"), item.get("userId"), wall,
                          create=self.emu.config.events_create_users)
        if isinstance(found, Rejection):
            self.failed.setdefault(found.category, []).append(found.key)
            return found
        data = dict(item.get("dataFields") or {})
        flag = item.get("createNewFields")
        allow = flag if flag is not None else self.project.create_new_fields
        created, filtered = store.register_fields(name, data, allow)
        self.created.update(dict.fromkeys(created))
        self.filtered.update(dict.fromkeys(filtered))
        event = self._event(item, found, name, data, wall)
        store.upsert(event)
        state.note_change(self.endpoint)
        self.success += 1
        return event

    def _event(
        self, item: dict[str, Any], profile: Profile, name: str, data: dict[str, Any], wall: float
    ) -> CustomEvent:
        created_at = item.get("createdAt")
        return CustomEvent(
            id=item.get("id") or new_event_id(),
            event_name=name,
            email=profile.email,
            user_id=profile.user_id,
            owner_iid=profile.iid,
            created_at=created_at,
            created_ms=created_ms(created_at, wall),
            data=data,
            campaign_id=item.get("campaignId"),
            template_id=item.get("templateId"),
            received_wall=wall,
            endpoint=self.endpoint,
        )

    def body(self) -> dict[str, Any]:
        """BulkTrackResponse with every array present."""
        fail = sum(len(v) for v in self.failed.values())
        return {
            "successCount": self.success,
            "failCount": fail + self.disallowed_count,
            "invalidEmails": list(self.failed["invalidEmails"]),
            "invalidUserIds": list(self.failed["invalidUserIds"]),
            "disallowedEventNames": list(self.disallowed),
            "filteredOutFields": list(self.filtered),
            "createdFields": list(self.created),
            "failedUpdates": {name: list(v) for name, v in self.failed.items()},
        }


class _EventRoutes:
    """The handlers `add_event_routes` registers, bound to one emulator."""

    def __init__(self, emu: IterableEmulator) -> None:
        self.emu = emu
        self.state = emu.state

    async def track(self, request: web.Request) -> web.StreamResponse:
        project = self.emu.auth(request, "track")
        body = await self.emu.json_body(request)
        json_errors: dict[str, str] = {}
        param_errors: dict[str, str] = {}
        item = check_event(body, "obj", json_errors, param_errors)
        if json_errors:
            raise ApiError(400, "BadJsonBody", f"[{request.path}] Invalid JSON body", json_errors)
        if item is None:
            raise ApiError(400, "BadParams", f"[{request.path}] Invalid parameters", param_errors)
        tracker = Tracker(self.emu, project, self.emu.endpoint_of(request))
        outcome = tracker.track(item)
        if isinstance(outcome, Rejection):
            if outcome.category == "disallowed":
                raise ApiError(400, "BadParams", outcome.detail)
            raise rejection_error(outcome)
        return self.emu.reply(envelope(f"Event with id: {outcome.id} tracked.", "Success",
                                  {"id": outcome.id}))

    async def track_bulk(self, request: web.Request) -> web.StreamResponse:
        project = self.emu.auth(request, "trackBulk")
        body = await self.emu.json_body(request)
        events = body.get("events") if type(body) is dict else None
        if type(events) is not list:
            raise ApiError(400, "BadJsonBody", f"[{request.path}] Invalid JSON body",
                           {"obj.events": "Array value expected"})
        cap = self.emu.config.max_events_per_request
        if cap is not None and len(events) > cap:
            raise ApiError(400, "BatchTooLarge",
                           f"Too many events in one request: {len(events)} (the limit is {cap})",
                           {"maxEvents": cap, "events": len(events)})
        json_errors: dict[str, str] = {}
        param_errors: dict[str, str] = {}
        items = [check_event(e, f"obj.events[{i}]", json_errors, param_errors)
                 for i, e in enumerate(events)]
        if json_errors:
            raise ApiError(400, "BadJsonBody", f"[{request.path}] Invalid JSON body", json_errors)
        if param_errors:
            raise ApiError(400, "BadParams", f"[{request.path}] Invalid parameters", param_errors)
        tracker = Tracker(self.emu, project, self.emu.endpoint_of(request))
        for item in items:
            assert item is not None
            tracker.track(item)
        return self.emu.reply(tracker.body())

    def limit_of(self, request: web.Request) -> int:
        raw = request.query.get("limit")
        if raw is None:
            return DEFAULT_READ_LIMIT
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_READ_LIMIT:
            raise ApiError(400, "BadParams", f"limit must be between 1 and {MAX_READ_LIMIT}",
                           {"limit": raw})
        return int(raw)

    def events_reply(self, project: Project, profile: Profile | None, limit: int) -> web.Response:
        if profile is None:
            return self.emu.reply({"events": []})
        found = self.emu.messaging_for(project).events.for_user(profile.iid, limit)
        return self.emu.reply({"events": [e.api_view() for e in found]})

    async def by_email(self, request: web.Request) -> web.StreamResponse:
        project = self.emu.auth(request, "getEvents")
        limit = self.limit_of(request)
        return self.events_reply(project, project.by_email.get(request.match_info["email"].lower()),
                            limit)

    async def by_user_id(self, request: web.Request) -> web.StreamResponse:
        project = self.emu.auth(request, "getEvents")
        limit = self.limit_of(request)
        profile = project.get_by_user_id(request.match_info["userId"])
        return self.events_reply(project, profile, limit)



def add_event_routes(app: web.Application, emu: IterableEmulator) -> None:
    """Register the custom-event routes of one emulator."""
    handlers = _EventRoutes(emu)
    r = app.router
    r.add_post("/api/events/track", handlers.track)
    r.add_post("/api/events/trackBulk", handlers.track_bulk)
    r.add_get("/api/events/byUserId/{userId:.+}", handlers.by_user_id, allow_head=False)
    r.add_get("/api/events/{email:.+}", handlers.by_email, allow_head=False)
