"""Crash safety (issue 4, items 12 and 10): `streamsync run` as a real process, killed with SIGKILL
at seeded-random moments while Salesforce keeps changing, restarted each time; in the end no
change is lost (record-by-record final state) and the dead letters are only genuinely bad
records. Then SIGTERM: exit code 0 within the shutdown deadline, nothing in flight left leased,
and no configured secret or access token in the captured logs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from streamsync.adapters.store import Store
from streamsync.config import Config, load_config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.emulators.salesforce.errors import SalesforceError
from tests.e2e.harness import FinalState, FinalStateChecker, backfill, wait_caught_up, wait_for
from tests.e2e.process import ServiceProcess, service_config_data, service_env, toml_dumps

pytestmark = [
    pytest.mark.salesforce(long_poll_s=1.0, seed_accounts=4, seed_contacts=30, seed_leads=40,
                           seed_users=3, seed_queues=1),
]

SEED = int(os.environ.get("E2E_CRASH_SEED", "20261127"))  # another seed: another crash schedule
KILLS = 12
SHUTDOWN_DEADLINE_S = 30.0  # Service's default shutdown_s, the deadline `run` honours
BULK_UPDATE = "/api/users/bulkUpdate"


@dataclass
class Workload:
    """Seeded live changes in the Salesforce emulator, of every kind the sync must handle."""

    sf: SalesforceEmulator
    rng: random.Random
    kinds: Counter[str] = field(default_factory=Counter)
    n: int = 0
    deleted: list[tuple[str, str]] = field(default_factory=list)
    trail: list[tuple[float, int, str, tuple[str, ...]]] = field(default_factory=list)
    # Contacts just born of a lead conversion: an email change or delete picks one of these
    # half the time, often before the Contact's first sync (its Lead's profile must move).
    from_conversion: list[str] = field(default_factory=list)

    def _note(self, kind: str, *ids: str) -> None:
        self.kinds[kind] += 1
        self.trail.append((time.time(), self.n, kind, ids))

    def touching(self, record_ids: set[str]) -> list[str]:
        """The changes that touched these records, for a failure message."""
        return [f"{at:.3f} #{n} {kind} {ids}" for at, n, kind, ids in self.trail
                if record_ids & set(ids)]

    def _ids(self, sobject: str, where: str) -> list[str]:
        return self.sf.select_ids(sobject, where, limit=500)

    def _live(self, sobject: str) -> list[str]:
        extra = " AND IsConverted = false" if sobject == "Lead" else ""
        return self._ids(sobject, "IsDeleted = false AND Email != null" + extra)

    def _to_move(self, sobject: str, kind: str) -> tuple[str, str]:
        """A live record to change the email of or delete, often a conversion-born Contact
        (then the change is noted as `converted_contact_<kind>`): (record id, kind)."""
        if sobject == "Contact" and self.from_conversion and self.rng.random() < 0.5:
            return self.from_conversion.pop(), f"converted_contact_{kind}"
        return self.rng.choice(self._live(sobject)), kind

    def step(self) -> None:
        """One transaction; a rejected change (e.g. a converted lead) is counted and skipped."""
        self.n += 1
        n, state, rng = self.n, self.sf.state, self.rng
        roll = rng.random()
        try:
            if roll < 0.35:
                sobject = rng.choice(("Lead", "Contact"))
                record_id = rng.choice(self._live(sobject))
                state.update(sobject, record_id, {"FirstName": f"F{n}", "LastName": f"L{n}"})
                self._note("update", record_id)
            elif roll < 0.50:
                self._note("create", state.create(
                    "Lead", {"LastName": f"New{n}", "Company": "Initech",
                             "Email": f"lead{n}@example.com", "Status": "Open - Not Contacted"}))
            elif roll < 0.56:
                sobject = rng.choice(("Lead", "Contact"))
                record_id, kind = self._to_move(sobject, "delete")
                state.delete(sobject, record_id)
                self.deleted.append((sobject, record_id))
                self._note(kind, record_id)
            elif roll < 0.61 and self.deleted:
                sobject, record_id = self.deleted.pop(rng.randrange(len(self.deleted)))
                state.undelete(sobject, record_id)
                self._note("undelete", record_id)
            elif roll < 0.68:
                contact, kind = self._to_move("Contact", "email_change")
                state.update("Contact", contact, {"Email": f"moved{n}@example.com"})
                self._note(kind, contact)
            elif roll < 0.74:
                leads = self._live("Lead")
                chosen = rng.sample(leads, min(8, len(leads)))
                state.mass_update("Lead", chosen,
                                  {"Status": rng.choice(("Working - Contacted", "Qualified"))})
                self._note("mass_update", *chosen)
            elif roll < 0.79:
                account = rng.choice(self._ids("Account", "IsDeleted = false"))
                state.update("Account", account, {"Name": f"Account {n}"})
                self._note("account_rename", account)
            elif roll < 0.83:
                made = state.convert_lead(rng.choice(self._live("Lead")))
                self.from_conversion.append(made["contactId"])
                self._note("lead_conversion", made["leadId"], made["contactId"],
                           made["accountId"])
            elif roll < 0.87:
                bad = rng.choice((f"bad{n}@x.c0m", f"odd{n}@example.zzz"))
                self._note("invalid_email", state.create(
                    "Lead", {"LastName": f"Bad{n}", "Company": "Nowhere", "Email": bad,
                             "Status": "Open - Not Contacted"}))
            else:
                contact = rng.choice(self._live("Contact"))
                state.update("Contact", contact, {"LeadSource": rng.choice(("Web", None))})
                self._note("update", contact)
        except SalesforceError:
            self.kinds["rejected_by_salesforce"] += 1

    @property
    def changes(self) -> int:
        return sum(v for k, v in self.kinds.items() if k != "rejected_by_salesforce")


async def run_workload(workload: Workload, stop: asyncio.Event, interval_s: float) -> None:
    while not stop.is_set():
        workload.step()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


@dataclass
class ProcessRig:
    sf: SalesforceEmulator
    it: IterableEmulator
    tmp_path: Path
    config_path: Path
    config: Config
    env: dict[str, str]
    tokens: list[str]
    runs: list[ServiceProcess] = field(default_factory=list)

    async def spawn(self) -> ServiceProcess:
        proc = ServiceProcess(self.config_path, self.env,
                              self.tmp_path / f"run-{len(self.runs):02d}.log")
        self.runs.append(proc)
        await proc.start()
        return proc

    async def ready(self, proc: ServiceProcess, timeout_s: float = 20.0) -> None:
        async def subscribed() -> bool:
            if proc.proc is not None and proc.proc.returncode is not None:
                raise AssertionError(f"the service exited with {proc.proc.returncode}:\n"
                                     + proc.log_text()[-3000:])
            return proc.saw("service.ready")

        await wait_for(subscribed, timeout_s, "the service to be ready", poll_s=0.05)

    def secrets(self) -> list[str]:
        """The configured secrets and every access token issued, and for tokens also their
        random part alone (a token logged without its org prefix is still a leak)."""
        parts = [t.split("!", 1)[1][:24] for t in self.tokens if "!" in t]
        return [self.sf.client_secret, self.it.api_key, *self.tokens, *parts]

    def assert_logs_clean(self) -> int:
        """No secret or access token in any run's log; returns the log lines scanned."""
        lines = 0
        for run in self.runs:
            text = run.log_text()
            lines += text.count("\n")
            for secret in self.secrets():
                assert secret not in text, f"a secret appears in {run.log_path.name}"
            assert "Traceback" not in text, text[-3000:]
        return lines


