"""`make demo`: the whole sync on the built-in emulators, in one process, in about a minute.

1. Starts the Salesforce and Iterable emulators with seeded data and realistic latency.
2. Backfills every Lead and Contact into Iterable, with a progress bar.
3. Runs the real-time service while a workload makes live changes in Salesforce (creates,
   updates, an Account rename, a deletion, an email change, a lead conversion, an invalid email,
   deals moving to Closed Won, which fire the README's journey event live, people joining and
   leaving the Campaign "Demo webinar", whose Iterable list fills live), showing queue depth,
   commit-to-Iterable latency, records synced, dead letters, events sent and the list's size;
   the status page's address is printed, and the page is live while the service runs.
4. Waits for the queue to drain and checks that every Iterable profile matches its Salesforce
   record (`core/verify.py`), that every won deal fired exactly one event
   (`core/verify_events.py`) and that the list holds its Campaign's members
   (`core/verify_lists.py`). `streamsync demo` (streamsync/cli/demo.py) exits 0 only if it
   does.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from streamsync.cli.progress import ConsoleProgress
from streamsync.config import Config, parse_config
from streamsync.core.consent_inbound import ConsentGroups, parse_export_line
from streamsync.core.verify import Mismatch, VerifyReport, compare
from streamsync.core.verify_consent import (
    ConsentReport,
    RecordConsent,
    later_iterable_unsubscribes,
)
from streamsync.core.verify_events import EventReport, value_transitions
from streamsync.emulators.iterable import IterableEmulator, IterableEmulatorConfig
from streamsync.emulators.iterable.api_lists import members as list_members
from streamsync.emulators.iterable.user_clicks import unsubscribe_click
from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig
from streamsync.emulators.salesforce.actions import set_stage
from streamsync.runtime.app import Service, open_components
from streamsync.runtime.backfill import Backfill, BackfillOptions
from streamsync.runtime.consent_inbound import inbound_of
from streamsync.runtime.final_state import (
    read_consent,
    read_events,
    read_lists,
    read_salesforce,
    verify_policies,
)

SEED: dict[str, Any] = {"seed_accounts": 2_000, "seed_contacts": 10_000, "seed_leads": 20_000,
                        "seed_opportunities": 2_000}
SMALL_SEED: dict[str, Any] = {"seed_accounts": 50, "seed_contacts": 300, "seed_leads": 600,
                              "seed_opportunities": 100}
# The README's "Events" example: the Closed Won journey trigger.
WON_RULE: dict[str, Any] = {
    "name": "opportunity-won", "object": "Opportunity", "trigger": "update",
    "changed_fields": ["StageName"], "condition": "StageName = 'Closed Won'",
    "event_name": "opportunityClosedWon", "profile": "primary_contact_role",
    "mapping": {"Name": "dataFields.opportunityName", "Amount": "dataFields.amount"}}
SYNCED_OBJECTS = ("Lead", "Contact")
MARKETING_EMAIL = 39581  # the Iterable emulator's seeded Marketing Email channel
WEBHOOK_SECRET = secrets.token_urlsafe(24)
CONSENT = {"consent": {"unsubscribe_channel_ids": [MARKETING_EMAIL]}}
DEMO_CAMPAIGN = "Demo webinar"  # its members fill an Iterable list of the same name ([lists])
LISTS = {"campaigns": [{"campaign_name": DEMO_CAMPAIGN, "create_missing": True}]}


def demo_config(sf: SalesforceEmulator, it: IterableEmulator, workdir: Path) -> Config:
    """The config a user would write for these two emulators (secrets from the 'environment')."""
    data: dict[str, Any] = {
        "salesforce": {"login_url": sf.instance_url, "auth": "client_credentials",
                       "client_id": sf.client_id, "api_version": sf.config.api_version},
        "iterable": {"base_url": it.base_url, "project_type": "email"},
        "queue": {"path": str(workdir / "streamsync.db")},
        "flush": {"linger_ms": 50},
        "health": {"host": "127.0.0.1", "port": 0},
        "objects": {"Lead": CONSENT, "Contact": CONSENT, "Account": {}},
        "lists": LISTS,
        "events": [WON_RULE],
    }
    # Iterable → Salesforce: the webhook receiver on a free port, the poller as the safety net.
    data["consent_inbound"] = {"webhook": {"port": 0}, "poll": {"interval_s": 30}}
    env = {"STREAMSYNC_SF_CLIENT_SECRET": sf.client_secret,
           "STREAMSYNC_ITERABLE_API_KEY": it.api_key,
           "STREAMSYNC_ITERABLE_WEBHOOK_SECRET": WEBHOOK_SECRET}
    return parse_config(data, env)


async def point_webhook(service: Service, it: IterableEmulator, task: asyncio.Task[int]) -> None:
    """Set Iterable's system webhook to the service's receiver, as README "Consent" says."""
    inbound = inbound_of(service)
    while inbound is None or inbound.webhook is None or inbound.webhook.port is None:
        if task.done():
            return
        await asyncio.sleep(0.05)
        inbound = inbound_of(service)
    settings = it.webhooks.settings
    settings.url = f"http://127.0.0.1:{inbound.webhook.port}{inbound.webhook.conf.path}"
    settings.auth_type, settings.auth_token = "Basic", WEBHOOK_SECRET


class Workload:
    """Makes live changes in the Salesforce emulator and remembers when each was committed."""

    def __init__(self, sf: SalesforceEmulator, rng: random.Random,
                 it: IterableEmulator | None = None) -> None:
        self.sf = sf
        self.it = it
        self.rng = rng
        self.changes = 0
        self.kinds: dict[str, int] = {}
        self.commits: list[tuple[float, str]] = []  # (commit time, email that must change)

    def _note(self, kind: str, email: str | None = None) -> None:
        self.changes += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if email:
            self.commits.append((time.time(), email.lower()))

    def _pick(self, sobject: str, where: str = "IsDeleted = false") -> str:
        ids = self.sf.select_ids(sobject, where, limit=200)
        return self.rng.choice(ids)

    def _email(self, sobject: str, record_id: str) -> str | None:
        record = self.sf.state.record(sobject, record_id)
        return None if record is None else record.get("Email")

    def step(self, n: int) -> None:
        """One live change, chosen to cover every kind over the run."""
        state = self.sf.state
        scripted = {
            3: self.rename_account, 7: self.delete_contact, 11: self.invalid_email,
            15: self.change_email, 19: self.convert_lead, 23: self.opt_out, 27: self.opt_out,
            31: self.opt_in, 9: self.unsubscribe_in_iterable, 17: self.unsubscribe_in_iterable,
        }
        if n % 4 == 2:
            self.win_opportunity()
        self.campaign_member(n)
        if n in scripted:
            scripted[n]()
        elif n % 3 == 0:
            email = f"new.lead.{n}@example.net"
            state.create("Lead", {"FirstName": "New", "LastName": f"Lead{n}", "Email": email,
                                  "Company": "Initech", "Status": "Open - Not Contacted"})
            self._note("create", email)
        else:
            sobject = self.rng.choice(SYNCED_OBJECTS)
            live = "IsDeleted = false AND Email != null"
            record_id = self._pick(sobject, live + (" AND IsConverted = false"
                                                    if sobject == "Lead" else ""))
            state.update(sobject, record_id, {"FirstName": f"Renamed{n}"})
            self._note("update", self._email(sobject, record_id))

    def campaign_member(self, n: int) -> None:
        """Someone registers for the webinar (every fifth step someone cancels instead)."""
        campaign = self.sf.select_ids("Campaign", f"Name = '{DEMO_CAMPAIGN}'")[0]
        members = self.sf.select_ids("CampaignMember", f"CampaignId = '{campaign}'")
        if n % 5 == 0 and members:
            self.sf.state.delete("CampaignMember", self.rng.choice(members))
            self._note("campaign_member_removed")
            return
        sobject = self.rng.choice(SYNCED_OBJECTS)
        field = "LeadId" if sobject == "Lead" else "ContactId"
        person = self._pick(sobject, "IsDeleted = false AND Email != null" + (
            " AND IsConverted = false" if sobject == "Lead" else ""))
        with contextlib.suppress(Exception):  # already registered: Salesforce refuses it
            self.sf.state.create("CampaignMember", {"CampaignId": campaign, field: person})
            self._note("campaign_member_added")

    def win_opportunity(self) -> None:
        """A deal is won (the Closed Won rule fires once); one won before gets an unrelated
        update (it fires nothing)."""
        won = self.sf.select_ids("Opportunity", "IsWon = true AND IsDeleted = false", 50)
        if won:
            self.sf.state.update("Opportunity", self.rng.choice(won),
                                 {"NextStep": f"Kick-off {self.changes}"})
            self._note("won_deal_updated")
        open_ids = self.sf.select_ids("Opportunity", "IsClosed = false AND IsDeleted = false",
                                      200)
        if open_ids:
            set_stage(self.sf.state, self.rng.choice(open_ids), "Closed Won")
            self._note("opportunity_won")

    def rename_account(self) -> None:
        account_id = self._pick("Contact", "IsDeleted = false AND AccountId != null")
        account = self.sf.state.record("Contact", account_id)
        assert account is not None
        self.sf.state.update("Account", account["AccountId"], {"Name": "Renamed Account Inc."})
        self._note("account_rename", account.get("Email"))

    def delete_contact(self) -> None:
        record_id = self._pick("Contact", "IsDeleted = false AND Email != null")
        email = self._email("Contact", record_id)
        self.sf.state.delete("Contact", record_id)
        self._note("delete", email)

    def invalid_email(self) -> None:
        self.sf.state.create("Lead", {"FirstName": "Bad", "LastName": "Email",
                                      "Email": "jane@example.c0m", "Company": "Nowhere",
                                      "Status": "Open - Not Contacted"})
        self._note("invalid_email")

    def change_email(self) -> None:
        record_id = self._pick("Contact", "IsDeleted = false AND Email != null")
        email = f"changed.{record_id.lower()}@example.net"
        self.sf.state.update("Contact", record_id, {"Email": email})
        self._note("email_change", email)

    def opt_out(self, opted_out: bool = True) -> None:
        """A person's email opt-out changes in Salesforce (README "Consent")."""
        sobject = self.rng.choice(SYNCED_OBJECTS)
        record_id = self._pick(sobject, "IsDeleted = false AND Email != null AND "
                               f"HasOptedOutOfEmail = {str(not opted_out).lower()}"
                               + (" AND IsConverted = false" if sobject == "Lead" else ""))
        self.sf.state.update(sobject, record_id, {"HasOptedOutOfEmail": opted_out})
        self._note("opt_out" if opted_out else "opt_in", self._email(sobject, record_id))

    def opt_in(self) -> None:
        self.opt_out(False)

    def unsubscribe_in_iterable(self) -> None:
        """A person clicks "unsubscribe" in an Iterable email: Salesforce opts them out."""
        if self.it is None:
            return
        record_id = self._pick("Lead", "IsDeleted = false AND Email != null AND "
                                       "IsConverted = false AND HasOptedOutOfEmail = false")
        email = self._email("Lead", record_id)
        profile = self.it.project.get_by_email(email.lower()) if email else None
        if profile is None:
            return
        unsubscribe_click(self.it.messaging_for(self.it.project), profile,
                          self.it.state.wall_clock(), channel_id=MARKETING_EMAIL)
        self.kinds["iterable_unsubscribe"] = self.kinds.get("iterable_unsubscribe", 0) + 1
        self.changes += 1

    def convert_lead(self) -> None:
        record_id = self._pick("Lead", "IsDeleted = false AND IsConverted = false "
                                       "AND Email != null")
        email = self._email("Lead", record_id)
        self.sf.state.convert_lead(record_id)
        self._note("lead_conversion", email)


