"""Salesforce record → Iterable user: the mapping, validated and compiled once, applied fast."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final, Literal

import orjson

from streamsync.core.ids import is_valid_id, to_18
from streamsync.core.soql import validate_field_path
from streamsync.errors import ConfigError, RecordError, SoqlError
from streamsync.models import DeadLetterReason as R
from streamsync.models import MappedUser

Identity = Literal["email", "userId", "both"]
NullPolicy = Literal["omit", "clear"]

MAX_VALUE_CHARS: Final = 32_000          # Iterable: values up to ~32k chars, docs/iterable.md §9.2
MAX_FIELD_NAME_CHARS: Final = 128
MAX_TARGET_DEPTH: Final = 8
MAX_USER_ID_CHARS: Final = 52
_INT64: Final = 2**63

COMPOUND_COMPONENTS: Final = frozenset({
    "street", "city", "state", "postalcode", "country", "statecode", "countrycode",
    "latitude", "longitude", "geocodeaccuracy",
})
RESERVED_TARGETS: Final = frozenset({"email", "userId"})
_NUMERIC_COMPONENTS: Final = frozenset({"latitude", "longitude"})
MANAGED_FIELDS: Final = frozenset({
    "emailListIds", "itblInternal", "profileUpdatedAt", "signupDate", "signupSource",
    "subscribedMessageTypeIds", "unsubscribedChannelIds", "unsubscribedMessageTypeIds",
    "itblUserId", "userListIds", "phoneNumberDetails", "itblDS",
})

_DATETIME_RE: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})"
)
_DATE_RE: Final = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_BAD_CHARS_RE: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# Apache Commons EmailValidator's rules, which Iterable uses: a local part of dot-separated words
# without spaces, controls or specials; a domain of valid labels under an alphabetic TLD (IDN
# domains checked in their punycode form), or an IPv4 literal.
_LOCAL_WORD: Final = r"[^\s\x00-\x1f\x7f()<>@,;:\\\"\[\].]+"
_LOCAL_RE: Final = re.compile(rf"{_LOCAL_WORD}(?:\.{_LOCAL_WORD})*")
_DOMAIN_RE: Final = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})")
_IP_LITERAL_RE: Final = re.compile(r"\[(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\]")
_RESERVED_TLDS: Final = frozenset({"test", "example", "invalid", "localhost", "local",
                                   "localdomain"})
_TARGET_CTRL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")


# ---------------------------------------------------------------- value conversion


def iterable_date(value: str) -> str | None:
    """A Salesforce date or datetime string as `yyyy-MM-dd HH:mm:ss +00:00` (UTC), else None
    (docs/iterable.md §9.3)."""
    n = len(value)
    if n == 10:
        m = _DATE_RE.fullmatch(value)
        if m is None:
            return None
        try:
            moment = datetime(int(m[1]), int(m[2]), int(m[3]), tzinfo=UTC)
        except ValueError:
            return None
    elif 20 <= n <= 35:
        m = _DATETIME_RE.fullmatch(value)
        if m is None:
            return None
        tz = m[7]
        try:
            if tz == "Z":
                offset = timedelta(0)
            else:
                hours, minutes = int(tz[1:3]), int(tz[-2:])
                if hours > 23 or minutes > 59:
                    return None
                offset = timedelta(hours=hours, minutes=minutes) * (-1 if tz[0] == "-" else 1)
            moment = datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6]),
                              tzinfo=timezone(offset)).astimezone(UTC)
        except (ValueError, OverflowError):
            return None
    else:
        return None
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d} "
            f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} +00:00")


def clean_text(value: str) -> str:
    """Drop control characters (tab, CR, LF kept) and replace lone surrogates with U+FFFD."""
    if _BAD_CHARS_RE.search(value) is None:
        return value
    return _BAD_CHARS_RE.sub(lambda m: "" if m.group() < "\ud800" else "\ufffd", value)


def convert_value(value: Any, target: str) -> Any:
    """One SOQL JSON value as Iterable should receive it (text stays text, numbers and booleans
    keep their JSON type); RecordError when it cannot be sent."""
    if value is None:
        return None
    if type(value) is str:
        text = clean_text(value)
        if len(text) > MAX_VALUE_CHARS:
            raise RecordError(R.VALUE_TOO_LONG,
                              f"{target}: {len(text)} characters (limit {MAX_VALUE_CHARS})")
        return text
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise RecordError(R.INVALID_VALUE, f"{target}: integer out of 64-bit range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RecordError(R.INVALID_VALUE, f"{target}: {value} is not a finite number")
        return value
    if isinstance(value, str):  # a str subclass
        return convert_value(str(value), target)
    return _convert_structured(value, target)


def _convert_structured(value: Any, target: str) -> Any:
    """A compound field (an address, a location) or a list, converted value by value."""
    if isinstance(value, dict):
        out = {clean_text(str(k)): convert_value(v, target)
               for k, v in value.items() if k != "attributes"}
    elif isinstance(value, list):
        out = [convert_value(v, target) for v in value]  # type: ignore[assignment]
    else:
        raise RecordError(R.INVALID_VALUE, f"{target}: unsupported value type "
                                           f"{type(value).__name__}")
    if len(orjson.dumps(out)) > MAX_VALUE_CHARS:
        raise RecordError(R.VALUE_TOO_LONG, f"{target}: structured value over {MAX_VALUE_CHARS}"
                                            " characters")
    return out


def convert_date_value(value: Any, target: str) -> Any:
    """A value of a Salesforce date or datetime field: Iterable's date format when it parses,
    else as `convert_value` sends it."""
    if isinstance(value, str):
        date = iterable_date(value)
        if date is not None:
            return date
    return convert_value(value, target)


def normalize_email(value: Any) -> str:
    """Stripped, lower-cased, validated like Iterable (format and TLD; docs/iterable.md §9.1);
    RecordError otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RecordError(R.MISSING_EMAIL, "the record has no email")
    if not isinstance(value, str):
        raise RecordError(R.INVALID_EMAIL, f"email is a {type(value).__name__}, not text")
    email = value.strip().lower()
    if not _valid_email(email):
        shown = clean_text(email)[:80]
        raise RecordError(R.INVALID_EMAIL, f"not a valid email address: {shown!r}")
    return email


