"""Shared fixtures: both emulators on port 0, a Config pointing at them, a real SQLite store, and
the clients the runtime uses (session, Salesforce auth and client, Iterable client, limiter).

Fixtures
- `sf_emulator`: a started SalesforceEmulator (latency 0, a small seed). Tune it per test with
  `@pytest.mark.salesforce(seed_contacts=300, ...)` (any SalesforceEmulatorConfig field).
- `iterable_emulator`: a started IterableEmulator (latency 0, rate limits lifted, email-based
  project). Tune it with `@pytest.mark.iterable(project_type="hybrid", type_mismatch="batch")`
  (any IterableEmulatorConfig field; `rate_limits=True` turns Iterable's real limits on).
- `make_config(sf, it, tmp_path, **overrides) -> Config` (also as `config_for`): a validated
  Config via `parse_config` with client-credentials auth and secrets from a fake environment;
  each override replaces or (for dict sections such as `iterable=`, `flush=`, `objects=`) is
  merged into the section of the same name (`objects=` per object name: Lead, Contact and
  Account stay configured). The queue lives at `tmp_path/streamsync.db`.
- `emulator_describes()`: the emulator's describe of every object, for `compile_mappings`.
- `config`: `make_config(sf_emulator, iterable_emulator, tmp_path)`.
- `store`: `Store.open(tmp_path/"streamsync.db")`, closed at teardown.
- `clients`: a `Clients` view of `open_components(config)` (closed at teardown): the service's
  own composition root (runtime/app.py) builds every client, so tests cannot drift from it.
- `sync_rig`: a `SyncRig` (store + pipeline from `open_components`, and the flusher as
  `Service` builds it, on both emulators, a FakeClock); tune its config with
  `@pytest.mark.sync_config(**overrides)`; `enqueue()` ids, `drain()`, `profiles()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import stamina

from streamsync.adapters.http import UsageCounter
from streamsync.adapters.iterable import IterableClient
from streamsync.adapters.ratelimit import RateLimiter
from streamsync.adapters.salesforce import SalesforceClient
from streamsync.adapters.salesforce_auth import SalesforceAuth
from streamsync.adapters.store import QueueInput, Store
from streamsync.config import Config, parse_config
from streamsync.emulators.iterable import IterableEmulator, IterableEmulatorConfig
from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig
from streamsync.emulators.salesforce.schema import SCHEMA, describe
from streamsync.runtime.app import Components, open_components
from streamsync.runtime.flusher import Flusher, FlushResult
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.pipeline import SyncPipeline

# `store_space`, `any_store`, `pg_server`, `pg_url`: every store test on SQLite and PostgreSQL
pytest_plugins = ["tests.store_backends"]

DEFAULT_SF_SEED: dict[str, Any] = {"seed_accounts": 3, "seed_contacts": 12, "seed_leads": 12}
TEST_ITERABLE_RATE_PER_S = 500.0  # fast tests; the production default is Iterable's 5/s
STORE_FILE = "streamsync.db"

MakeConfig = Callable[..., Config]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "salesforce(**kw): SalesforceEmulatorConfig fields for `sf_emulator`")
    config.addinivalue_line(
        "markers", "iterable(**kw): IterableEmulatorConfig fields for `iterable_emulator`")
    config.addinivalue_line(
        "markers", "sync_config(**overrides): make_config overrides for `sync_rig`")


def _marker_kwargs(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    marker = request.node.get_closest_marker(name)
    return dict(marker.kwargs) if marker is not None else {}


@pytest.fixture
async def sf_emulator(request: pytest.FixtureRequest) -> AsyncIterator[SalesforceEmulator]:
    """A Salesforce emulator on 127.0.0.1:0 with latency 0 and a small seed."""
    kw = {**DEFAULT_SF_SEED, "latency_ms": 0.0, **_marker_kwargs(request, "salesforce")}
    emu = SalesforceEmulator(SalesforceEmulatorConfig(**kw))
    await emu.start("127.0.0.1", 0)
    try:
        yield emu
    finally:
        await emu.stop()


@pytest.fixture
async def iterable_emulator(request: pytest.FixtureRequest) -> AsyncIterator[IterableEmulator]:
    """An Iterable emulator on 127.0.0.1:0: latency 0, rate limits lifted, email project."""
    kw: dict[str, Any] = {"latency_ms": 0.0, "rate_limits": False, "project_type": "email",
                          **_marker_kwargs(request, "iterable")}
    emu = IterableEmulator(IterableEmulatorConfig(**kw))
    await emu.start("127.0.0.1", 0)
    try:
        yield emu
    finally:
        await emu.stop()


def emulator_describes(version: str = "66.0") -> dict[str, dict[str, Any]]:
    """Every object's describe as the Salesforce emulator serves it: mappings compile with these
    field types, as `streamsync run` compiles them with the org's."""
    return {name: describe(obj, version) for name, obj in SCHEMA.items()}


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def build_config(sf: SalesforceEmulator, it: IterableEmulator, tmp_path: Path, *,
                 env: dict[str, str] | None = None, **overrides: Any) -> Config:
    """A Config for the two emulators (client-credentials auth, secrets from a fake env;
    `env` adds to it, e.g. the webhook secret)."""
    data: dict[str, Any] = {
        "salesforce": {"login_url": sf.instance_url, "auth": "client_credentials",
                       "client_id": sf.client_id, "api_version": sf.config.api_version,
                       "timeout_s": 10.0},
        "iterable": {"base_url": it.base_url, "project_type": it.config.project_type,
                     "rate_limit_per_s": TEST_ITERABLE_RATE_PER_S, "timeout_s": 10.0},
        "queue": {"path": str(tmp_path / STORE_FILE), "backoff_base_s": 0.01,
                  "backoff_max_s": 0.05},
        "flush": {"linger_ms": 10},
        "health": {"enabled": False},
        "objects": {"Lead": {}, "Contact": {}, "Account": {}},
    }
    secrets = {"STREAMSYNC_SF_CLIENT_SECRET": sf.client_secret,
               "STREAMSYNC_ITERABLE_API_KEY": it.api_key, **(env or {})}
    return parse_config(_merge(data, overrides), secrets)


