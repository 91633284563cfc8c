"""Chaos run: the service as a process under seeded workload and faults, then a final-state check.

    python scripts/chaos.py --minutes 5 --seed 1 [--json-only]
    python scripts/chaos.py --minutes 14 --outage-minutes 10   # plus one long Iterable outage
    python scripts/chaos.py --minutes 5 --workers 3 --store postgres   # several workers

1. Starts the Salesforce and Iterable emulators as processes (their command lines), writes a
   config, backfills every record into Iterable, and starts `python -m streamsync run`.
2. For `--minutes`, a workload generator creates, updates, deletes and undeletes records,
   converts Leads (half of them Campaign members), renames Accounts, changes emails, adds and
   removes Campaign members and changes their status, opts people out of email and back in
   (`HasOptedOutOfEmail`; consent is configured on Lead and Contact), wins deals (the
   README's Closed Won journey event) and edits won ones, moves Leads to and from
   "Working - Contacted" (an event rule on the Lead), and now and then creates
   a Lead with an invalid email (a genuinely bad record), through the Salesforce emulator's
   control API; people unsubscribe (a click) and sign up again in Iterable, through its
   emulator's control API, its system webhook delivering to the service's receiver; a fault
   scheduler meanwhile injects kill -9 of the service (then a restart), Iterable 429 storms, 5xx
   bursts, hangs and dropped connections, Salesforce session expiry, `403::Unknown client`,
   CometD server disconnects, event-bus purges that expire the stored replay id, GAP_* and
   GAP_OVERFLOW events, a concurrent backfill (a process), lost and duplicated webhook
   deliveries and failing export polls (gaps the poller must close). Every kind is injected at least
   once; the schedule of changes and faults is drawn from `--seed` alone.
   Halfway through, the mapping changes (config.toml rewritten, then SIGHUP, as `systemctl
   reload` does): on Leads and Contacts FirstName moves to dataFields.givenName, LeadSource is
   dropped (cleared: null policy `clear`) and Title added; the service reloads and re-syncs both
   objects beside real time (or, when a kill -9 came first, re-syncs at its restart). Updates
   change Title too: before the remap no mapping reads it, so ingest queues nothing for them
   (docs/design.md §1.1), and the final state must still hold each one.
3. Stops the faults, waits for the queue to drain and the re-syncs to finish, stops the
   service and compares every Iterable profile with the state Salesforce implies under the new
   mapping (`core/verify.compare`; the dropped targets must be absent or null), and every
   [lists] list
   (two Campaigns the run creates: one counts every member, one only `Responded` ones) with
   its Campaign's members (`core/verify_lists.compare_lists`), and checks that no opted-out
   record's Iterable user still receives Marketing Email and no record is opted in whose
   Iterable user unsubscribed later (`core/verify_consent.py`), and that every qualifying change
   (found in Salesforce's change log) produced exactly one custom event with its id, user, time
   and data, and no other event exists (`core/verify_events.py`). Iterable
   faults hit the list calls too (three in ten) and the subscription calls (one in seven).
4. Prints one JSON object: faults injected by kind, changes made by kind, records compared,
   mismatches (a deleted record that never had a profile, as the store shows, is none),
   dead letters (each with whether the record is genuinely bad), duplicate writes
   (writes of a profile's identical state beyond the first), duration. Exit code 0 iff there are
   no mismatches and every dead letter is genuine.

With `--store postgres` the store is a throwaway PostgreSQL server
(streamsync/testing/pg_server.py) and `--workers N` service processes share it (leases of
`WORKER_LEASE_S`); kill -9 of the service becomes kill -9 of a channel's leader and of a
follower, and two faults join: a PostgreSQL restart (every connection dropped) and a worker
cut off (SIGSTOP) for longer than its lease, then resumed (its writes must be fenced off). The
JSON then counts `failovers` and `deposed` workers from their logs.

With `--outage-minutes`, Iterable (or with `--outage-of salesforce` Salesforce's REST API) is down
(every call answers 503, or with `--outage-fault drop` has its connection dropped) for that long
in the middle of the run, while the workload and the other faults go on; the queue then keeps
the shipped `max_attempts` (10, instead of 200) and `outage_probe_max_s` (10), with the short
backoff (0.2 to 2 s) of every chaos run.
The JSON then has an `outage` object: its length, /readyz while it lasted, the service's
queryAll calls during it (from its /metrics), the dead letters at its end, the backlog it left
and the seconds that backlog took to drain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import sqlite3
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import asyncpg
import orjson

from streamsync.config import (
    DEFAULT_CONTACT_MAPPING,
    DEFAULT_LEAD_MAPPING,
    Config,
    load_config,
)
from streamsync.core.consent_inbound import ConsentGroups, parse_export_line
from streamsync.core.verify import ObjectPolicy, VerifyReport, compare
from streamsync.core.verify_consent import ConsentReport, RecordConsent, later_iterable_unsubscribes
from streamsync.core.verify_events import (
    EventReport,
    QualifyingChange,
    mark_data_moved,
    mark_lost_to_cdc,
    value_transitions,
)
from streamsync.core.verify_lists import ListsReport
from streamsync.errors import RecordError
from streamsync.runtime.app import open_components
from streamsync.runtime.final_state import (
    read_consent,
    read_events,
    read_lists,
    read_salesforce,
    verify_policies,
)
from streamsync.testing.pg_server import PgServer

PYTHON = sys.executable
SYNCED_OBJECTS = ("Lead", "Contact")
SEED_DATA = {"accounts": 40, "contacts": 200, "leads": 400, "opportunities": 120}
CHANGES_PER_S = 4.0
FAULTS_PER_MIN = 14.0
WARMUP_S = 2.0  # workload before the first fault
FAULT_KINDS = (
    "kill9",
    "iterable_429_storm",
    "iterable_5xx_burst",
    "iterable_hang",
    "iterable_drop",
    "sf_session_expiry",
    "sf_unknown_client",
    "sf_cometd_disconnect",
    "sf_bus_purge",
    "sf_gap",
    "sf_gap_overflow",
    "backfill",
    "webhook_lost",
    "webhook_duplicated",
    "export_gap",
)
WORKER_FAULT_KINDS = (*(k for k in FAULT_KINDS if k != "kill9"), "kill9_leader",
                      "kill9_follower", "pg_restart", "worker_cut_off")
WORKER_LEASE_S = 3.0
WORKER_HEARTBEAT_S = 1.0
CHANGE_WEIGHTS = {
    "create": 20, "update": 40, "delete": 8, "undelete": 5, "convert_lead": 6,
    "account_rename": 6, "email_change": 10, "invalid_email": 2,
    "member_add": 10, "member_remove": 4, "member_status": 4,
    "opt_out": 4, "opt_in": 2, "iterable_unsubscribe": 4, "iterable_subscribe": 2,
    "opportunity_won": 4, "deal_update": 3, "lead_working": 3,
}
# [[events]] (README "Events"): deals Closed Won land on the primary contact; Leads moved to
# Working - Contacted on themselves. `value_transitions` finds their qualifying changes.
EVENT_RULES = (("opportunity-won", "Opportunity", "StageName", "Closed Won"),
               ("lead-working", "Lead", "Status", "Working - Contacted"))
EVENTS_TOML = """
[[events]]
name = "opportunity-won"
object = "Opportunity"
trigger = "update"
changed_fields = ["StageName"]
condition = "StageName = 'Closed Won'"
event_name = "opportunityClosedWon"
profile = "primary_contact_role"
[events.mapping]
"Name" = "dataFields.opportunityName"
"Amount" = "dataFields.amount"

