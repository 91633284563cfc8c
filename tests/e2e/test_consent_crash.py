"""A Salesforce opt-out survives a crash (issue 13 item 2, durable): `streamsync run` as a real
process is killed (SIGKILL) while its subscription call is in flight; the restarted service
unsubscribes the person, and only then is the consent state stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamsync.adapters.store import Store
from streamsync.config import load_config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from tests.e2e.harness import backfill, wait_for
from tests.e2e.process import ServiceProcess, service_config_data, service_env, toml_dumps

MARKETING_EMAIL = 39581

pytestmark = [
    pytest.mark.salesforce(long_poll_s=1.0, seed_accounts=1, seed_contacts=3, seed_leads=6,
                           seed_users=2, seed_queues=1),
]


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_an_opt_out_in_flight_when_the_service_is_killed_is_applied_after_restart(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    sf, it = sf_emulator, iterable_emulator
    data = service_config_data(sf, it, tmp_path, objects={
        "Lead": {"consent": {"unsubscribe_channel_ids": [MARKETING_EMAIL]}}, "Contact": {},
        "Account": {}})
    config_path = tmp_path / "config.toml"
    config_path.write_text(toml_dumps(data), encoding="utf-8")
    env = service_env(sf, it)
    config = load_config(config_path, env)
    await backfill(config)
    lead = sf.select_ids("Lead", "IsDeleted = false AND Email != null AND IsConverted = false "
                                 "AND HasOptedOutOfEmail = false")[0]
    record = sf.state.record("Lead", lead)
    assert record is not None
    email = str(record["Email"]).lower()

    def unsubscribed() -> bool:
        it.flush()
        profile = it.project.by_email.get(email)
        return profile is not None and MARKETING_EMAIL in \
            profile.subscriptions().unsubscribed_channel_ids

    runs: list[ServiceProcess] = []

    async def start() -> ServiceProcess:
        proc = ServiceProcess(config_path, env, tmp_path / f"run-{len(runs)}.log")
        runs.append(proc)
        await proc.start()

        async def ready() -> bool:
            assert proc.proc is not None and proc.proc.returncode is None, proc.log_text()
            return proc.saw("service.ready")

        await wait_for(ready, 20.0, "the service to be ready")
        return proc

    try:
        first = await start()
        it.faults.hang_next("/api/subscriptions/*", times=1, delay_s=60.0)
        sf.state.update("Lead", lead, {"HasOptedOutOfEmail": True})

        async def in_flight() -> bool:
            return not it.faults.pending()

        await wait_for(in_flight, 15.0, "the subscription call to be in flight")
        await first.kill()
        assert not unsubscribed()
        store = await Store.open(config.queue.path)
        try:
            assert await store.consent_states("Lead", [lead]) == {}  # nothing claimed yet
            await start()

            async def applied() -> bool:
                return unsubscribed()

            await wait_for(applied, 30.0, "the opt-out to reach Iterable after the restart")

            async def stored() -> bool:
                return lead in await store.consent_states("Lead", [lead])

            await wait_for(stored, 10.0, "the consent state to be stored")
        finally:
            await store.close()
    finally:
        for run in runs:
            await run.ensure_dead()