@pytest.fixture
def make_config() -> MakeConfig:
    """`make_config(sf, it, tmp_path, **overrides) -> Config`."""
    return build_config


@pytest.fixture
def config_for() -> MakeConfig:
    """Same as `make_config` (the name used in the runtime contract)."""
    return build_config


@pytest.fixture
def config(sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
           tmp_path: Path) -> Config:
    """The default Config for this test's emulators."""
    return build_config(sf_emulator, iterable_emulator, tmp_path)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A real SQLite store at tmp_path/streamsync.db (the path `make_config` uses)."""
    opened = await Store.open(tmp_path / STORE_FILE)
    try:
        yield opened
    finally:
        await opened.close()


@dataclasses.dataclass
class Clients:
    """The clients of the production composition root (`runtime/app.py` open_components),
    under the names tests use; `components` is everything it opened."""

    components: Components

    @property
    def session(self) -> aiohttp.ClientSession:
        """The Salesforce HTTP session."""
        return self.components.salesforce_http

    @property
    def counter(self) -> UsageCounter:
        return self.components.counter

    @property
    def auth(self) -> SalesforceAuth:
        return self.components.auth

    @property
    def salesforce(self) -> SalesforceClient:
        return self.components.salesforce

    @property
    def limiter(self) -> RateLimiter:
        return self.components.limiter

    @property
    def iterable(self) -> IterableClient:
        return self.components.iterable


@contextlib.asynccontextmanager
async def production_components(config: Config, **kw: Any) -> AsyncIterator[Components]:
    """`open_components` as `streamsync run` calls it, with the emulator's describes (no
    start-up describe round trips); closed on exit."""
    async with open_components(config, describes=emulator_describes(), **kw) as parts:
        yield parts


@pytest.fixture
async def clients(config: Config) -> AsyncIterator[Clients]:
    """Session, SalesforceAuth, SalesforceClient, RateLimiter and IterableClient for `config`,
    built by the production composition root."""
    async with production_components(config) as parts:
        yield Clients(parts)


# ---------------------------------------------------------------- the real-time sync rig


class FakeClock:
    """An epoch clock that only moves when told (queue due times, identity timestamps)."""

    def __init__(self, start_s: float | None = None) -> None:
        self.now_s = time.time() if start_s is None else start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


@dataclasses.dataclass
class SyncRig:
    """Both emulators, a store, a pipeline and a flusher wired as `run` wires them; tests
    enqueue ids directly and call `drain()` (single steps, no loop)."""

    sf: SalesforceEmulator
    it: IterableEmulator
    config: Config
    store: Store
    clients: Clients
    metrics: Metrics
    pipeline: SyncPipeline
    flusher: Flusher
    clock: FakeClock

    async def enqueue(self, object_name: str, ids: Iterable[str],
                      commit_ts_ms: int | None = None) -> None:
        """Queue ids as ingest would (source `cdc`)."""
        await self.store.enqueue([QueueInput(object_name, i) for i in ids], self.clock(),
                                 "cdc", commit_ts_ms)

    async def drain(self, max_rounds: int = 200) -> FlushResult:
        """flush_once until the queue is empty, moving the clock past backoffs; the totals."""
        total = FlushResult()
        for _ in range(max_rounds):
            step = await self.flusher.flush_once()
            for name in ("leased", "synced", "skipped", "dead", "retried", "released",
                         "fanned_out"):
                setattr(total, name, getattr(total, name) + getattr(step, name))
            if step.idle:
                stats = await self.store.queue_stats(self.clock())
                if stats.depth == 0:
                    return total
                self.clock.advance(self.config.queue.backoff_max_s + 1.0)
        raise AssertionError(f"queue not drained after {max_rounds} rounds")

    def profiles(self) -> dict[str, dict[str, Any]]:
        """Iterable's profiles now, keyed by email (userId in userId projects)."""
        self.it.flush()
        return self.it.state.snapshot()