[[events]]
name = "lead-working"
object = "Lead"
trigger = "update"
condition = "Status = 'Working - Contacted'"
event_name = "leadWorking"
[events.mapping]
"LeadSource" = "dataFields.leadSource"
"""
# Consent (README "Consent"): an opt-out in Salesforce unsubscribes from Marketing Email.
CONSENT_CHANNEL = 39581
# [lists]: two Campaigns the run creates, one list filled by every member, one by responders.
CAMPAIGNS = (("Chaos Webinar", None), ("Chaos Expo", ("Responded",)))
MEMBER_STATUSES = ("Sent", "Responded")
INITIAL_MEMBERS = 60
LIST_PATHS = "/api/lists/*"
SUBSCRIPTION_PATHS = "/api/subscriptions/*"
# Iterable → Salesforce: the webhook receiver and the export poller ([consent_inbound]).
CONSENT_GROUPS = ConsentGroups(channel_ids=frozenset({CONSENT_CHANNEL}))
WEBHOOK_SECRET = "chaos-webhook-secret-0123456789"
WEBHOOK_PATH = "/iterable/webhook"
EXPORT_PATH = "/api/export/data.json"
POLL_INTERVAL_S = 30.0
BULK_PATH = "/api/users/bulkUpdate"
ITERABLE_TIMEOUT_S = 4.0
HANG_S = 6.0  # longer than the service's Iterable timeout
DRAIN_TIMEOUT_S = 120.0
DRAIN_STABLE_S = 2.0
OUTAGE_TIMES = 10**9  # fault uses: the outage lasts until it is cleared
SCRAPE_S = 1.0
REMAP_AT = 0.5  # the mapping change, as a share of the window
# The mapping change, the same on Leads and Contacts (a converted Lead's profile becomes its
# Contact's): FirstName renamed (moved), LeadSource removed (cleared), Title added; `CLEARED`
# is what Iterable must no longer hold.
REMAP = {"FirstName": "dataFields.givenName", "Title": "dataFields.title"}
REMAP_LEAD = {k: REMAP.get(k, v) for k, v in DEFAULT_LEAD_MAPPING.items() if k != "LeadSource"}
REMAP_LEAD["Title"] = REMAP["Title"]
REMAP_CONTACT = {k: REMAP.get(k, v) for k, v in DEFAULT_CONTACT_MAPPING.items()
                 if k != "LeadSource"}
REMAP_CONTACT["Title"] = REMAP["Title"]
CLEARED = {name: ("dataFields.firstName", "dataFields.leadSource")
           for name in ("Lead", "Contact")}


class ChaosError(Exception):
    """The chaos harness itself could not run (an emulator or the service would not start)."""


# ------------------------------------------------------------------------------ processes


async def spawn_json_line(argv: list[str], log_path: Path, env: dict[str, str],
                          timeout_s: float = 30.0) -> tuple[asyncio.subprocess.Process,
                                                            dict[str, Any]]:
    """Start a process that prints one JSON line describing itself; its stderr goes to a file."""
    with log_path.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=err, env=env,
            start_new_session=True,
        )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
        info = orjson.loads(line)
    except (TimeoutError, orjson.JSONDecodeError) as exc:
        await stop_process(proc)
        raise ChaosError(f"{' '.join(argv[:3])} did not print its JSON line "
                         f"(see {log_path}): {exc!r}") from None
    if not isinstance(info, dict):
        raise ChaosError(f"{argv[2]} printed {line!r}, not a JSON object")
    return proc, info


async def stop_process(proc: asyncio.subprocess.Process, timeout_s: float = 20.0) -> int:
    """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode


