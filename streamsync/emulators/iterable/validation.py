"""Iterable's value rules: email and userId validation, date formats, field-type inference."""

from __future__ import annotations

import re
from datetime import date
from typing import Any, Final

# Top-level domains accepted by the email check (Apache Commons EmailValidator checks the IANA
# list; this is the generic set plus every ISO 3166 country code, which covers real traffic).
_GENERIC_TLDS: Final = (
    "com net org edu gov mil int info biz name pro aero coop museum mobi asia tel travel jobs cat "
    "post xxx arpa io ai app dev email online site store tech cloud shop blog news live life world "
    "today company solutions services agency digital network systems group global media studio "
    "design software marketing consulting finance capital ventures partners center academy school "
    "university health care clinic law legal bank insurance money energy work works zone space "
    "website page link click one top xyz club vip win bid trade market sale run fun art city "
    "london nyc paris berlin tokyo amsterdam"
)
_COUNTRY_TLDS: Final = (
    "ac ad ae af ag ai al am ao aq ar as at au aw ax az ba bb bd be bf bg bh bi bj bm bn bo br bs "
    "bt bw by bz ca cc cd cf cg ch ci ck cl cm cn co cr cu cv cw cx cy cz de dj dk dm do dz ec ee "
    "eg er es et eu fi fj fk fm fo fr ga gb gd ge gf gg gh gi gl gm gn gp gq gr gs gt gu gw gy hk "
    "hm hn hr ht hu id ie il im in iq ir is it je jm jo jp ke kg kh ki km kn kp kr kw ky kz la lb "
    "lc li lk lr ls lt lu lv ly ma mc md me mg mh mk ml mm mn mo mp mq mr ms mt mu mv mw mx my mz "
    "na nc ne nf ng ni nl no np nr nu nz om pa pe pf pg ph pk pl pm pn pr ps pt pw py qa re ro rs "
    "ru rw sa sb sc sd se sg sh si sk sl sm sn so sr ss st su sv sx sy sz tc td tf tg th tj tk tl "
    "tm tn to tr tt tv tw tz ua ug uk us uy uz va vc ve vg vi vn vu wf ws ye yt za zm zw"
)
# Reserved names (RFC 2606: example, test, invalid, localhost) are absent on purpose.
VALID_TLDS: Final[frozenset[str]] = frozenset((_GENERIC_TLDS + " " + _COUNTRY_TLDS).split())

# Apache Commons EmailValidator's user part: dot-separated words of characters that are neither
# whitespace, control characters nor specials, or quoted strings.
_SPECIALS = r"\x00-\x1f\x7f()<>@,;:\\\"\.\[\]"
_WORD = rf"(?:(?:\\.|[^\s{_SPECIALS}])+|\"(?:\\\"|[^\"])*\")"
_LOCAL_RE: Final = re.compile(rf"{_WORD}(?:\.{_WORD})*\Z")
_LABEL_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_IP_LITERAL_RE: Final = re.compile(r"\[(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\]\Z")
_MAX_LOCAL_LEN: Final = 64
_MAX_EMAIL_LEN: Final = 254

# Iterable's date formats (Field Data Types): yyyy-MM-dd, yyyy-MM-dd HH:mm:ss,
# yyyy-MM-dd HH:mm:ss ZZ, yyyy-MM-dd'T'HH:mm:ss.SSSZZ and yyyy-MM-dd'T'HH:mm:ss.SSSZ.
# Joda's offset parser takes "Z", "+hh:mm" and "+hhmm" for both Z and ZZ. Fractional seconds
# only exist in the 'T' form: "2020-04-13 14:04:09.000" is a string, not a date.
_OFFSET = r"(?:Z|[+-]\d{2}:?\d{2})"
_DATE_RE: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    rf"(?:| (\d{{2}}):(\d{{2}}):(\d{{2}})(?: {_OFFSET})?"
    rf"|T(\d{{2}}):(\d{{2}}):(\d{{2}})\.\d{{3}}{_OFFSET})"
    r"\Z"
)

MAX_USER_ID_LEN: Final = 52

# The types getFields reports.
STRING: Final = "string"
LONG: Final = "long"
DOUBLE: Final = "double"
BOOLEAN: Final = "boolean"
DATE: Final = "date"
OBJECT: Final = "object"
GEO: Final = "geo_location"


def normalize_email(raw: str) -> str | None:
    """The lower-cased address if `raw` is a valid email (format and TLD), else None."""
    if len(raw) > _MAX_EMAIL_LEN or raw.endswith("."):
        return None
    at = raw.rfind("@")
    if at <= 0 or at == len(raw) - 1:
        return None
    local, domain = raw[:at], raw[at + 1 :].lower()
    if len(local) > _MAX_LOCAL_LEN or _LOCAL_RE.match(local) is None:
        return None
    if not _valid_domain(domain):
        return None
    return raw.lower()


def _valid_domain(domain: str) -> bool:
    ip = _IP_LITERAL_RE.match(domain)
    if ip is not None:
        return all(int(part) <= 255 for part in ip.groups())
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return False
    labels = domain.split(".")
    if len(labels) < 2 or labels[-1] not in VALID_TLDS:
        return False
    return all(_LABEL_RE.match(label) is not None for label in labels)


def user_id_problem(user_id: str) -> str | None:
    """Why `user_id` is not a valid Iterable userId, or None when it is."""
    if user_id == "" or user_id.strip() == "":
        return "userId is empty"
    if len(user_id) > MAX_USER_ID_LEN:
        return f"userId is longer than {MAX_USER_ID_LEN} characters"
    if not user_id.isascii() or not user_id.isprintable():
        return "userId contains non-ASCII or non-printable characters"
    if user_id.endswith(" "):
        return "userId ends with a space"
    return None


def is_iterable_date(value: str) -> bool:
    """Whether `value` is in one of Iterable's date formats and names a real calendar date."""
    if len(value) < 10 or not value[0].isdigit():
        return False
    m = _DATE_RE.match(value)
    if m is None:
        return False
    try:
        date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return False
    hh, mm, ss = m.group(4) or m.group(7), m.group(5) or m.group(8), m.group(6) or m.group(9)
    if hh is not None and (int(hh) > 23 or int(mm) > 59 or int(ss) > 59):
        return False
    return True


def value_type(name: str, value: Any) -> str:
    """The Iterable field type of a non-null value (arrays take the type of their elements)."""
    cls = type(value)
    if cls is str:
        return DATE if is_iterable_date(value) else STRING
    if cls is bool:
        return BOOLEAN
    if cls is int:
        return LONG
    if cls is float:
        return DOUBLE
    if cls is dict:
        if name.endswith("_geo_location") and set(value) == {"lat", "lon"}:
            return GEO
        return OBJECT
    if cls is list:
        for item in value:
            if item is not None:
                return value_type(name, item)
        return ""
    return STRING


def compatible(expected: str, incoming: str) -> bool:
    """Whether a value of type `incoming` may go in a field locked to type `expected`.

    A long fits a double field and a date-shaped string fits a string field; an empty array
    (no element type) fits anything. Everything else must match exactly.
    """
    if expected == incoming or not incoming:
        return True
    return (expected == DOUBLE and incoming == LONG) or (expected == STRING and incoming == DATE)


def incoming_types(kind: str) -> list[str]:
    """The `incomingTypes` list Iterable reports for a value of type `kind`."""
    return [STRING, "keyword"] if kind == STRING else [kind]
