"""The emulated Iterable API: aiohttp routes for /api/users/*, auth, limits, faults and lag."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from aiohttp import web

from .api_events import add_event_routes
from .api_export import add_export_routes
from .api_lists import add_list_routes
from .api_subscriptions import add_subscription_routes
from .api_webhooks import add_webhook_routes
from .catalog import Catalog
from .config import IterableEmulatorConfig
from .control import CONTROL_PREFIX, add_control_routes
from .control_messaging import add_messaging_control_routes
from .faults import Fault, FaultPlan
from .messaging import Messaging
from .profiles import Profile, Project, ProjectType
from .ratelimit import RateLimiter
from .replies import NOT_FOUND_HTML, SINGLE_ERRORS, SUCCESS, TOO_LARGE_HTML, ApiError, BulkResult
from .state import ApiKey, EmulatorState, KeyKind
from .updates import DeleteWrite, EmailChange, Receipt, Rejection, UserChecker, UserWrite
from .validation import normalize_email, user_id_problem
from .webhooks import WebhookSender, WebhookSettings

log = logging.getLogger("streamsync.emulators.iterable")

BULK_PATH = "/api/users/bulkUpdate"
_READ_ONLY_OK = frozenset({"GET"})
_CLIENT_MAX_SIZE = 64 * 1024 * 1024


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON reply encoded with orjson."""
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


