"""Routes: channels, message types, users/(bulk)updateSubscriptions and /api/subscriptions/*."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from .catalog import Catalog
from .messaging import change_subscriptions, find_user, with_id, without_id
from .profiles import SUBSCRIPTION_FIELDS, Profile, Project
from .replies import SINGLE_ERRORS, SUCCESS, ApiError, envelope
from .updates import Rejection

if TYPE_CHECKING:
    from .app import IterableEmulator

UPDATE_PATH: Final = "/api/users/updateSubscriptions"
BULK_PATH: Final = "/api/users/bulkUpdateSubscriptions"
GROUP_PATH: Final = "/api/subscriptions/{subscriptionGroup}/{subscriptionGroupId}"
# unsubSource / signupSource of each way in (older Unsubscribe Sources article: updateSubscriptions
# is `API`; signupSource `UpdateSubscriptionsAPI` exists for it).
UPDATE_SOURCES: Final = ("API", "UpdateSubscriptionsAPI")
GROUP_SOURCES: Final = ("API", "API")
_GROUPS: Final = {"emaillist": "emailList", "messagetype": "messageType",
                  "messagechannel": "messageChannel"}
_INT_ARRAY = "Array of integers expected"


def rejection_error(rejection: Rejection) -> ApiError:
    """The error a single-user call answers for a refused user."""
    if rejection.category == "notFoundEmails":
        return ApiError(400, "UnknownEmailError", rejection.detail)
    status, code = SINGLE_ERRORS[rejection.category]
    return ApiError(status, code, rejection.detail)


@dataclass
class SubscriptionItem:
    """One parsed UpdateSubscriptionsRequest."""

    email: str | None
    user_id: str | None
    values: dict[str, list[int]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    validate_alignment: bool = True


def parse_item(item: Any, where: str, errors: dict[str, str]) -> SubscriptionItem | None:
    """Type-check one request item; None (with `errors` filled) when malformed."""
    if type(item) is not dict:
        errors[where] = "Object value expected"
        return None
    found = len(errors)
    for name in ("email", "userId"):
        if item.get(name) is not None and type(item.get(name)) is not str:
            errors[f"{where}.{name}"] = "String value expected"
    values = _id_arrays(item, where, errors)
    extra = _numbers(item, ("campaignId", "templateId"), where, errors)
    align = item.get("validateChannelAlignment")
    if align is not None and type(align) is not bool:
        errors[f"{where}.validateChannelAlignment"] = "Boolean value expected"
    if len(errors) > found:
        return None
    if item.get("email") is None and item.get("userId") is None:
        errors[where] = "Either email or userId must be provided"
        return None
    email, user_id = item.get("email"), item.get("userId")
    return SubscriptionItem(email, user_id, values, extra, align is not False)


def _id_arrays(item: dict[str, Any], where: str, errors: dict[str, str]) -> dict[str, list[int]]:
    """The subscription id arrays an item sets (userListIds is stored as emailListIds)."""
    values: dict[str, list[int]] = {}
    for name in (*SUBSCRIPTION_FIELDS, "userListIds"):
        value = item.get(name)
        if value is None:
            continue
        if type(value) is not list or any(type(v) is not int for v in value):
            errors[f"{where}.{name}"] = _INT_ARRAY
            continue
        values["emailListIds" if name == "userListIds" else name] = value
    return values


def _numbers(item: dict[str, Any], names: tuple[str, ...], where: str,
             errors: dict[str, str]) -> dict[str, Any]:
    """The integer attributes (campaignId, templateId) an item carries."""
    out: dict[str, Any] = {}
    for name in names:
        value = item.get(name)
        if value is not None and type(value) is not int:
            errors[f"{where}.{name}"] = "Number value expected"
        elif value is not None:
            out[name] = value
    return out


def catalog_problem(
    catalog: Catalog, item: SubscriptionItem, profile: Profile | None
) -> str | None:
    """Why the ids of an item cannot be stored (unknown ids, opt-in off, channel alignment)."""
    values = item.values
    for name, known, what in (
        ("emailListIds", catalog.lists, "list"),
        ("unsubscribedChannelIds", catalog.channels, "channel"),
        ("unsubscribedMessageTypeIds", catalog.message_types, "message type"),
        ("subscribedMessageTypeIds", catalog.message_types, "message type"),
    ):
        unknown = [i for i in values.get(name, []) if i not in known]
        if unknown:
            return f"Invalid {what} ids: {unknown}"
    opted_in = values.get("subscribedMessageTypeIds")
    if not opted_in:
        return None
    if not catalog.opt_in_enabled:
        return "subscribedMessageTypeIds needs the opt-in message types feature enabled"
    if not item.validate_alignment:
        return None
    if "unsubscribedChannelIds" in values:
        closed = set(values["unsubscribedChannelIds"])
    else:
        closed = set(profile.subs.unsubscribed_channel_ids) if profile and profile.subs else set()
    blocked = [i for i in opted_in if catalog.message_types[i].channel_id in closed]
    if blocked:
        return f"Message types {blocked} belong to unsubscribed channels (validateChannelAlignment)"
    return None


class _SubscriptionRoutes:
    """The handlers `add_subscription_routes` registers, bound to one emulator."""

    def __init__(self, emu: IterableEmulator) -> None:
        self.emu = emu
        self.state = emu.state

    async def channels(self, request: web.Request) -> web.StreamResponse:
        project = self.emu.auth(request, "channels")
        catalog = self.emu.messaging_for(project).catalog
        return self.emu.reply({"channels": [c.api_view() for c in catalog.channels.values()]})

    async def message_types(self, request: web.Request) -> web.StreamResponse:
        project = self.emu.auth(request, "messageTypes")
        catalog = self.emu.messaging_for(project).catalog
        types = [m.api_view() for m in catalog.message_types.values()]
        return self.emu.reply({"messageTypes": types})

    def apply_item(self, project: Project, item: SubscriptionItem,
                   endpoint: str) -> Profile | Rejection:
        messaging = self.emu.messaging_for(project)
        wall = self.state.wall_clock()
        problem = catalog_problem(messaging.catalog, item, None)  # before any user is created
        if problem is not None:
            raise ApiError(400, "BadParams", problem)
        found = find_user(project, item.email, item.user_id, wall, create=True)
        if isinstance(found, Rejection):
            return found
        problem = catalog_problem(messaging.catalog, item, found)  # this user's channels
        if problem is not None:
            raise ApiError(400, "BadParams", problem)
        unsub, signup = UPDATE_SOURCES
        if change_subscriptions(messaging, found, item.values, wall, unsub, signup, item.extra):
            self.state.note_change(endpoint)
        return found

    async def update_one(self, request: web.Request) -> web.StreamResponse:
        project = self.emu.auth(request, "updateSubscriptions")
        body = await self.emu.json_body(request)
        if type(body) is not dict:
            raise ApiError(400, "BadJsonBody", f"[{UPDATE_PATH}] Invalid JSON body",
                           {"obj": "Object value expected"})
        errors: dict[str, str] = {}
        item = parse_item(body, "obj", errors)
        if item is None:
            code = "BadParams" if "obj" in errors else "BadJsonBody"
            raise ApiError(400, code, f"[{UPDATE_PATH}] Invalid JSON body", errors)
        outcome = self.apply_item(project, item, "POST " + UPDATE_PATH)
        if isinstance(outcome, Rejection):
            raise rejection_error(outcome)
        return self.emu.reply(SUCCESS)

    async def update_bulk(self, request: web.Request) -> web.StreamResponse:
        project = self.emu.auth(request, "bulkUpdateSubscriptions")
        body = await self.emu.json_body(request)
        items = body.get("updateSubscriptionsRequests") if type(body) is dict else None
        if type(items) is not list:
            raise ApiError(400, "BadJsonBody", f"[{BULK_PATH}] Invalid JSON body",
                           {"obj.updateSubscriptionsRequests": "Array value expected"})
        cap = self.emu.config.max_subscription_requests
        if cap is not None and len(items) > cap:
            raise ApiError(400, "BatchTooLarge",
                           f"Too many requests in one call: {len(items)} (the limit is {cap})",
                           {"maxRequests": cap, "requests": len(items)})
        errors: dict[str, str] = {}
        parsed = [parse_item(it, f"obj.updateSubscriptionsRequests[{i}]", errors)
                  for i, it in enumerate(items)]
        if errors:
            raise ApiError(400, "BadJsonBody", f"[{BULK_PATH}] Invalid JSON body", errors)
        catalog = self.emu.messaging_for(project).catalog
        for i, item in enumerate(parsed):
            assert item is not None
            problem = catalog_problem(catalog, item, None)
            if problem is not None:
                raise ApiError(400, "BadParams", f"updateSubscriptionsRequests[{i}]: {problem}")
        reply: dict[str, Any] = {
            "successCount": 0, "failCount": 0, "invalidEmails": [], "invalidUserIds": [],
            "validEmailFailures": [], "validUserIdFailures": [],
        }
        for item in parsed:
            assert item is not None
            try:
                outcome = self.apply_item(project, item, "POST " + BULK_PATH)
            except ApiError as err:  # this user's state refuses the ids (channel alignment)
                key = item.email if item.email is not None else item.user_id
                assert key is not None
                outcome = Rejection("failedEmails" if item.email else "failedUserIds", key,
                                    err.msg)
            if isinstance(outcome, Profile):
                reply["successCount"] += 1
                continue
            reply["failCount"] += 1
            if outcome.category in ("invalidEmails", "invalidUserIds"):
                reply[outcome.category].append(outcome.key)
            elif outcome.category.endswith("Emails"):
                reply["validEmailFailures"].append(outcome.key)
            else:
                reply["validUserIdFailures"].append(outcome.key)
        return self.emu.reply(reply)

    def group_of(self, request: web.Request, project: Project) -> tuple[str, int]:
        if not self.emu.config.subscriptions_api:
            raise ApiError(404, "NotFound", "Endpoint not found")
        raw_group = request.match_info["subscriptionGroup"]
        group = _GROUPS.get(raw_group.lower())
        if group is None:
            raise ApiError(400, "BadParams", f"Invalid subscription group {raw_group!r}; "
                           "expected emailList, messageType or messageChannel")
        raw_id = request.match_info["subscriptionGroupId"]
        if not raw_id.isdigit():
            raise ApiError(400, "BadParams", f"Invalid subscription group id {raw_id!r}")
        group_id = int(raw_id)
        catalog = self.emu.messaging_for(project).catalog
        known: set[int] = set(
            catalog.lists if group == "emailList"
            else catalog.message_types if group == "messageType" else catalog.channels
        )
        if group_id not in known:
            raise ApiError(400, "BadParams", f"No {group} with id {group_id}")
        return group, group_id

    def subscribe_one(
        self, project: Project, group: str, group_id: int, profile: Profile, subscribe: bool,
        endpoint: str,
    ) -> None:
        messaging = self.emu.messaging_for(project)
        subs = profile.subscriptions()
        if group == "emailList":
            name, ids = "emailListIds", subs.email_list_ids
            new = with_id(ids, group_id) if subscribe else without_id(ids, group_id)
        elif group == "messageChannel":
            name, ids = "unsubscribedChannelIds", subs.unsubscribed_channel_ids
            new = without_id(ids, group_id) if subscribe else with_id(ids, group_id)
        elif messaging.catalog.message_types[group_id].policy == "OptIn":
            name, ids = "subscribedMessageTypeIds", subs.subscribed_message_type_ids
            new = with_id(ids, group_id) if subscribe else without_id(ids, group_id)
        else:
            name, ids = "unsubscribedMessageTypeIds", subs.unsubscribed_message_type_ids
            new = without_id(ids, group_id) if subscribe else with_id(ids, group_id)
        unsub, signup = GROUP_SOURCES
        wall = self.state.wall_clock()
        if change_subscriptions(messaging, profile, {name: new}, wall, unsub, signup):
            self.state.note_change(endpoint)

    async def one_user(self, request: web.Request) -> web.StreamResponse:
        project = self.emu.auth(request, "subscriptions")
        group, group_id = self.group_of(request, project)
        email = request.match_info.get("userEmail")
        user_id = request.match_info.get("userId")
        found = find_user(project, email, user_id, self.state.wall_clock(), create=True)
        if isinstance(found, Rejection):
            raise rejection_error(found)
        self.subscribe_one(project, group, group_id, found, request.method == "PATCH",
                      self.emu.endpoint_of(request))
        return self.emu.reply(SUCCESS, self.emu.config.subscriptions_status)

    async def many_users(self, request: web.Request) -> web.StreamResponse:
        project = self.emu.auth(request, "subscriptions")
        group, group_id = self.group_of(request, project)
        action = request.query.get("action", "subscribe")
        if action not in ("subscribe", "unsubscribe"):
            raise ApiError(400, "BadParams", f"action must be subscribe or unsubscribe: {action!r}")
        body = await self.emu.json_body(request)
        errors: dict[str, str] = {}
        if type(body) is not dict:
            errors["obj"] = "Object value expected"
            body = {}
        for name in ("users", "usersByUserId"):
            value = body.get(name)
            if value is not None and (
                type(value) is not list or any(type(v) is not str for v in value)
            ):
                errors[f"obj.{name}"] = "Array of strings expected"
        if errors:
            raise ApiError(400, "BadJsonBody", f"[{request.path}] Invalid JSON body", errors)
        targets = [(e, None) for e in body.get("users") or []]
        targets += [(None, u) for u in body.get("usersByUserId") or []]
        cap = self.emu.config.max_subscription_requests
        if cap is not None and len(targets) > cap:
            raise ApiError(400, "BatchTooLarge",
                           f"Too many users in one call: {len(targets)} (the limit is {cap})")
        subscribe = action == "subscribe"
        failed: dict[str, list[str]] = {}
        endpoint = self.emu.endpoint_of(request)
        for email, user_id in targets:
            found = find_user(project, email, user_id, self.state.wall_clock(), create=subscribe)
            if isinstance(found, Rejection):
                failed.setdefault(found.category, []).append(found.key)
                continue
            self.subscribe_one(project, group, group_id, found, subscribe, endpoint)
        params = failed or None
        return self.emu.reply(envelope("", "Success", params), self.emu.config.subscriptions_status)



def add_subscription_routes(app: web.Application, emu: IterableEmulator) -> None:
    """Register the subscription routes of one emulator."""
    handlers = _SubscriptionRoutes(emu)
    r = app.router
    r.add_get("/api/channels", handlers.channels, allow_head=False)
    r.add_get("/api/messageTypes", handlers.message_types, allow_head=False)
    r.add_post(UPDATE_PATH, handlers.update_one)
    r.add_post(BULK_PATH, handlers.update_bulk)
    for suffix in ("/user/{userEmail}", "/byUserId/{userId}"):
        r.add_patch(GROUP_PATH + suffix, handlers.one_user)
        r.add_delete(GROUP_PATH + suffix, handlers.one_user)
    r.add_put(GROUP_PATH, handlers.many_users)