@pytest.fixture
async def sync_rig(request: pytest.FixtureRequest, sf_emulator: SalesforceEmulator,
                   iterable_emulator: IterableEmulator, tmp_path: Path
                   ) -> AsyncIterator[SyncRig]:
    """A SyncRig; `@pytest.mark.sync_config(**overrides)` passes overrides to make_config."""
    cfg = build_config(sf_emulator, iterable_emulator, tmp_path,
                       **_marker_kwargs(request, "sync_config"))
    clock = FakeClock()
    metrics = Metrics()
    # The writer retries as in production (3 attempts), without sleeping through the waits:
    # stamina's one global test switch, capped so no call site gains attempts.
    with stamina.set_testing(True, attempts=3, cap=True):
        async with production_components(cfg, metrics=metrics, clock=clock) as parts:
            flusher = Flusher(config=cfg, store=parts.store, salesforce=parts.salesforce,
                              pipeline=parts.pipeline, metrics=metrics, owner="test", clock=clock)
            yield SyncRig(sf_emulator, iterable_emulator, cfg, parts.store, Clients(parts),
                          metrics, parts.pipeline, flusher, clock)


@pytest.fixture
def no_retry_waits() -> Iterator[None]:
    """stamina's one global test switch: every retry wait is zero, attempts as declared."""
    with stamina.set_testing(True, attempts=1_000_000, cap=True):
        yield


@pytest.fixture
def retry_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait of more than zero seconds a retry schedules, recorded instead of slept (stamina
    sleeps through asyncio.sleep; zero-second yields pass through)."""
    recorded: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float, result: Any = None) -> Any:
        if delay > 0:
            recorded.append(delay)
        return await real_sleep(0, result)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    return recorded