class IterableEmulator:
    """An in-process emulated Iterable API server with a Python and an HTTP control API."""

    def __init__(self, config: IterableEmulatorConfig | None = None) -> None:
        self.config = cfg = config or IterableEmulatorConfig()
        self.state = EmulatorState(
            clock=cfg.clock,
            wall_clock=cfg.wall_clock,
            bulk_lag_s=cfg.effective_bulk_lag_s,
            single_lag_s=cfg.effective_single_lag_s,
            record_history=cfg.record_history,
        )
        self.project, self.api_key = self.state.add_project(
            cfg.project_type, cfg.api_key, create_new_fields=cfg.create_new_fields
        )
        self.faults = FaultPlan()
        self.limits = RateLimiter(clock=cfg.clock, burst=cfg.burst)
        if not cfg.rate_limits:
            self.limits.lift()
        self.limits.retry_after = cfg.retry_after
        self.messaging: dict[str, Messaging] = {}
        self.webhooks = WebhookSender(WebhookSettings(url=cfg.webhook_url))
        self.messaging_for(self.project)
        self.app = self._build_app()
        self._runner: web.AppRunner | None = None
        self._queue_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._host = "127.0.0.1"
        self._port = 0

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve on host:port (0 picks a free port) and start applying lagged writes."""
        self._stopping = asyncio.Event()
        self.state.wakeup = asyncio.Event()
        runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        self._host = host
        self._port = port
        for address in runner.addresses:
            if isinstance(address, tuple):
                self._port = int(address[1])
                break
        self._queue_task = asyncio.create_task(self._run_queues(), name="iterable-emulator-queues")
        await self.webhooks.start()

    async def stop(self) -> None:
        """Stop serving; hanging calls are released and lagged writes are left unapplied."""
        self._stopping.set()
        await self.webhooks.stop()
        if self._queue_task is not None:
            self._queue_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._queue_task
            self._queue_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> IterableEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The port served on."""
        return self._port

    @property
    def base_url(self) -> str:
        """`http://host:port` (API paths start with /api/)."""
        return f"http://{self._host}:{self._port}"

    @property
    def control_url(self) -> str:
        """Base URL of the HTTP control API."""
        return self.base_url + CONTROL_PREFIX

    # -- Python control API --------------------------------------------------------------------

    def add_project(
        self,
        project_type: ProjectType = "email",
        api_key: str | None = None,
        create_new_fields: bool = True,
    ) -> tuple[str, str]:
        """Another project; returns (project_id, api_key)."""
        project, key = self.state.add_project(
            project_type, api_key, create_new_fields=create_new_fields
        )
        return project.id, key

    def add_key(
        self, project_id: str | None = None, key: str | None = None, kind: KeyKind = "server_side"
    ) -> str:
        """Another key for a project (default: the first project)."""
        return self.state.add_key(project_id or self.project.id, key, kind)

    def set_lag(self, bulk_lag_s: float | None = None, single_lag_s: float | None = None) -> None:
        """Change the lag of the bulk and/or single-user queue."""
        if bulk_lag_s is not None:
            self.state.queues["bulk"].lag_s = bulk_lag_s
        if single_lag_s is not None:
            self.state.queues["single"].lag_s = single_lag_s

    def apply_due(self, now: float | None = None) -> int:
        """Apply queued writes whose lag has passed (single step for tests)."""
        return self.state.apply_due(now)

    def flush(self) -> int:
        """Apply every queued write now."""
        return self.state.flush()

    def messaging_for(self, project: Project) -> Messaging:
        """A project's channels, lists, consent events and custom events (made on first use)."""
        found = self.messaging.get(project.id)
        if found is None:
            created_ms = int(self.state.wall_clock() * 1000)
            found = Messaging(Catalog(created_ms, self.config.opt_in_message_types))
            found.log.listeners.append(self.webhooks.on_event)
            self.messaging[project.id] = found
        return found

    def reset_messaging(self) -> None:
        """Drop consent and custom events of every project (lists and channels stay)."""
        for messaging in self.messaging.values():
            messaging.reset()

    async def _run_queues(self) -> None:
        state = self.state
        while True:
            due = state.next_due()
            timeout = None if due is None else min(max(due - state.clock(), 0.0), 0.05)
            state.wakeup.clear()
            if timeout is None or timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.wakeup.wait(), timeout)
            state.apply_due()

    # -- HTTP plumbing -------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=_CLIENT_MAX_SIZE)
        r = app.router
        add_subscription_routes(app, self)
        add_list_routes(app, self)
        add_event_routes(app, self)
        add_export_routes(app, self)
        add_webhook_routes(app, self)
        r.add_post(BULK_PATH, self.bulk_update)
        r.add_post("/api/users/update", self.update_user)
        r.add_post("/api/users/updateEmail", self.update_email)
        r.add_post("/api/users/forget", self.forget)
        r.add_post("/api/users/unforget", self.unforget)
        r.add_get("/api/users/getFields", self.get_fields, allow_head=False)
        r.add_get("/api/users/getByEmail", self.get_by_email_query, allow_head=False)
        r.add_get("/api/users/byUserId", self.get_by_user_id_query, allow_head=False)
        r.add_get("/api/users/byUserId/{userId:.+}", self.get_by_user_id, allow_head=False)
        r.add_delete("/api/users/byUserId/{userId:.+}", self.delete_by_user_id)
        r.add_get("/api/users/{email:.+}", self.get_by_email, allow_head=False)
        r.add_delete("/api/users/{email:.+}", self.delete_by_email)
        add_control_routes(app, self)
        add_messaging_control_routes(app, self)
        return app

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Any
    ) -> web.StreamResponse:
        path = request.path
        if path.startswith(CONTROL_PREFIX):
            try:
                resp: web.StreamResponse = await handler(request)
            except ApiError as err:
                return json_response(err.body(), err.status, err.headers)
            return resp
        resource = request.match_info.route.resource
        endpoint = f"{request.method} {resource.canonical if resource is not None else '(unknown)'}"
        fault = self.faults.take(request.method, path) if self.faults else None
        if fault is not None:
            try:
                faulted = await self._apply_fault(request, fault)
            except asyncio.CancelledError:
                self.state.record_call(endpoint, 0)  # dropped, or the client gave up waiting
                raise
            if faulted is not None:
                self.state.record_call(endpoint, faulted.status)
                return faulted
        latency_s = self.config.latency_ms / 1000.0
        if latency_s > 0:
            await asyncio.sleep(latency_s)
        try:
            resp = await handler(request)
        except ApiError as err:
            resp = json_response(err.body(), err.status, err.headers)
        except _TooLarge:
            resp = _too_large_response()
        except web.HTTPException as exc:
            if exc.status in (404, 405):
                resp = web.Response(text=NOT_FOUND_HTML, status=404, content_type="text/html")
            elif exc.status == 413:  # past aiohttp's own cap (64 MB): same ingress answer
                resp = _too_large_response()
            else:
                raise
        self.state.record_call(endpoint, resp.status)
        return resp

    async def _apply_fault(self, request: web.Request, fault: Fault) -> web.Response | None:
        """Run a fault: a reply to send, or None to carry on (slow/hang); a drop never returns."""
        if fault.kind == "drop":
            await request.read()
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError  # no answer: the connection is gone
        if fault.kind in ("slow", "hang"):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), fault.delay_s)
            if request.transport is None or request.transport.is_closing():
                raise asyncio.CancelledError  # the client gave up; nobody to answer
            return None
        body = fault.reply_body()
        if isinstance(body, dict | list):
            return json_response(body, fault.status, fault.headers)
        return web.Response(text=str(body), status=fault.status, headers=fault.headers)

    @staticmethod
    def reply(body: Any, status: int = 200) -> web.Response:
        """A JSON reply (for the route modules)."""
        return json_response(body, status)

    @staticmethod
    def endpoint_of(request: web.Request) -> str:
        """`METHOD /route/template`, the key of call and write counts."""
        resource = request.match_info.route.resource
        return f"{request.method} {resource.canonical if resource is not None else '(unknown)'}"

    def auth(self, request: web.Request, group: str | None) -> Project:
        """The project of the request's API key, after its rate limit (route modules)."""
        return self._auth(request, group)

    async def json_body(self, request: web.Request) -> Any:
        """The parsed body within the size limit (route modules)."""
        if self.config.oversize_status == 413 and _declared_too_large(request, self.config):
            await request.read()
            raise _TooLarge()
        return await self._json_body(request)

    def _auth(self, request: web.Request, group: str | None) -> Project:
        """Check the API key and the project's rate limit for this endpoint group."""
        headers = request.headers
        key = headers.get("Api-Key") or headers.get("Api_Key")
        api_key: ApiKey | None = self.state.keys.get(key) if key else None
        ip = request.remote or ""
        if api_key is None:
            params = {"ip": ip, "endpoint": request.path}
            raise ApiError(401, "BadApiKey", "Invalid API key", params)
        if not api_key.enabled or (
            api_key.kind == "read_only" and request.method not in _READ_ONLY_OK
        ):
            raise ApiError(
                401,
                "BadApiKey",
                "Disabled API key or insufficient privileges",
                {
                    "ip": ip,
                    "endpoint": request.path,
                    "apiKeyIdentifier": api_key.identifier,
                    "apiKeyType": "ServerSide" if api_key.kind == "server_side" else "ReadOnly",
                },
            )
        project = self.state.projects[api_key.project_id]
        if group is not None:
            wait_s = self.limits.check(project.id, group)
            if wait_s > 0:
                retry = self.limits.retry_after_header(wait_s)
                raise ApiError(
                    429,
                    "RateLimitExceeded",
                    f"Exceeded rate limit for endpoint: {request.path}, project: {project.id} ",
                    {},
                    {"Retry-After": retry} if retry is not None else None,
                )
        return project

    async def _json_body(self, request: web.Request) -> Any:
        """Read and parse the body, enforcing the size limit."""
        raw = await request.read()
        limit = self.config.max_body_bytes
        if len(raw) > limit:
            if self.config.oversize_status == 400:
                raise ApiError(
                    400,
                    "BatchTooLarge",
                    f"Request body of {len(raw)} bytes exceeds the limit of {limit} bytes",
                    {"maxBytes": limit, "bytes": len(raw)},
                )
            raise _TooLarge()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(
                400,
                "BadJsonBody",
                f"[{request.path}] Invalid JSON body",
                {"obj": f"Invalid JSON: {exc}"},
            ) from None

    def _receipt(self, request: web.Request, queue: str) -> Receipt:
        return Receipt(
            f"{request.method} {request.path}",
            queue,
            self.state.clock(),
            self.state.wall_clock(),
            self.state.next_request_no(),
        )

    # -- users: writes -------------------------------------------------------------------------

    async def bulk_update(self, request: web.Request) -> web.StreamResponse:
        """POST /api/users/bulkUpdate."""
        if self.config.oversize_status == 413 and _declared_too_large(request, self.config):
            await request.read()
            return _too_large_response()
        project = self._auth(request, "bulkUpdate")
        body = await self._json_body(request)
        receipt = self._receipt(request, "bulk")
        result = self.process_bulk(project, body, receipt)
        per_user_s = self.config.latency_per_user_ms * result.users / 1000.0
        if per_user_s > 0:
            await asyncio.sleep(per_user_s)
        return json_response(result.body())

    def process_bulk(self, project: Project, body: Any, receipt: Receipt) -> BulkResult:
        """A parsed bulkUpdate body checked, accepted writes queued/applied; the reply to send."""
        path = BULK_PATH
        if type(body) is not dict:
            raise _not_an_object(path)
        users = body.get("users")
        create_new = body.get("createNewFields")
        errors: dict[str, str] = {}
        if users is None:
            errors["obj.users"] = "Missing value"
        elif type(users) is not list:
            errors["obj.users"] = "Array value expected"
        if create_new is not None and type(create_new) is not bool:
            errors["obj.createNewFields"] = "Boolean value expected"
        if errors:
            raise ApiError(400, "BadJsonBody", f"[{path}] Invalid JSON body", errors)
        assert isinstance(users, list)
        cap = self.config.max_users_per_request
        if cap is not None and len(users) > cap:
            raise ApiError(
                400,
                "BatchTooLarge",
                f"Too many users in one request: {len(users)} (the limit is {cap})",
                {"maxUsers": cap, "users": len(users)},
            )
        checker = UserChecker(
            project,
            create_new if create_new is not None else project.create_new_fields,
            per_user_types=self.config.type_mismatch == "per_user",
        )
        check = checker.check
        outcomes = [check(user, f"obj.users[{i}]", receipt) for i, user in enumerate(users)]
        checker.raise_for_request_errors(path)
        if not checker.per_user_types:
            checker.raise_for_type_mismatch()
        created = checker.commit_fields(self.config.max_fields)
        result = BulkResult()
        writes: list[UserWrite | DeleteWrite | EmailChange] = []
        for outcome in outcomes:
            if type(outcome) is UserWrite:
                writes.append(outcome)
            elif isinstance(outcome, Rejection):
                result.fail(outcome.category, outcome.key)
                self.state.record_rejection(project, outcome, receipt)
        result.success = len(writes)
        result.users = len(users)
        result.created = created
        result.filtered = checker.fields.filtered
        self.state.users_received += len(users)
        self.state.submit(project, writes, "bulk")
        return result

    async def update_user(self, request: web.Request) -> web.StreamResponse:
        """POST /api/users/update."""
        project = self._auth(request, "update")
        body = await self._json_body(request)
        path = request.path
        if type(body) is not dict:
            raise _not_an_object(path)
        create_new = body.get("createNewFields")
        if create_new is not None and type(create_new) is not bool:
            raise ApiError(
                400, "BadJsonBody", f"[{path}] Invalid JSON body",
                {"obj.createNewFields": "Boolean value expected"},
            )
        checker = UserChecker(
            project,
            create_new if create_new is not None else project.create_new_fields,
            per_user_types=False,
        )
        receipt = self._receipt(request, "single")
        outcome = checker.check(body, "obj", receipt)
        checker.raise_for_request_errors(path)
        checker.raise_for_type_mismatch()
        if isinstance(outcome, Rejection):
            self.state.record_rejection(project, outcome, receipt)
            status, code = SINGLE_ERRORS[outcome.category]
            raise ApiError(status, code, outcome.detail)
        assert outcome is not None
        checker.commit_fields(self.config.max_fields)
        self.state.users_received += 1
        self.state.submit(project, [outcome], "single")
        return json_response(SUCCESS)

    async def update_email(self, request: web.Request) -> web.StreamResponse:
        """POST /api/users/updateEmail."""
        project = self._auth(request, None)
        body = await self._json_body(request)
        path = request.path
        if type(body) is not dict:
            raise _not_an_object(path)
        _check_update_email_body(body, path, project)
        raw_new: str = body["newEmail"]
        new_email = normalize_email(raw_new)
        if new_email is None:
            raise ApiError(400, "InvalidEmailAddressError", f"Invalid newEmail {raw_new}")
        current_email, current_user_id, profile = _current_user(
            project, body.get("currentEmail"), body.get("currentUserId"))
        if new_email in project.forgotten_emails:
            raise ApiError(409, "ForgottenUserError", f"Email {new_email} is GDPR forgotten")
        owner = project.by_email.get(new_email)
        if owner is not None and owner is not profile:
            raise ApiError(409, "EmailAlreadyExists", f"User with email {new_email} already exists")
        receipt = self._receipt(request, "single")
        self.state.submit(
            project, [EmailChange(current_email, current_user_id, new_email, receipt)], "single"
        )
        return json_response(SUCCESS)

    async def delete_by_email(self, request: web.Request) -> web.StreamResponse:
        """DELETE /api/users/{email}."""
        project = self._auth(request, "delete")
        if project.project_type == "userId":
            raise ApiError(
                400, "BadParams",
                "Deleting by email is not supported in userID-based projects; delete by userId",
            )
        email = request.match_info["email"].lower()
        if project.by_email.get(email) is None:
            raise ApiError(404, "NotFound", "User does not exist")
        receipt = self._receipt(request, "single")
        self.state.submit(project, [DeleteWrite(email, None, receipt)], "single")
        return json_response(SUCCESS)

    async def delete_by_user_id(self, request: web.Request) -> web.StreamResponse:
        """DELETE /api/users/byUserId/{userId}."""
        project = self._auth(request, "delete")
        user_id = request.match_info["userId"]
        if project.get_by_user_id(user_id) is None:
            raise ApiError(404, "NotFound", "User does not exist")
        receipt = self._receipt(request, "single")
        self.state.submit(project, [DeleteWrite(None, user_id, receipt)], "single")
        return json_response(SUCCESS)

    async def forget(self, request: web.Request) -> web.StreamResponse:
        """POST /api/users/forget: delete the user and refuse its identifiers from now on."""
        project, email, user_id = await self._forget_target(request)
        if not self.limits.check_forget_cap(project.id):
            raise ApiError(
                429, "RateLimitExceeded",
                f"Exceeded daily cap for endpoint: {request.path}, project: {project.id} ", {},
            )
        profile = (
            project.by_email.get(email) if email is not None
            else project.get_by_user_id(user_id) if user_id is not None else None
        )
        if email is not None:
            project.forgotten_emails.add(email)
        if user_id is not None:
            project.forgotten_user_ids.add(user_id)
        if profile is not None:
            if profile.email is not None and project.project_type != "userId":
                project.forgotten_emails.add(profile.email)
            if profile.user_id is not None and project.project_type != "email":
                project.forgotten_user_ids.add(profile.user_id)
            project.delete(profile)
        return json_response(SUCCESS)

    async def unforget(self, request: web.Request) -> web.StreamResponse:
        """POST /api/users/unforget: allow data about a forgotten user again."""
        project, email, user_id = await self._forget_target(request)
        if email is not None:
            project.forgotten_emails.discard(email)
        if user_id is not None:
            project.forgotten_user_ids.discard(user_id)
        return json_response(SUCCESS)

    async def _forget_target(self, request: web.Request) -> tuple[Project, str | None, str | None]:
        project = self._auth(request, "forget")
        body = await self._json_body(request)
        path = request.path
        if type(body) is not dict:
            raise _not_an_object(path)
        errors = {
            f"obj.{name}": "String value expected"
            for name in ("email", "userId")
            if body.get(name) is not None and type(body.get(name)) is not str
        }
        if errors:
            raise ApiError(400, "BadJsonBody", f"[{path}] Invalid JSON body", errors)
        raw_email: str | None = body.get("email")
        user_id: str | None = body.get("userId")
        ptype = project.project_type
        if ptype == "email" and raw_email is None:
            raise ApiError(400, "BadParams", "Email-based projects forget users by email")
        if ptype == "userId" and user_id is None:
            raise ApiError(400, "BadParams", "UserID-based projects forget users by userId")
        if raw_email is None and user_id is None:
            raise ApiError(400, "BadParams", "Either email or userId must be provided")
        email: str | None = None
        if raw_email is not None and ptype != "userId":
            email = normalize_email(raw_email)
            if email is None:
                raise ApiError(400, "InvalidEmailAddressError", f"Invalid email {raw_email}")
        if ptype == "email":
            user_id = None
        elif user_id is not None and user_id_problem(user_id) is not None:
            raise ApiError(400, "InvalidUserIdError", f"Invalid userId {user_id}")
        return project, email, user_id

    # -- users: reads --------------------------------------------------------------------------

    async def get_by_email(self, request: web.Request) -> web.StreamResponse:
        """GET /api/users/{email}."""
        project = self._auth(request, "get")
        email = request.match_info["email"].lower()
        return self._user_reply(project.by_email.get(email), project)

    async def get_by_email_query(self, request: web.Request) -> web.StreamResponse:
        """GET /api/users/getByEmail?email=."""
        project = self._auth(request, "get")
        email = request.query.get("email")
        if not email:
            raise ApiError(400, "BadParams", "Missing parameter email", {"email": "Missing value"})
        return self._user_reply(project.by_email.get(email.lower()), project)

    async def get_by_user_id(self, request: web.Request) -> web.StreamResponse:
        """GET /api/users/byUserId/{userId}."""
        project = self._auth(request, "get")
        user_id = request.match_info["userId"]
        return self._user_reply(project.get_by_user_id(user_id), project)

    async def get_by_user_id_query(self, request: web.Request) -> web.StreamResponse:
        """GET /api/users/byUserId?userId=."""
        project = self._auth(request, "get")
        user_id = request.query.get("userId")
        if not user_id:
            params = {"userId": "Missing value"}
            raise ApiError(400, "BadParams", "Missing parameter userId", params)
        return self._user_reply(project.get_by_user_id(user_id), project)

    def _user_reply(self, profile: Any, project: Project) -> web.Response:
        # An unknown user is a 200 with an empty object, as observed.
        if profile is None:
            return json_response({})
        list_field = self.config.list_field(project.project_type)
        return json_response({"user": profile.api_view(list_field)})

    async def get_fields(self, request: web.Request) -> web.StreamResponse:
        """GET /api/users/getFields."""
        project = self._auth(request, "getFields")
        return json_response({"fields": dict(project.fields)})