def latency_figures(workload: Workload, it: IterableEmulator) -> dict[str, float]:
    """Commit-to-Iterable latency of the live changes, from the emulator's receipt times."""
    samples: list[float] = []
    for committed, email in workload.commits:
        receipts = [h["received_wall"] for h in it.state.history(email)
                    if h["received_wall"] >= committed]
        if receipts:
            samples.append(min(receipts) - committed)
    if not samples:
        return {"latency_samples": 0}
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return {"latency_samples": len(samples), "latency_p50_s": round(statistics.median(samples), 3),
            "latency_p99_s": round(p99, 3)}


async def verify(config: Config, it: IterableEmulator) -> VerifyReport:
    """Read Salesforce through its API and compare with Iterable's profiles."""
    async with open_components(config) as parts:
        records = await read_salesforce(parts, SYNCED_OBJECTS)
        policies = verify_policies(config, parts.mappings, SYNCED_OBJECTS)
        dead = [d.record_id for d in await parts.store.dead_letters(limit=1_000_000)]
    return compare(policies, records, it.state.snapshot(), dead)


def subscription_arrays(it: IterableEmulator) -> dict[str, dict[str, list[int]]]:
    """Each Iterable user's subscription arrays, keyed as `snapshot()` keys profiles."""
    out: dict[str, dict[str, list[int]]] = {}
    it.flush()
    project = it.project
    for profile in project.profiles():
        key = profile.user_id if project.project_type == "userId" or profile.email is None \
            else profile.email
        if key is not None:
            out[key] = profile.subscriptions().view()
    return out


