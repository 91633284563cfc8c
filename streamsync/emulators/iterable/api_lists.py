"""Routes: static lists (create, get, delete, subscribe, unsubscribe, size, getUsers)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from .messaging import change_subscriptions, find_user, with_id, without_id
from .profiles import Profile, Project
from .replies import ApiError, BulkResult, envelope
from .updates import Receipt, Rejection, UserChecker, UserWrite

if TYPE_CHECKING:
    from .app import IterableEmulator

LIST_SOURCE: Final = "ListAPI"  # unsubSource and signupSource of the list endpoints


def invalid_list(list_id: Any) -> ApiError:
    """Unknown list: 400 with `error.lists.invalidListId(<id>)` and, as observed, code Success."""
    return ApiError(400, "Success", f"error.lists.invalidListId({list_id})")


def members(project: Project, list_id: int) -> list[Profile]:
    """The users on a list, in creation order."""
    return [
        p for p in project.profiles() if p.subs is not None and list_id in p.subs.email_list_ids
    ]


def member_key(project: Project, profile: Profile, prefer_user_id: bool) -> str:
    """How getUsers names a member: email, or userId in userID projects (or when preferred)."""
    if profile.user_id is not None and (
        project.project_type == "userId" or prefer_user_id or profile.email is None
    ):
        return profile.user_id
    assert profile.email is not None
    return profile.email


def _list_body(request_path: str, body: Any, cap: int | None) -> tuple[int, list[Any]]:
    """listId and subscribers of a subscribe/unsubscribe body, type-checked."""
    errors: dict[str, str] = {}
    if type(body) is not dict:
        raise ApiError(400, "BadJsonBody", f"[{request_path}] Invalid JSON body",
                       {"obj": "Object value expected"})
    list_id = body.get("listId")
    subscribers = body.get("subscribers")
    if list_id is None:
        errors["obj.listId"] = "Missing value"
    elif type(list_id) is not int:
        errors["obj.listId"] = "Number value expected"
    if subscribers is None:
        errors["obj.subscribers"] = "Missing value"
    elif type(subscribers) is not list:
        errors["obj.subscribers"] = "Array value expected"
    for name in ("updateExistingUsersOnly", "channelUnsubscribe"):
        if body.get(name) is not None and type(body.get(name)) is not bool:
            errors[f"obj.{name}"] = "Boolean value expected"
    if body.get("campaignId") is not None and type(body.get("campaignId")) is not int:
        errors["obj.campaignId"] = "Number value expected"
    if errors:
        raise ApiError(400, "BadJsonBody", f"[{request_path}] Invalid JSON body", errors)
    assert isinstance(list_id, int) and isinstance(subscribers, list)
    if cap is not None and len(subscribers) > cap:
        raise ApiError(400, "BatchTooLarge",
                       f"Too many subscribers in one request: {len(subscribers)} (the limit is "
                       f"{cap})", {"maxSubscribers": cap, "subscribers": len(subscribers)})
    return list_id, subscribers


class _ListRoutes:
    """The handlers `add_list_routes` registers, bound to one emulator."""

    def __init__(self, emu: IterableEmulator) -> None:
        self.emu = emu
        self.state = emu.state

    async def create(self, request: web.Request) -> web.StreamResponse:
        project = self.emu.auth(request, "createList")
        body = await self.emu.json_body(request)
        errors: dict[str, str] = {}
        name = body.get("name") if type(body) is dict else None
        description = body.get("description") if type(body) is dict else None
        if type(name) is not str or not name:
            errors["obj.name"] = "Missing value" if name is None else "String value expected"
        if description is not None and type(description) is not str:
            errors["obj.description"] = "String value expected"
        if errors:
            raise ApiError(400, "BadJsonBody", f"[{request.path}] Invalid JSON body", errors)
        assert isinstance(name, str)
        catalog = self.emu.messaging_for(project).catalog
        lst = catalog.add_list(name, description, int(self.state.wall_clock() * 1000))
        self.state.note_change(self.emu.endpoint_of(request))
        return self.emu.reply({"listId": lst.id})

    async def get_lists(self, request: web.Request) -> web.StreamResponse:
        project = self.emu.auth(request, "getLists")
        catalog = self.emu.messaging_for(project).catalog
        return self.emu.reply({"lists": [lst.api_view() for lst in catalog.lists_newest_first()]})

    def known_list(self, project: Project, raw: Any) -> int:
        try:
            list_id = int(raw)
        except (TypeError, ValueError):
            raise ApiError(400, "BadParams", f"Invalid listId {raw!r}") from None
        if list_id not in self.emu.messaging_for(project).catalog.lists:
            raise invalid_list(list_id)
        return list_id

    async def delete(self, request: web.Request) -> web.StreamResponse:
        project = self.emu.auth(request, "deleteList")
        list_id = self.known_list(project, request.match_info["listId"])
        del self.emu.messaging_for(project).catalog.lists[list_id]
        for profile in members(project, list_id):
            assert profile.subs is not None
            profile.subs.set("emailListIds", without_id(profile.subs.email_list_ids, list_id))
        self.state.note_change(self.emu.endpoint_of(request))
        msg = f"List {list_id} in Project {project.id} was successfully deleted."
        return self.emu.reply(envelope(msg, "Success", None))

    async def subscribe(self, request: web.Request) -> web.StreamResponse:
        project = self.emu.auth(request, "listSubscribe")
        body = await self.emu.json_body(request)
        list_id, subscribers = _list_body(request.path, body, self.emu.config.max_list_subscribers)
        list_id = self.known_list(project, list_id)
        only_existing = body.get("updateExistingUsersOnly") is True and (
            project.project_type != "email"
        )
        checker = UserChecker(project, project.create_new_fields, per_user_types=True)
        state = self.state
        receipt = Receipt(f"POST {request.path}", "bulk", state.clock(), state.wall_clock(),
                          state.next_request_no())
        checked = [
            checker.check(sub, f"obj.subscribers[{i}]", receipt) if type(sub) is dict
            and sub.get("dataFields") else sub
            for i, sub in enumerate(subscribers)
        ]
        for i, sub in enumerate(subscribers):
            if type(sub) is not dict:
                checker.json_errors[f"obj.subscribers[{i}]"] = "Object value expected"
            elif sub.get("email") is None and sub.get("userId") is None:
                checker.param_errors[f"obj.subscribers[{i}]"] = (
                    "Either email or userId must be provided"
                )
            elif any(type(sub.get(k)) not in (str, type(None)) for k in ("email", "userId")):
                checker.json_errors[f"obj.subscribers[{i}]"] = "email/userId must be strings"
        checker.raise_for_request_errors(request.path)
        result = BulkResult()
        result.created = checker.commit_fields(self.emu.config.max_fields)
        result.filtered = checker.fields.filtered
        messaging = self.emu.messaging_for(project)
        endpoint = self.emu.endpoint_of(request)
        writes: list[UserWrite] = []
        for sub, outcome in zip(subscribers, checked, strict=True):
            if isinstance(outcome, Rejection):
                result.fail(outcome.category, outcome.key)
                continue
            wall = self.state.wall_clock()
            found = find_user(project, sub.get("email"), sub.get("userId"), wall,
                              create=not only_existing)
            if isinstance(found, Rejection):
                result.fail(found.category, found.key)
                continue
            if isinstance(outcome, UserWrite):
                writes.append(outcome)
            new = with_id(found.subscriptions().email_list_ids, list_id)
            if change_subscriptions(messaging, found, {"emailListIds": new}, wall, LIST_SOURCE,
                                    LIST_SOURCE):
                self.state.note_change(endpoint)
            result.success += 1
        self.state.submit(project, list(writes), "bulk")
        return self.emu.reply(result.body())

    async def unsubscribe(self, request: web.Request) -> web.StreamResponse:
        project = self.emu.auth(request, "listUnsubscribe")
        body = await self.emu.json_body(request)
        list_id, subscribers = _list_body(request.path, body, self.emu.config.max_list_subscribers)
        list_id = self.known_list(project, list_id)
        params: dict[str, str] = {}
        for i, sub in enumerate(subscribers):
            if type(sub) is not dict or (sub.get("email") is None and sub.get("userId") is None):
                params[f"obj.subscribers[{i}]"] = "Either email or userId must be provided"
            elif any(type(sub.get(k)) not in (str, type(None)) for k in ("email", "userId")):
                params[f"obj.subscribers[{i}]"] = "email/userId must be strings"
        if params:
            raise ApiError(400, "BadParams", f"[{request.path}] Invalid parameters", params)
        messaging = self.emu.messaging_for(project)
        extra = {"campaignId": body["campaignId"]} if body.get("campaignId") is not None else {}
        everything = body.get("channelUnsubscribe") is True
        channels = messaging.catalog.marketing_channel_ids() if everything else []
        result = BulkResult()
        endpoint = self.emu.endpoint_of(request)
        for sub in subscribers:
            wall = self.state.wall_clock()
            found = find_user(project, sub.get("email"), sub.get("userId"), wall, create=False)
            if isinstance(found, Rejection):
                result.fail(found.category, found.key)
                continue
            subs = found.subscriptions()
            values = {"emailListIds": without_id(subs.email_list_ids, list_id)}
            if channels:
                closed = subs.unsubscribed_channel_ids
                values["unsubscribedChannelIds"] = closed + [c for c in channels if c not in closed]
            if change_subscriptions(messaging, found, values, wall, LIST_SOURCE, LIST_SOURCE,
                                    extra):
                self.state.note_change(endpoint)
            result.success += 1
        return self.emu.reply(result.body())

    async def size(self, request: web.Request) -> web.StreamResponse:
        project = self.emu.auth(request, "listSize")
        list_id = self.known_list(project, request.match_info["listId"])
        return web.Response(text=str(len(members(project, list_id))), content_type="text/plain")

    async def get_users(self, request: web.Request) -> web.StreamResponse:
        project = self.emu.auth(request, "listUsers")
        raw = request.query.get("listId")
        if raw is None:
            params = {"listId": "Missing value"}
            raise ApiError(400, "BadParams", "Missing parameter listId", params)
        list_id = self.known_list(project, raw)
        prefer = request.query.get("preferUserId", "false").lower() == "true"
        keys = [member_key(project, p, prefer) for p in members(project, list_id)]
        text = "".join(k + "\n" for k in keys)
        return web.Response(text=text, content_type="text/plain")



def add_list_routes(app: web.Application, emu: IterableEmulator) -> None:
    """Register the list routes of one emulator."""
    handlers = _ListRoutes(emu)
    r = app.router
    r.add_post("/api/lists", handlers.create)
    r.add_get("/api/lists", handlers.get_lists, allow_head=False)
    r.add_post("/api/lists/subscribe", handlers.subscribe)
    r.add_post("/api/lists/unsubscribe", handlers.unsubscribe)
    r.add_get("/api/lists/getUsers", handlers.get_users, allow_head=False)
    r.add_get("/api/lists/{listId}/size", handlers.size, allow_head=False)
    r.add_delete("/api/lists/{listId}", handlers.delete)