class ServiceProcess:
    """`python -m streamsync run` as a child process that can be killed and restarted."""

    def __init__(self, config_path: Path, env: dict[str, str], log_path: Path) -> None:
        self.config_path = config_path
        self.env = env
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.unexpected_exits: list[int] = []

    async def start(self) -> None:
        with self.log_path.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                PYTHON, "-m", "streamsync", "run", "--config", str(self.config_path),
                "--log-json", stdout=asyncio.subprocess.DEVNULL, stderr=err, env=self.env,
                start_new_session=True,
            )
        self.starts += 1

    def check_alive(self) -> None:
        """Note an exit nobody asked for (a crash), then the chaos run restarts it."""
        if self.proc is not None and self.proc.returncode is not None:
            self.unexpected_exits.append(self.proc.returncode)
            self.proc = None

    async def kill9(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        self.proc = None

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        code = await stop_process(self.proc, timeout_s=40.0)
        self.proc = None
        return code

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until the service logs `service.ready` (subscribed) since its latest start."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.log_path.read_bytes().count(b"service.ready") >= self.starts:
                return
            if self.proc is None or self.proc.returncode is not None:
                raise ChaosError(f"the service exited before it was ready (see {self.log_path})")
            await asyncio.sleep(0.1)
        raise ChaosError(f"the service was not ready within {timeout_s:.0f} s")


class Control:
    """JSON calls to the emulators' control APIs (and the Salesforce REST query for ids)."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http

    async def call(self, method: str, url: str, body: Any = None,
                   ok: tuple[int, ...] = (200, 201, 202, 204)) -> Any:
        data = None if body is None else orjson.dumps(body)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        async with self.http.request(method, url, data=data, headers=headers) as resp:
            raw = await resp.read()
            if resp.status not in ok:
                raise ChaosError(f"{method} {url} answered {resp.status}: {raw[:300]!r}")
            return orjson.loads(raw) if raw else None


# ------------------------------------------------------------------------------ workload


@dataclass
class Model:
    """What the workload knows of Salesforce: ids it may pick from, kept sorted (determinism)."""

    leads: list[str]          # live, unconverted
    contacts: list[str]       # live
    accounts: list[str]
    deleted: list[tuple[str, str]] = field(default_factory=list)  # (sobject, id)
    campaigns: list[str] = field(default_factory=list)
    members: dict[str, str] = field(default_factory=dict)  # CampaignMember id -> person id
    open_deals: list[str] = field(default_factory=list)  # Opportunities not closed yet
    won_deals: list[str] = field(default_factory=list)


class Workload:
    """Seeded changes in Salesforce through the emulator's control API."""

    def __init__(self, control: Control, sf_control_url: str, model: Model,
                 rng: random.Random, it_control_url: str | None = None) -> None:
        self.control = control
        self.url = sf_control_url
        self.it_url = it_control_url
        self.model = model
        self.rng = rng
        self.kinds: Counter[str] = Counter()
        self.n = 0

    def choose(self) -> str:
        """The next kind of change; falls back to a create when its targets ran out."""
        kinds = list(CHANGE_WEIGHTS)
        kind = self.rng.choices(kinds, weights=[CHANGE_WEIGHTS[k] for k in kinds])[0]
        if kind == "undelete" and not self.model.deleted:
            return "create"
        if kind == "convert_lead" and not self.model.leads:
            return "create"
        if kind in ("member_remove", "member_status") and not self.model.members:
            return "member_add"
        if (kind == "opportunity_won" and not self.model.open_deals) or (
                kind == "deal_update" and not self.model.won_deals) or (
                kind == "lead_working" and not self.model.leads):
            return "update"
        return kind

    def _pick(self, ids: list[str]) -> str:
        return ids[self.rng.randrange(len(ids))]

    def _person(self) -> tuple[str, list[str]]:
        """A Lead or a Contact (the other when none of one is left) and the ids to pick from."""
        pools = {"Lead": self.model.leads, "Contact": self.model.contacts}
        sobject = self.rng.choice(SYNCED_OBJECTS)
        if not pools[sobject]:
            sobject = "Contact" if sobject == "Lead" else "Lead"
        return sobject, pools[sobject]

    async def seed_campaigns(self) -> None:
        """The Campaigns of [lists] and their first members (before the initial backfill)."""
        for name, _ in CAMPAIGNS:
            out = await self.control.call("POST", f"{self.url}/records/Campaign",
                                          {"Name": name, "IsActive": True})
            self.model.campaigns.append(str(out["id"]))
        for _ in range(INITIAL_MEMBERS):
            await self._member_add()

    async def step(self) -> str:
        """Make one change; returns its kind."""
        self.n += 1
        kind = self.choose()
        await getattr(self, "_" + kind)()
        self.kinds[kind] += 1
        return kind

    async def _create(self) -> None:
        n = self.n
        body = {"FirstName": f"Chaos{n}", "LastName": f"Lead{n}",
                "Email": f"chaos.lead.{n}.{self.rng.randrange(10**6)}@example.net",
                "Company": f"Chaos Co {n % 7}", "Status": "Open - Not Contacted",
                "LeadSource": self.rng.choice(["Web", "Phone Inquiry", "Partner Referral"])}
        out = await self.control.call("POST", f"{self.url}/records/Lead", body)
        self.model.leads.append(str(out["id"]))

    async def _opportunity_won(self) -> None:
        """A deal is won: the Closed Won rule must fire once."""
        deal = self.model.open_deals.pop(self.rng.randrange(len(self.model.open_deals)))
        await self.control.call("POST", f"{self.url}/opportunities/{deal}/stage",
                                {"stageName": "Closed Won"})
        self.model.won_deals.append(deal)

    async def _deal_update(self) -> None:
        """A won deal's unrelated change: no event."""
        deal = self._pick(self.model.won_deals)
        await self.control.call("PATCH", f"{self.url}/records/Opportunity/{deal}",
                                {"NextStep": f"Step {self.n}"})

    async def _lead_working(self) -> None:
        """A Lead's status moves to Working - Contacted (once per Lead: an event; again after
        another status: another event) or, one time in three, back to Open."""
        lead = self._pick(self.model.leads)
        status = "Open - Not Contacted" if self.rng.random() < 0.33 else "Working - Contacted"
        with contextlib.suppress(ChaosError):  # deleted or converted meanwhile
            await self.control.call("PATCH", f"{self.url}/records/Lead/{lead}",
                                    {"Status": status})

    async def _invalid_email(self) -> None:
        n = self.n
        body = {"FirstName": "Bad", "LastName": f"Email{n}", "Email": f"bad.{n}@example.c0m",
                "Company": "Nowhere", "Status": "Open - Not Contacted"}
        await self.control.call("POST", f"{self.url}/records/Lead", body)

    async def _update(self) -> None:
        sobject, ids = self._person()
        field_name, value = self.rng.choice([
            ("FirstName", f"Upd{self.n}"), ("LastName", f"Changed{self.n}"),
            ("LeadSource", self.rng.choice(["Web", "Other", "Trade Show"])),
            ("Title", f"Title {self.n}"),  # read by no mapping until the remap adds it
        ])
        await self.control.call("PATCH", f"{self.url}/records/{sobject}/{self._pick(ids)}",
                                {field_name: value})

    async def _delete(self) -> None:
        sobject, ids = self._person()
        record_id = self._pick(ids)
        await self.control.call("DELETE", f"{self.url}/records/{sobject}/{record_id}")
        ids.remove(record_id)
        self.model.deleted.append((sobject, record_id))

    async def _undelete(self) -> None:
        sobject, record_id = self.model.deleted.pop(self.rng.randrange(len(self.model.deleted)))
        await self.control.call("POST", f"{self.url}/records/{sobject}/{record_id}/undelete")
        (self.model.leads if sobject == "Lead" else self.model.contacts).append(record_id)

    async def _convert_lead(self) -> None:
        # Half of the conversions are of a Lead that is a Campaign member (its membership
        # moves to the new Contact).
        members = sorted(set(self.model.members.values()) & set(self.model.leads))
        lead_id = self._pick(members if members and self.rng.random() < 0.5
                             else self.model.leads)
        out = await self.control.call("POST", f"{self.url}/convert-lead", {"leadId": lead_id})
        self.model.leads.remove(lead_id)
        self.model.contacts.append(str(out["contactId"]))
        self.model.accounts.append(str(out["accountId"]))

    async def _account_rename(self) -> None:
        account_id = self._pick(self.model.accounts)
        await self.control.call("PATCH", f"{self.url}/records/Account/{account_id}",
                                {"Name": f"Renamed Account {self.n}"})

    async def _member_add(self) -> None:
        sobject, ids = self._person()
        person = self._pick(ids)
        body = {"campaignId": self.rng.choice(self.model.campaigns),
                ("leadId" if sobject == "Lead" else "contactId"): person,
                "status": self.rng.choice(MEMBER_STATUSES)}
        # 400: already a member of that Campaign (or a Lead converted meanwhile).
        out = await self.control.call("POST", f"{self.url}/campaign-members", body,
                                      ok=(201, 400))
        if isinstance(out, dict) and isinstance(out.get("id"), str):
            self.model.members[out["id"]] = person

    def _member(self) -> str:
        return self._pick(sorted(self.model.members))

    async def _member_remove(self) -> None:
        member = self._member()
        # 400/404: deleted already, with its Lead or Contact.
        await self.control.call("DELETE", f"{self.url}/campaign-members/{member}",
                                ok=(204, 400, 404))
        del self.model.members[member]

    async def _member_status(self) -> None:
        await self.control.call("PATCH", f"{self.url}/campaign-members/{self._member()}",
                                {"status": self.rng.choice(MEMBER_STATUSES)},
                                ok=(204, 400, 404))

    async def _opt_out(self, opted_out: bool = True) -> None:
        sobject, ids = self._person()
        await self.control.call("PATCH", f"{self.url}/records/{sobject}/{self._pick(ids)}",
                                {"HasOptedOutOfEmail": opted_out})

    async def _opt_in(self) -> None:
        await self._opt_out(False)

    async def _email_of(self, sobject: str, record_id: str) -> str | None:
        try:
            record = await self.control.call("GET",
                                             f"{self.url}/records/{sobject}/{record_id}")
        except ChaosError:
            return None
        email = record.get("Email") if isinstance(record, dict) else None
        return str(email).lower() if email else None

    async def _iterable_unsubscribe(self, subscribe: bool = False) -> None:
        """A person clicks "unsubscribe" in an email (or signs up again) in Iterable."""
        sobject, ids = self._person()
        email = await self._email_of(sobject, self._pick(ids))
        if email is None or self.it_url is None:
            return
        what = "signup" if subscribe else "click"
        # 400: no such user in Iterable yet (its profile is not synced yet): nothing happens.
        await self.control.call("POST", f"{self.it_url}/{what}",
                                {"email": email, "channelId": CONSENT_CHANNEL}, ok=(200, 400))

    async def _iterable_subscribe(self) -> None:
        await self._iterable_unsubscribe(True)

    async def _email_change(self) -> None:
        sobject, ids = self._person()
        record_id = self._pick(ids)
        email = f"changed.{self.n}.{record_id.lower()}@example.org"
        await self.control.call("PATCH", f"{self.url}/records/{sobject}/{record_id}",
                                {"Email": email})


# ------------------------------------------------------------------------------ faults


def plan_faults(rng: random.Random, window_s: float,
                kinds_of_run: Sequence[str] = FAULT_KINDS) -> list[tuple[float, str]]:
    """(offset from the start of the fault window, kind): every kind once, in a seeded order,
    evenly spread over the window's first 80 %, then seeded extras at random times."""
    kinds = list(kinds_of_run)
    rng.shuffle(kinds)
    span = window_s * 0.8
    plan = [(span * (i + 0.5) / len(kinds), kind) for i, kind in enumerate(kinds)]
    extra = max(0, int(window_s / 60.0 * FAULTS_PER_MIN) - len(kinds))
    plan += [(rng.uniform(0, window_s * 0.9), rng.choice(kinds)) for _ in range(extra)]
    return sorted(plan)


class Faults:
    """Injects one fault of a kind through the control APIs or on the processes."""

    def __init__(self, control: Control, sf: dict[str, Any], it: dict[str, Any],
                 services: list[ServiceProcess], backfills: Backfills, rng: random.Random,
                 leads: list[str], shared: SharedStore | None = None) -> None:
        """`leads` is the workload's live list (GAP events name some of its ids); `shared`
        the PostgreSQL store of several workers."""
        self.control = control
        self.services = services
        self.shared = shared
        self.sf_url = str(sf["control_url"])
        self.it_url = str(it["control_url"])
        self.service = services[0]
        self.backfills = backfills
        self.rng = rng
        self.leads = leads
        self.injected: Counter[str] = Counter()
        self.restarts: set[asyncio.Task[None]] = set()

    async def inject(self, kind: str) -> None:
        await getattr(self, "_" + kind)()
        self.injected[kind] += 1

    async def _iterable_fault(self, body: dict[str, Any]) -> None:
        draw = self.rng.random()
        path, method = ((LIST_PATHS, "POST") if draw < 0.3 else
                        (SUBSCRIPTION_PATHS, "PUT") if draw < 0.45 else (BULK_PATH, "POST"))
        await self.control.call("POST", f"{self.it_url}/faults",
                                {"path": path, "method": method, **body})

    async def _kill9(self, service: ServiceProcess | None = None) -> None:
        victim = service or self.service
        await victim.kill9()
        delay_s = self.rng.uniform(0.3, 1.5)

        async def restart() -> None:
            await asyncio.sleep(delay_s)
            await victim.start()

        self._later(restart())

    def _later(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self.restarts.add(task)
        task.add_done_callback(self.restarts.discard)

    async def _worker(self, leading: bool, wait_s: float = 10.0) -> ServiceProcess:
        """A live worker that leads a channel (or leads none), waiting up to `wait_s` for one
        (a failover or a PostgreSQL restart may be under way); then any live one."""
        assert self.shared is not None
        deadline = time.monotonic() + wait_s
        while True:
            leaders = await self.shared.leader_pids()
            live = [s for s in self.services
                    if s.proc is not None and s.proc.returncode is None]
            picked = [s for s in live
                      if s.proc is not None and (s.proc.pid in leaders) == leading]
            if picked or time.monotonic() > deadline:
                return self.rng.choice(picked or live or self.services)
            await asyncio.sleep(0.2)

    async def _kill9_leader(self) -> None:
        await self._kill9(await self._worker(leading=True))

    async def _kill9_follower(self) -> None:
        await self._kill9(await self._worker(leading=False))

    async def _pg_restart(self) -> None:
        assert self.shared is not None
        await asyncio.to_thread(self.shared.server.restart)

    async def _worker_cut_off(self) -> None:
        """The leader stops (SIGSTOP) for longer than its lease, then goes on (SIGCONT)."""
        victim = await self._worker(leading=True)
        if victim.proc is None:
            return
        pid = victim.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)

        async def resume() -> None:
            await asyncio.sleep(WORKER_LEASE_S + 2.0)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

        self._later(resume())

    async def _iterable_429_storm(self) -> None:
        await self._iterable_fault({"kind": "status", "status": 429,
                                    "times": self.rng.randint(4, 10)})

    async def _iterable_5xx_burst(self) -> None:
        await self._iterable_fault({"kind": "status", "status": self.rng.choice([500, 502, 503]),
                                    "times": self.rng.randint(2, 6)})

    async def _iterable_hang(self) -> None:
        await self._iterable_fault({"kind": "hang", "delay_s": HANG_S,
                                    "times": self.rng.randint(1, 2)})

    async def _iterable_drop(self) -> None:
        await self._iterable_fault({"kind": "drop", "times": self.rng.randint(1, 4)})

    async def _sf_session_expiry(self) -> None:
        await self.control.call("POST", f"{self.sf_url}/sessions/expire")

    async def _sf_unknown_client(self) -> None:
        await self.control.call("POST", f"{self.sf_url}/cometd/forget")

    async def _sf_cometd_disconnect(self) -> None:
        await self.control.call("POST", f"{self.sf_url}/cometd/disconnect")

    async def _sf_bus_purge(self) -> None:
        # The purge drops every retained event; forgetting the clients makes the service
        # resubscribe from its stored replay id, which the bus no longer has.
        await self.control.call("POST", f"{self.sf_url}/bus/purge")
        await self.control.call("POST", f"{self.sf_url}/cometd/forget")

    async def _sf_gap(self) -> None:
        entity = self.rng.choice(SYNCED_OBJECTS)
        change = self.rng.choice(["GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE"])
        ids = sorted(self.rng.sample(self.leads, min(3, len(self.leads)))) \
            if entity == "Lead" else []
        await self.control.call("POST", f"{self.sf_url}/bus/gap",
                                {"entity": entity, "changeType": change, "recordIds": ids})

    async def _sf_gap_overflow(self) -> None:
        await self.control.call("POST", f"{self.sf_url}/bus/gap",
                                {"entity": self.rng.choice((*SYNCED_OBJECTS, "CampaignMember")),
                                 "changeType": "GAP_OVERFLOW", "recordIds": []})

    async def _backfill(self) -> None:
        await self.backfills.start()

    async def _webhook_lost(self) -> None:
        await self.control.call("POST", f"{self.it_url}/webhook/faults",
                                {"lose_next": self.rng.randint(1, 4)})

    async def _webhook_duplicated(self) -> None:
        await self.control.call("POST", f"{self.it_url}/webhook/faults",
                                {"duplicate_next": self.rng.randint(1, 4)})

    async def _export_gap(self) -> None:
        await self.control.call("POST", f"{self.it_url}/faults", {
            "path": EXPORT_PATH, "kind": self.rng.choice(["status", "drop"]), "status": 503,
            "times": self.rng.randint(1, 3)})

    async def clear(self) -> None:
        await self.control.call("DELETE", f"{self.it_url}/faults")
        await self.control.call("POST", f"{self.it_url}/webhook/faults",
                                {"lose_next": 0, "duplicate_next": 0})
        await self.control.call("DELETE", f"{self.sf_url}/faults")
        await asyncio.gather(*self.restarts)


class Backfills:
    """Concurrent `python -m streamsync.backfill` processes and their exit codes."""

    def __init__(self, config_path: Path, env: dict[str, str], log_path: Path) -> None:
        self.config_path = config_path
        self.env = env
        self.log_path = log_path
        self.running: list[asyncio.subprocess.Process] = []
        self.exit_codes: list[int] = []

    async def start(self, *, lists: bool = False) -> None:
        what = ["--lists"] if lists else ["--objects", ",".join(SYNCED_OBJECTS), "--restart"]
        with self.log_path.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                PYTHON, "-m", "streamsync.backfill", "--config", str(self.config_path),
                *what, "--json",
                stdout=asyncio.subprocess.DEVNULL, stderr=err, env=self.env,
                start_new_session=True,
            )
        self.running.append(proc)

    async def wait_all(self, timeout_s: float = 120.0) -> None:
        for proc in self.running:
            try:
                self.exit_codes.append(await asyncio.wait_for(proc.wait(), timeout_s))
            except TimeoutError:
                self.exit_codes.append(await stop_process(proc))
        self.running.clear()


