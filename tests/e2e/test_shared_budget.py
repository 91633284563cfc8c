"""One Iterable rate budget across processes, against the emulator's real limits (bulkUpdate:
5 requests/s per project): the service under load and a backfill in another process together
stay under the ceiling (no 429) and use at least 0.9 of it."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamsync.adapters.store import QueueInput, Store
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from tests.conftest import MakeConfig
from tests.e2e.harness import InProcessService
from tests.e2e.process import REPO_ROOT, service_config_data, service_env, toml_dumps

BULK = "POST /api/users/bulkUpdate"
CEILING = 5.0  # the emulator's bulkUpdate limit, and the config's rate_limit_per_s
BATCH = 10


def record_call_times(it: IterableEmulator) -> list[tuple[float, str, int]]:
    """Every answered call from now on as (monotonic time, endpoint, status)."""
    calls: list[tuple[float, str, int]] = []
    original = it.state.record_call

    def recording(endpoint: str, status: int) -> None:
        calls.append((time.monotonic(), endpoint, status))
        original(endpoint, status)

    it.state.record_call = recording  # type: ignore[method-assign]
    return calls


def emails_of(sf: SalesforceEmulator, sobject: str) -> set[str]:
    out = set()
    for record_id in sf.state.table(sobject).ids:
        record = sf.state.record(sobject, record_id)
        if record and record.get("Email"):
            out.add(str(record["Email"]).lower())
    return out


def write_backfill_config(sf: SalesforceEmulator, it: IterableEmulator, workdir: Path,
                          **sections: dict[str, Any]) -> Path:
    defaults: dict[str, dict[str, Any]] = {
        "iterable": {"rate_limit_per_s": CEILING, "batch_max_users": BATCH},
        "backfill": {"page_size": 200, "parallel": 2}, "logging": {"level": "WARNING"}}
    for name, values in sections.items():
        defaults[name] = {**defaults.get(name, {}), **values}
    data = service_config_data(sf, it, workdir, **defaults)
    path = workdir / "backfill.toml"
    path.write_text(toml_dumps(data), encoding="utf-8")
    return path


@pytest.mark.salesforce(seed_accounts=3, seed_contacts=500, seed_leads=100)
@pytest.mark.iterable(rate_limits=True)
async def test_service_under_load_and_a_backfill_process_share_one_ceiling(
    sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
    make_config: MakeConfig,
) -> None:
    config = make_config(sf_emulator, iterable_emulator, tmp_path,
                         iterable={"rate_limit_per_s": CEILING, "batch_max_users": BATCH})
    async with await Store.open(config.queue.path) as store:  # the service's backlog
        await store.enqueue([QueueInput("Contact", i) for i in
                             sf_emulator.state.table("Contact").ids], time.time(),
                            source="reconcile")
    calls = record_call_times(iterable_emulator)
    service = InProcessService(config)
    await service.start()
    try:
        config_file = write_backfill_config(sf_emulator, iterable_emulator, tmp_path)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streamsync.backfill", "--config", str(config_file),
            "--objects", "Lead", "--json", env=service_env(sf_emulator, iterable_emulator),
            cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, err.decode()[-2000:]
        async with await Store.open(config.queue.path) as store:
            backlog = (await store.queue_stats(time.time())).depth
    finally:
        await service.stop()
    summary = orjson.loads(out.decode().splitlines()[-1])
    assert summary["records_written"] >= 90

    # The backfill's window: from its first Lead write to its last one; the service still had
    # a backlog when it ended, so both drew throughout.
    assert backlog > 0, "the service ran out of work before the backfill ended"
    leads = emails_of(sf_emulator, "Lead")
    lead_times = [entry["received_mono"] for email in leads
                  for entry in iterable_emulator.state.history(email)]
    start, end = min(lead_times), max(lead_times)
    in_window = [(t, status) for t, endpoint, status in calls
                 if endpoint == BULK and start <= t <= end]
    assert iterable_emulator.state.count(BULK, 429) == 0
    assert all(s == 200 for _t, s in in_window)
    assert end - start >= 2.0
    # One request after the window's first is a full interval; the window holds len - 1 of them.
    ratio = (len(in_window) - 1) / (end - start) / CEILING
    assert ratio >= 0.9, f"{len(in_window)} requests in {end - start:.2f} s: {ratio:.2f}"
    assert ratio <= 1.05
