"""Joining a backfill run in process: `--join` needs a run of the scope, a run with a live
participant is joined without asking, `--restart` leaves a live run alone."""

from __future__ import annotations

import os
import socket
from dataclasses import replace

import pytest

from streamsync.adapters.store import BackfillWindow, Participant, Store
from streamsync.config import Config
from streamsync.errors import BackfillError
from streamsync.runtime.backfill import BackfillOptions
from tests.conftest import Clients
from tests.runtime.test_backfill import Crash, make_backfill

pytestmark = pytest.mark.usefixtures("no_retry_waits")


@pytest.mark.salesforce(seed_accounts=2, seed_contacts=0, seed_leads=600)
async def test_join_needs_a_run_and_a_live_run_is_joined_not_restarted(
    store: Store, clients: Clients, config: Config,
) -> None:
    options = BackfillOptions(objects=("Lead",), page_size=200, parallel=2)
    with pytest.raises(BackfillError, match="--join: no backfill of the same scope"):
        await make_backfill(config, store, clients).run(replace(options, join=True))
    assert await store.latest_run() is None

    async def crash(window: BackfillWindow, page_no: int) -> None:
        raise Crash("stopped")

    with pytest.raises(Crash):
        await make_backfill(config, store, clients, on_page=crash).run(options)
    run = await store.latest_run()
    assert run is not None and not run.finished
    # another process is at work on it (a live process of this machine)
    await store.join_run(run.run_id, Participant("other", os.getpid(), socket.gethostname()))
    with pytest.raises(BackfillError, match="is running .* stop it before --restart"):
        await make_backfill(config, store, clients).run(replace(options, restart=True))

    joined = await make_backfill(config, store, clients).run(options)  # no flag needed
    assert joined.run_id == run.run_id and joined.status == "finished"
    assert joined.participants == 3 and joined.run_totals is not None
    assert joined.run_totals["records_read"] >= 600 > joined.records_read  # from checkpoints
    assert len(await store.runs()) == 1