class Outage:
    """One long outage of Iterable (every API call) or Salesforce (every REST call under
    /services/data: queries, sObjects, limits; login and CometD stay up), and what the service
    did during and after it."""

    def __init__(self, control: Control, target: str, emulator: dict[str, Any],
                 health_url: str, db_path: Path, fault: str, length_s: float) -> None:
        self.control = control
        self.target = target
        self.url = str(emulator["control_url"])
        self.health_url = health_url
        self.db_path = db_path
        self.fault = fault
        self.length_s = length_s
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.ready: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.query_all_calls = 0
        self.dead_letters_at_end = 0
        self.backlog_at_end = 0
        self.drain_s: float | None = None
        self._last_count: float | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._last_count = await self._query_all_count()
        body: dict[str, Any]
        if self.target == "iterable":
            body = {"kind": self.fault, "path": "*", "times": OUTAGE_TIMES, "status": 503}
        else:
            body = {"action": "fail" if self.fault == "status" else "drop",
                    "path": "/services/data", "count": OUTAGE_TIMES, "status": 503}
        await self.control.call("POST", f"{self.url}/faults", body)
        self.started_at = time.time()
        self._tasks.append(asyncio.create_task(self._watch()))

    async def end(self) -> None:
        await self.control.call("DELETE", f"{self.url}/faults")
        self.ended_at = time.time()
        await self._scrape()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = [asyncio.create_task(self._time_drain())]
        self.dead_letters_at_end = self._count("SELECT count(*) FROM dead_letter") or 0

    async def close(self, drain_timeout_s: float = 10.0) -> None:
        """Give the drain timer `drain_timeout_s` more, then stop watching."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._tasks), drain_timeout_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _count(self, sql: str, *args: Any) -> int | None:
        try:
            conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5.0)
        except sqlite3.Error:
            return None
        try:
            return int(conn.execute(sql, args).fetchone()[0])
        except sqlite3.Error:
            return None
        finally:
            conn.close()

    async def _watch(self) -> None:
        """/readyz and the queryAll counter, every SCRAPE_S, for as long as the outage lasts."""
        while True:
            await self._scrape()
            await asyncio.sleep(SCRAPE_S)

    async def _scrape(self) -> None:
        try:
            async with self.control.http.get(f"{self.health_url}/readyz") as resp:
                body = await resp.json(content_type=None)
                self.ready[str(resp.status)] += 1
                if body.get("reason"):
                    self.reasons[str(body["reason"]).split(" since ")[0]] += 1
        except (aiohttp.ClientError, TimeoutError, ValueError):
            self.ready["no answer"] += 1
        count = await self._query_all_count()
        if count is None:
            return
        # A restarted service counts from 0 again: then all it counted is new.
        last = self._last_count
        self.query_all_calls += int(count - last) if last is not None and count >= last \
            else int(count)
        self._last_count = count

    async def _query_all_count(self) -> float | None:
        """The service's queryAll calls so far (its /metrics), None if it does not answer."""
        try:
            async with self.control.http.get(f"{self.health_url}/metrics") as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("streamsync_salesforce_api_calls_total{")
                   and 'kind="queryAll"' in line)  # one line per status

    async def _time_drain(self) -> None:
        """Seconds from the outage's end until no row queued before that end is left."""
        assert self.ended_at is not None
        self.backlog_at_end = self._count(
            "SELECT count(*) FROM queue WHERE first_enqueued_at <= ?", self.ended_at) or 0
        while True:
            left = self._count("SELECT count(*) FROM queue WHERE first_enqueued_at <= ?",
                               self.ended_at)
            if left == 0:
                self.drain_s = round(time.time() - self.ended_at, 1)
                return
            await asyncio.sleep(0.25)

    def report(self) -> dict[str, Any]:
        return {
            "of": self.target,
            "fault": self.fault,
            "length_s": round((self.ended_at or 0.0) - (self.started_at or 0.0), 1),
            "readyz_during": dict(self.ready),
            "readyz_reasons": dict(self.reasons),
            "query_all_calls_during": self.query_all_calls,
            "dead_letters_at_end": self.dead_letters_at_end,
            "backlog_at_end": self.backlog_at_end,
            "backlog_drain_s": self.drain_s,
        }