@pytest.fixture
async def process_rig(sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
                      tmp_path: Path) -> AsyncIterator[ProcessRig]:
    tokens: list[str] = []
    issue = sf_emulator.sessions.issue

    def recording_issue(user_id: str, client_id: str) -> Any:
        session = issue(user_id, client_id)
        tokens.append(session.token)
        return session

    sf_emulator.sessions.issue = recording_issue  # type: ignore[method-assign]
    data = service_config_data(sf_emulator, iterable_emulator, tmp_path)
    config_path = tmp_path / "config.toml"
    config_path.write_text(toml_dumps(data), encoding="utf-8")
    env = service_env(sf_emulator, iterable_emulator)
    config = load_config(config_path, env)
    rig = ProcessRig(sf_emulator, iterable_emulator, tmp_path, config_path, config, env, tokens)
    try:
        yield rig
    finally:
        for run in rig.runs:
            await run.ensure_dead()


async def _settle_and_check(rig: ProcessRig, store: Store, timeout_s: float) -> FinalState:
    await wait_caught_up(store, rig.sf, rig.config, timeout_s)
    async with FinalStateChecker.open(rig.config, rig.it) as checker:
        return await checker.assert_consistent(timeout_s=10.0)


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_sigkill_at_random_moments_loses_no_change(process_rig: ProcessRig) -> None:
    rig = process_rig
    started = time.monotonic()
    rng = random.Random(SEED)
    await backfill(rig.config)
    # The first start subscribes before any change is made: a change between a backfill and the
    # very first subscription is a known gap (test_scenarios: ..._before_the_first_start).
    first = await rig.spawn()
    await rig.ready(first)
    workload = Workload(rig.sf, random.Random(SEED + 1))
    stop_workload = asyncio.Event()
    producer = asyncio.create_task(run_workload(workload, stop_workload, 0.04))
    kills_after_ready = 0
    try:
        for kill in range(KILLS):
            proc = first if kill == 0 else await rig.spawn()
            await asyncio.sleep(rng.uniform(0.4, 3.0))  # the random moment of the crash
            kills_after_ready += proc.saw("service.ready")
            assert proc.proc is not None and proc.proc.returncode is None, \
                f"the service died on its own:\n{proc.log_text()[-3000:]}"
            assert await proc.kill() == -9
    finally:
        stop_workload.set()
        await producer
    assert kills_after_ready >= KILLS // 3  # many crashes hit a working service

    final = await rig.spawn()
    await rig.ready(final)
    store = await Store.open(rig.config.queue.path)
    try:
        state = await _settle_and_check(rig, store, timeout_s=40.0)
    except AssertionError as exc:
        ids = set(re.findall(r"\b[0-9A-Za-z]{18}\b", str(exc)))
        runs = [f"run {i}: pid {r.pid} started {r.started_wall:.3f}" for i, r in
                enumerate(rig.runs)]
        raise AssertionError("\n".join([str(exc), "changes touching them:",
                                         *workload.touching(ids), *runs])) from None
    finally:
        await store.close()
    code, took_s = await final.terminate(SHUTDOWN_DEADLINE_S + 5)
    assert code == 0 and took_s < SHUTDOWN_DEADLINE_S, (code, took_s, final.log_text()[-4000:])
    assert final.saw("service.stopped")
    lines = rig.assert_logs_clean()
    figures = {
        "kills": KILLS, "kills_after_ready": kills_after_ready, "changes": workload.changes,
        "kinds": dict(workload.kinds), "records_compared": state.records_compared,
        "dead_letters": len(state.dead_letters),
        "rejected_by_iterable": len(state.rejected_by_iterable),
        "log_lines_scanned": lines, "tokens_checked": len(rig.tokens),
        "sigterm_exit_s": round(took_s, 2), "duration_s": round(time.monotonic() - started, 1),
    }
    print(f"\ncrash test figures: {figures}")
    assert workload.kinds["invalid_email"] > 0 and state.dead_letters  # poison was exercised
    assert (workload.kinds["converted_contact_email_change"]
            + workload.kinds["converted_contact_delete"]) > 0
    assert workload.changes >= 200


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_sigterm_with_a_batch_in_flight_releases_it_and_exits_0(
        process_rig: ProcessRig) -> None:
    rig = process_rig
    await backfill(rig.config)
    proc = await rig.spawn()
    await rig.ready(proc)
    rig.it.faults.hang_next(BULK_UPDATE, times=1)  # the next write hangs past the grace period
    lead = rig.sf.select_ids("Lead", "IsDeleted = false AND Email != null "
                                     "AND IsConverted = false")[0]
    rig.sf.state.update("Lead", lead, {"FirstName": "InFlight"})

    async def write_in_flight() -> bool:
        return not rig.it.faults.pending()

    await wait_for(write_in_flight, 15.0, "the hanging write to start")
    code, took_s = await proc.terminate(SHUTDOWN_DEADLINE_S + 5)
    assert code == 0 and took_s < SHUTDOWN_DEADLINE_S
    store = await Store.open(rig.config.queue.path)
    try:
        stats = await store.queue_stats(time.time())
        assert stats.depth >= 1 and stats.leased == 0  # released, not lost, not held
        again = await rig.spawn()
        await rig.ready(again)
        await _settle_and_check(rig, store, timeout_s=20.0)
    finally:
        await store.close()
    code, took_s = await again.terminate(SHUTDOWN_DEADLINE_S + 5)
    assert code == 0 and took_s < SHUTDOWN_DEADLINE_S
    rig.assert_logs_clean()
