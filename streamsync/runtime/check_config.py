"""`check-config`: log in to Salesforce, check mappings against describes, try the Iterable key."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from streamsync.adapters.iterable import IterableClient
from streamsync.adapters.salesforce import SalesforceClient
from streamsync.adapters.store.postgres import probe
from streamsync.config import SECRET_SOURCES, Config
from streamsync.core import soql
from streamsync.errors import AuthError, QueryError, SoqlError, StreamsyncError
from streamsync.logs import get_logger
from streamsync.runtime.check_consent import check_consent
from streamsync.runtime.clients import (
    build_iterable_client,
    build_salesforce_client,
    iterable_session,
    salesforce_session,
)
from streamsync.runtime.describes import fetch_describes
from streamsync.runtime.event_rules import compile_rule
from streamsync.runtime.lists.resolve import resolve_lists
from streamsync.runtime.lists.start import lists_client
from streamsync.runtime.mappings import check_describe, compile_object

log = get_logger(__name__)

Component = Literal["salesforce", "iterable", "mapping", "lists", "store"]
ITERABLE_BULK_UPDATE_PER_S = 5.0  # bulkUpdate requests/s per project (docs/iterable.md §1)


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: where (an object name or a service), which config path, and what is wrong."""

    component: Component
    subject: str
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"component": self.component, "subject": self.subject, "path": self.path,
                "message": self.message}


@dataclass
class CheckReport:
    """Everything `check-config` found: problems (exit 1 if any), warnings, what worked, and
    the checks that could not run (and why)."""

    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    describes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": [p.as_dict() for p in self.problems],
            "warnings": list(self.warnings),
            "passed": list(self.passed),
            "skipped": list(self.skipped),
        }


def split_key(key: str) -> tuple[str, str]:
    """`objects.Lead.mapping.Email` → ("Lead", "mapping.Email"); other keys → ("", key)."""
    if key.startswith("objects."):
        rest = key[len("objects."):]
        name, _, path = rest.partition(".")
        return name, path or "(object)"
    if key.startswith("events["):
        name, _, path = key.partition(".")
        return name, path or "(rule)"
    return "", key


async def check_salesforce(
    config: Config, salesforce: SalesforceClient, report: CheckReport
) -> None:
    """Log in, then check mappings, filters, e-mail fields and fan-outs against describes."""
    sf = config.salesforce
    try:
        token = await salesforce.auth.token()
    except StreamsyncError as exc:
        report.problems.append(Problem("salesforce", "login", f"salesforce.auth ({sf.auth})",
                                       str(exc)))
        report.skipped.append("mappings not checked: Salesforce login failed")
        report.skipped.append("trial queries not run: Salesforce login failed")
        return
    report.passed.append(f"salesforce: logged in with the {sf.auth} flow at {sf.login_url} "
                         f"(instance {token.instance_url})")
    try:
        describes = await fetch_describes(config, salesforce)
    except StreamsyncError as exc:
        report.problems.append(Problem("salesforce", "describe", "objects", str(exc)))
        report.skipped.append("mappings not checked: describing the objects failed")
        report.skipped.append("trial queries not run: describing the objects failed")
        return
    report.describes = describes
    findings = check_describe(config, describes)
    for finding in findings:
        subject, path = split_key(finding.key)
        report.problems.append(Problem("mapping", subject, path, finding.message))
    if not findings:
        report.passed.append(f"mappings: {len(config.objects)} object(s) checked against "
                             f"{len(describes)} describe(s)")
    failing = {p.subject for p in report.problems}
    for name in config.objects:
        if name in failing:
            report.skipped.append(f"{name}: trial query not run: its configuration has "
                                  "problems")
        else:
            await trial_query(config, salesforce, describes, name, report)
    for i in range(len(config.events)):
        if f"events[{i}]" not in failing:
            await trial_rule_query(config, salesforce, describes, i, report)


async def trial_rule_query(config: Config, salesforce: SalesforceClient,
                           describes: Mapping[str, Mapping[str, Any]], index: int,
                           report: CheckReport) -> None:
    """An event rule's read with its condition as the WHERE, once (LIMIT 1): Salesforce judges
    the condition's literals as it would a filter's."""
    try:
        rule = compile_rule(config, index, describes)
        soql_text = soql.keyset_page(rule.config.object, rule.read_fields(),
                                     where=rule.config.safe_condition, limit=1)
        async for _page in salesforce.query(soql_text):
            pass
    except (QueryError, SoqlError) as exc:  # SoqlError: a ConfigError too
        report.problems.append(Problem("salesforce", f"events[{index}]", "condition",
                                       f"Salesforce rejected the rule's query: {exc}"))
        return
    except StreamsyncError as exc:
        report.problems.append(Problem("salesforce", f"events[{index}]", "(rule)", str(exc)))
        return
    report.passed.append(f"events[{index}] ({rule.name}): query ok")


async def trial_query(config: Config, salesforce: SalesforceClient,
                      describes: Mapping[str, Mapping[str, Any]], name: str,
                      report: CheckReport) -> None:
    """Run the object's real select list and filter once (LIMIT 1) and count its records:
    Salesforce itself then judges what describes cannot (a literal of the wrong type...)."""
    obj = config.objects[name]
    fields = (compile_object(config, name, describes).soql_fields() if obj.writes_users
              else ["Id"])
    where = obj.safe_filter
    path = "filter" if where is not None else "mapping"
    try:
        async for _page in salesforce.query(soql.keyset_page(name, fields, where=where, limit=1)):
            pass
        matching = await salesforce.count(soql.count(name, where))
    except QueryError as exc:
        report.problems.append(Problem("salesforce", name, path,
                                       f"Salesforce rejected the query: {exc.error_code}: "
                                       f"{exc.sf_message}"))
        return
    except StreamsyncError as exc:
        report.problems.append(Problem("salesforce", name, path, str(exc)))
        return
    which = "match the filter" if where is not None else "in total"
    report.passed.append(f"{name}: query ok, {matching} record(s) {which}")


