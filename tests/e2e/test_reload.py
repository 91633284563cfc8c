"""Issue 15 item 5: `streamsync run` as a real process reloads config.toml on SIGHUP. A changed
mapping is applied (and its object re-synced) while the CometD session stays the same (same
client id, no new handshake) and no change made around the reload is lost; an invalid file and
a change that needs a restart are refused, logged, and the running config keeps working."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from streamsync.config import load_config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from tests.e2e.harness import backfill, wait_for
from tests.e2e.process import (
    REPO_ROOT,
    ServiceProcess,
    service_config_data,
    service_env,
    toml_dumps,
)

pytestmark = pytest.mark.salesforce(long_poll_s=1.0, seed_accounts=2, seed_contacts=6,
                                    seed_leads=20)


def lead_data(sf: SalesforceEmulator, it: IterableEmulator, lead_id: str) -> dict[str, Any]:
    record = sf.state.record("Lead", lead_id) or {}
    it.flush()
    profile = it.state.snapshot().get(str(record.get("Email", "")).lower()) or {}
    return dict(profile.get("dataFields") or {})


def live_leads(sf: SalesforceEmulator) -> list[str]:
    return sf.select_ids("Lead", "IsDeleted = false AND IsConverted = false AND Email != null")


def events(proc: ServiceProcess, name: str) -> list[dict[str, Any]]:
    out = []
    for line in proc.log_text().splitlines():
        if f'"{name}"' in line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return [e for e in out if e.get("event") == name]


async def test_sighup_applies_a_new_mapping_without_dropping_the_subscription(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    sf, it = sf_emulator, iterable_emulator
    env = service_env(sf, it)
    data = service_config_data(sf, it, tmp_path)
    path = tmp_path / "config.toml"
    path.write_text(toml_dumps(data), encoding="utf-8")
    config = load_config(path, env)
    await backfill(config)
    proc = ServiceProcess(path, env, tmp_path / "service.log")
    await proc.start()
    try:
        await wait_for(lambda: _true(proc.saw("service.ready")), 30.0, "the service ready")
        leads = live_leads(sf)
        first, second = leads[0], leads[1]
        sf.state.update("Lead", first, {"FirstName": "Before"})
        await wait_for(lambda: _true(lead_data(sf, it, first).get("firstName") == "Before"),
                       15.0, "a change before the reload")
        clients = set(sf.cometd._clients)  # noqa: SLF001 - the emulator's session table
        handshakes = sf.cometd.stats()["handshakes"]

        mapping = dict(config.objects["Lead"].mapping)
        mapping["FirstName"] = "dataFields.givenName"
        data["objects"]["Lead"] = {"mapping": mapping}
        path.write_text(toml_dumps(data), encoding="utf-8")
        proc.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        sf.state.update("Lead", second, {"FirstName": "During"})  # as the reload runs
        await wait_for(lambda: _true(proc.saw("config.reloaded")), 20.0, "the reload")
        sf.state.update("Lead", first, {"FirstName": "After"})
        await wait_for(lambda: _true(proc.saw("resync.done")), 30.0, "the re-sync")

        def moved() -> bool:
            return all(lead_data(sf, it, i).get("givenName") == (
                sf.state.record("Lead", i) or {}).get("FirstName")
                and lead_data(sf, it, i).get("firstName") is None for i in live_leads(sf))

        await wait_for(lambda: _true(moved()), 20.0, "every Lead moved to givenName")
        assert lead_data(sf, it, first)["givenName"] == "After"
        assert lead_data(sf, it, second)["givenName"] == "During"
        assert set(sf.cometd._clients) == clients  # noqa: SLF001
        assert sf.cometd.stats()["handshakes"] == handshakes

        # An invalid file is refused; the running (reloaded) config keeps syncing.
        path.write_text("[salesforce\nthis is not toml", encoding="utf-8")
        proc.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        await wait_for(lambda: _true(bool(events(proc, "config.reload_refused"))), 15.0,
                       "the invalid config to be refused")
        assert "not valid TOML" in events(proc, "config.reload_refused")[0]["reason"]
        # A change that needs a restart is refused too, naming the key.
        data["queue"]["path"] = str(tmp_path / "elsewhere.db")
        path.write_text(toml_dumps(data), encoding="utf-8")
        proc.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        await wait_for(lambda: _true(len(events(proc, "config.reload_refused")) == 2), 15.0,
                       "the restart-only change to be refused")
        assert events(proc, "config.reload_refused")[1]["restart_needed"] == ["queue.path"]
        sf.state.update("Lead", second, {"FirstName": "StillRunning"})
        await wait_for(lambda: _true(
            lead_data(sf, it, second).get("givenName") == "StillRunning"), 15.0,
            "a change after the refused reloads, under the running mapping")
        assert set(sf.cometd._clients) == clients  # noqa: SLF001
        code, _ = await proc.terminate(30.0)
        assert code == 0
    finally:
        await proc.ensure_dead()


async def _true(value: bool) -> bool:
    return value


def test_the_systemd_unit_reloads_with_sighup() -> None:
    unit = (REPO_ROOT / "scripts" / "streamsync.service").read_text(encoding="utf-8")
    reload_lines = [ln for ln in unit.splitlines() if ln.startswith("ExecReload=")]
    assert reload_lines == ["ExecReload=/bin/kill -HUP $MAINPID"]