def _valid_email(email: str) -> bool:
    local, at, domain = email.rpartition("@")
    if not at or len(email) > 254 or not 0 < len(local) <= 64:
        return False
    if _LOCAL_RE.fullmatch(local) is None:
        return False
    ip = _IP_LITERAL_RE.fullmatch(domain)
    if ip is not None:
        return all(int(part) <= 255 for part in ip.groups())
    if not domain.isascii():
        if any(label.startswith("-") or label.endswith("-") for label in domain.split(".")):
            return False
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return False
    return (_DOMAIN_RE.fullmatch(domain) is not None
            and domain.rsplit(".", 1)[-1] not in _RESERVED_TLDS)


def normalize_user_id(value: Any, from_id_field: bool) -> str:
    """An Iterable userId: the 18-character Salesforce Id, or printable ASCII up to 52 chars
    (docs/iterable.md §9.1)."""
    if value is None or value == "":
        raise RecordError(R.MISSING_USER_ID, "the record has no value for userId")
    if from_id_field and is_valid_id(value):
        return to_18(value)
    text = value if isinstance(value, str) else str(value)
    if (len(text) > MAX_USER_ID_CHARS or not text.isascii() or not text.isprintable()
            or text != text.strip()):
        raise RecordError(R.INVALID_USER_ID, f"userId not accepted by Iterable: {text[:60]!r}")
    return text


def payload_hash(payload: Mapping[str, Any]) -> str:
    """A stable hash of a payload (sorted keys), for skipping unchanged records."""
    return hashlib.blake2b(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS),
                           digest_size=16).hexdigest()


# ---------------------------------------------------------------- config-time checks


@dataclass(frozen=True, slots=True)
class SourcePath:
    """A mapped source: the SOQL field to select and the keys to walk in the JSON record."""

    path: str
    soql_field: str
    keys: tuple[str, ...]
    component: str | None  # compound field component (`city` of `MailingAddress.city`)


