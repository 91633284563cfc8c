"""The Salesforce emulator: configuration, aiohttp app, middleware and the Python control API."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from .bulk import BulkQueryApi
from .bus import EventBus
from .cometd import CometdServer
from .composite import CompositeApi
from .control import CONTROL_PREFIX, ControlApi
from .errors import SalesforceError, invalid_session
from .faults import FaultPlan, FaultRule
from .ingest import BulkIngestApi
from .oauth import OAuthConfig, Sessions, TokenEndpoint
from .rest import LIMITS_KEY, RECORDS_KEY, USER_KEY, RestApi, error_response
from .schema import CDC_SUPPORTED, DEFAULT_CDC_ENTITIES, SCHEMA
from .seed import seed
from .soap import SoapApi
from .soql import execute
from .state import OrgState
from .tls import server_context, write_self_signed

MAX_URI_BYTES = 16_384
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class SalesforceEmulatorConfig:
    """Everything the emulator can be told at start; defaults are documented in the README."""

    seed_accounts: int = 0
    seed_contacts: int = 0
    seed_leads: int = 0
    seed_users: int = 20
    seed_queues: int = 3
    seed_opportunities: int = 0
    seed_campaigns: int = 0
    seed_campaign_members: int = 0
    cdc_entities: tuple[str, ...] = DEFAULT_CDC_ENTITIES
    seed_value: int = 42
    latency_ms: float = 0.0
    per_record_ms: float = 0.0
    client_id: str = "3MVG9emulator.consumer.key"
    client_secret: str = "emulator-consumer-secret"
    username: str = "integration@example.com"
    password: str = "emulator-password"
    refresh_token: str = "5Aep861emulator.refresh.token"
    api_version: str = "66.0"
    session_lifetime_s: float = 7200.0
    daily_api_max: int = 100_000
    daily_bulk_jobs_max: int = 10_000
    jwt_public_key_pem: bytes | None = None
    jwt_audiences: tuple[str, ...] = ("https://login.salesforce.com",
                                      "https://test.salesforce.com")
    tls: bool = False
    tls_dir: str | None = None
    long_poll_s: float = 110.0
    reconnect_timeout_s: float = 40.0
    daily_delivery_limit: int = 50_000
    retention_s: float = 72 * 3600
    retention_count: int = 500_000
    long_running_s: float = 20.0
    max_long_running: int = 25
    extra: dict[str, Any] = field(default_factory=dict)


def _path_kind(path: str) -> str:
    """Kind of REST call for the counters: query, queryMore, sobject, composite, bulk, ..."""
    parts = path.split("/")
    # ['', 'services', 'data', 'v66.0', kind, ...]
    if len(parts) < 5 or not parts[4]:
        return "other"
    head = parts[4]
    if head in ("query", "queryAll"):
        return "queryMore" if len(parts) > 5 and parts[5] else "query"
    if head == "sobjects":
        if len(parts) > 6 and parts[6] == "describe":
            return "describe"
        return "describe" if len(parts) <= 5 or not parts[5] else "sobject"
    if head == "composite":
        return "composite"
    if head == "jobs":
        return "bulk"
    if head == "limits":
        return "limits"
    return "other"


class SalesforceEmulator:
    """A Salesforce org over real HTTP: OAuth, REST, Bulk 2.0 query and CometD CDC."""

    def __init__(self, config: SalesforceEmulatorConfig | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = cfg = config or SalesforceEmulatorConfig()
        self.clock = clock
        self.bus = EventBus(retention_s=cfg.retention_s, retention_count=cfg.retention_count,
                            clock=clock)
        unsupported = sorted(set(cfg.cdc_entities) - CDC_SUPPORTED)
        if unsupported:
            raise ValueError(f"cdc_entities: Change Data Capture does not support "
                             f"{', '.join(unsupported)} (supported here: "
                             f"{', '.join(sorted(CDC_SUPPORTED))})")
        self.state = OrgState(bus=self.bus, api_version=cfg.api_version,
                              daily_api_max=cfg.daily_api_max, clock=clock,
                              cdc_entities=cfg.cdc_entities)
        self.seeded = seed(self.state, accounts=cfg.seed_accounts, contacts=cfg.seed_contacts,
                           leads=cfg.seed_leads, users=cfg.seed_users, queues=cfg.seed_queues,
                           seed_value=cfg.seed_value, opportunities=cfg.seed_opportunities,
                           campaigns=cfg.seed_campaigns,
                           campaign_members=cfg.seed_campaign_members)
        users = self.state.tables["User"]
        users.rows[self.state.integration_user_id][users.obj.slot("Username")] = cfg.username
        self.sessions = Sessions(self.state.org_id, lifetime_s=cfg.session_lifetime_s,
                                 clock=clock)
        self.state.sessions = self.sessions
        self.faults = FaultPlan(latency_ms=cfg.latency_ms, per_record_ms=cfg.per_record_ms)
        self.cometd = CometdServer(self.bus, self.sessions.check, long_poll_s=cfg.long_poll_s,
                                   reconnect_timeout_s=cfg.reconnect_timeout_s,
                                   daily_delivery_limit=cfg.daily_delivery_limit,
                                   entities=sorted(CDC_SUPPORTED))
        self.oauth_config = OAuthConfig(
            client_id=cfg.client_id, client_secret=cfg.client_secret, username=cfg.username,
            password=cfg.password, refresh_token=cfg.refresh_token,
            jwt_public_key_pem=cfg.jwt_public_key_pem, jwt_audiences=cfg.jwt_audiences)
        self.token_endpoint = TokenEndpoint(self.oauth_config, self.sessions,
                                            lambda: self.state.integration_user_id, clock=clock)
        self.rest = RestApi(self.state)
        self.bulk = BulkQueryApi(self.state, daily_jobs_max=cfg.daily_bulk_jobs_max,
                                 clock=clock)
        # Query and ingest jobs share the 750 key prefix: one sequence keeps their ids apart.
        self.ingest = BulkIngestApi(self.state, ids=self.bulk.ids, clock=clock)
        self.soap = SoapApi(self.state, self.sessions.check, self.sessions.user_of)
        self.control = ControlApi(self)
        self.app = self._build_app()
        self._runner: web.AppRunner | None = None
        self._burst_task: asyncio.Task[dict[str, Any]] | None = None
        self._bursts = 0  # bursts started: part of the values they set
        self._burst_info: dict[str, Any] = {}
        self._inflight: dict[int, float] = {}
        self.host = "127.0.0.1"
        self.port = 0
        self.cert_path: Path | None = None
        self.key_path: Path | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None

    # -- wiring ---------------------------------------------------------------------------------
    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app[LIMITS_KEY] = self.limits
        app.router.add_post("/services/oauth2/token", self.token_endpoint.handle)
        app.router.add_post("/services/oauth2/revoke", self.token_endpoint.revoke)
        self.rest.register(app)
        CompositeApi(self.state).register(app)
        self.bulk.register(app)
        self.ingest.register(app)
        self.soap.register(app)
        self.cometd.register(app)
        self.control.register(app)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        uri_bytes = len(request.raw_path)
        if uri_bytes > MAX_URI_BYTES:
            return web.Response(status=414, text="URI Too Long")
        header_bytes = sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
        if uri_bytes + header_bytes > MAX_URI_BYTES:
            return web.Response(status=431, text="Request Header Fields Too Large")
        path = request.path
        if path.startswith(CONTROL_PREFIX):
            try:
                return await handler(request)
            except SalesforceError as err:
                return error_response(err)
        if not path.startswith("/services/data/v"):
            return await self._api(request, handler, path)
        # Requests running 20 s or longer are limited to 25 at once per org.
        now = time.monotonic()
        limit_s = self.config.long_running_s
        if sum(1 for t in self._inflight.values()
               if now - t >= limit_s) >= self.config.max_long_running:
            return error_response(SalesforceError(403, "REQUEST_LIMIT_EXCEEDED",
                                                  "ConcurrentPerOrgLongTxn Limit exceeded."))
        key = id(request)
        self._inflight[key] = now
        try:
            return await self._api(request, handler, path)
        finally:
            self._inflight.pop(key, None)

    def inflight(self) -> int:
        """REST requests being served right now."""
        return len(self._inflight)

    async def _api(self, request: web.Request, handler: Handler, path: str
                   ) -> web.StreamResponse:
        rule = self.faults.take(request.method, path)
        if rule is not None:
            failed = await self._injected(request, rule)
            if failed is not None:
                return failed
        is_data = path.startswith("/services/data/v")
        if is_data:
            refused = self._admit(request, path)
            if refused is not None:
                return refused
        resp = await self._served(request, handler, path)
        delay = self.faults.delay_s(request.get(RECORDS_KEY, 0))
        if delay > 0 and not path.startswith("/cometd"):
            await asyncio.sleep(delay)
        if is_data:
            self._limit_header(resp)
        return resp

    async def _injected(self, request: web.Request, rule: FaultRule) -> web.Response | None:
        """Apply an injected fault: a canned reply, a dropped connection, or a hang first."""
        if rule.action == "fail":
            return web.Response(status=rule.status, body=rule.body,
                                content_type=rule.content_type, headers=rule.headers)
        if rule.action == "drop":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError()
        await self._hang(request, rule.hang_s)
        return None

    def _admit(self, request: web.Request, path: str) -> web.StreamResponse | None:
        """A data API call needs a live session and a call left in the daily allocation."""
        token = _token(request.headers.get("Authorization", ""))
        if token is None or self.sessions.check(token) != "ok":
            return error_response(invalid_session())
        request[USER_KEY] = self.sessions.user_of(token) or self.state.integration_user_id
        if self.state.usage.count(_path_kind(path)):
            return None
        resp: web.StreamResponse = error_response(SalesforceError(
            403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."))
        self._limit_header(resp)
        return resp

    @staticmethod
    async def _served(request: web.Request, handler: Handler, path: str) -> web.StreamResponse:
        """The handler's reply, its SalesforceError (and aiohttp's 404/405 under /services/)
        as Salesforce's JSON error body."""
        try:
            return await handler(request)
        except SalesforceError as err:
            return error_response(err)
        except web.HTTPNotFound:
            if not path.startswith("/services/"):
                raise
            return error_response(SalesforceError(
                404, "NOT_FOUND", "The requested resource does not exist"))
        except web.HTTPMethodNotAllowed:
            if not path.startswith("/services/"):
                raise
            return error_response(SalesforceError(
                405, "METHOD_NOT_ALLOWED", f"HTTP Method '{request.method}' not allowed"))

    def _limit_header(self, resp: web.StreamResponse) -> None:
        u = self.state.usage
        resp.headers["Sforce-Limit-Info"] = f"api-usage={u.used}/{u.daily_max}"

    @staticmethod
    async def _hang(request: web.Request, seconds: float | None) -> None:
        deadline = None if seconds is None else time.monotonic() + seconds
        while deadline is None or time.monotonic() < deadline:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise asyncio.CancelledError()
            await asyncio.sleep(0.02)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve on host:port (0 picks a free port)."""
        ssl_ctx = None
        if self.config.tls:
            if self.config.tls_dir:
                directory = Path(self.config.tls_dir)
            else:
                self._tmpdir = tempfile.TemporaryDirectory(prefix="sf-emulator-tls-")
                directory = Path(self._tmpdir.name)
            self.cert_path, self.key_path = write_self_signed(directory)
            ssl_ctx = server_context(self.cert_path, self.key_path)
        self._runner = web.AppRunner(self.app, access_log=None, max_line_size=65_536,
                                     max_field_size=65_536, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.host = host
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock, ssl_context=ssl_ctx)
        await site.start()
        self.oauth_config.instance_url = self.instance_url

    async def stop(self) -> None:
        if self._burst_task is not None and not self._burst_task.done():
            self._burst_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._burst_task
        await self.ingest.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    @property
    def instance_url(self) -> str:
        scheme = "https" if self.config.tls else "http"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def token_url(self) -> str:
        return self.instance_url + "/services/oauth2/token"

    @property
    def client_id(self) -> str:
        return self.config.client_id

    @property
    def client_secret(self) -> str:
        return self.config.client_secret

    @property
    def username(self) -> str:
        return self.config.username

    @property
    def password(self) -> str:
        return self.config.password

    def info(self) -> dict[str, Any]:
        """The JSON line the command line prints."""
        out: dict[str, Any] = {
            "instance_url": self.instance_url, "login_url": self.instance_url,
            "token_url": self.token_url,
            "client_id": self.client_id, "client_secret": self.client_secret,
            "username": self.username, "password": self.password,
            "refresh_token": self.config.refresh_token, "api_version": self.config.api_version,
            "control_url": self.instance_url + CONTROL_PREFIX,
        }
        if self.cert_path is not None:
            out["cert_path"] = str(self.cert_path)
        return out

    # -- Python control API ---------------------------------------------------------------------
    def issue_token(self) -> str:
        """A fresh access token for the integration user (no HTTP round trip)."""
        return self.sessions.issue(self.state.integration_user_id, self.client_id).token

    def forget_cometd_clients(self) -> int:
        return self.cometd.forget_all_clients()

    def push_cometd_disconnect(self) -> int:
        return self.cometd.push_disconnect()

    def publish_gap(self, entity: str, change_type: str, record_ids: list[str]) -> int:
        if entity not in SCHEMA:
            raise ValueError(f"unknown entity {entity!r}")
        return self.bus.publish_gap(entity, change_type, record_ids, int(self.clock() * 1000))

    def select_ids(self, sobject: str, where: str = "", limit: int = 10_000) -> list[str]:
        soql = f"SELECT Id FROM {sobject}" + (f" WHERE {where}" if where else "")
        soql += f" ORDER BY Id LIMIT {limit}"
        return [r[0] for r in execute(self.state, soql).rows]

    def counters(self) -> dict[str, Any]:
        return {"api": self.state.usage.snapshot(), "token_calls": dict(self.token_endpoint.calls),
                "bulk_jobs_created": self.bulk.jobs_created,
                "bulk_bytes_served": self.bulk.bytes_served,
                "bulk_ingest_jobs_created": self.ingest.jobs_created,
                "bulk_ingest_records": self.ingest.records_written,
                "soap_calls": self.soap.calls,
                "cometd": self.cometd.stats()}

    def reset_counters(self) -> None:
        self.state.usage.used = 0
        self.state.usage.by_kind.clear()
        self.token_endpoint.calls.clear()

    def snapshot(self) -> dict[str, Any]:
        return {"counts": self.state.counts(), "counters": self.counters(),
                "sessions_active": self.sessions.active_count(),
                "latest_replay_id": self.bus.latest_replay_id,
                "faults": self.faults.to_json(), "burst": self.burst_status()}

    def limits(self) -> dict[str, Any]:
        """The /limits body."""
        u = self.state.usage
        stats = self.cometd.stats()
        delivered = int(stats.get("deliveries_24h", 0))
        delivery_max = self.config.daily_delivery_limit
        clients = int(stats.get("clients", 0))
        records = sum(len(t.rows) for t in self.state.tables.values())
        storage_max = 1024 + records // 500

        def lim(mx: int, used: int) -> dict[str, int]:
            return {"Max": mx, "Remaining": max(0, mx - used)}
        return {
            "DailyApiRequests": lim(u.daily_max, u.used),
            "DailyBulkApiBatches": lim(15_000, self.ingest.batches_used),
            "DailyBulkV2QueryFileStorageMB": lim(976_562, self.bulk.bytes_served // 1_048_576),
            "DailyBulkV2QueryJobs": lim(self.config.daily_bulk_jobs_max, self.bulk.jobs_created),
            "DailyDeliveredPlatformEvents": lim(delivery_max, delivered),
            "DailyDurableGenericStreamingApiEvents": lim(1_000_000, 0),
            "DailyDurableStreamingApiEvents": lim(1_000_000, 0),
            "DailyGenericStreamingApiEvents": lim(10_000, 0),
            "DailyStandardVolumePlatformEvents": lim(10_000, 0),
            "DailyStreamingApiEvents": lim(1_000_000, 0),
            "DataStorageMB": lim(storage_max, records // 500),
            "DurableStreamingApiConcurrentClients": lim(2_000, clients),
            "HourlyPublishedPlatformEvents": lim(250_000, 0),
            "HourlyPublishedStandardVolumePlatformEvents": lim(50_000, 0),
            "MonthlyPlatformEventsUsageEntitlement": lim(0, 0),
            "StreamingApiConcurrentClients": lim(2_000, clients),
        }

    # -- bursts ---------------------------------------------------------------------------------
    def start_burst(self, sobject: str, count: int, rate_per_s: float, *,
                    per_transaction: int = 1, field: str | None = None) -> dict[str, Any]:
        """Start a background burst of `count` record changes at `rate_per_s` (see burst())."""
        if self._burst_task is not None and not self._burst_task.done():
            raise ValueError("a burst is already running")
        self._burst_task = asyncio.ensure_future(self.burst(
            sobject, count, rate_per_s, per_transaction=per_transaction, field=field))
        return {"started": True, "sobject": sobject, "count": count, "rate_per_s": rate_per_s}

    async def wait_burst(self) -> dict[str, Any]:
        """Wait for the background burst (if any) to finish; returns its status."""
        if self._burst_task is not None:
            await self._burst_task
        return self.burst_status()

    def burst_status(self) -> dict[str, Any]:
        running = self._burst_task is not None and not self._burst_task.done()
        return {"running": running, **self._burst_info}

    async def burst(self, sobject: str, count: int, rate_per_s: float, *,
                    per_transaction: int = 1, field: str | None = None) -> dict[str, Any]:
        """Update `count` live records at `rate_per_s` changes per second.

        Records in one transaction (per_transaction of them) get the same new value, so their
        CDC events merge into one event with several recordIds, as a mass update does. The
        value (`Burst <burst>.<transaction>`) is new to every record each time, so every
        update is a change, whatever earlier bursts set."""
        if count < 1 or rate_per_s <= 0 or per_transaction < 1:
            raise ValueError("count >= 1, rate_per_s > 0 and per_transaction >= 1 required")
        obj = self.state.table(sobject).obj
        field = field or ("Phone" if obj.name == "Account" else "Title")
        if obj.get(field) is None:
            raise ValueError(f"no field {field!r} on {obj.name}")
        ids = self.select_ids(obj.name, "", count)
        if not ids:
            raise ValueError(f"no live {obj.name} records to change")
        loop = asyncio.get_running_loop()
        start = loop.time()
        done = 0
        tx_no = 0
        self._bursts += 1
        self._burst_info = {"sobject": obj.name, "count": count, "done": 0}
        while done < count:
            tx_no += 1
            batch = [ids[(done + k) % len(ids)] for k in range(min(per_transaction,
                                                                   count - done))]
            value = f"Burst {self._bursts}.{tx_no}"
            with self.state.transaction(origin="") as tx:
                for sf_id in batch:
                    tx.update(obj.name, sf_id, {field: value})
            done += len(batch)
            self._burst_info["done"] = done
            target = start + done / rate_per_s
            delay = target - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
        elapsed = loop.time() - start
        self._burst_info.update({"elapsed_s": elapsed,
                                 "rate_per_s": done / elapsed if elapsed > 0 else 0.0})
        return dict(self._burst_info)


def _token(header: str) -> str | None:
    for scheme in ("Bearer ", "OAuth "):
        if header.startswith(scheme):
            return header[len(scheme):].strip() or None
    return None


def dumps_line(info: dict[str, Any]) -> str:
    return orjson.dumps(info).decode()