# ------------------------------------------------------------------------------ the run


@dataclass
class SharedStore:
    """The PostgreSQL server and database several workers share, read directly."""

    server: PgServer
    url: str

    @classmethod
    async def create(cls) -> SharedStore:
        server = await asyncio.to_thread(PgServer.start)
        conn = await asyncpg.connect(server.url())
        try:
            await conn.execute('CREATE DATABASE "chaos"')
        finally:
            await conn.close()
        return cls(server, server.url("chaos"))

    async def _fetch(self, sql: str) -> list[asyncpg.Record] | None:
        try:
            conn = await asyncpg.connect(self.url, timeout=5.0)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return None  # restarting
        try:
            return list(await conn.fetch(sql))
        except asyncpg.PostgresError:
            return None
        finally:
            await conn.close()

    async def leader_pids(self) -> set[int]:
        """Pids of the workers holding a live channel lease (worker ids are host/pid/random)."""
        rows = await self._fetch("SELECT holder FROM channel_lease WHERE holder IS NOT NULL "
                                 "AND expires_at > extract(epoch FROM now())")
        return {int(str(r[0]).split("/")[1]) for r in rows or ()}

    async def drained(self, latest_replay_id: int) -> bool:
        """As `queue_drained`, on the shared database."""
        rows = await self._fetch(
            "SELECT (SELECT count(*) FROM queue), (SELECT count(*) FROM reconcile_pending), "
            "(SELECT max(replay_id_int) FROM replay)")
        if not rows:
            return False
        depth, pending, newest = rows[0]
        return depth == 0 and pending == 0 and (newest if newest is not None else -1) \
            >= latest_replay_id

    async def count(self, sql: str) -> int | None:
        """The single number a `SELECT count(*) ...` answers (None while unreadable)."""
        rows = await self._fetch(sql)
        return None if not rows else int(rows[0][0])

    async def consent_settled(self, last_event_ms: int) -> bool:
        """As `consent_settled`, on the shared database."""
        rows = await self._fetch(
            "SELECT (SELECT count(*) FROM consent_inbox WHERE state = 'pending'), "
            "(SELECT count(*) FROM consent_cursor), (SELECT min(cursor_ms) FROM consent_cursor)")
        if not rows:
            return False
        pending, cursors, oldest = rows[0]
        return pending == 0 and cursors == 2 and oldest is not None and oldest > last_event_ms

    def destroy(self) -> None:
        self.server.destroy()


def log_events(paths: Sequence[Path], event: str, unless: str = "\0") -> int:
    """How many log records of `event` the service logs hold (not counting those that
    contain `unless`)."""
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if (f'"event":"{event}"' in line or f'"event": "{event}"' in line) \
                        and unless not in line:
                    total += 1
    return total


def crash_causes(paths: Sequence[Path]) -> list[dict[str, str]]:
    """Each task that stopped a service (`service.task_crashed` / `service.task_fatal`)."""
    out = []
    for path in paths:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if '"service.task_crashed"' in line or '"service.task_fatal"' in line:
                    with contextlib.suppress(orjson.JSONDecodeError):
                        record = orjson.loads(line)
                        out.append({"task": str(record.get("task")),
                                    "error": str(record.get("error"))[:300]})
    return out


def cdc_loss_windows(paths: Sequence[Path]) -> list[tuple[str, int, int]]:
    """Where CDC may have lost changes: for each `ingest.replay_invalid` a service logged (its
    stored replay id was purged from the bus), (entity, the commit time of the last event it
    had stored on that channel, the moment it found the id gone), in ms. A change committed in
    such a window reached no subscriber, so its custom event may be absent (docs/events.md §3)."""
    out = []
    for path in paths:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if '"ingest.replay_invalid"' not in line:
                    continue
                with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError,
                                         ValueError):
                    record = orjson.loads(line)
                    entity = str(record["channel"]).removeprefix("/data/") \
                        .removesuffix("ChangeEvent")
                    since = record.get("since_ms")
                    start = int(since) if since not in (None, "None") else 0
                    out.append((entity, start, int(float(record["ts"]) * 1000)))
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (the service's health port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(workdir: Path, sf: dict[str, Any], it: dict[str, Any], *,
                 health_port: int = 0, max_attempts: int = 200, probe_max_s: float = 2.0,
                 webhook_port: int = 0, store_url: str | None = None,
                 name: str = "config.toml") -> Path:
    """The service's config.toml for the two emulators, tuned so one minute shows recovery."""
    text = f"""
[salesforce]
login_url = "{sf['instance_url']}"
auth = "client_credentials"
client_id = "{sf['client_id']}"
api_version = "{sf['api_version']}"
timeout_s = 10

[iterable]
base_url = "{it['base_url']}"
project_type = "email"
timeout_s = {ITERABLE_TIMEOUT_S}

[queue]
path = "{workdir / 'streamsync.db'}"
lease_s = 10
max_attempts = {max_attempts}
backoff_base_s = 0.2
backoff_max_s = 2

[flush]
linger_ms = 50
outage_probe_max_s = {probe_max_s}

[ingest]
long_poll_timeout_s = 30
watchdog_s = 40
reconcile_overlap_s = 5

[health]
host = "127.0.0.1"
port = {health_port}

[objects.Lead.consent]
unsubscribe_channel_ids = [{CONSENT_CHANNEL}]

[objects.Contact.consent]
unsubscribe_channel_ids = [{CONSENT_CHANNEL}]

[objects.Account]

[consent_inbound.webhook]
port = {webhook_port}
path = "{WEBHOOK_PATH}"

[consent_inbound.poll]
interval_s = {POLL_INTERVAL_S}
lookback_s = 120

[logging]
level = "INFO"
format = "json"
""" + EVENTS_TOML + (f"""
[store]
url = "{store_url}"

[workers]
lease_s = {WORKER_LEASE_S}
heartbeat_s = {WORKER_HEARTBEAT_S}
""" if store_url else "") + "".join(
        f'\n[[lists.campaigns]]\ncampaign_name = "{name}"\ncreate_missing = true\n'
        + (f"statuses = {list(statuses)!r}\n".replace("'", '"') if statuses else "")
        for name, statuses in CAMPAIGNS)
    path = workdir / name
    path.write_text(text)
    return path


def remap_config(path: Path) -> None:
    """Rewrite config.toml with the changed mapping (the same objects, channels and fan-out:
    nothing that needs a restart)."""
    def table(name: str, mapping: dict[str, str]) -> str:
        rows = "".join(f'"{k}" = "{v}"\n' for k, v in mapping.items())
        return f"\n[objects.{name}.mapping]\n{rows}"

    path.write_text(path.read_text() + table("Lead", REMAP_LEAD) + table("Contact", REMAP_CONTACT))


def resyncs_left(db_path: Path) -> int | None:
    """Re-syncs the store still owes (None while it cannot be read)."""
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return None
    try:
        return int(conn.execute("SELECT count(*) FROM resync").fetchone()[0])
    except sqlite3.Error:
        return None
    finally:
        conn.close()