def parse_source(path: str) -> SourcePath:
    """Validate a dotted source path; compound components (`MailingAddress.city`) recognised."""
    try:
        validate_field_path(path)
    except SoqlError as exc:
        raise ValueError(str(exc)) from None
    parts = path.split(".")
    if (len(parts) >= 2 and parts[-1].lower() in COMPOUND_COMPONENTS
            and parts[-2].lower().endswith(("address", "location", "__s"))):
        return SourcePath(path, ".".join(parts[:-1]), tuple(parts), parts[-1])
    return SourcePath(path, path, tuple(parts), None)


def target_problem(target: object) -> str | None:
    """Why Iterable cannot take this target name, or None when it can."""
    if not isinstance(target, str):
        return "the target must be a string"
    if target in RESERVED_TARGETS:
        return None
    if not target.startswith("dataFields."):
        return (f"target {target!r:.80} must be `email`, `userId` or `dataFields.<name>` "
                "(nested names separated by dots)")
    segments = target.split(".")[1:]
    if len(segments) > MAX_TARGET_DEPTH:
        return f"target nests deeper than {MAX_TARGET_DEPTH} levels"
    for seg in segments:
        if not seg:
            return f"target {target!r:.80} has an empty name segment"
        if seg != seg.strip():
            return f"field name {seg!r:.80} has leading or trailing spaces"
        if len(seg) > MAX_FIELD_NAME_CHARS:
            return f"field name {seg[:40]!r}... is longer than {MAX_FIELD_NAME_CHARS} characters"
        if _TARGET_CTRL_RE.search(seg) or not seg.isprintable():
            return f"field name {seg!r:.80} contains control characters"
    if segments[0] in RESERVED_TARGETS:
        return (f"dataFields.{segments[0]} is Iterable's own identifier: map to the "
                f"`{segments[0]}` target instead")
    if segments[0] in MANAGED_FIELDS:
        return f"dataFields.{segments[0]} is managed by Iterable and cannot be written"
    return None


def mapping_problems(mapping: Mapping[str, str]) -> list[tuple[str, str]]:
    """Every problem of a mapping table as (source key, message); empty when it is valid."""
    problems: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for source, target in mapping.items():
        try:
            parse_source(source)
        except ValueError as exc:
            problems.append((source, str(exc)))
        problem = target_problem(target)
        if problem is not None:
            problems.append((source, problem))
            continue
        if target in seen:
            problems.append((source, f"target {target!r} is also mapped from {seen[target]!r}"))
        seen.setdefault(target, source)
    data_targets = sorted(t for t in seen if t.startswith("dataFields."))
    for shorter, longer in zip(data_targets, data_targets[1:], strict=False):
        if longer.startswith(shorter + "."):
            problems.append((seen[longer], f"target {longer!r} is nested inside {shorter!r}, "
                                           f"which {seen[shorter]!r} maps to a value"))
    return problems


# ---------------------------------------------------------------- the compiled mapping


@dataclass(frozen=True, slots=True)
class _Slot:
    keys: tuple[str, ...]
    container: tuple[str, ...]
    leaf: str
    target: str
    dates: bool


DATE_TYPES: Final = frozenset({"date", "datetime"})
TEXT_TYPES: Final = frozenset({
    "string", "textarea", "picklist", "multipicklist", "combobox", "email", "phone", "url",
    "id", "reference", "encryptedstring", "time",
})


def iterable_field_type(sf_type: str, convert_dates: bool = True) -> str | None:
    """The Iterable field type a Salesforce field's values take when sent: `string` for text,
    `date` for (converted) dates, `boolean`; None when not fixed by the type (numbers may be
    long or double, structures are objects)."""
    kind = sf_type.lower()
    if kind in DATE_TYPES:
        return "date" if convert_dates else "string"
    if kind in TEXT_TYPES:
        return "string"
    if kind == "boolean":
        return "boolean"
    return None


def _converts_dates(enabled: bool, src: SourcePath, sf_type: str) -> bool:
    """Only whole date and datetime fields (by their describe type) become Iterable dates."""
    return enabled and src.component is None and sf_type.lower() in DATE_TYPES


def _lookup(node: Any, key: str) -> Any:
    if key in node:
        return node[key]
    lowered = key.lower()
    for k, v in node.items():
        if isinstance(k, str) and k.lower() == lowered:
            return v
    return None


