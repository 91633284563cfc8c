"""Several `streamsync run` processes on one PostgreSQL store, as real processes: one leads
each CDC channel, kill -9 of the leader hands its channels to another within the lease + 5 s,
which resumes from the stored replay id (the changes made while nobody led arrive); a leader
paused past its lease is deposed and follows; every change reaches Iterable."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from streamsync.adapters.store import ChannelLease
from streamsync.adapters.store.postgres import PostgresStore
from streamsync.core.ids import to_18
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from tests.e2e.harness import until
from tests.e2e.process import ServiceProcess, service_config_data, service_env, toml_dumps

LEASE_S = 3.0
HEARTBEAT_S = 1.0
CHANNELS = {"/data/LeadChangeEvent", "/data/ContactChangeEvent", "/data/AccountChangeEvent"}

pytestmark = [
    pytest.mark.salesforce(long_poll_s=0.5, seed_accounts=3, seed_contacts=20, seed_leads=5),
    pytest.mark.timeout(150),
]


def _pid(worker_id: str) -> int:
    return int(worker_id.split("/")[1])


class Cluster:
    """N service processes on one PostgreSQL database, and a store handle to watch them."""

    def __init__(self, sf: SalesforceEmulator, it: IterableEmulator, workdir: Path,
                 url: str, count: int) -> None:
        data = service_config_data(sf, it, workdir, store={"url": url},
                                   workers={"lease_s": LEASE_S, "heartbeat_s": HEARTBEAT_S})
        config = workdir / "config.toml"
        config.write_text(toml_dumps(data), encoding="utf-8")
        env = service_env(sf, it)
        self.procs = [ServiceProcess(config, env, workdir / f"worker{n}.log")
                      for n in range(count)]
        self.url = url
        self.store: PostgresStore | None = None

    async def start(self) -> PostgresStore:
        """The first worker alone until it leads every channel, then the others: started
        together, they race for the channels and any of them may win some (CI saw it)."""
        first, rest = self.procs[0], self.procs[1:]
        await first.start()
        await until(lambda: first.saw("service.ready"), "the first worker ready")
        self.store = await PostgresStore.open(self.url)
        await until(lambda: self.all_led_by_one_of({first.pid}), "the first worker leads")
        for proc in rest:
            await proc.start()
        for proc in rest:
            await until(lambda p=proc: p.saw("service.ready"), "every worker ready")
        return self.store

    def by_pid(self, pid: int) -> ServiceProcess:
        return next(p for p in self.procs if p.pid == pid)

    async def leases(self) -> list[ChannelLease]:
        assert self.store is not None
        return await self.store.channel_leases()

    async def leader_pids(self) -> set[int]:
        now = time.time()
        return {_pid(h) for lease in await self.leases() if (h := lease.held_by(now))}

    async def all_led_by_one_of(self, pids: set[int]) -> bool:
        now = time.time()
        leases = await self.leases()
        holders = {lease.channel: lease.held_by(now) for lease in leases}
        return set(holders) >= CHANNELS and all(
            h is not None and _pid(h) in pids for h in holders.values())

    async def close(self) -> None:
        for proc in self.procs:
            await proc.ensure_dead()
        if self.store is not None:
            await self.store.close()


def _contacts(sf: SalesforceEmulator, n: int) -> list[tuple[str, str]]:
    out = []
    for raw in sf.select_ids("Contact", "Email != null", limit=n):
        record = sf.state.record("Contact", to_18(raw))
        assert record is not None
        out.append((to_18(raw), str(record["Email"]).lower()))
    return out


def _first_names(it: IterableEmulator, contacts: list[tuple[str, str]]) -> dict[str, object]:
    snapshot = it.state.snapshot()
    return {email: (snapshot.get(email) or {}).get("dataFields", {}).get("firstName")
            for _, email in contacts}


async def test_kill_9_of_the_leader_hands_its_channels_over_within_the_lease_losing_nothing(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        pg_url: str) -> None:
    sf, it = sf_emulator, iterable_emulator
    cluster = Cluster(sf, it, tmp_path, pg_url, 3)
    try:
        await cluster.start()
        pids = {p.pid for p in cluster.procs}
        await until(lambda: cluster.all_led_by_one_of(pids), "every channel led")
        [leader_pid] = await cluster.leader_pids()  # the first to join took every channel
        contacts = _contacts(sf, 12)
        before, during = contacts[:6], contacts[6:]
        for n, (sf_id, _) in enumerate(before):
            sf.state.update("Contact", sf_id, {"FirstName": f"Before{n}"})
        await until(lambda: all(v == f"Before{n}" for n, v in
                                 enumerate(_first_names(it, before).values())),
                     "changes synced before the kill")

        await cluster.by_pid(leader_pid).kill()
        killed_at = time.monotonic()
        # Changes while nobody leads: only a replay from the stored id can bring them.
        for n, (sf_id, _) in enumerate(during):
            sf.state.update("Contact", sf_id, {"FirstName": f"During{n}"})
        others = pids - {leader_pid}
        await until(lambda: cluster.all_led_by_one_of(others), "a new leader",
                     timeout_s=LEASE_S + 10)
        took_s = time.monotonic() - killed_at
        assert took_s <= LEASE_S + 5.0, took_s
        await until(lambda: all(v == f"During{n}" for n, v in
                                 enumerate(_first_names(it, during).values())),
                     "changes made while nobody led synced", timeout_s=30.0)
        new_leaders = await cluster.leader_pids()  # the survivors may share the channels
        assert new_leaders <= others
        assert all(cluster.by_pid(pid).saw("workers.failover") for pid in new_leaders)
        leases = await cluster.leases()
        assert all(lease.token >= 2 and lease.failovers >= 1 for lease in leases)
        workers = {w.worker_id: w for w in await cluster.store.workers()}  # type: ignore[union-attr]
        assert {_pid(w) for w in workers} == pids
        for proc in cluster.procs:
            if proc.pid != leader_pid:
                code, _ = await proc.terminate(30.0)
                assert code == 0, proc.log_text()[-2000:]
    finally:
        await cluster.close()


async def test_a_leader_paused_past_its_lease_is_deposed_and_follows(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        pg_url: str) -> None:
    sf, it = sf_emulator, iterable_emulator
    cluster = Cluster(sf, it, tmp_path, pg_url, 2)
    try:
        store = await cluster.start()
        pids = {p.pid for p in cluster.procs}
        await until(lambda: cluster.all_led_by_one_of(pids), "every channel led")
        [leader_pid] = await cluster.leader_pids()
        tokens = {lease.channel: lease.token for lease in await store.channel_leases()}
        contacts = _contacts(sf, 6)
        os.kill(leader_pid, signal.SIGSTOP)  # cut off: no heartbeat, no renewal
        try:
            for n, (sf_id, _) in enumerate(contacts):
                sf.state.update("Contact", sf_id, {"FirstName": f"Paused{n}"})
            follower = (pids - {leader_pid}).pop()
            await until(lambda: cluster.all_led_by_one_of({follower}), "taken over",
                         timeout_s=LEASE_S + 10)
        finally:
            os.kill(leader_pid, signal.SIGCONT)
        paused = cluster.by_pid(leader_pid)
        await until(lambda: paused.saw("workers.leadership_lost"), "the old leader steps down")
        await until(lambda: all(v == f"Paused{n}" for n, v in
                                 enumerate(_first_names(it, contacts).values())),
                     "every change synced", timeout_s=30.0)
        leases = await store.channel_leases()
        assert all(lease.token > tokens[lease.channel] for lease in leases)
        assert await cluster.leader_pids() == {follower}
        assert paused.proc is not None and paused.proc.returncode is None  # it follows
        sf_id, email = contacts[0]
        sf.state.update("Contact", sf_id, {"FirstName": "AfterResume"})
        await until(lambda: _first_names(it, [(sf_id, email)])[email] == "AfterResume",
                     "a change after the resume synced")
        for proc in cluster.procs:
            code, _ = await proc.terminate(30.0)
            assert code == 0, proc.log_text()[-2000:]
    finally:
        await cluster.close()
