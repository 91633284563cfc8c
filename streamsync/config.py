"""config.toml as pydantic models; secrets only from the environment or $CREDENTIALS_DIRECTORY."""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from streamsync.core.condition import compile_condition
from streamsync.core.events import channel_for
from streamsync.core.mapping import mapping_problems, target_problem
from streamsync.core.soql import SafeFilter, parse_filter, validate_field_path, validate_identifier
from streamsync.errors import ConfigError, ConfigProblems, SoqlError
from streamsync.logs import get_logger, redactor

PASSWORD_FLOW_RETIREMENT: Final = "2027-02-20"
US_BASE_URL: Final = "https://api.iterable.com"
EU_BASE_URL: Final = "https://api.eu.iterable.com"
SECRET_KEY_HINTS: Final = ("secret", "password", "passwd", "token", "api_key", "apikey",
                           "private_key", "privatekey", "passphrase")
_LOOPBACK: Final = ("127.0.0.1", "localhost", "::1")

AuthFlow = Literal["jwt", "client_credentials", "refresh_token", "password"]
ProjectType = Literal["email", "userId", "hybrid"]


def _problems(items: list[tuple[str | tuple[str | int, ...], str]]) -> ConfigProblems:
    """Several problems under one key: (sub-key, message) pairs, for a pydantic validator."""
    return ConfigProblems(items, "; ".join(f"{_key(k if isinstance(k, tuple) else (k,))}: {m}"
                                           for k, m in items))