async def verify_consent(config: Config, it: IterableEmulator) -> ConsentReport:
    """No opted-out Salesforce record's Iterable user still receives a configured group."""
    async with open_components(config) as parts:
        records = await read_salesforce(parts, SYNCED_OBJECTS)
        return await read_consent(config, parts, records, subscription_arrays(it))


async def verify_events(config: Config, sf: SalesforceEmulator) -> EventReport:
    """Each deal won during the demo fired exactly one `opportunityClosedWon` event on its
    primary contact, with its data, and nothing else fired (core/verify_events.py)."""
    changes = value_transitions(sf.state.event_log, rule=WON_RULE["name"],
                                entity="Opportunity", field_name="StageName",
                                value="Closed Won")
    async with open_components(config) as parts:
        return await read_events(parts, changes)


async def verify_consent_back(config: Config, sf: SalesforceEmulator,
                              it: IterableEmulator) -> list[Mismatch]:
    """No Salesforce record is opted in whose Iterable user unsubscribed later."""
    changed: dict[str, int] = {}
    for event in sf.state.event_log:
        header = event["ChangeEventHeader"]
        if "HasOptedOutOfEmail" in (header.get("changedFields") or []):
            for record_id in header["recordIds"]:
                changed[record_id] = max(changed.get(record_id, 0), header["commitTimestamp"])
    async with open_components(config) as parts:
        records = await read_salesforce(parts, SYNCED_OBJECTS)
    live = [RecordConsent(name, str(r["Id"]), str(r["Email"]), r["HasOptedOutOfEmail"] is True,
                          changed.get(str(r["Id"])))
            for name, rows in records.items() for r in rows
            if r.get("Email") and not r.get("IsDeleted") and not r.get("IsConverted")]
    events = [parse_export_line(e.data_fields(), e.event_name)
              for e in it.messaging_for(it.project).log.events
              if e.event_name in ("emailSubscribe", "emailUnSubscribe")]
    groups = ConsentGroups(channel_ids=frozenset({MARKETING_EMAIL}))
    return later_iterable_unsubscribes(live, events, groups)