def _walk(record: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    node: Any = record
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = _lookup(node, key)
        if node is None:
            return None
    return node


def _clearable(targets: Iterable[str], mapped: Iterable[str]) -> tuple[str, ...]:
    """The data-field targets to clear that no mapped target equals, contains or nests in."""
    taken = [t for t in mapped if t.startswith("dataFields.")]
    out: list[str] = []
    for target in sorted(set(targets)):
        if target_problem(target) is not None or not target.startswith("dataFields."):
            continue
        if any(t == target or t.startswith(target + ".") or target.startswith(t + ".")
               for t in taken) or any(target.startswith(t + ".") for t in out):
            continue
        out.append(target)
    return tuple(out)


def _set_nulls(data: dict[str, Any], paths: Iterable[tuple[str, ...]]) -> None:
    """Set each nested key path of `data` to None (the targets a re-sync clears)."""
    for keys in paths:
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[keys[-1]] = None


class CompiledMapping:
    """One object's mapping, validated and laid out once; `map()` is the per-record fast path.

    `source_types` maps every mapped source path to its Salesforce describe type: only date and
    datetime fields become Iterable dates, so a text field that merely looks like a date (or a
    number, or a boolean) is sent as the text it is.
    """

    def __init__(self, object_name: str, mapping: Mapping[str, str], *,
                 identity: Identity = "email", email_field: str = "Email",
                 user_id_field: str = "Id", null_policy: NullPolicy = "clear",
                 convert_dates: bool = True, extra_fields: Iterable[str] = (),
                 source_types: Mapping[str, str], clear_targets: Iterable[str] = ()) -> None:
        problems = mapping_problems(mapping)
        flagged = {source for source, _ in problems}
        problems.extend((source, "no Salesforce field type known for it (describe)")
                        for source in mapping
                        if source not in source_types and source not in flagged)
        for name, value in (("email_field", email_field), ("user_id_field", user_id_field)):
            try:
                validate_field_path(value)
            except SoqlError as exc:
                problems.append((name, str(exc)))
        if problems:
            raise ConfigError("; ".join(f"{object_name} mapping {k!r}: {m}" for k, m in problems))
        self.object_name = object_name
        self.identity: Identity = identity
        self.null_policy: NullPolicy = null_policy
        self.convert_dates = convert_dates
        self.mapping = dict(mapping)
        self.sources = tuple(parse_source(s) for s in mapping)
        by_target = {t: s for s, t in mapping.items()}
        self.email_source = parse_source(by_target.get("email", email_field))
        self.user_id_source = parse_source(by_target.get("userId", user_id_field))
        self.send_email = identity in ("email", "both") or "email" in by_target
        self.send_user_id = identity in ("userId", "both") or "userId" in by_target
        self._user_id_is_id = self.user_id_source.path.lower() == "id"
        slots = []
        for src in self.sources:
            target = mapping[src.path]
            if target in RESERVED_TARGETS:
                continue
            segments = tuple(target.split(".")[1:])
            slots.append(_Slot(src.keys, segments[:-1], segments[-1], target,
                               _converts_dates(convert_dates, src, source_types[src.path])))
        self._slots = tuple(slots)
        self.clear_targets = _clearable(clear_targets, mapping.values())
        self._clears = tuple(tuple(t.split(".")[1:]) for t in self.clear_targets)
        self.source_types = dict(source_types)
        self._extra = tuple(validate_field_path(f) for f in extra_fields)

    def field_descriptions(self) -> dict[str, dict[str, str]]:
        """Each data-field target: its source path and how its values are converted
        (`date`, or `as-is (<Salesforce type>)`), for the mapping fingerprint."""
        out: dict[str, dict[str, str]] = {}
        for slot, src in zip(self._slots, (s for s in self.sources
                                           if self.mapping[s.path] not in RESERVED_TARGETS),
                             strict=True):
            kind = self.source_types.get(src.path, "").lower() or "unknown"
            out[slot.target] = {"source": src.path,
                                "convert": "date" if slot.dates else f"as-is ({kind})"}
        return out

    def with_clears(self, targets: Iterable[str]) -> CompiledMapping:
        """This mapping, also sending null for `targets` (dropped from the mapping and still
        held by Iterable) while a re-sync clears them."""
        return CompiledMapping(
            self.object_name, self.mapping, identity=self.identity,
            email_field=self.email_source.path, user_id_field=self.user_id_source.path,
            null_policy=self.null_policy, convert_dates=self.convert_dates,
            extra_fields=self._extra, source_types=self.source_types, clear_targets=targets)

    def iterable_types(self) -> list[tuple[str, str, str]]:
        """(source, Iterable field name, the Iterable type its values take) of each mapped data
        field whose type is fixed by its Salesforce type (`dataFields.Company.Name` is named
        `Company.Name`, as getFields names it)."""
        out: list[tuple[str, str, str]] = []
        for src in self.sources:
            target = self.mapping[src.path]
            sf_type = "string" if src.component is not None else self.source_types[src.path]
            kind = iterable_field_type(sf_type, self.convert_dates)
            if kind is not None and target.startswith("dataFields.") and (
                    src.component is None or src.component.lower() not in _NUMERIC_COMPONENTS):
                out.append((src.path, target.removeprefix("dataFields."), kind))
        return out

    def soql_fields(self, *extra: str) -> list[str]:
        """The distinct SOQL fields this mapping reads: Id first, then identity, then mapped."""
        wanted = ["Id", self.email_source.soql_field, self.user_id_source.soql_field,
                  *(s.soql_field for s in self.sources), *self._extra, *extra]
        out: dict[str, str] = {}
        for f in wanted:
            validate_field_path(f)
            out.setdefault(f.lower(), f)
        return list(out.values())

    def map(self, record: Mapping[str, Any]) -> MappedUser:
        """Map one SOQL JSON record; raises RecordError with a dead-letter reason."""
        sf_id = to_18(_walk(record, ("Id",)))
        payload: dict[str, Any] = {}
        email: str | None = None
        user_id: str | None = None
        if self.send_email:
            raw = _walk(record, self.email_source.keys)
            if self.identity == "userId":
                try:
                    email = normalize_email(raw)
                except RecordError:
                    email = None
            else:
                email = normalize_email(raw)
            if email is not None:
                payload["email"] = email
        if self.send_user_id:
            raw = _walk(record, self.user_id_source.keys)
            user_id = normalize_user_id(raw, self._user_id_is_id)
            payload["userId"] = user_id
        data: dict[str, Any] = {}
        omit = self.null_policy == "omit"
        for slot in self._slots:
            value = _walk(record, slot.keys)
            if value is None:
                if omit:
                    continue
            else:
                value = (convert_date_value(value, slot.target) if slot.dates
                         else convert_value(value, slot.target))
            node = data
            for key in slot.container:
                child = node.get(key)
                if not isinstance(child, dict):
                    child = node[key] = {}
                node = child
            node[slot.leaf] = value
        _set_nulls(data, self._clears)
        if data:
            payload["dataFields"] = data
        return MappedUser(self.object_name, sf_id, email, user_id, payload,
                          payload_hash(payload))

    def flag_user(self, sf_id: str, email: str | None, user_id: str | None, flag_target: str,
                  deleted: bool = True) -> MappedUser:
        """The update that marks a deleted (or undeleted) record's profile: `delete_policy=flag`.

        `email`/`user_id` come from the identity table, since Salesforce no longer returns the
        record; the flag is the only data field sent.
        """
        problem = target_problem(flag_target)
        if problem is not None or not flag_target.startswith("dataFields."):
            raise ConfigError(f"{self.object_name} delete flag {flag_target!r}: "
                              f"{problem or 'must be a dataFields.<name> target'}")
        payload: dict[str, Any] = {}
        if email is not None:
            payload["email"] = email
        if user_id is not None:
            payload["userId"] = user_id
        if not payload:
            raise RecordError(R.MISSING_EMAIL, f"no known Iterable identity for {sf_id}")
        node = payload.setdefault("dataFields", {})
        segments = flag_target.split(".")[1:]
        for key in segments[:-1]:
            node = node.setdefault(key, {})
        node[segments[-1]] = deleted
        return MappedUser(self.object_name, to_18(sf_id), email, user_id, payload,
                          payload_hash(payload))

    def map_or_error(self, record: Mapping[str, Any]) -> MappedUser | RecordError:
        """`map()` that returns the RecordError instead of raising it."""
        try:
            return self.map(record)
        except RecordError as exc:
            return exc