class _TooLarge(Exception):
    """The body passed the size limit and the ingress answers 413."""


def _check_update_email_body(body: dict[str, Any], path: str, project: Project) -> None:
    """updateEmail's body: strings where strings belong, newEmail and one current id given."""
    errors = {
        f"obj.{name}": "String value expected"
        for name in ("currentEmail", "currentUserId", "newEmail")
        if body.get(name) is not None and type(body.get(name)) is not str
    }
    if body.get("newEmail") is None:
        errors["obj.newEmail"] = "Missing value"
    if errors:
        raise ApiError(400, "BadJsonBody", f"[{path}] Invalid JSON body", errors)
    if project.project_type == "userId":
        raise ApiError(
            400, "BadParams",
            "updateEmail is for email-based projects; use /api/users/update in userID-based "
            "projects",
        )
    if body.get("currentEmail") is None and body.get("currentUserId") is None:
        raise ApiError(400, "BadParams", "Either currentEmail or currentUserId must be provided")


def _current_user(project: Project, current_email: str | None,
                  current_user_id: str | None) -> tuple[str | None, str | None, Profile]:
    """(email, userId, user) that updateEmail addresses: by currentEmail when given."""
    if current_email is not None:
        norm = normalize_email(current_email)
        if norm is None:
            raise ApiError(400, "InvalidEmailAddressError", f"Invalid currentEmail {current_email}")
        profile = project.by_email.get(norm)
        if profile is None:
            raise ApiError(400, "UnknownEmailError", f"User with email {norm} does not exist")
        return norm, None, profile
    assert current_user_id is not None
    found = project.get_by_user_id(current_user_id)
    if found is None:
        raise ApiError(
            400, "UnknownUserIdError", f"User with userId {current_user_id} does not exist"
        )
    return None, current_user_id, found


def _not_an_object(path: str) -> ApiError:
    params = {"obj": "Object value expected"}
    return ApiError(400, "BadJsonBody", f"[{path}] Invalid JSON body", params)


def _declared_too_large(request: web.Request, config: IterableEmulatorConfig) -> bool:
    length = request.content_length
    return length is not None and length > config.max_body_bytes


def _too_large_response() -> web.Response:
    return web.Response(text=TOO_LARGE_HTML, status=413, content_type="text/html")
