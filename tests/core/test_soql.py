"""Safe SOQL: identifiers, literals, the filter parser (with an injection corpus), builders."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote as urlquote
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsync.core import soql
from streamsync.core.ids import to_18
from streamsync.core.soql import (
    chunk_ids_by_uri_length,
    parse_filter,
    quote,
    select_by_ids,
    select_by_ids_chunked,
    validate_field_path,
    validate_identifier,
)
from streamsync.errors import SoqlError

ID1 = to_18("00Q000000000001")
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _unquote_literal(text: str) -> str:
    """Decode a SOQL literal the way the server would (for round-trip checks)."""
    assert text[0] == "'" and text[-1] == "'"
    out, i, body = [], 0, text[1:-1]
    table = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "r": "\r", "t": "\t", "b": "\b",
             "f": "\f"}
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            out.append(table[body[i + 1]])
            i += 2
            continue
        assert ch != "'", "an unescaped quote would end the literal early"
        out.append(ch)
        i += 1
    return "".join(out)


@pytest.mark.parametrize("name", ["Email", "Foo__c", "ns__Foo__c", "Owner", "A1", "Foo__r"])
def test_valid_identifiers(name: str) -> None:
    assert validate_identifier(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "1abc", "_x", "x_", "Na me", "Name;", "Name--", "Id'", "Name)", "SELECT", "from",
     "x___y", "a" * 81, "Émail", "Name\n", None],
)
def test_invalid_identifiers(name: object) -> None:
    with pytest.raises(SoqlError):
        validate_identifier(name)


def test_field_paths() -> None:
    assert validate_field_path("Account.Owner.Email") == "Account.Owner.Email"
    for bad in ["Account..Name", ".Name", "Name.", "A.B.C.D.E.F.G", "Account.Name; x"]:
        with pytest.raises(SoqlError):
            validate_field_path(bad)


@pytest.mark.parametrize(
    ("raw", "literal"),
    [
        ("O'Brien", r"'O\'Brien'"),
        ("back\\slash", r"'back\\slash'"),
        ("line\nbreak\r\ttab", r"'line\nbreak\r\ttab'"),
        ('say "hi"', r"""'say \"hi\"'"""),
        ("' OR Id != '", r"'\' OR Id != \''"),
        ("\\' OR 1=1 --", r"'\\\' OR 1=1 --'"),
        ("Zoë 東京", "'Zoë 東京'"),
    ],
)
def test_quote_escapes(raw: str, literal: str) -> None:
    assert quote(raw) == literal
    assert _unquote_literal(quote(raw)) == raw


@pytest.mark.parametrize("raw", ["nul\x00", "bell\x07", "esc\x1b[0m", "del\x7f"])
def test_quote_rejects_other_control_characters(raw: str) -> None:
    with pytest.raises(SoqlError, match="control character"):
        quote(raw)


def test_quote_rejects_over_long_literals() -> None:
    quote("x" * 4000)
    with pytest.raises(SoqlError, match="longer than"):
        quote("x" * 4001)


@given(st.text(alphabet=st.characters(min_codepoint=0x20, blacklist_characters="\x7f"),
               max_size=200))
def test_quote_round_trips_printable_text(raw: str) -> None:
    assert _unquote_literal(quote(raw)) == raw


# ---------------------------------------------------------------- filter parser


@pytest.mark.parametrize(
    ("text", "rendered", "fields"),
    [
        ("IsConverted = false", "IsConverted = false", {"IsConverted"}),
        ("isconverted=FALSE", "isconverted = false", {"isconverted"}),
        ("LeadSource IN ('Web', 'Phone Inquiry')", "LeadSource IN ('Web', 'Phone Inquiry')",
         {"LeadSource"}),
        ("LeadSource NOT IN ('Web')", "LeadSource NOT IN ('Web')", {"LeadSource"}),
        ("Email LIKE '%@example.com'", "Email LIKE '%@example.com'", {"Email"}),
        ("Email != null AND (Rating = 'Hot' OR AnnualRevenue >= 1000000.50)",
         "Email != null AND (Rating = 'Hot' OR AnnualRevenue >= 1000000.50)",
         {"Email", "Rating", "AnnualRevenue"}),
        ("NOT Status = 'Closed'", "NOT (Status = 'Closed')", {"Status"}),
        ("NOT (A = 1 OR B = 2) AND C = 3", "NOT (A = 1 OR B = 2) AND C = 3", {"A", "B", "C"}),
        ("((A = 1))", "((A = 1))", {"A"}),
        ("Account.Owner.IsActive = true", "Account.Owner.IsActive = true",
         {"Account.Owner.IsActive"}),
        ("CreatedDate >= 2024-01-01T00:00:00Z AND CreatedDate < 2024-02-01T00:00:00.000+01:00",
         "CreatedDate >= 2024-01-01T00:00:00Z AND CreatedDate < 2024-02-01T00:00:00.000+01:00",
         {"CreatedDate"}),
        ("Birthdate > 1990-05-01", "Birthdate > 1990-05-01", {"Birthdate"}),
        ("LastModifiedDate = LAST_N_DAYS:30 OR CreatedDate = today",
         "LastModifiedDate = LAST_N_DAYS:30 OR CreatedDate = TODAY",
         {"LastModifiedDate", "CreatedDate"}),
        ("Name = 'O\\'Brien'", "Name = 'O\\'Brien'", {"Name"}),
        ("Name LIKE 'a\\_b%'", "Name LIKE 'a\\_b%'", {"Name"}),
        ("Interests__c INCLUDES ('a;b', 'c')", "Interests__c INCLUDES ('a;b', 'c')",
         {"Interests__c"}),
        ("NumberOfEmployees > -5", "NumberOfEmployees > -5", {"NumberOfEmployees"}),
    ],
)
def test_filter_accepts_and_rerenders(text: str, rendered: str, fields: set[str]) -> None:
    parsed = parse_filter(text)
    assert parsed.text == rendered
    assert parsed.fields == fields
    assert parse_filter(parsed.text) == parsed  # rendering is a fixed point


INJECTIONS = [
    "IsConverted = false; DELETE FROM Lead",
    "IsConverted = false -- comment",
    "IsConverted = false /* comment */",
    "Id IN (SELECT LeadId FROM CampaignMember)",
    "Name = ''' OR Id != '''",  # '' is no escape in SOQL
    "Name = 'x' OR Id != '",
    "Name = 'x\\' OR Id != 'y",  # unterminated once the escape is honoured
    "Name = 'unterminated",
    "Name = 'bad escape \\q'",
    "Name = 'new\nline'",
    "Name = 'nul\x00'",
    "Name = x",
    "Name = 'a' ORDER BY Name",
    "Name = 'a' LIMIT 1",
    "Name = 'a') OR (Id != null",
    "(Name = 'a'",
    "Name = 'a' AND",
    "AND Name = 'a'",
    "Name",
    "",
    "   ",
    "Name = 'a' WITH SECURITY_ENFORCED",
    "COUNT() > 1",
    "Name = :bind",
    "Name = \"double\"",
    "Name == 'a'",
    "Name IN ()",
    "Name IN ('a' 'b')",
    "Name NOT = 'a'",
    "Name LIKE 5",
    "Amount > null",
    "FORMAT(Amount) > 1",
    "CreatedDate > 2024-13-45T00:00:00Z",
    "Birthdate > 2023-02-29",
    "CreatedDate > LAST_N_DAYS",
    "CreatedDate > SOMETIME:5",
    "Name = 'a' UNION SELECT Id FROM User",
    "Name = 'a'\u037e DELETE",  # Greek question mark looks like ';'
    "Name = '\ue000'",
    "NOT " * 40 + "Name = 'a'",
    "x" * 5000,
]


@pytest.mark.parametrize("text", INJECTIONS)
def test_filter_rejects_injection_and_junk(text: str) -> None:
    with pytest.raises(SoqlError):
        parse_filter(text)


_LITERAL_RE = re.compile(r"'(?:\\.|[^'\\])*'")


def _outside_literals(text: str) -> str:
    return _LITERAL_RE.sub("''", text)


@given(st.text(max_size=80))
@settings(max_examples=300)
def test_filter_output_never_breaks_out(text: str) -> None:
    """Whatever passes has no statement separator, comment or subquery outside its literals."""
    try:
        parsed = parse_filter(text)
    except SoqlError:
        return
    code = _outside_literals(parsed.text)
    for bad in (";", "--", "/*", "*/", "\n", "\r"):
        assert bad not in code
    assert "SELECT" not in code.upper().split()
    assert parse_filter(parsed.text).text == parsed.text


@given(st.text(max_size=60).filter(lambda v: all(c >= " " and c != "\x7f" for c in v)),
       st.sampled_from(["=", "!=", "<", ">="]))
def test_filter_string_values_round_trip(value: str, op: str) -> None:
    parsed = parse_filter(f"Name {op} {quote(value)}")
    literal = parsed.text.split(f"Name {op} ", 1)[1]
    assert _unquote_literal(literal) == value
    assert _outside_literals(parsed.text) == f"Name {op} ''"


# ---------------------------------------------------------------- builders


def test_select_by_ids_normalises_and_wraps_filter() -> None:
    q = select_by_ids("Lead", ["Id", "Email", "email", "Owner.Name"],
                      ["00Q000000000001", ID1], "IsConverted = false OR Status = 'Open'")
    assert q == ("SELECT Id, Email, Owner.Name FROM Lead WHERE Id IN "
                 f"('{to_18('00Q000000000001')}','{ID1}') AND "
                 "(IsConverted = false OR Status = 'Open')")


@pytest.mark.parametrize("bad_id", ["' OR Id != '", "00Q000000000001AAA' OR 'a'='a",
                                    "00Q00000000000\n", "00Q000000000001AAB"])
def test_select_by_ids_rejects_injected_ids(bad_id: str) -> None:
    with pytest.raises(SoqlError, match="not a Salesforce id"):
        select_by_ids("Lead", ["Id"], [ID1, bad_id])


def test_select_by_ids_rejects_bad_object_and_fields() -> None:
    with pytest.raises(SoqlError):
        select_by_ids("Lead WHERE", ["Id"], [ID1])
    with pytest.raises(SoqlError):
        select_by_ids("Lead", ["Id, (SELECT Id FROM Tasks)"], [ID1])
    with pytest.raises(SoqlError):
        select_by_ids("Lead", [], [ID1])
    with pytest.raises(SoqlError):
        select_by_ids("Lead", ["Id"], [])


def test_keyset_page_and_window() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    end = datetime(2024, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))  # = 2024-01-01T00Z
    q = soql.keyset_page("Contact", ["Id", "Account.Name"], "003000000000001",
                         window=(start, end + timedelta(days=31)), where="Email != null")
    contact = to_18("003000000000001")
    assert q == (f"SELECT Id, Account.Name FROM Contact WHERE Id > '{contact}' AND "
                 "(CreatedDate >= 2024-01-01T00:00:00Z AND CreatedDate < 2024-02-01T00:00:00Z)"
                 " AND Email != null ORDER BY Id LIMIT 2000")
    assert soql.keyset_page("Lead", ["Id"]) == "SELECT Id FROM Lead ORDER BY Id LIMIT 2000"
    with pytest.raises(SoqlError):
        soql.keyset_page("Lead", ["Id"], "x' OR Id > '")
    with pytest.raises(SoqlError):
        soql.keyset_page("Lead", ["Id"], where="Name = 'a'; DELETE")
    with pytest.raises(SoqlError, match="timezone"):
        soql.keyset_page("Lead", ["Id"], window=(datetime(2024, 1, 1), datetime(2024, 2, 1)))


def test_modified_since_count_and_children() -> None:
    since = datetime(2024, 5, 1, 12, 34, 56, 789000, tzinfo=UTC)
    assert soql.modified_since("Lead", since) == (
        "SELECT Id, SystemModstamp FROM Lead WHERE SystemModstamp >= 2024-05-01T12:34:56Z "
        "ORDER BY Id LIMIT 2000")
    q = soql.modified_since("Lead", since, until=since + timedelta(hours=1), after_id=ID1)
    assert "SystemModstamp < 2024-05-01T13:34:56Z" in q and f"Id > '{ID1}'" in q
    assert soql.count("Lead", "IsConverted = false") == (
        "SELECT COUNT() FROM Lead WHERE IsConverted = false")
    assert soql.count("Lead") == "SELECT COUNT() FROM Lead"
    acc = "001M000000qfPyS"
    assert soql.select_children("Contact", "AccountId", [acc]) == (
        "SELECT Id FROM Contact WHERE AccountId IN ('001M000000qfPySIAU') ORDER BY Id LIMIT 2000")


def test_count_bounds_first_by_and_select_all() -> None:
    since = datetime(2024, 5, 1, tzinfo=UTC)
    until = datetime(2024, 6, 1, tzinfo=UTC)
    assert soql.count("Lead", "Email != null", since=since) == (
        "SELECT COUNT() FROM Lead WHERE CreatedDate >= 2024-05-01T00:00:00Z AND Email != null")
    assert soql.count("Lead", until=until, window_field="SystemModstamp") == (
        "SELECT COUNT() FROM Lead WHERE SystemModstamp < 2024-06-01T00:00:00Z")
    both = soql.count("Lead", since=since, until=until)
    assert "CreatedDate >= 2024-05-01T00:00:00Z AND CreatedDate < 2024-06-01T00:00:00Z" in both
    with pytest.raises(SoqlError, match="not both"):
        soql.count("Lead", window=(since, until), since=since)
    with pytest.raises(SoqlError, match="timezone"):
        soql.count("Lead", since=datetime(2024, 1, 1))
    with pytest.raises(SoqlError):
        soql.count("Lead", since=since, window_field="CreatedDate; DELETE")
    assert soql.first_by("Contact", "CreatedDate", where="AccountId != null") == (
        "SELECT Id, CreatedDate FROM Contact WHERE AccountId != null "
        "ORDER BY CreatedDate ASC LIMIT 1")
    assert soql.first_by("Lead", "CreatedDate", descending=True) == (
        "SELECT Id, CreatedDate FROM Lead ORDER BY CreatedDate DESC LIMIT 1")
    with pytest.raises(SoqlError):
        soql.first_by("Lead", "CreatedDate DESC, Id")
    with pytest.raises(SoqlError):
        soql.first_by("Lead x", "CreatedDate")
    with pytest.raises(SoqlError):
        soql.first_by("Lead", "CreatedDate", where="Name = 'a' LIMIT 1")
    assert soql.select_all("Lead", ["Id", "Email", "IsDeleted"]) == (
        "SELECT Id, Email, IsDeleted FROM Lead ORDER BY Id")
    with pytest.raises(SoqlError):
        soql.select_all("Lead", ["Id", "(SELECT Id FROM Tasks)"])


# ---------------------------------------------------------------- chunking by URI length


def _ids(n: int, seed: int = 0) -> list[str]:
    out = []
    for i in range(n):
        x = i * 7919 + seed
        body = "".join(BASE62[(x // 62**k) % 62] for k in range(12))
        out.append(to_18("00Q" + body))
    return out


PREFIX = "https://example.my.salesforce.com/services/data/v66.0/query?q="


def test_chunked_queries_stay_under_the_uri_cap_for_every_encoding() -> None:
    ids = _ids(5000)
    queries = select_by_ids_chunked("Lead", ["Id", "Email", "Owner.Name"], ids, PREFIX,
                                    where="IsConverted = false")
    assert len(queries) > 1
    total = 0
    for q in queries:
        # what aiohttp/yarl and requests send is never longer than full percent-encoding
        assert len(PREFIX) + len(urlquote(q, safe="")) <= 16_384
        assert len("https://example.my.salesforce.com/services/data/v66.0/query?"
                   + urlencode({"q": q})) <= 16_384
        total += q.count("'") // 2
    assert total == 5000
    # chunks are full: the next id would not have fit
    first = queries[0]
    budget = soql.MAX_URI - soql.HEADER_ALLOWANCE  # headers share the 16 KB cap
    assert budget - 30 < len(PREFIX) + len(urlquote(first, safe="")) <= budget


@given(st.integers(min_value=1, max_value=3000), st.integers(min_value=100, max_value=2000),
       st.integers(min_value=500, max_value=16_384))
@settings(max_examples=60, deadline=None)
def test_chunking_properties(n: int, base: int, cap: int) -> None:
    ids = _ids(n, seed=n)
    if base + 24 > cap:
        with pytest.raises(SoqlError):
            chunk_ids_by_uri_length(ids, base, cap)
        return
    chunks = chunk_ids_by_uri_length(ids, base, cap)
    assert [i for c in chunks for i in c] == ids  # order kept, nothing lost or duplicated
    for chunk in chunks:
        cost = base + sum(len(urlquote(f"'{i}'", safe="")) for i in chunk) + 3 * (len(chunk) - 1)
        assert cost <= cap
    for a, b in zip(chunks, chunks[1:], strict=False):
        grown = base + sum(24 for _ in a) + 3 * len(a) + 24
        assert grown > cap  # a chunk closes only when the next id would overflow it
        assert b


def test_chunking_honours_max_ids_and_normalises() -> None:
    ids = ["00Q000000000001", *_ids(9)]
    chunks = chunk_ids_by_uri_length(ids, 100, max_ids=4)
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert chunks[0][0] == to_18("00Q000000000001")
    with pytest.raises(SoqlError):
        chunk_ids_by_uri_length(["nope"], 100)