def page_url(host: str, port: int) -> str:
    """The status page's address on the health bind (streamsync/runtime/statuspage/)."""
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _status_line(service: Service, it: IterableEmulator) -> str:
    m = service.metrics
    synced = sum(s.value for metric in m.records_synced.collect() for s in metric.samples
                 if s.name.endswith("_total"))
    dead = sum(s.value for metric in m.dead_letters.collect() for s in metric.samples)
    depth = service.queue_depth
    events = service.events.stats.sent if service.events is not None else 0
    lists = [lst for lst in it.messaging_for(it.project).catalog.lists.values()
             if lst.name == DEMO_CAMPAIGN]
    on_list = len(list_members(it.project, lists[0].id)) if lists else 0
    return (f"queue={depth:.0f}  synced={synced:.0f}  dead_letters={dead:.0f}  "
            f"events_sent={events}  list '{DEMO_CAMPAIGN}'={on_list}")


async def run_demo(duration_s: float, keep_running: bool, small: bool, out: TextIO) -> bool:
    """The whole demo; True when the service ran cleanly and every profile matches."""
    seed = SMALL_SEED if small else SEED
    sf = SalesforceEmulator(SalesforceEmulatorConfig(**seed, latency_ms=20.0))
    it = IterableEmulator(IterableEmulatorConfig(project_type="email", latency_ms=20.0))
    await sf.start("127.0.0.1", 0)
    await it.start("127.0.0.1", 0)
    sf.state.create("Campaign", {"Name": DEMO_CAMPAIGN, "IsActive": True})
    print(f"Salesforce emulator: {sf.instance_url}   Iterable emulator: {it.base_url}", file=out)
    with tempfile.TemporaryDirectory(prefix="streamsync-demo-") as tmp:
        config = demo_config(sf, it, Path(tmp))
        try:
            return await _demo_steps(config, sf, it, duration_s, keep_running, out)
        finally:
            await it.stop()
            await sf.stop()