async def wait_resynced(db_path: Path, services: list[ServiceProcess], timeout_s: float,
                        shared: SharedStore | None = None) -> bool:
    """Until the store owes no re-sync (the services restarted if they died meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await restart_exited(services)
        left = await shared.count("SELECT count(*) FROM resync") if shared is not None \
            else resyncs_left(db_path)
        if left == 0:
            return True
        await asyncio.sleep(0.25)
    return False


def process_env(sf: dict[str, Any], it: dict[str, Any]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSYNC_")}
    env["STREAMSYNC_SF_CLIENT_SECRET"] = str(sf["client_secret"])
    env["STREAMSYNC_ITERABLE_API_KEY"] = str(it["api_key"])
    env["STREAMSYNC_ITERABLE_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def read_records(config: Config) -> tuple[dict[str, list[dict[str, Any]]],
                                                dict[str, ObjectPolicy], list[Any]]:
    """Every Lead and Contact (queryAll), the verify policies (the targets the mapping change
    dropped must be gone) and the dead letters."""
    async with open_components(config) as parts:
        records = await read_salesforce(parts, SYNCED_OBJECTS)
        policies = verify_policies(config, parts.mappings, SYNCED_OBJECTS, cleared=CLEARED)
        dead = await parts.store.dead_letters(limit=1_000_000)
    return records, policies, dead


async def read_list_report(config: Config) -> ListsReport:
    """Every [lists] list compared with its Campaign's members (runtime/final_state.py)."""
    async with open_components(config) as parts:
        return await read_lists(config, parts)


async def read_consent_report(config: Config, records: dict[str, list[dict[str, Any]]],
                              subscriptions: dict[str, Any]) -> ConsentReport:
    """No opted-out record's Iterable user still receives Marketing Email
    (runtime/final_state.py `read_consent`)."""
    async with open_components(config) as parts:
        return await read_consent(config, parts, records, subscriptions)


async def never_synced_deleted(config: Config, report: VerifyReport,
                               records: dict[str, list[dict[str, Any]]]) -> set[str]:
    """Deleted records missing in Iterable that the store holds no identity for: created and
    deleted while nothing could be written (an outage, the service down), they never had a
    profile to flag, so their absence is right (as in tests/e2e/harness.py `judge`)."""
    deleted = {str(r["Id"]) for rows in records.values() for r in rows if r.get("IsDeleted")}
    missing: dict[str, list[str]] = {}
    for m in report.mismatches:
        if m.problem == "missing in Iterable" and m.record_id in deleted:
            missing.setdefault(m.object_name, []).append(m.record_id)
    if not missing:
        return set()
    out: set[str] = set()
    async with open_components(config) as parts:
        for name, ids in missing.items():
            known = await parts.store.identities(name, ids)
            out.update(i for i in ids if i not in known)
    return out


async def initial_model(config: Config) -> Model:
    async with open_components(config) as parts:
        async def ids(soql: str) -> list[str]:
            return sorted([str(r["Id"]) async for r in parts.salesforce.records(soql)])

        return Model(
            leads=await ids("SELECT Id FROM Lead WHERE IsConverted = false"),
            contacts=await ids("SELECT Id FROM Contact"),
            accounts=await ids("SELECT Id FROM Account"),
            open_deals=await ids("SELECT Id FROM Opportunity WHERE IsClosed = false"),
        )


def queue_drained(db_path: Path, latest_replay_id: int) -> bool:
    """Nothing queued, no reconciliation pending, and the newest event on the bus consumed."""
    uri = f"file:{db_path}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
    except sqlite3.Error:
        return False
    try:
        depth = conn.execute("SELECT count(*) FROM queue").fetchone()[0]
        pending = conn.execute(
            "SELECT count(*) FROM reconcile_pending"
        ).fetchone()[0]
        stored = [r[0] for r in conn.execute("SELECT replay_id FROM replay")]
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    newest = max((int(r) for r in stored if isinstance(r, int | str) and str(r).lstrip("-")
                  .isdigit()), default=-1)
    return depth == 0 and pending == 0 and newest >= latest_replay_id


async def wait_drained(control: Control, sf: dict[str, Any], db_path: Path,
                       services: list[ServiceProcess],
                       shared: SharedStore | None = None) -> bool:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    stable_since: float | None = None
    while time.monotonic() < deadline:
        await restart_exited(services)
        state = await control.call("GET", f"{sf['control_url']}/state")
        latest = int(state["latest_replay_id"])
        if (await shared.drained(latest) if shared is not None
                else queue_drained(db_path, latest)):
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since >= DRAIN_STABLE_S:
                return True
        else:
            stable_since = None
        await asyncio.sleep(0.25)
    return False


def consent_settled(db_path: Path, last_event_ms: int) -> bool:
    """No consent event waits for Salesforce, and the export was read past the last event
    Iterable recorded (so a lost webhook has been found by the poller)."""
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return False
    try:
        pending = conn.execute(
            "SELECT count(*) FROM consent_inbox WHERE state = 'pending'").fetchone()[0]
        cursors = [int(r[0]) for r in conn.execute("SELECT cursor_ms FROM consent_cursor")]
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return pending == 0 and len(cursors) == 2 and min(cursors) > last_event_ms


async def iterable_consent_events(control: Control, it: dict[str, Any]) -> list[Any]:
    """Every subscribe/unsubscribe Iterable recorded, as the service reads them."""
    return [parse_export_line(e, e["eventName"]) for e in await control.call(
        "GET", f"{it['control_url']}/consent-events")
        if e.get("eventName") in ("emailSubscribe", "emailUnSubscribe")]


async def wait_consent_drained(control: Control, it: dict[str, Any], db_path: Path,
                               services: list[ServiceProcess],
                               shared: SharedStore | None = None) -> bool:
    """Until `consent_settled`, within a poll interval and the usual drain time."""
    last_ms = max((e.created_ms for e in await iterable_consent_events(control, it)),
                  default=0)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S + POLL_INTERVAL_S
    while time.monotonic() < deadline:
        await restart_exited(services)
        if (await shared.consent_settled(last_ms) if shared is not None
                else consent_settled(db_path, last_ms)):
            return True
        await asyncio.sleep(0.5)
    return False


async def later_unsubscribes(control: Control, sf: dict[str, Any], it: dict[str, Any],
                             records: dict[str, list[dict[str, Any]]]) -> list[Any]:
    """Records opted in whose Iterable user unsubscribed later than their last opt-out change
    in Salesforce (the commit time of the latest change event naming the field)."""
    changed: dict[str, int] = {}
    for event in await control.call("GET", f"{sf['control_url']}/events?limit=1000000"):
        header = event.get("ChangeEventHeader", {})
        if "HasOptedOutOfEmail" in (header.get("changedFields") or []):
            for record_id in header.get("recordIds") or []:
                changed[record_id] = max(changed.get(record_id, 0), header["commitTimestamp"])
    live = [RecordConsent(name, str(r["Id"]), str(r["Email"]), r["HasOptedOutOfEmail"] is True,
                          changed.get(str(r["Id"])))
            for name, rows in records.items() for r in rows
            if r.get("Email") and not r.get("IsDeleted") and not r.get("IsConverted")]
    return later_iterable_unsubscribes(live, await iterable_consent_events(control, it),
                                       CONSENT_GROUPS)
async def restart_exited(services: list[ServiceProcess]) -> None:
    """Restart every service that exited without being asked to (a crash)."""
    for service in services:
        service.check_alive()
        if service.proc is None:
            await service.start()


class ChangeLog:
    """Salesforce's change events, collected while they are retained (the emulator keeps the
    newest 10,000): the independent record of which changes qualified for an event rule."""

    def __init__(self, control: Control, sf_control_url: str) -> None:
        self.control = control
        self.url = f"{sf_control_url}/events"
        self.bodies: dict[tuple[int, int], dict[str, Any]] = {}

    async def poll(self) -> None:
        for body in await self.control.call("GET", f"{self.url}?limit=10000"):
            header = body["ChangeEventHeader"]
            self.bodies[(int(header["commitNumber"]), int(header["sequenceNumber"]))] = body

    async def keep_polling(self, every_s: float = 10.0) -> None:
        while True:
            with contextlib.suppress(ChaosError, aiohttp.ClientError):
                await self.poll()
            await asyncio.sleep(every_s)

    def qualifying(self) -> list[QualifyingChange]:
        return [change for rule, entity, field_name, value in EVENT_RULES
                for change in value_transitions(self.bodies.values(), rule=rule, entity=entity,
                                                field_name=field_name, value=value)]


EVENTS_UNSETTLED = "SELECT count(*) FROM event_pending WHERE state IN ('new', 'ready')"


def events_settled(db_path: Path) -> bool:
    """No custom event waits to be decided or sent."""
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return False
    try:
        return int(conn.execute(EVENTS_UNSETTLED).fetchone()[0]) == 0
    except sqlite3.Error:
        return False
    finally:
        conn.close()


