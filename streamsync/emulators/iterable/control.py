"""HTTP control API under /__emulator__/: faults, limits, projects, settings, state and history."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import web

from .replies import ApiError

if TYPE_CHECKING:
    from .app import IterableEmulator

CONTROL_PREFIX: Final = "/__emulator__"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Settings that POST /__emulator__/settings may change, with their checks.
_SETTINGS: Final[dict[str, Callable[[Any], bool]]] = {
    "latency_ms": lambda v: isinstance(v, int | float) and v >= 0,
    "latency_per_user_ms": lambda v: isinstance(v, int | float) and v >= 0,
    "type_mismatch": lambda v: v in ("per_user", "batch"),
    "oversize_status": lambda v: v in (413, 400),
    "max_users_per_request": lambda v: v is None or (isinstance(v, int) and v > 0),
    "max_fields": lambda v: isinstance(v, int) and v > 0,
    "max_body_bytes": lambda v: isinstance(v, int) and v > 0,
    "max_subscription_requests": lambda v: v is None or (isinstance(v, int) and v > 0),
    "max_list_subscribers": lambda v: v is None or (isinstance(v, int) and v > 0),
    "max_events_per_request": lambda v: v is None or (isinstance(v, int) and v > 0),
    "events_create_users": lambda v: isinstance(v, bool),
    "subscriptions_api": lambda v: isinstance(v, bool),
    "subscriptions_status": lambda v: v in (200, 202),
    "export_lag_s": lambda v: isinstance(v, int | float) and v >= 0,
}


def _reply(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _bad(msg: str) -> ApiError:
    return ApiError(400, "BadParams", msg)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"control body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _bad("control body must be a JSON object")
    return body


class _ControlRoutes:
    """The handlers `add_control_routes` registers, bound to one emulator."""

    def __init__(self, emu: IterableEmulator) -> None:
        self.emu = emu
        self.state = emu.state

    async def get_state(self, request: web.Request) -> web.Response:
        return _reply(
            {
                "base_url": self.emu.base_url,
                "projects": [
                    {
                        "project_id": p.id,
                        "project_type": p.project_type,
                        "users": p.user_count(),
                        "fields": len(p.fields),
                        "create_new_fields": p.create_new_fields,
                        "forgotten": len(p.forgotten_emails) + len(p.forgotten_user_ids),
                    }
                    for p in self.state.projects.values()
                ],
                "pending_writes": self.state.pending(),
                "lag_s": {name: q.lag_s for name, q in self.state.queues.items()},
                "requests_received": self.state.requests_received,
                "users_received": self.state.users_received,
                "counts": self.state.counts(),
                "faults": self.emu.faults.pending(),
                "limits": self.emu.limits.limits(),
                "settings": {name: getattr(self.emu.config, name) for name in _SETTINGS},
            }
        )

    async def snapshot(self, request: web.Request) -> web.Response:
        try:
            return _reply(self.state.snapshot(request.query.get("project")))
        except KeyError as exc:
            raise _bad(str(exc)) from None

    async def history(self, request: web.Request) -> web.Response:
        key = request.query.get("key")
        if not key:
            raise _bad("query parameter key (an email or userId) is required")
        try:
            return _reply(self.state.history(key, request.query.get("project")))
        except KeyError as exc:
            raise _bad(str(exc)) from None

    async def counts(self, request: web.Request) -> web.Response:
        return _reply(self.state.counts())

    async def get_faults(self, request: web.Request) -> web.Response:
        faults = self.emu.faults
        return _reply({"pending": faults.pending(), "triggered": faults.triggered})

    async def add_fault(self, request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            fault = self.emu.faults.add(
                body.get("kind", "status"),
                body.get("path", "*"),
                int(body.get("times", 1)),
                method=body.get("method"),
                status=int(body.get("status", 503)),
                body=body.get("body"),
                headers=body.get("headers"),
                delay_s=body.get("delay_s"),
            )
        except (TypeError, ValueError) as exc:
            raise _bad(str(exc)) from None
        return _reply(fault.describe())

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.emu.faults.clear()
        return _reply({"pending": []})

    async def get_limits(self, request: web.Request) -> web.Response:
        limits = self.emu.limits
        return _reply({"limits": limits.limits(), "retry_after": limits.retry_after})

    async def set_limit(self, request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            self.emu.limits.set_limit(str(body["group"]), float(body["rate_per_s"]),
                                      body.get("burst"))
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad(f"need group and rate_per_s (optional burst): {exc}") from None
        return _reply({"limits": self.emu.limits.limits()})

    async def lift_limits(self, request: web.Request) -> web.Response:
        body = await _body(request)
        self.emu.limits.lift(body.get("group"))
        return _reply({"limits": self.emu.limits.limits()})

    async def restore_limits(self, request: web.Request) -> web.Response:
        self.emu.limits.restore()
        return _reply({"limits": self.emu.limits.limits()})

    async def retry_after(self, request: web.Request) -> web.Response:
        body = await _body(request)
        value = body.get("retry_after")
        if value is not None and value != "auto" and not isinstance(value, int | float):
            raise _bad('retry_after must be null, "auto" or a number of seconds')
        self.emu.limits.retry_after = value
        return _reply({"retry_after": value})

    async def add_project(self, request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            project_id, key = self.emu.add_project(
                body.get("project_type", "email"),
                body.get("api_key"),
                bool(body.get("create_new_fields", True)),
            )
        except ValueError as exc:
            raise _bad(str(exc)) from None
        return _reply({"project_id": project_id, "api_key": key})

    async def add_key(self, request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            kind = body.get("kind", "server_side")
            key = self.emu.add_key(body.get("project_id"), body.get("api_key"), kind)
        except (KeyError, ValueError) as exc:
            raise _bad(str(exc)) from None
        return _reply({"api_key": key})

    async def disable_key(self, request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            self.state.disable_key(str(body["api_key"]))
        except KeyError:
            raise _bad("unknown api_key") from None
        return _reply({"disabled": True})

    async def settings(self, request: web.Request) -> web.Response:
        body = await _body(request)
        for name, value in body.items():
            if name in ("bulk_lag_s", "single_lag_s"):
                if not isinstance(value, int | float) or value < 0:
                    raise _bad(f"{name} must be a number >= 0")
                continue
            if name == "create_new_fields":
                continue
            check = _SETTINGS.get(name)
            if check is None:
                raise _bad(f"unknown setting {name!r}")
            if not check(value):
                raise _bad(f"invalid value for {name}: {value!r}")
        for name, value in body.items():
            if name in _SETTINGS:
                setattr(self.emu.config, name, value)
        self.emu.set_lag(body.get("bulk_lag_s"), body.get("single_lag_s"))
        if "create_new_fields" in body:
            project = self.state.project(body.get("project_id"))
            project.create_new_fields = bool(body["create_new_fields"])
        return _reply({name: getattr(self.emu.config, name) for name in _SETTINGS})

    async def flush(self, request: web.Request) -> web.Response:
        body = await _body(request)
        return _reply({"applied": self.state.flush(body.get("queue"))})

    async def apply_due(self, request: web.Request) -> web.Response:
        return _reply({"applied": self.state.apply_due()})

    async def reset(self, request: web.Request) -> web.Response:
        self.state.reset()
        self.emu.reset_messaging()
        self.emu.faults.clear()
        return _reply({"reset": True})



def add_control_routes(app: web.Application, emu: IterableEmulator) -> None:
    """Register the control routes for one emulator (no API key; not counted, limited or faulted).

    GET  state | counts | snapshot?project= | history?key=&project= | faults | limits
    POST faults {kind: status|hang|drop|slow, path, times, method, status, body, headers, delay_s}
    DELETE faults
    POST limits {group, rate_per_s, burst} | limits/lift {group?} | limits/restore
    POST limits/retry-after {retry_after: null|"auto"|seconds}
    POST projects {project_type, api_key?, create_new_fields?} -> {project_id, api_key}
    POST keys {project_id?, api_key?, kind: server_side|read_only} | keys/disable {api_key}
    POST settings {latency_ms, latency_per_user_ms, type_mismatch, oversize_status,
                   max_users_per_request, max_fields, max_body_bytes, bulk_lag_s, single_lag_s,
                   create_new_fields (+ project_id), max_subscription_requests,
                   max_list_subscribers, max_events_per_request, events_create_users,
                   subscriptions_api, subscriptions_status, export_lag_s}
    POST flush {queue?} | apply-due | reset
    """
    handlers = _ControlRoutes(emu)
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/state", handlers.get_state),
        ("GET", "/snapshot", handlers.snapshot),
        ("GET", "/history", handlers.history),
        ("GET", "/counts", handlers.counts),
        ("GET", "/faults", handlers.get_faults),
        ("POST", "/faults", handlers.add_fault),
        ("DELETE", "/faults", handlers.clear_faults),
        ("GET", "/limits", handlers.get_limits),
        ("POST", "/limits", handlers.set_limit),
        ("POST", "/limits/lift", handlers.lift_limits),
        ("POST", "/limits/restore", handlers.restore_limits),
        ("POST", "/limits/retry-after", handlers.retry_after),
        ("POST", "/projects", handlers.add_project),
        ("POST", "/keys", handlers.add_key),
        ("POST", "/keys/disable", handlers.disable_key),
        ("POST", "/settings", handlers.settings),
        ("POST", "/flush", handlers.flush),
        ("POST", "/apply-due", handlers.apply_due),
        ("POST", "/reset", handlers.reset),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, CONTROL_PREFIX + path, handler)