async def _demo_steps(config: Config, sf: SalesforceEmulator, it: IterableEmulator,
                      duration_s: float, keep_running: bool, out: TextIO) -> bool:
    print("\n== 1. Backfill", file=out)
    async with open_components(config, drawer="backfill") as parts:
        backfill = Backfill(config=config, store=parts.store, salesforce=parts.salesforce,
                            pipeline=parts.pipeline, metrics=parts.metrics,
                            progress=ConsoleProgress(stream=out), mappings=parts.mappings)
        summary = await backfill.run(BackfillOptions(objects=SYNCED_OBJECTS))
    print(f"   {summary.records_written} users written to Iterable", file=out)

    print("\n== 2. Real time: live changes in Salesforce", file=out)
    service = Service(config, metrics_refresh_s=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    workload = Workload(sf, random.Random(7), it)
    try:
        await point_webhook(service, it, task)
        await _live_changes(service, task, workload, it, duration_s, out)
        if keep_running:
            print("   --keep-running: the service keeps syncing; Ctrl-C to stop", file=out)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
    finally:
        stop.set()
        code = await task
    if code != 0:
        print(f"The service stopped with exit code {code}.", file=out)
        return False

    print("\n== 3. Verification", file=out)
    report = await verify(config, it)
    consent = await verify_consent(config, it)
    consent.mismatches += await verify_consent_back(config, sf, it)
    events = await verify_events(config, sf)
    async with open_components(config) as parts:
        lists = await read_lists(config, parts)
    figures = {**latency_figures(workload, it), "changes": workload.changes,
               "kinds": workload.kinds, **report.summary(), **consent.summary(),
               **events.summary(), **lists.summary()}
    for key, value in figures.items():
        print(f"   {key}: {value}", file=out)
    for mismatch in [*report.mismatches[:10], *consent.mismatches[:10]]:
        print(f"   MISMATCH {mismatch.object_name} {mismatch.record_id} {mismatch.key}: "
              f"{mismatch.problem} {mismatch.fields}", file=out)
    for wrong in events.mismatches[:10]:
        print(f"   EVENT MISMATCH {wrong.event_id}: {wrong.problem} {wrong.detail}", file=out)
    ok = report.ok and consent.ok and events.ok and lists.ok
    print("\nEvery Iterable profile matches Salesforce, and no opted-out record is still "
          "subscribed nor any Iterable unsubscribe missing in Salesforce; every won deal fired "
          f"exactly one event; the list '{DEMO_CAMPAIGN}' holds exactly its Campaign's "
          "members." if ok
          else "\nVerification FAILED.", file=out)
    return ok


async def _live_changes(service: Service, task: asyncio.Task[int], workload: Workload,
                        it: IterableEmulator, duration_s: float, out: TextIO) -> None:
    """Make live changes for `duration_s` while printing a status line, then drain."""
    while not (service.ingest and service.ingest.subscribed):
        if task.done():
            return
        await asyncio.sleep(0.05)
    if service.health is not None and service.health.port is not None:
        print(f"   status page: {page_url(service.config.health.host, service.health.port)}"
              "  (live while the service runs)", file=out, flush=True)
    started, n = time.monotonic(), 0
    next_status = started
    while time.monotonic() - started < duration_s and not task.done():
        n += 1
        workload.step(n)
        await asyncio.sleep(0.1)
        if time.monotonic() >= next_status:
            lat = latency_figures(workload, it)
            live = (f"  latency p50={lat['latency_p50_s']:.2f}s p99={lat['latency_p99_s']:.2f}s"
                    if lat.get("latency_samples") else "")
            print(f"   t={time.monotonic() - started:4.0f}s  changes={workload.changes}  "
                  f"{_status_line(service, it)}{live}", file=out)
            next_status += 2.0
    await it.webhooks.wait_idle()
    await _drain(service, it, out)


async def _drain(service: Service, it: IterableEmulator, out: TextIO,
                 timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    await asyncio.sleep(1.0)
    inbound = inbound_of(service)
    while time.monotonic() < deadline:
        pending = (await inbound.drain.store.consent_inbox_counts()).get("pending", 0) \
            if inbound is not None else 0
        if service.queue_depth == 0 and not pending:
            break
        await asyncio.sleep(0.25)
    print(f"   drained: {_status_line(service, it)}", file=out)
