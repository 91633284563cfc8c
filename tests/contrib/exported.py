"""What the service really exports, and what a PromQL expression asks for.

`scrape_running_service` runs the wired `Service` against both emulators, makes it sync, fail
and reconcile until every metric family it exports has samples, and returns the `/metrics` text
of its health server. `Exported` indexes that text by sample name and label names; `Queried`
holds the metric names and label names one PromQL expression uses (parsed, not pattern-matched).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import promql_parser
from prometheus_client.parser import text_string_to_metric_families

from streamsync.emulators.iterable import IterableEmulator, IterableEmulatorConfig
from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig
from streamsync.runtime.app import Service
from tests.conftest import DEFAULT_SF_SEED, build_config

# Labels Prometheus attaches to every scraped series (the target's), not the service.
TARGET_LABELS = frozenset({"job", "instance"})
# Series Prometheus itself records per target.
PROMETHEUS_SERIES = {"up": frozenset()}
# Grafana's interval variables, replaced by a duration so the expression parses.
GRAFANA_DURATIONS = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|"
                               r"interval|range)\}")
BULK = "/api/users/bulkUpdate"


@dataclass
class Exported:
    """Sample names of a scrape with the label names each carries."""

    labels: dict[str, frozenset[str]] = field(default_factory=dict)
    families: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Exported:
        out = cls()
        for family in text_string_to_metric_families(text):
            names = out.families.setdefault(family.name, set())
            for sample in family.samples:
                names.add(sample.name)
                out.labels[sample.name] = out.labels.get(sample.name, frozenset()) | frozenset(
                    sample.labels)
        return out

    def empty_families(self) -> list[str]:
        return sorted(name for name, samples in self.families.items() if not samples)


@dataclass
class Queried:
    """Metric names with the label names matched on them, and labels used for grouping."""

    selectors: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)

    def metric_names(self) -> set[str]:
        return {name for name, _ in self.selectors}


def parse_promql(expr: str) -> Queried:
    """Every vector selector of `expr` (metric name + matcher label names) and every label of
    by/without/on/ignoring/group_left/group_right."""
    tree = promql_parser.parse(GRAFANA_DURATIONS.sub("5m", expr))
    out = Queried()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.MatrixSelector):
            node = node.vector_selector
        if isinstance(node, promql_parser.VectorSelector):
            labels = {m.name for m in node.matchers.matchers}
            names = {m.value for m in node.matchers.matchers
                     if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal}
            name = node.name or (names.pop() if len(names) == 1 else None)
            if name is None:
                raise AssertionError(f"selector without a plain metric name in {expr!r}")
            out.selectors.append((name, frozenset(labels - {"__name__"})))
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            out.grouping.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                out.grouping.update(node.modifier.matching.labels)
            out.grouping.update(node.modifier.group_labels or [])

    promql_parser.walk(tree, visit)
    if not out.selectors and "streamsync" in expr:
        raise AssertionError(f"no selector found in {expr!r}")
    return out


def problems(where: str, queried: Queried, exported: Exported,
             extra_labels: Iterable[str] = ()) -> list[str]:
    """Why `queried` would not match what the service exports (empty when it does)."""
    found: list[str] = []
    available: set[str] = set(TARGET_LABELS)
    for name, labels in queried.selectors:
        known = exported.labels.get(name, PROMETHEUS_SERIES.get(name))
        if known is None:
            found.append(f"{where}: metric {name!r} is not exported")
            continue
        available |= known
        unknown = labels - known - TARGET_LABELS
        if unknown:
            found.append(f"{where}: {name} has no label(s) {sorted(unknown)} "
                         f"(it has {sorted(known)})")
    missing = (queried.grouping | set(extra_labels)) - available
    if missing:
        found.append(f"{where}: label(s) {sorted(missing)} are on none of its metrics")
    return found


async def _until(what: str, check: Callable[[], Awaitable[bool]],
                 timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not reached in {timeout_s} s")


@dataclass
class RunningService:
    """A wired `Service` on both emulators, subscribed and ready; `exit_code` once stopped."""

    sf: SalesforceEmulator
    it: IterableEmulator
    service: Service
    exit_code: int | None = None

    @property
    def health_url(self) -> str:
        assert self.service.health is not None and self.service.health.port is not None
        return f"http://127.0.0.1:{self.service.health.port}"


@asynccontextmanager
async def running_service(tmp_path: Path, *, metrics_refresh_s: float
                          ) -> AsyncIterator[RunningService]:
    """Start both emulators and the real Service with its health server; yield once /readyz
    answers 200; stop everything on exit (the service's exit code is kept)."""
    sf = SalesforceEmulator(SalesforceEmulatorConfig(
        **DEFAULT_SF_SEED, latency_ms=0.0, long_poll_s=1.0))
    it = IterableEmulator(IterableEmulatorConfig(latency_ms=0.0, rate_limits=False,
                                                 project_type="email"))
    await sf.start("127.0.0.1", 0)
    await it.start("127.0.0.1", 0)
    stop = asyncio.Event()
    task: asyncio.Task[int] | None = None
    running: RunningService | None = None
    try:
        config = build_config(sf, it, tmp_path, health={"enabled": True, "port": 0},
                              ingest={"watchdog_s": 5.0, "long_poll_timeout_s": 3.0})
        service = Service(config, metrics_refresh_s=metrics_refresh_s, shutdown_s=5.0)
        task = asyncio.create_task(service.run(stop))
        running = RunningService(sf, it, service)
        started = running

        async def ready() -> bool:
            if service.health is None or service.health.port is None:
                return False
            async with aiohttp.ClientSession() as http, \
                    http.get(f"{started.health_url}/readyz") as r:
                return r.status == 200

        await _until("service ready", ready)
        yield running
    finally:
        stop.set()
        if task is not None:
            code = await asyncio.wait_for(task, 15)
            if running is not None:
                running.exit_code = code
        await it.stop()
        await sf.stop()


async def scrape_running_service(tmp_path: Path) -> str:
    """The /metrics text of a running Service that has synced, dead-lettered, been rate
    limited, reconciled, skipped unchanged records and left an update of an unmapped field
    unread, so every family has samples."""
    async with running_service(tmp_path, metrics_refresh_s=0.1) as running, \
            aiohttp.ClientSession() as http:
        sf, it = running.sf, running.it

        async def scrape() -> str:
            async with http.get(f"{running.health_url}/metrics") as r:
                return await r.text()

        it.faults.fail_next(BULK, times=1, status=429, headers={"Retry-After": "0"})
        contact = sf.select_ids("Contact", "Email != null", limit=1)[0]
        sf.state.update("Contact", contact, {"FirstName": "Dashboard"})
        sf.state.update("Contact", contact, {"Title": "Not mapped"})  # an update left unread
        sf.state.create("Contact", {"LastName": "Bad", "Email": "bad@example.c0m"})

        async def synced() -> bool:
            return "streamsync_dead_lettered_total{" in await scrape() \
                and "streamsync_records_synced_total{" in await scrape()

        await _until("first sync and dead letter", synced)
        sf.publish_gap("Contact", "GAP_OVERFLOW", [])  # a reconciliation: all unchanged

        async def populated() -> bool:
            return not Exported.parse(await scrape()).empty_families()

        try:
            await _until("every metric family has samples", populated)
        except AssertionError:
            empty = Exported.parse(await scrape()).empty_families()
            raise AssertionError(f"families without samples: {empty}") from None
        return await scrape()