async def check_iterable(config: Config, iterable: IterableClient, report: CheckReport) -> None:
    """The API key works against the configured project: GET /api/users/getFields."""
    try:
        fields = await iterable.get_fields()
    except AuthError as exc:
        env_name = SECRET_SOURCES["iterable_api_key"][0]
        report.problems.append(Problem("iterable", "api key", env_name,
                                       f"{exc} (check the key in {env_name} and that it "
                                       f"belongs to the project at {config.iterable.base_url})"))
        return
    except StreamsyncError as exc:
        report.problems.append(Problem("iterable", "api key", "iterable.base_url", str(exc)))
        report.skipped.append("Iterable API key not checked: Iterable could not be reached")
        return
    report.passed.append(f"iterable: API key accepted at {config.iterable.base_url} "
                         f"({len(fields)} user fields in the project)")
    check_field_types(config, report, fields)
    consent = await check_consent(config, iterable)
    report.problems.extend(Problem("iterable", subject, path, message)
                           for subject, path, message in consent.problems)
    report.passed.extend(consent.passed)


def check_field_types(config: Config, report: CheckReport, fields: Mapping[str, str]) -> None:
    """Each mapped field Iterable already has must have the type its values are sent as:
    Iterable fixes a field's type from the first value it received and rejects the others
    (invalid_data), e.g. a text field that was once sent as a date."""
    if not report.describes:
        report.skipped.append("Iterable field types not compared: no Salesforce describes")
        return
    failing = {p.subject for p in report.problems}
    for name, obj in config.objects.items():
        if not obj.writes_users or name in failing:
            continue
        mapping = compile_object(config, name, report.describes)
        for source, field_name, sent_as in mapping.iterable_types():
            have = fields.get(field_name)
            if have is None or have == sent_as:
                continue
            path = f'mapping."{source}"' if "." in source else f"mapping.{source}"
            report.problems.append(Problem(
                "iterable", name, path,
                f"Iterable's field {field_name!r} is of type {have!r}, but {name}.{source} "
                f"({mapping.source_types[source]} in Salesforce) is sent as {sent_as}: Iterable "
                "rejects those records as invalid_data; map it to a new field name"))


async def check_lists(config: Config, salesforce: SalesforceClient, iterable: IterableClient,
                      report: CheckReport) -> None:
    """Every [lists.campaigns] entry names a Campaign that exists (once, by name) and a list
    that exists, or one it may create (reported, not created)."""
    try:
        found = await resolve_lists(config, salesforce, lists_client(config, iterable),
                                    create=False)
    except StreamsyncError as exc:
        report.problems.append(Problem("lists", "lists", "lists.campaigns", str(exc)))
        return
    for problem in found.problems:
        path, _, message = problem.partition(": ")
        report.problems.append(Problem("lists", "lists", path, message))
    for name in found.created:
        report.warnings.append(f"lists: the Iterable list {name!r} does not exist yet; the "
                               "service creates it at start (create_missing = true)")
    if not found.problems:
        report.passed.append(f"lists: {len(found.lists)} Campaign(s) mapped to Iterable lists")


def rate_limit_warning(config: Config) -> str | None:
    """A warning when `iterable.rate_limit_per_s` is above Iterable's published limit."""
    rate = config.iterable.rate_limit_per_s
    if rate <= ITERABLE_BULK_UPDATE_PER_S:
        return None
    return (f"iterable.rate_limit_per_s = {rate:g} exceeds Iterable's published limit of "
            f"{ITERABLE_BULK_UPDATE_PER_S:g} bulkUpdate requests per second per project: "
            "expect 429 replies and slower syncing, not faster")


async def check_store(config: Config, report: CheckReport) -> None:
    """With `[store] url`: can this machine reach and log in to the database (nothing is
    written)?"""
    if config.store.url is None:
        return
    password = config.secrets.store_password
    try:
        found = await probe(config.store.url, connect_timeout_s=config.store.connect_timeout_s,
                            password=None if password is None else password.get_secret_value())
    except StreamsyncError as exc:
        report.problems.append(Problem("store", "store", "store.url", str(exc)))
    else:
        report.passed.append(f"store: {config.store.url} ({found})")


async def check_config(
    config: Config,
    *,
    session_factory: Callable[[float], aiohttp.ClientSession] | None = None,
) -> CheckReport:
    """Run every check; never raises for a remote failure (it becomes a Problem)."""
    report = CheckReport(warnings=list(config.warnings))
    warning = rate_limit_warning(config)
    if warning is not None:
        report.warnings.append(warning)
    sf_http = (salesforce_session(config) if session_factory is None
               else session_factory(config.salesforce.timeout_s))
    async with sf_http as sf_session:
        await check_salesforce(config, build_salesforce_client(config, sf_session), report)
    it_http = (iterable_session(config) if session_factory is None
               else session_factory(config.iterable.timeout_s))
    async with it_http as it_session:
        await check_iterable(config, build_iterable_client(config, it_session), report)
    if config.lists.enabled:
        sf_http = (salesforce_session(config) if session_factory is None
                   else session_factory(config.salesforce.timeout_s))
        it_http = (iterable_session(config) if session_factory is None
                   else session_factory(config.iterable.timeout_s))
        async with sf_http as sf_session, it_http as it_session:
            await check_lists(config, build_salesforce_client(config, sf_session),
                              build_iterable_client(config, it_session), report)
    await check_store(config, report)
    log.info("check.done", problems=len(report.problems), warnings=len(report.warnings))
    return report