async def wait_events_settled(db_path: Path, shared: SharedStore | None = None,
                              timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (await shared.count(EVENTS_UNSETTLED) == 0 if shared is not None
                else events_settled(db_path)):
            return True
        await asyncio.sleep(0.5)
    return False


async def read_event_report(config: Config, changes: list[QualifyingChange]) -> EventReport:
    """Each qualifying change's event in Iterable (runtime/final_state.py `read_events`)."""
    async with open_components(config) as parts:
        return await read_events(parts, changes)


async def duplicate_writes(control: Control, it: dict[str, Any],
                           keys: Sequence[str]) -> tuple[int, int]:
    """(writes applied, writes that repeated the state the previous applied write had set)."""
    gate = asyncio.Semaphore(16)

    async def one(key: str) -> tuple[int, int]:
        async with gate:
            url = f"{it['control_url']}/history?key={urllib.parse.quote(key, safe='')}"
            history = await control.call("GET", url)
        writes = dups = 0
        previous: Any = None
        for entry in history:
            if entry.get("applied_wall") is None or "dataFields" not in entry:
                continue
            state = (entry.get("email"), orjson.dumps(entry["dataFields"],
                                                      option=orjson.OPT_SORT_KEYS))
            writes += 1
            dups += state == previous
            previous = state
        return writes, dups

    results = await asyncio.gather(*(one(k) for k in keys))
    return sum(r[0] for r in results), sum(r[1] for r in results)


def judge_dead_letters(dead: list[Any], records: dict[str, list[dict[str, Any]]],
                       policies: dict[str, ObjectPolicy]) -> list[dict[str, Any]]:
    """Each dead letter, and whether its record is genuinely bad: its current Salesforce state
    cannot be mapped (no or an invalid email, ...)."""
    by_id = {(name, str(r["Id"])): r for name, rows in records.items() for r in rows}
    out = []
    for d in sorted(dead, key=lambda d: (d.object_name, d.record_id)):
        record = by_id.get((d.object_name, d.record_id))
        genuine = False
        if record is not None and d.object_name in policies:
            try:
                policies[d.object_name].mapping.map(record)
            except RecordError:
                genuine = True
        out.append({"object": d.object_name, "id": d.record_id, "reason": d.reason,
                    "error": d.last_error[:200], "genuine": genuine})
    return out


async def run_chaos(minutes: float, seed: int, out: TextIO, quiet: bool,
                    keep_dir: Path | None = None, outage_minutes: float = 0.0,
                    outage_fault: str = "status", outage_of: str = "iterable",
                    workers: int = 1, store: str = "sqlite") -> dict[str, Any]:
    started = time.monotonic()
    rng = random.Random(seed)
    work_rng, fault_rng = random.Random(rng.getrandbits(64)), random.Random(rng.getrandbits(64))

    def say(text: str) -> None:
        if not quiet:
            print(f"[chaos {time.monotonic() - started:6.1f}s] {text}", file=out, flush=True)

    with contextlib.ExitStack() as stack:
        if keep_dir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        else:
            workdir = keep_dir
            workdir.mkdir(parents=True, exist_ok=True)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSYNC_")}
        sf_proc, sf = await spawn_json_line(
            [PYTHON, "-m", "streamsync.emulators.salesforce", "--port", "0",
             "--seed-accounts", str(SEED_DATA["accounts"]),
             "--seed-contacts", str(SEED_DATA["contacts"]),
             "--seed-leads", str(SEED_DATA["leads"]), "--seed", str(seed),
             "--seed-opportunities", str(SEED_DATA["opportunities"]),
             "--long-poll-s", "20", "--reconnect-timeout-s", "40"],
            workdir / "salesforce.log", base_env)
        webhook_port = free_port()
        it_proc, it = await spawn_json_line(
            [PYTHON, "-m", "streamsync.emulators.iterable", "--port", "0",
             "--latency-ms", "5", "--no-rate-limits",
             "--webhook-url", f"http://127.0.0.1:{webhook_port}{WEBHOOK_PATH}"],
            workdir / "iterable.log", base_env)
        it["webhook_port"] = webhook_port
        shared: SharedStore | None = None
        try:
            say(f"emulators up: {sf['instance_url']} {it['base_url']}")
            if store == "postgres":
                shared = await SharedStore.create()
                say(f"PostgreSQL up: {shared.url}; {workers} worker(s)")
            return await _run(minutes, seed, workdir, sf, it, work_rng, fault_rng, say, started,
                              outage_minutes * 60.0, outage_fault, outage_of, workers, shared)
        finally:
            await stop_process(it_proc, timeout_s=10)
            await stop_process(sf_proc, timeout_s=10)
            if shared is not None:
                await asyncio.to_thread(shared.destroy)


async def start_services(workdir: Path, sf: dict[str, Any], it: dict[str, Any],
                         config_path: Path, env: dict[str, str], workers: int,
                         shared: SharedStore | None) -> tuple[list[Path], list[ServiceProcess]]:
    """Start the service processes and wait until each is ready. Iterable's webhook reaches
    the first; the others listen on their own ports (one machine), and the export poller
    finds what reached none of them."""
    configs = [config_path] + [
        write_config(workdir, sf, it, webhook_port=free_port(), store_url=shared.url,
                     name=f"config{n}.toml")
        for n in range(1, workers) if shared is not None]
    services = [ServiceProcess(configs[n], env,
                               workdir / ("service.log" if n == 0 else f"service{n}.log"))
                for n in range(workers)]
    for service in services:
        await service.start()
    for service in services:
        await service.wait_ready()
    return configs, services


def change_mapping(configs: list[Path], services: list[ServiceProcess]) -> bool:
    """Rewrite every config with the changed mapping and SIGHUP every live service; True when
    one was signalled."""
    for path in configs:
        remap_config(path)
    sent = False
    for service in services:
        if service.proc is not None and service.proc.returncode is None:
            service.proc.send_signal(signal.SIGHUP)
            sent = True
    return sent


async def _run(minutes: float, seed: int, workdir: Path, sf: dict[str, Any], it: dict[str, Any],
               work_rng: random.Random, fault_rng: random.Random, say: Callable[[str], None],
               started: float, outage_s: float = 0.0, outage_fault: str = "status",
               outage_of: str = "iterable", workers: int = 1,
               shared: SharedStore | None = None) -> dict[str, Any]:
    env = process_env(sf, it)
    health_port = free_port() if outage_s > 0 else 0
    # The outage run keeps the shipped max_attempts and probe spacing; only the backoff is short
    # (so that max_attempts × backoff is seconds, far less than the outage).
    config_path = write_config(workdir, sf, it, health_port=health_port,
                               max_attempts=10 if outage_s > 0 else 200,
                               probe_max_s=10.0 if outage_s > 0 else 2.0,
                               webhook_port=int(it["webhook_port"]),
                               store_url=shared.url if shared is not None else None)
    config = load_config(config_path, env=env)
    db_path = Path(config.queue.path)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        control = Control(http)
        # Iterable's system webhook, as an operator sets it up (README "Consent").
        await control.call("POST", f"{it['control_url']}/webhook", {
            "auth_type": "Basic", "auth_token": WEBHOOK_SECRET, "backoff_s": 0.5,
            "retries": 3})
        model = await initial_model(config)
        workload = Workload(control, str(sf["control_url"]), model, work_rng,
                            str(it["control_url"]))
        await workload.seed_campaigns()
        change_log = ChangeLog(control, str(sf["control_url"]))
        log_poller = asyncio.create_task(change_log.keep_polling())
        backfills = Backfills(config_path, env, workdir / "backfill.log")
        say("initial backfill (profiles, then lists)")
        await backfills.start()
        await backfills.wait_all(timeout_s=300)
        await backfills.start(lists=True)
        await backfills.wait_all(timeout_s=300)
        if backfills.exit_codes != [0, 0]:
            raise ChaosError(f"the initial backfill failed (see {workdir / 'backfill.log'})")
        backfills.exit_codes.clear()

        configs, services = await start_services(workdir, sf, it, config_path, env, workers,
                                                 shared)
        say(f"{len(services)} service process(es) ready; workload and faults start")
        faults = Faults(control, sf, it, services, backfills, fault_rng, model.leads, shared)
        window_s = max(10.0, minutes * 60.0)
        plan = plan_faults(fault_rng, window_s - WARMUP_S,
                           WORKER_FAULT_KINDS if shared is not None else FAULT_KINDS)
        timeline = [(i / CHANGES_PER_S, "change", "") for i in range(int(window_s
                                                                          * CHANGES_PER_S))]
        timeline += [(WARMUP_S + t, "fault", kind) for t, kind in plan]
        timeline += [(window_s * REMAP_AT, "remap", "")]
        remap: dict[str, Any] = {}
        outage: Outage | None = None
        if outage_s > 0:
            outage = Outage(control, outage_of, it if outage_of == "iterable" else sf,
                            f"http://127.0.0.1:{health_port}", db_path, outage_fault, outage_s)
            begin = (window_s - outage_s) / 2
            timeline += [(begin, "outage", "start"), (begin + outage_s, "outage", "end")]
        timeline.sort(key=lambda e: (e[0], e[1]))
        t0 = time.monotonic()
        for offset, what, kind in timeline:
            delay = t0 + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if what == "change":
                await workload.step()
            elif what == "remap":
                say("mapping change: config.toml rewritten, SIGHUP")
                await backfills.wait_all()  # none still writing with the old mapping
                remap["at_s"] = round(offset, 1)
                remap["sighup"] = change_mapping(configs, services)
            elif what == "outage":
                assert outage is not None
                say(f"{outage_of} outage {kind}")
                await (outage.start() if kind == "start" else outage.end())
            else:
                say(f"fault {kind}")
                await faults.inject(kind)
            if not faults.restarts:
                await restart_exited(services)
        say(f"{workload.n} changes made; clearing faults and draining")
        await faults.clear()
        await backfills.wait_all()
        drained = await wait_drained(control, sf, db_path, services, shared)
        events_drained = await wait_events_settled(db_path, shared)
        consent_drained = await wait_consent_drained(control, it, db_path, services, shared)
        remap["resyncs_finished"] = await wait_resynced(db_path, services, DRAIN_TIMEOUT_S,
                                                        shared)
        drained = drained and await wait_drained(control, sf, db_path, services, shared)
        log_text = "".join(s.log_path.read_text(errors="replace") for s in services)
        remap.update({event: log_text.count(f'"{event}"') for event in (
            "config.reloaded", "resync.scheduled", "resync.resumed", "resync.done")})
        config = load_config(config_path, env=env)  # the new mapping
        if outage is not None:
            await outage.close()
        exit_codes = [await s.stop() for s in services]
        service_exit = exit_codes[0]
        say(f"drained={drained}; verifying")
        records, policies, dead = await read_records(config)
        snapshot = await control.call("GET", f"{it['control_url']}/snapshot")
        report: VerifyReport = compare(policies, records, snapshot,
                                       [d.record_id for d in dead])
        judged = judge_dead_letters(dead, records, policies)
        never_synced = await never_synced_deleted(config, report, records)
        writes, dups = await duplicate_writes(control, it, sorted(snapshot))
        lists = await read_list_report(config)
        consent = await read_consent_report(config, records, await control.call(
            "GET", f"{it['control_url']}/subscriptions"))
        inbound = await later_unsubscribes(control, sf, it, records)
        log_poller.cancel()
        await change_log.poll()
        # Salesforce's change log beside the service logs, for a post-mortem of a mismatch.
        (workdir / "change_log.json").write_bytes(orjson.dumps(
            [change_log.bodies[k] for k in sorted(change_log.bodies)]))
        qualifying = mark_data_moved(  # a later change of its data: not compared with now
            change_log.qualifying(), change_log.bodies.values(),
            {rule.name: list(rule.mapping) for rule in config.events})
        events = await read_event_report(config, mark_lost_to_cdc(
            qualifying, cdc_loss_windows([svc.log_path for svc in services]),
            {rule: entity for rule, entity, _, _ in EVENT_RULES}))
    mismatches = [
        {"object": m.object_name, "id": m.record_id, "key": m.key, "problem": m.problem,
         "fields": {k: [v[0], v[1]] for k, v in m.fields.items()}}
        for m in report.mismatches if m.record_id not in never_synced
    ]
    summary = report.summary()
    return {
        "seed": seed,
        "minutes": minutes,
        "faults_injected": dict(sorted(faults.injected.items())),
        "faults_total": sum(faults.injected.values()),
        "changes": dict(sorted(workload.kinds.items())),
        "changes_total": workload.n,
        "records_compared": report.compared,
        "matched": report.matched,
        "mismatches": len(mismatches),
        "mismatch_examples": mismatches[:10],
        "deleted_before_any_profile": len(never_synced),
        "missing_dead_letters": sorted(report.missing_dead_letters),
        "ambiguous_keys": summary["ambiguous_keys"],
        "unexpected_profiles": summary["unexpected_profiles"],
        **lists.summary(),
        **consent.summary(),
        "consent_mismatch_examples": [
            {"object": m.object_name, "id": m.record_id, "key": m.key, "problem": m.problem}
            for m in [*consent.mismatches, *inbound][:10]],
        "consent_inbound_mismatches": len(inbound),
        "consent_drained": consent_drained,
        **events.summary(),
        "event_mismatch_examples": [
            {"id": m.event_id, "problem": m.problem, "detail": m.detail[:200]}
            for m in events.mismatches[:10]],
        "events_drained": events_drained,
        "dead_letters": len(judged),
        "dead_letters_genuine": sum(1 for d in judged if d["genuine"]),
        "dead_letter_details": judged,
        "iterable_writes": writes,
        "duplicate_writes": dups,
        "service_starts": sum(s.starts for s in services),
        "service_crashes": [code for s in services for code in s.unexpected_exits],
        "crash_causes": crash_causes([s.log_path for s in services]),
        "service_exit_code": service_exit,
        "service_exit_codes": exit_codes,
        "workers": workers,
        "store": "postgres" if shared is not None else "sqlite",
        "failovers": log_events([s.log_path for s in services], "workers.failover"),
        "deposed": log_events([s.log_path for s in services], "workers.leadership_lost",
                              unless='"reason":"resigned"'),
        "backfill_exit_codes": backfills.exit_codes,
        "drained": drained,
        "mapping_change": remap,
        "duration_s": round(time.monotonic() - started, 1),
        **({"outage": outage.report()} if outage is not None else {}),
    }


def verdict(result: dict[str, Any]) -> bool:
    """Pass iff nothing mismatches, nothing expected is missing and every dead letter is genuine."""
    return (result["mismatches"] == 0 and not result["missing_dead_letters"]
            and result["dead_letters_genuine"] == result["dead_letters"]
            and result["list_mismatches"] == 0 and result["consent_mismatches"] == 0
            and result["consent_inbound_mismatches"] == 0
            and result["event_mismatches"] == 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="minutes of workload and faults (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the schedule (default 1)")
    parser.add_argument("--json-only", action="store_true",
                        help="print only the final JSON object")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the config, store and process logs in this directory "
                             "(default: a temporary directory, removed at the end)")
    parser.add_argument("--outage-minutes", type=float, default=0.0,
                        help="one Iterable outage this long in the middle of the run "
                             "(needs --minutes at least 1 more)")
    parser.add_argument("--outage-fault", choices=("status", "drop"), default="status",
                        help="during the outage every call answers 503 (status) or has its "
                             "connection dropped (drop)")
    parser.add_argument("--workers", type=int, default=1,
                        help="service processes sharing the store (more than 1: --store "
                             "postgres)")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite",
                        help="the store: a SQLite file, or a throwaway PostgreSQL server")
    parser.add_argument("--outage-of", choices=("iterable", "salesforce"), default="iterable",
                        help="which one is down (Salesforce: its REST API under "
                             "/services/data; login and CometD stay up)")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    if args.workers < 1 or (args.workers > 1 and args.store != "postgres"):
        parser.error("--workers must be at least 1; several workers need --store postgres "
                     "(a SQLite store has one owner)")
    if args.workers > 1 and args.outage_minutes:
        parser.error("--outage-minutes watches one service: not with several --workers")
    if args.outage_minutes < 0 or (args.outage_minutes
                                   and args.minutes < args.outage_minutes + 1):
        parser.error("--outage-minutes must be positive and at least 1 below --minutes")
    try:
        result = asyncio.run(run_chaos(args.minutes, args.seed, sys.stderr, args.json_only,
                                       args.workdir, args.outage_minutes, args.outage_fault,
                                       args.outage_of, args.workers, args.store))
    except ChaosError as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    result["ok"] = verdict(result)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