def _unnested_mapping(cls: type, v: Any) -> Any:
    """A mapping whose source path was left unquoted arrives as a nested table: name it."""
    if isinstance(v, dict):
        nested = [k for k, val in v.items() if isinstance(val, dict)]
        if nested:
            raise _problems([(k, f'a table, not a target: quote dotted source paths, e.g. '
                                 f'"{k}.Name" = "dataFields.x"') for k in nested])
    return v


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _url(value: str, what: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an http(s) URL, got {value!r:.80}")
    if parts.username or parts.password:
        raise ValueError(f"{what} must not carry credentials")
    if parts.query or parts.fragment:
        raise ValueError(f"{what} must not have a query or fragment")
    return value.strip().rstrip("/")


def _ca_file(value: str | None) -> str | None:
    """A PEM bundle of extra trusted CAs (a private CA, a TLS-inspecting proxy): must exist."""
    if value is not None and not Path(value).is_file():
        raise ValueError(f"no such CA bundle file: {value!r:.200}")
    return value


def _is_plain_remote(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and (parts.hostname or "") not in _LOOPBACK


# ---------------------------------------------------------------- sections


class SalesforceConfig(_Model):
    """[salesforce]: where and how to log in."""

    login_url: str = "https://login.salesforce.com"
    instance_url: str | None = None
    api_version: str = "66.0"
    auth: AuthFlow = "jwt"
    client_id: str = Field(min_length=1)
    username: str | None = None
    audience: str | None = None
    client_name: str = Field(default="streamsync", pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    suppress_echoes: bool = False
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    max_in_flight: int = Field(default=8, ge=1, le=25)
    ca_file: str | None = None

    @field_validator("login_url", "instance_url", "audience")
    @classmethod
    def _urls(cls, v: str | None) -> str | None:
        return None if v is None else _url(v, "URL")

    @field_validator("ca_file")
    @classmethod
    def _ca(cls, v: str | None) -> str | None:
        return _ca_file(v)

    @field_validator("api_version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = f"{float(v):.1f}"
        if isinstance(v, str):
            m = re.fullmatch(r"v?(\d{2,3})\.0", v.strip())
            if m is None:
                raise ValueError(f"api_version must look like '66.0', got {v!r:.20}")
            if int(m[1]) < 37:
                raise ValueError("api_version must be 37.0 or later (durable streaming)")
            return f"{m[1]}.0"
        return v

    @model_validator(mode="after")
    def _flow_needs(self) -> SalesforceConfig:
        if self.auth in ("jwt", "password") and not self.username:
            raise ValueError(f"auth = {self.auth!r} needs salesforce.username")
        return self

    @property
    def token_url(self) -> str:
        return self.login_url + "/services/oauth2/token"

    @property
    def jwt_audience(self) -> str:
        return self.audience or self.login_url


class IterableConfig(_Model):
    """[iterable]: the project, its data center, and how hard to push."""

    base_url: str = US_BASE_URL
    project_type: ProjectType = "hybrid"
    batch_max_users: int = Field(default=1000, ge=1, le=10_000)
    batch_max_bytes: int = Field(default=4_000_000, ge=4096, le=4 * 1024 * 1024)
    rate_limit_per_s: float = Field(default=5.0, gt=0, le=1000)
    max_in_flight: int = Field(default=4, ge=1, le=64)
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    update_only: bool = False
    ca_file: str | None = None
    create_new_fields: bool | None = None
    merge_nested_objects: bool = False

    @field_validator("base_url")
    @classmethod
    def _base(cls, v: str) -> str:
        return _url(v, "base_url")

    @field_validator("ca_file")
    @classmethod
    def _ca(cls, v: str | None) -> str | None:
        return _ca_file(v)

    def bulk_envelope(self) -> dict[str, bool]:
        """Top-level bulkUpdate fields besides `users` (for the batch cutter)."""
        out: dict[str, bool] = {}
        if self.create_new_fields is not None:
            out["createNewFields"] = self.create_new_fields
        if self.update_only:
            out["updateOnly"] = True
        return out

    @model_validator(mode="after")
    def _eu_email(self) -> IterableConfig:
        if self.base_url == EU_BASE_URL and self.project_type == "email":
            raise ValueError("Iterable's EU data center has no email-based projects")
        return self


class FanOut(_Model):
    """Re-sync the children of a changed record: `{ object = "Contact", via = "AccountId" }`."""

    object: str
    via: str

    @field_validator("object", "via")
    @classmethod
    def _ident(cls, v: str) -> str:
        return validate_identifier(v)


class ObjectConsent(_Model):
    """[objects.<Name>.consent]: which fields mean "opted out" and what that means in Iterable.

    An opt-out unsubscribes the user from every listed channel and message type and removes
    them from every listed static list (names or ids); clearing it re-subscribes them only with
    `resubscribe = true` (consent is not assumed back). README "Consent".
    """

    opt_out_fields: list[str] = Field(default_factory=lambda: ["HasOptedOutOfEmail"])
    unsubscribe_channel_ids: list[int] = Field(default_factory=list)
    unsubscribe_message_type_ids: list[int] = Field(default_factory=list)
    remove_from_lists: list[int | str] = Field(default_factory=list)
    resubscribe: bool = False

    @field_validator("opt_out_fields")
    @classmethod
    def _fields(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one field (the default is HasOptedOutOfEmail)")
        for name in v:
            validate_identifier(name, "opt-out field")
        if len({n.lower() for n in v}) != len(v):
            raise ValueError("lists a field twice")
        return v

    @field_validator("unsubscribe_channel_ids", "unsubscribe_message_type_ids")
    @classmethod
    def _ids(cls, v: list[int]) -> list[int]:
        bad = [i for i in v if i <= 0]
        if bad:
            raise ValueError(f"ids must be positive integers, got {bad}")
        if len(set(v)) != len(v):
            raise ValueError("lists an id twice")
        return v

    @field_validator("remove_from_lists")
    @classmethod
    def _lists(cls, v: list[int | str]) -> list[int | str]:
        for item in v:
            if isinstance(item, int) and item <= 0:
                raise ValueError(f"a list id must be a positive integer, got {item}")
            if isinstance(item, str) and not (0 < len(item.strip()) <= 255):
                raise ValueError(f"a list name must be 1-255 characters, got {item!r:.40}")
        keys = [i if isinstance(i, int) else i.strip().lower() for i in v]
        if len(set(keys)) != len(keys):
            raise ValueError("names a list twice")
        return v

    @model_validator(mode="after")
    def _something_to_do(self) -> ObjectConsent:
        if not (self.unsubscribe_channel_ids or self.unsubscribe_message_type_ids
                or self.remove_from_lists):
            raise ValueError("an opt-out must mean something in Iterable: set "
                             "unsubscribe_channel_ids, unsubscribe_message_type_ids or "
                             "remove_from_lists")
        return self


class ObjectConfig(_Model):
    """[objects.<Name>]: one synced Salesforce object."""

    channel: str | None = Field(default=None, pattern=r"^/data/[A-Za-z0-9_]{1,120}$")
    filter: str | None = None
    identity: Literal["email", "userId", "both"] = "email"
    email_field: str = "Email"
    user_id_field: str = "Id"
    delete_policy: Literal["delete", "flag", "ignore"] = "flag"
    delete_flag_field: str = "dataFields.salesforceDeleted"
    null_policy: Literal["omit", "clear"] = "clear"
    # A record a changed filter leaves out (README "Changing the mapping"): left as it is,
    # flagged (out_of_scope_flag_field = true) or its Iterable user deleted.
    out_of_scope: Literal["ignore", "flag", "delete"] = "ignore"
    out_of_scope_flag_field: str = "dataFields.salesforceOutOfScope"
    convert_dates: bool = True
    mapping: dict[str, str] = Field(default_factory=dict)
    fan_out: list[FanOut] = Field(default_factory=list)
    converted_precedence: Literal["contact", "lead"] | None = None
    consent: ObjectConsent | None = None

    @field_validator("filter")
    @classmethod
    def _filter(cls, v: str | None) -> str | None:
        if v is not None:
            parse_filter(v)
        return v

    @field_validator("email_field", "user_id_field")
    @classmethod
    def _path(cls, v: str) -> str:
        return validate_field_path(v)

    @field_validator("delete_flag_field", "out_of_scope_flag_field")
    @classmethod
    def _flag(cls, v: str) -> str:
        problem = target_problem(v)
        if problem is None and not v.startswith("dataFields."):
            problem = "a flag must be a dataFields.<name> target"
        if problem:
            raise ValueError(problem)
        return v

    _dotted_keys = field_validator("mapping", mode="before")(_unnested_mapping)

    @field_validator("mapping")
    @classmethod
    def _mapping(cls, v: dict[str, str]) -> dict[str, str]:
        problems = mapping_problems(v)
        if problems:
            raise _problems(list(problems))
        return v

    @property
    def safe_filter(self) -> SafeFilter | None:
        return None if self.filter is None else parse_filter(self.filter)

    @property
    def writes_users(self) -> bool:
        """False for objects that only fan out (Account by default)."""
        return bool(self.mapping)


def _out_of_scope_problems(name: str, obj: ObjectConfig
                           ) -> list[tuple[str | tuple[str | int, ...], str]]:
    if obj.out_of_scope == "flag" and obj.out_of_scope_flag_field in (
            *obj.mapping.values(), obj.delete_flag_field):
        return [(("objects", name, "out_of_scope_flag_field"),
                 "is also a mapping target or the delete flag")]
    return []
EventTrigger = Literal["create", "update", "delete", "undelete"]
# `profile` of an event rule: the record's own identity, its Opportunity's primary contact role,
# or a dotted path to an email or an id (docs/events.md §3).
PROFILE_RECORD: Final = "record"
PROFILE_PRIMARY_CONTACT: Final = "primary_contact_role"
_RULE_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")


class EventRule(_Model):
    """[[events]]: one CRM moment sent to Iterable as a custom event (docs/events.md §3)."""

    name: str
    object: str
    trigger: list[EventTrigger] = Field(min_length=1)
    changed_fields: list[str] = Field(default_factory=list)
    condition: str | None = None
    event_name: str = Field(min_length=1, max_length=255)
    profile: str = PROFILE_RECORD
    mapping: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if _RULE_NAME_RE.fullmatch(v) is None:
            raise ValueError("a rule name is 1-64 letters, digits and hyphens (it becomes part "
                             "of every event id)")
        return v

    @field_validator("trigger", mode="before")
    @classmethod
    def _one_trigger(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("object")
    @classmethod
    def _object(cls, v: str) -> str:
        return validate_identifier(v, "object")

    @field_validator("changed_fields")
    @classmethod
    def _changed(cls, v: list[str]) -> list[str]:
        return [validate_identifier(f) for f in v]

    @field_validator("condition")
    @classmethod
    def _condition(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                bad = sorted(f for f in compile_condition(v).fields if "." in f)
            except SoqlError as exc:
                raise ValueError(str(exc)) from None
            if bad:
                raise ValueError(f"a condition reads the record's own fields only (CDC says "
                                 f"nothing of related records): {', '.join(bad)}")
        return v

    @field_validator("event_name")
    @classmethod
    def _event_name(cls, v: str) -> str:
        if v != v.strip() or not v.isprintable():
            raise ValueError("event_name must be printable, without leading or trailing spaces")
        return v

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str) -> str:
        if v in (PROFILE_RECORD, PROFILE_PRIMARY_CONTACT):
            return v
        try:
            return validate_field_path(v)
        except SoqlError as exc:
            raise ValueError(f"profile is 'record', 'primary_contact_role' or a dotted path to "
                             f"an email or id field: {exc}") from None

    _dotted_keys = field_validator("mapping", mode="before")(_unnested_mapping)

    @field_validator("mapping")
    @classmethod
    def _mapping(cls, v: dict[str, str]) -> dict[str, str]:
        problems = list(mapping_problems(v))
        problems.extend((k, "event data goes to dataFields.<name> targets")
                        for k, t in v.items() if not str(t).startswith("dataFields."))
        if problems:
            raise _problems(list(problems))
        return v

    @property
    def safe_condition(self) -> SafeFilter | None:
        return None if self.condition is None else parse_filter(self.condition)


class EventDeliveryConfig(_Model):
    """[event_delivery]: how events are sent with events/trackBulk (docs/events.md §1)."""

    batch_max_events: int = Field(default=1000, ge=1, le=8000)
    rate_limit_per_s: float = Field(default=10.0, gt=0, le=1000)
    max_in_flight: int = Field(default=2, ge=1, le=16)
    batch_ids: int = Field(default=2000, ge=1, le=50_000)  # candidates decided per lease
    decide_ahead: int = Field(default=1, ge=0, le=4)  # further leases read while one settles
    max_attempts: int = Field(default=20, ge=1, le=1000)


class QueueConfig(_Model):
    """[queue]: the durable SQLite queue."""

    path: str = "streamsync.db"
    lease_s: float = Field(default=120.0, gt=0, le=86_400)
    max_attempts: int = Field(default=10, ge=1, le=1000)
    backoff_base_s: float = Field(default=1.0, gt=0, le=3600)
    backoff_max_s: float = Field(default=300.0, gt=0, le=86_400)

    @model_validator(mode="after")
    def _backoff(self) -> QueueConfig:
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError("backoff_max_s must not be below backoff_base_s")
        return self


_STORE_SCHEMES = ("postgresql", "postgres")


def check_store_url(value: str) -> str:
    """A PostgreSQL URL without a password (that comes from STREAMSYNC_STORE_PASSWORD)."""
    text = value.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise ValueError("must be a postgresql://user@host:port/database URL") from None
    if parts.scheme not in _STORE_SCHEMES:
        raise ValueError(f"must be a postgresql://user@host:port/database URL, not a "
                         f"{parts.scheme or 'schemeless'} one")
    if parts.password is not None or re.search(r"(^|&)password=", parts.query):
        raise ValueError("carries a password: secrets are never read from the config file; "
                         "set STREAMSYNC_STORE_PASSWORD, STREAMSYNC_STORE_PASSWORD_FILE or the "
                         "credential file $CREDENTIALS_DIRECTORY/store_password")
    if not parts.path.strip("/"):
        raise ValueError("must name the database (postgresql://user@host:port/database)")
    return text


class StoreConfig(_Model):
    """[store]: where the durable state lives. Without `url`, the SQLite file `[queue].path`
    (one `run` per file); with a PostgreSQL `url`, a database several `run` processes share
    (docs/design.md §1.6). The password is a secret: STREAMSYNC_STORE_PASSWORD (or libpq's
    PGPASSWORD), never in the URL."""

    url: str | None = None
    pool_size: int = Field(default=4, ge=1, le=100)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else check_store_url(v)


class FlushConfig(_Model):
    """[flush]: how queued ids become Iterable batches."""

    batch_ids: int = Field(default=2000, ge=1, le=50_000)
    concurrency: int = Field(default=4, ge=1, le=64)
    linger_ms: int = Field(default=200, ge=0, le=60_000)
    # A destination (Salesforce, Iterable) counts as down after this many failed batches in a
    # row; flushing then pauses, probing it at most this far apart (runtime/breaker.py).
    outage_after_failures: int = Field(default=3, ge=1, le=1000)
    outage_probe_max_s: float = Field(default=10.0, gt=0, le=3600)


class IngestConfig(_Model):
    """[ingest]: the CometD subscription."""

    watchdog_s: float = Field(default=300.0, gt=0, le=86_400)
    long_poll_timeout_s: float = Field(default=130.0, gt=0, le=600)
    idle_resubscribe_s: float = Field(default=1800.0, gt=0, le=86_400)
    reconcile_overlap_s: float = Field(default=60.0, ge=0, le=86_400)

    @model_validator(mode="after")
    def _watchdog(self) -> IngestConfig:
        if self.watchdog_s < self.long_poll_timeout_s:
            raise ValueError(
                f"watchdog_s ({self.watchdog_s:g}) must be at least long_poll_timeout_s "
                f"({self.long_poll_timeout_s:g}): a healthy long poll lasts up to 110 s"
            )
        return self


class BackfillConfig(_Model):
    """[backfill]: defaults for `python -m streamsync.backfill`."""

    parallel: int = Field(default=4, ge=1, le=25)
    page_size: int = Field(default=2000, ge=200, le=2000)
    api: Literal["rest", "bulk"] = "rest"
    window_field: str = "CreatedDate"
    # A window is leased to the process working on it for this long, renewed every third of
    # it; a process that died loses its windows to the others after it (docs/design.md §10.2).
    lease_s: float = Field(default=30.0, ge=2.0, le=600.0)

    @field_validator("window_field")
    @classmethod
    def _field(cls, v: str) -> str:
        return validate_identifier(v)


class ConsentConfig(_Model):
    """[consent]: how consent changes are written to Iterable's subscription endpoints.

    Iterable states no rate limit or user cap for `PUT /api/subscriptions/...`
    (docs/iterable.md §12): 1,000 users per call as Segment sends, and a request rate kept as
    low as bulkUpdate's by default.
    """

    rate_limit_per_s: float = Field(default=5.0, gt=0, le=1000)
    max_in_flight: int = Field(default=2, ge=1, le=64)
    batch_max_users: int = Field(default=1000, ge=1, le=1000)


CAMPAIGN_MEMBER: Final = "CampaignMember"
"""The object whose CDC events and rows fill the lists of [lists]."""
_SF_ID_RE: Final = re.compile(r"[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?")


class CampaignList(_Model):
    """One [[lists.campaigns]] entry: a Salesforce Campaign (by id or by name) and the Iterable
    list its members are subscribed to (by id, or by name: created at start when missing and
    `create_missing`). `statuses`: only members with one of these Status values count (all do
    when omitted)."""

    campaign_id: str | None = None
    campaign_name: str | None = Field(default=None, min_length=1, max_length=80)
    list_id: int | None = Field(default=None, ge=1)
    list_name: str | None = Field(default=None, min_length=1, max_length=255)
    create_missing: bool = False
    statuses: tuple[str, ...] | None = None

    @field_validator("campaign_id")
    @classmethod
    def _campaign_id(cls, v: str | None) -> str | None:
        if v is not None and (not _SF_ID_RE.fullmatch(v) or not v.startswith("701")):
            raise ValueError(f"not a Campaign id (701..., 15 or 18 characters): {v!r:.40}")
        return v

    @field_validator("statuses", mode="before")
    @classmethod
    def _statuses(cls, v: Any) -> Any:
        if isinstance(v, list):
            v = tuple(v)
        if isinstance(v, tuple) and (not v or not all(isinstance(s, str) and s for s in v)):
            raise ValueError("statuses must be a non-empty list of member Status values")
        return v

    @model_validator(mode="after")
    def _one_of_each(self) -> CampaignList:
        if (self.campaign_id is None) == (self.campaign_name is None):
            raise ValueError("give exactly one of campaign_id and campaign_name")
        if self.list_id is not None and self.list_name is not None:
            raise ValueError("give at most one of list_id and list_name")
        if self.list_id is None and self.list_name is None and self.campaign_name is None:
            raise ValueError("a campaign_id needs a list_id or a list_name")
        if self.create_missing and self.list_id is not None:
            raise ValueError("create_missing applies to a list given by name, not list_id")
        return self

    @property
    def wanted_list_name(self) -> str | None:
        """The list name to look up (default: the Campaign's name); None for a list_id."""
        if self.list_id is not None:
            return None
        return self.list_name or self.campaign_name

    @property
    def label(self) -> str:
        """How messages name this entry."""
        return f"campaign {self.campaign_id or repr(self.campaign_name)}"


class ListsConfig(_Model):
    """[lists]: Salesforce Campaign members as Iterable static list subscribers (by email)."""

    campaigns: list[CampaignList] = Field(default_factory=list)
    # Iterable documents no rate or size limit for lists/subscribe and lists/unsubscribe
    # (docs/iterable.md §13): these are the assumed ceilings.
    rate_limit_per_s: float = Field(default=5.0, gt=0, le=1000)
    max_subscribers: int = Field(default=1000, ge=1, le=10_000)
    max_in_flight: int = Field(default=2, ge=1, le=64)

    @property
    def enabled(self) -> bool:
        return bool(self.campaigns)

class WorkersConfig(_Model):
    """[workers]: leadership of the CDC subscriptions among the `run` processes of one store
    (runtime/leadership.py). A leader's lease lasts `lease_s` and is renewed every
    `heartbeat_s`; a leader that dies is replaced within about `lease_s + heartbeat_s`."""

    lease_s: float = Field(default=15.0, ge=1.0, le=3600)
    heartbeat_s: float = Field(default=5.0, gt=0, le=1200)

    @model_validator(mode="after")
    def _heartbeat(self) -> WorkersConfig:
        if self.heartbeat_s * 2 > self.lease_s:
            raise ValueError(f"heartbeat_s ({self.heartbeat_s:g}) must be at most half of "
                             f"lease_s ({self.lease_s:g}): a lease must survive a missed renewal")
        return self


class HealthConfig(_Model):
    """[health]: the health and metrics endpoint (localhost by default)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65_535)


class ConsentWebhookConfig(_Model):
    """[consent_inbound.webhook]: the receiver of Iterable system webhooks (its own bind)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65_535)
    path: str = Field(default="/iterable/webhook", pattern=r"^/[A-Za-z0-9/_.-]{0,200}$")
    # "basic": `Authorization: Basic <secret>` (or the bare secret, as Iterable's docs show
    # it); "header": the secret in the header named by `header`.
    auth: Literal["basic", "header"] = "basic"
    header: str = Field(default="X-Streamsync-Webhook-Secret",
                        pattern=r"^[A-Za-z0-9-]{1,64}$")
    max_body_bytes: int = Field(default=65_536, ge=1024, le=4 * 1024 * 1024)


class ConsentPollConfig(_Model):
    """[consent_inbound.poll]: the poller of Iterable's export API (4 requests/minute per
    project; each poll reads two data types, so at least 30 s apart)."""

    enabled: bool = True
    interval_s: float = Field(default=60.0, ge=30.0, le=86_400)
    lookback_s: float = Field(default=300.0, ge=0, le=86_400)


class ConsentInboundConfig(_Model):
    """[consent_inbound]: Iterable subscribe/unsubscribe events written to Salesforce."""

    webhook: ConsentWebhookConfig = ConsentWebhookConfig()
    poll: ConsentPollConfig = ConsentPollConfig()
    # An Iterable subscribe back to every group an object's opt-out stands for clears the
    # Salesforce opt-out; false leaves Salesforce opted out (only unsubscribes travel).
    apply_subscribes: bool = True
    retain_days: float = Field(default=7.0, gt=0, le=3650)


class LoggingConfig(_Model):
    """[logging]."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "human"] = "auto"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


@dataclass(frozen=True)
class Secrets:
    """Secrets from the environment or credential files; never printed."""

    sf_client_secret: SecretStr | None = None
    sf_private_key: SecretStr | None = None
    sf_refresh_token: SecretStr | None = None
    sf_password: SecretStr | None = None
    iterable_api_key: SecretStr | None = None
    iterable_webhook_secret: SecretStr | None = None
    store_password: SecretStr | None = None

    def values(self) -> list[str]:
        """Every secret value present (for the log redactor)."""
        out = []
        for s in (self.sf_client_secret, self.sf_private_key, self.sf_refresh_token,
                  self.sf_password, self.iterable_api_key, self.iterable_webhook_secret,
                  self.store_password):
            if s is not None:
                out.append(s.get_secret_value())
        return out


# name → (environment variable, credential file name)
SECRET_SOURCES: Final[dict[str, tuple[str, str]]] = {
    "sf_client_secret": ("STREAMSYNC_SF_CLIENT_SECRET", "sf_client_secret"),
    "sf_private_key": ("STREAMSYNC_SF_PRIVATE_KEY", "sf_private_key"),
    "sf_refresh_token": ("STREAMSYNC_SF_REFRESH_TOKEN", "sf_refresh_token"),
    "sf_password": ("STREAMSYNC_SF_PASSWORD", "sf_password"),
    "iterable_api_key": ("STREAMSYNC_ITERABLE_API_KEY", "iterable_api_key"),
    "iterable_webhook_secret": ("STREAMSYNC_ITERABLE_WEBHOOK_SECRET", "iterable_webhook_secret"),
    "store_password": ("STREAMSYNC_STORE_PASSWORD", "store_password"),
}
MIN_WEBHOOK_SECRET = 16
_NEEDED: Final[dict[str, tuple[str, ...]]] = {
    "jwt": ("sf_private_key",),
    "client_credentials": ("sf_client_secret",),
    "refresh_token": ("sf_refresh_token",),
    "password": ("sf_client_secret", "sf_password"),
}

DEFAULT_LEAD_MAPPING: Final = {
    "Email": "email",
    "Id": "dataFields.sfLeadId",
    "FirstName": "dataFields.firstName",
    "LastName": "dataFields.lastName",
    "Status": "dataFields.leadStatus",
    "LeadSource": "dataFields.leadSource",
    "Company": "dataFields.Company.Name",
    "Owner.Id": "dataFields.Owner.Id",
    "Owner.Name": "dataFields.Owner.Name",
    "Owner.Email": "dataFields.Owner.Email",
    "Owner.IsActive": "dataFields.Owner.IsActive",
}
DEFAULT_CONTACT_MAPPING: Final = {
    "Email": "email",
    "Id": "dataFields.sfContactId",
    "FirstName": "dataFields.firstName",
    "LastName": "dataFields.lastName",
    "LeadSource": "dataFields.leadSource",
    "Account.Id": "dataFields.Company.Id",
    "Account.Name": "dataFields.Company.Name",
    "Owner.Id": "dataFields.Owner.Id",
    "Owner.Name": "dataFields.Owner.Name",
    "Owner.Email": "dataFields.Owner.Email",
    "Owner.IsActive": "dataFields.Owner.IsActive",
}
DEFAULT_OBJECTS: Final[dict[str, dict[str, Any]]] = {
    "Lead": {"mapping": DEFAULT_LEAD_MAPPING},
    "Contact": {"mapping": DEFAULT_CONTACT_MAPPING},
    "Account": {"fan_out": [{"object": "Contact", "via": "AccountId"}]},
}


class Config(_Model):
    """The whole configuration, validated; `secrets` and `warnings` are filled by the loader."""

    salesforce: SalesforceConfig
    iterable: IterableConfig = IterableConfig()
    objects: dict[str, ObjectConfig] = Field(default_factory=dict)
    queue: QueueConfig = QueueConfig()
    flush: FlushConfig = FlushConfig()
    ingest: IngestConfig = IngestConfig()
    backfill: BackfillConfig = BackfillConfig()
    consent: ConsentConfig = ConsentConfig()
    lists: ListsConfig = ListsConfig()
    health: HealthConfig = HealthConfig()
    logging: LoggingConfig = LoggingConfig()
    consent_inbound: ConsentInboundConfig | None = None
    workers: WorkersConfig = WorkersConfig()
    events: list[EventRule] = Field(default_factory=list)
    event_delivery: EventDeliveryConfig = EventDeliveryConfig()
    store: StoreConfig = StoreConfig()
    secrets: Secrets = Field(default_factory=Secrets, exclude=True, repr=False)
    warnings: tuple[str, ...] = Field(default=(), exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _default_objects(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        objects = data.get("objects")
        if objects is None:
            objects = {name: {} for name in DEFAULT_OBJECTS}
        if not isinstance(objects, dict):
            return data
        filled = {}
        for name, raw in objects.items():
            if isinstance(raw, dict) and name in DEFAULT_OBJECTS:
                raw = {**DEFAULT_OBJECTS[name], **raw}
            filled[name] = raw
        return {**data, "objects": filled}

    @model_validator(mode="after")
    def _cross(self) -> Config:
        problems: list[tuple[str | tuple[str | int, ...], str]] = []
        if not self.objects:
            problems.append(("objects", "at least one object must be configured"))
        ptype = self.iterable.project_type
        for name, obj in self.objects.items():
            try:
                validate_identifier(name, "object")
            except SoqlError as exc:
                problems.append((("objects", name), str(exc)))
            if not obj.mapping and not obj.fan_out:
                problems.append((("objects", name), "needs a mapping, a fan_out, or both"))
            if ptype == "email" and obj.identity == "userId" and obj.writes_users:
                problems.append((("objects", name, "identity"), "email-based Iterable projects "
                                 "identify users by email: use 'email' or 'both'"))
            if ptype == "userId" and obj.identity == "email" and obj.writes_users:
                problems.append((("objects", name, "identity"), "userId-based Iterable projects "
                                 "identify users by userId: use 'userId' or 'both'"))
            if obj.converted_precedence is not None and name != "Lead":
                problems.append((("objects", name, "converted_precedence"),
                                 "only applies to Lead"))
            for i, fan in enumerate(obj.fan_out):
                if fan.object not in self.objects:
                    problems.append((("objects", name, "fan_out", i, "object"),
                                     f"{fan.object!r} is not a configured object"))
            if obj.delete_flag_field in obj.mapping.values() and obj.delete_policy == "flag":
                problems.append((("objects", name, "delete_flag_field"),
                                 "is also a mapping target"))
        problems.extend((("objects", name, "consent"), "needs a mapping: only objects that "
                         "write Iterable users carry consent")
                        for name, obj in self.objects.items()
                        if obj.consent is not None and not obj.writes_users)
        problems.extend(self._list_problems())
        problems.extend(problem for name, obj in self.objects.items()
                        for problem in _out_of_scope_problems(name, obj))
        problems.extend(_event_rule_problems(self))
        if problems:
            raise _problems(problems)
        return self

    def _list_problems(self) -> list[tuple[str | tuple[str | int, ...], str]]:
        problems: list[tuple[str | tuple[str | int, ...], str]] = []
        if self.lists.enabled and self.iterable.project_type == "userId":
            problems.append((("lists", "campaigns"), "lists subscribe members by email: a "
                             "userId-based Iterable project has no email identity"))
        seen: dict[str, int] = {}
        for i, entry in enumerate(self.lists.campaigns):
            key = (entry.campaign_id or "")[:15] or f"name:{entry.campaign_name}"
            if key in seen:
                problems.append((("lists", "campaigns", i), f"{entry.label} is already mapped "
                                 f"by lists.campaigns[{seen[key]}]"))
            seen.setdefault(key, i)
        return problems

    # -- derived values the runtime uses

    def channel(self, name: str) -> str:
        """The CDC channel of a configured object (or of CampaignMember, for [lists])."""
        obj = self.objects.get(name)
        return (obj.channel if obj is not None else None) or channel_for(name)

    def cdc_objects(self) -> tuple[str, ...]:
        """Every object whose changes are ingested and queued: the configured objects, and
        CampaignMember when [lists] maps any Campaign."""
        extra = (CAMPAIGN_MEMBER,) if self.lists.enabled and CAMPAIGN_MEMBER not in \
            self.objects else ()
        return (*self.objects, *extra)

    def consent_objects(self) -> dict[str, ObjectConsent]:
        """The objects that carry consent, with their consent settings."""
        return {name: obj.consent for name, obj in self.objects.items()
                if obj.consent is not None}

    def event_objects(self) -> list[str]:
        """Objects some event rule listens to, each once, in configuration order."""
        return list(dict.fromkeys(rule.object for rule in self.events))

    def converted_precedence(self) -> Literal["contact", "lead"]:
        lead = self.objects.get("Lead")
        return (lead.converted_precedence if lead and lead.converted_precedence else "contact")


def _event_rule_problems(cfg: Config) -> list[tuple[str | tuple[str | int, ...], str]]:
    problems: list[tuple[str | tuple[str | int, ...], str]] = []
    seen: dict[str, int] = {}
    for i, rule in enumerate(cfg.events):
        if rule.name in seen:
            problems.append((("events", i, "name"),
                             f"{rule.name!r} is also the name of events[{seen[rule.name]}]"))
        seen.setdefault(rule.name, i)
        if rule.profile == PROFILE_PRIMARY_CONTACT and rule.object != "Opportunity":
            problems.append((("events", i, "profile"),
                             "primary_contact_role only applies to Opportunity rules"))
        if rule.profile == PROFILE_RECORD and rule.object not in cfg.objects \
                and cfg.iterable.project_type == "userId":
            problems.append((("events", i, "profile"), f"{rule.object} is not a synced object: "
                             "name the path to its user's id (e.g. ContactId)"))
        if rule.changed_fields and rule.trigger != ["update"]:
            problems.append((("events", i, "changed_fields"),
                             "only applies to a rule whose trigger is update alone"))
    return problems


# ---------------------------------------------------------------- loading


def _key(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else '"' + part + '"'
        out += ("." if out else "") + text
    return out


_SECTIONS: Final[dict[str, type[BaseModel]]] = {
    "salesforce": SalesforceConfig, "iterable": IterableConfig, "queue": QueueConfig,
    "flush": FlushConfig, "ingest": IngestConfig, "backfill": BackfillConfig,
    "health": HealthConfig, "logging": LoggingConfig, "consent": ConsentConfig,
    "lists": ListsConfig,
    "consent_inbound": ConsentInboundConfig,
    "workers": WorkersConfig, "event_delivery": EventDeliveryConfig,
}


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    if len(loc) == 1:
        return Config
    if len(loc) == 2 and isinstance(loc[0], str):
        return _SECTIONS.get(loc[0])
    if len(loc) == 3 and loc[0] == "objects":
        return ObjectConfig
    if len(loc) == 4 and loc[0] == "objects" and loc[2] == "consent":
        return ObjectConsent
    if len(loc) == 5 and loc[0] == "objects" and loc[2] == "fan_out":
        return FanOut
    if len(loc) == 4 and loc[:2] == ("lists", "campaigns"):
        return CampaignList
    if len(loc) == 3 and loc[0] == "events":
        return EventRule
    return None


def _format_errors(exc: ValidationError) -> list[str]:
    lines: list[str] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, ConfigProblems):
            for sub, message in ctx_error.items:
                lines.append(f"{_key((*loc, *(sub if isinstance(sub, tuple) else (sub,))))}: "
                             f"{message}")
            continue
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            model = _model_at(loc)
            hint = ""
            if model is not None:
                close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
            message = f"unknown key{hint}"
        elif err["type"] == "missing":
            message = "required key is missing"
        elif err["type"] != "value_error" and not isinstance(err.get("input"), dict | list):
            message += f" (got {err.get('input')!r:.60})"
        lines.append(f"{_key(loc) or '(top level)'}: {message}")
    return lines


def _secret_keys(data: Mapping[str, Any], prefix: tuple[str, ...] = ()
                 ) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for key, value in data.items():
        path = (*prefix, str(key))
        if len(path) == 3 and path[0] == "objects" and path[2] == "mapping":
            continue
        lowered = str(key).lower()
        is_object_name = len(path) == 2 and path[0] == "objects"
        if not is_object_name and any(h in lowered for h in SECRET_KEY_HINTS):
            found.append(path)
            continue
        if isinstance(value, Mapping):
            found.extend(_secret_keys(value, path))
    return found


def _without(data: Mapping[str, Any], paths: list[tuple[str, ...]]) -> dict[str, Any]:
    """A copy of `data` with the given key paths removed."""
    out = dict(data)
    for path in paths:
        node: dict[str, Any] = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, Mapping):
                break
            node[part] = dict(child)
            node = node[part]
        else:
            node.pop(path[-1], None)
    return out


def _secret_hint(key: str) -> str:
    lowered = key.lower()
    for name, (env_name, cred) in SECRET_SOURCES.items():
        if lowered in name or name.endswith(lowered):
            return f"set {env_name} or the credential file $CREDENTIALS_DIRECTORY/{cred}"
    return ("use an environment variable STREAMSYNC_... or a file in $CREDENTIALS_DIRECTORY")


def _read_secret_file(path: Path, origin: str) -> SecretStr:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{origin}: secret file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read secret file {path}: "
                          f"{exc.strerror or type(exc).__name__}") from None
    if not text:
        raise ConfigError(f"{origin}: secret file {path} is empty")
    return SecretStr(text)


def load_secrets(env: Mapping[str, str]) -> tuple[Secrets, list[str]]:
    """Secrets from `env` (NAME, NAME_FILE) or `$CREDENTIALS_DIRECTORY/<file>`; and problems."""
    values: dict[str, SecretStr | None] = {}
    problems: list[str] = []
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    for name, (env_name, cred_name) in SECRET_SOURCES.items():
        value: SecretStr | None = None
        try:
            if env.get(env_name):
                value = SecretStr(env[env_name].strip())
            elif env.get(env_name + "_FILE"):
                value = _read_secret_file(Path(env[env_name + "_FILE"]), env_name + "_FILE")
            elif cred_dir and (Path(cred_dir) / cred_name).exists():
                value = _read_secret_file(Path(cred_dir) / cred_name, "CREDENTIALS_DIRECTORY")
        except ConfigError as exc:
            problems.append(str(exc))
        values[name] = value
    if values["store_password"] is None and env.get("PGPASSWORD"):
        values["store_password"] = SecretStr(env["PGPASSWORD"])  # libpq's own variable
    key = values["sf_private_key"]
    if key is not None and "-----BEGIN" not in key.get_secret_value():
        problems.append("STREAMSYNC_SF_PRIVATE_KEY: the private key is not in PEM format "
                        "(expected a -----BEGIN ... PRIVATE KEY----- block)")
    return Secrets(**values), problems


def _missing_secrets(auth: str, secrets: Secrets) -> list[str]:
    needed = [*_NEEDED.get(auth, ()), "iterable_api_key"]
    out = []
    for name in needed:
        if getattr(secrets, name) is None:
            env_name, cred = SECRET_SOURCES[name]
            out.append(f"secret {name} is missing (needed by "
                       f"{'Iterable' if name.startswith('iterable') else auth}"
                       f" auth): set {env_name}, {env_name}_FILE or "
                       f"$CREDENTIALS_DIRECTORY/{cred}")
    return out


def _webhook_secret_problems(cfg: Config | None, secrets: Secrets,
                             require_secrets: bool) -> list[str]:
    """The webhook receiver needs its shared secret, long enough not to be guessed."""
    inbound = cfg.consent_inbound if cfg is not None else None
    if inbound is None:
        return []
    if cfg is not None and not cfg.consent_objects():
        return ["consent_inbound: needs at least one object with [objects.<Name>.consent] "
                "(which fields an Iterable unsubscribe sets)"]
    if not inbound.webhook.enabled:
        return []
    env_name, cred = SECRET_SOURCES["iterable_webhook_secret"]
    secret = secrets.iterable_webhook_secret
    if secret is None:
        return [f"secret iterable_webhook_secret is missing (needed by "
                f"consent_inbound.webhook): set {env_name}, {env_name}_FILE or "
                f"$CREDENTIALS_DIRECTORY/{cred}"] if require_secrets else []
    if len(secret.get_secret_value()) < MIN_WEBHOOK_SECRET:
        return [f"{env_name}: the webhook secret must be at least {MIN_WEBHOOK_SECRET} "
                "characters"]
    return []


def parse_config(data: Mapping[str, Any], env: Mapping[str, str], *,
                 base_dir: Path | None = None, require_secrets: bool = True) -> Config:
    """Validate parsed TOML; every problem is reported at once in one ConfigError."""
    secret_keys = _secret_keys(data)
    problems = [f"{_key(k)}: secrets are never read from the config file; {_secret_hint(k[-1])}"
                for k in secret_keys]
    internal = [k for k in ("warnings",) if k in data]
    problems.extend(f"{k}: unknown key" for k in internal)
    cfg: Config | None = None
    try:
        cfg = Config.model_validate(_without(data, secret_keys + [(k,) for k in internal]))
    except ValidationError as exc:
        problems.extend(_format_errors(exc))
    secrets, secret_problems = load_secrets(env)
    problems.extend(secret_problems)
    if require_secrets:
        sf = data.get("salesforce")
        auth = cfg.salesforce.auth if cfg else (sf.get("auth", "jwt") if isinstance(sf, Mapping)
                                                else "jwt")
        problems.extend(_missing_secrets(str(auth), secrets))
    problems.extend(_webhook_secret_problems(cfg, secrets, require_secrets))
    if problems or cfg is None:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    warnings: list[str] = []
    if cfg.salesforce.auth == "password":
        warnings.append("salesforce.auth = 'password': Salesforce retires the username-password "
                        f"flow on {PASSWORD_FLOW_RETIREMENT}; move to 'jwt' or "
                        "'client_credentials'")
    for key, url in (("salesforce.login_url", cfg.salesforce.login_url),
                     ("salesforce.instance_url", cfg.salesforce.instance_url),
                     ("iterable.base_url", cfg.iterable.base_url)):
        if url and _is_plain_remote(url):
            warnings.append(f"{key} uses plain http to a non-local host: secrets travel "
                            "unencrypted")
    queue_path = Path(cfg.queue.path)
    if base_dir is not None and not queue_path.is_absolute():
        queue_path = base_dir / queue_path
    for value in secrets.values():
        redactor().add(value)
    log = get_logger(__name__)
    for warning in warnings:
        log.warning("config.warning", message=warning)
    return cfg.model_copy(update={"secrets": secrets, "warnings": tuple(warnings),
                                  "queue": cfg.queue.model_copy(
                                      update={"path": str(queue_path)})})


def load_config(path: str | Path, env: Mapping[str, str], *,
                require_secrets: bool = True) -> Config:
    """Read and validate config.toml; relative paths in it are relative to its directory."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: "
                          f"{exc.strerror or type(exc).__name__}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    return parse_config(data, env, base_dir=file.resolve().parent,
                        require_secrets=require_secrets)
