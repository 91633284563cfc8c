"""Control API for consent, lists, events and webhooks (under /__emulator__/, no API key).

GET  subscriptions?project=&key=        every user's arrays and which message types reach them
GET  consent-events?project=&after=     subscribe/unsubscribe/click events (seq > after)
GET  custom-events?project=&key=        stored custom events (one user's with key)
GET  lists?project=                     lists with their members
GET  writes                             accepted write calls and changes per endpoint
POST click {email|userId, messageTypeId|channelId, scope?, campaignId?, templateId?, hosted?}
POST signup {email|userId, messageTypeId|channelId|listId}
POST channels {name, channelType, messageMedium} | message-types {name, channelId,
     subscriptionPolicy} | lists {name, description?}     (+ project)
POST event-names {allow_new?, saved?: [names]}
GET  webhook | webhook/deliveries;  POST webhook {url, auth_type, auth_token, basic_prefix,
     headers, events, enabled, retries, backoff_s, timeout_s};  POST webhook/faults
     {lose_next, duplicate_next, loss_rate, duplicate_rate}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .api_lists import member_key, members
from .control import CONTROL_PREFIX
from .messaging import find_user
from .profiles import Profile, Project, Subscriptions
from .replies import ApiError
from .updates import Rejection
from .user_clicks import receives, subscribe_click, unsubscribe_click
from .webhooks import WebhookSettings

if TYPE_CHECKING:
    from .app import IterableEmulator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_WEBHOOK_FIELDS = ("url", "auth_type", "auth_token", "basic_prefix", "headers", "events",
                   "enabled", "retries", "backoff_s", "timeout_s")


def _reply(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _bad(msg: str) -> ApiError:
    return ApiError(400, "BadParams", msg)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise _bad(f"control body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _bad("control body must be a JSON object")
    return body


def user_key(project: Project, profile: Profile) -> str:
    """How the control API names a user (as the /snapshot does)."""
    return member_key(project, profile, prefer_user_id=False)


class _MessagingControlRoutes:
    """The handlers `add_messaging_control_routes` registers, bound to one emulator."""

    def __init__(self, emu: IterableEmulator) -> None:
        self.emu = emu
        self.state = emu.state

    def project_of(self, request: web.Request, body: dict[str, Any] | None = None) -> Project:
        pid = request.query.get("project") or (body or {}).get("project")
        try:
            return self.state.project(pid)
        except KeyError as exc:
            raise _bad(str(exc)) from None

    def user_of(self, project: Project, body: dict[str, Any], create: bool) -> Profile:
        found = find_user(project, body.get("email"), body.get("userId"), self.state.wall_clock(),
                          create)
        if isinstance(found, Rejection):
            raise _bad(f"{found.category}: {found.key} ({found.detail})")
        return found

    async def subscriptions(self, request: web.Request) -> web.Response:
        project = self.project_of(request)
        messaging = self.emu.messaging_for(project)
        key = request.query.get("key")
        out: dict[str, Any] = {}
        for profile in project.profiles():
            name = user_key(project, profile)
            if key is not None and key not in (name, profile.email, profile.user_id):
                continue
            subs = profile.subs or Subscriptions()
            out[name] = {
                "email": profile.email,
                "userId": profile.user_id,
                **subs.view(),
                "receives": {str(t): receives(messaging, profile, t)
                             for t in messaging.catalog.message_types},
            }
        return _reply(out)

    async def consent_events(self, request: web.Request) -> web.Response:
        project = self.project_of(request)
        after = int(request.query.get("after", "0"))
        log = self.emu.messaging_for(project).log
        return _reply([e.record() for e in log.events if e.seq > after])

    async def custom_events(self, request: web.Request) -> web.Response:
        project = self.project_of(request)
        store = self.emu.messaging_for(project).events
        key = request.query.get("key")
        if key is None:
            return _reply([e.record() for e in store.by_id.values()])
        profile = project.by_email.get(key.lower()) or project.get_by_user_id(key)
        found = store.for_user(profile.iid) if profile is not None else []
        return _reply([e.record() for e in found])

    async def lists(self, request: web.Request) -> web.Response:
        project = self.project_of(request)
        catalog = self.emu.messaging_for(project).catalog
        return _reply({
            str(lst.id): {**lst.api_view(), "members": [
                user_key(project, p) for p in members(project, lst.id)]}
            for lst in catalog.lists_newest_first()
        })

    async def writes(self, request: web.Request) -> web.Response:
        return _reply(self.state.writes())

    async def click(self, request: web.Request) -> web.Response:
        body = await _body(request)
        project = self.project_of(request, body)
        profile = self.user_of(project, body, create=False)
        try:
            events = unsubscribe_click(
                self.emu.messaging_for(project), profile, self.state.wall_clock(),
                message_type_id=body.get("messageTypeId"), channel_id=body.get("channelId"),
                scope=body.get("scope"), campaign_id=body.get("campaignId"),
                template_id=body.get("templateId"), hosted=bool(body.get("hosted", False)),
            )
        except ValueError as exc:
            raise _bad(str(exc)) from None
        return _reply({"events": [e.record() for e in events]})

    async def signup(self, request: web.Request) -> web.Response:
        body = await _body(request)
        project = self.project_of(request, body)
        profile = self.user_of(project, body, create=True)
        try:
            events = subscribe_click(
                self.emu.messaging_for(project), profile, self.state.wall_clock(),
                message_type_id=body.get("messageTypeId"), channel_id=body.get("channelId"),
                list_id=body.get("listId"),
            )
        except ValueError as exc:
            raise _bad(str(exc)) from None
        return _reply({"events": [e.record() for e in events]})

    async def add_channel(self, request: web.Request) -> web.Response:
        body = await _body(request)
        catalog = self.emu.messaging_for(self.project_of(request, body)).catalog
        try:
            channel = catalog.add_channel(str(body.get("name", "")), body.get("channelType", ""),
                                          body.get("messageMedium", ""))
        except ValueError as exc:
            raise _bad(str(exc)) from None
        return _reply(channel.api_view())

    async def add_message_type(self, request: web.Request) -> web.Response:
        body = await _body(request)
        catalog = self.emu.messaging_for(self.project_of(request, body)).catalog
        try:
            mtype = catalog.add_message_type(
                str(body.get("name", "")), int(body.get("channelId", 0)),
                body.get("subscriptionPolicy", "OptOut"), int(self.state.wall_clock() * 1000),
            )
        except (TypeError, ValueError) as exc:
            raise _bad(str(exc)) from None
        return _reply(mtype.api_view())

    async def add_list(self, request: web.Request) -> web.Response:
        body = await _body(request)
        catalog = self.emu.messaging_for(self.project_of(request, body)).catalog
        if not isinstance(body.get("name"), str) or not body["name"]:
            raise _bad("name (a string) is required")
        try:
            lst = catalog.add_list(body["name"], body.get("description"),
                                   int(self.state.wall_clock() * 1000),
                                   body.get("listType", "Standard"))
        except ValueError as exc:
            raise _bad(str(exc)) from None
        return _reply(lst.api_view())

    async def event_names(self, request: web.Request) -> web.Response:
        body = await _body(request)
        store = self.emu.messaging_for(self.project_of(request, body)).events
        if "allow_new" in body:
            store.allow_new_names = bool(body["allow_new"])
        store.saved_names.update(str(n) for n in body.get("saved", []))
        return _reply({"allow_new": store.allow_new_names, "saved": sorted(store.saved_names)})

    def webhook_view(self) -> dict[str, Any]:
        settings = dataclasses.asdict(self.emu.webhooks.settings)
        settings["events"] = list(settings["events"])
        return {"settings": settings, "faults": self.emu.webhooks.faults(),
                "counts": self.emu.webhooks.counts()}

    async def get_webhook(self, request: web.Request) -> web.Response:
        return _reply(self.webhook_view())

    async def set_webhook(self, request: web.Request) -> web.Response:
        body = await _body(request)
        unknown = [k for k in body if k not in _WEBHOOK_FIELDS]
        if unknown:
            raise _bad(f"unknown webhook settings {unknown}; known: {list(_WEBHOOK_FIELDS)}")
        current = dataclasses.asdict(self.emu.webhooks.settings)
        current.update(body)
        current["events"] = tuple(current["events"])
        try:
            settings = WebhookSettings(**current)
            settings.check()
        except (TypeError, ValueError) as exc:
            raise _bad(str(exc)) from None
        if settings.concurrency != self.emu.webhooks.settings.concurrency:
            raise _bad("concurrency is fixed at start")
        self.emu.webhooks.settings = settings
        return _reply(self.webhook_view())

    async def deliveries(self, request: web.Request) -> web.Response:
        return _reply([d.record() for d in self.emu.webhooks.deliveries])

    async def webhook_faults(self, request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            self.emu.webhooks.set_faults(body.get("lose_next"), body.get("duplicate_next"),
                                    body.get("loss_rate"), body.get("duplicate_rate"))
        except ValueError as exc:
            raise _bad(str(exc)) from None
        return _reply(self.emu.webhooks.faults())



def add_messaging_control_routes(app: web.Application, emu: IterableEmulator) -> None:
    """Register the consent, list, event and webhook control routes."""
    handlers = _MessagingControlRoutes(emu)
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/subscriptions", handlers.subscriptions),
        ("GET", "/consent-events", handlers.consent_events),
        ("GET", "/custom-events", handlers.custom_events),
        ("GET", "/lists", handlers.lists),
        ("GET", "/writes", handlers.writes),
        ("POST", "/click", handlers.click),
        ("POST", "/signup", handlers.signup),
        ("POST", "/channels", handlers.add_channel),
        ("POST", "/message-types", handlers.add_message_type),
        ("POST", "/lists", handlers.add_list),
        ("POST", "/event-names", handlers.event_names),
        ("GET", "/webhook", handlers.get_webhook),
        ("POST", "/webhook", handlers.set_webhook),
        ("GET", "/webhook/deliveries", handlers.deliveries),
        ("POST", "/webhook/faults", handlers.webhook_faults),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, CONTROL_PREFIX + path, handler)
