"""Safe SOQL: validated identifiers, escaped literals, a safe filter parser, query builders."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote as _urlquote

from streamsync.core.ids import is_valid_id, to_18
from streamsync.errors import SoqlError

MAX_URI: Final = 16_384           # URI cap (414), URI+headers (431): docs/salesforce.md §3.3
HEADER_ALLOWANCE: Final = 2_048   # room kept for headers when chunking against MAX_URI
MAX_STRING_LITERAL: Final = 4_000
MAX_FILTER_CHARS: Final = 4_000
MAX_FILTER_DEPTH: Final = 16
MAX_RELATIONSHIP_DEPTH: Final = 5
PAGE_LIMIT: Final = 2_000         # records per query page: docs/salesforce.md §3.1

_IDENT_RE: Final = re.compile(r"[A-Za-z](?:[A-Za-z0-9]|_(?=[A-Za-z0-9])|__(?=[A-Za-z0-9]))*")
_RESERVED: Final = frozenset({
    "AND", "OR", "NOT", "IN", "LIKE", "INCLUDES", "EXCLUDES", "SELECT", "FROM", "WHERE", "LIMIT",
    "ORDER", "BY", "GROUP", "HAVING", "OFFSET", "WITH", "FOR", "UPDATE", "TYPEOF", "USING",
    "SCOPE", "NULL", "TRUE", "FALSE", "ASC", "DESC", "NULLS", "FIRST", "LAST", "ROLLUP", "CUBE",
    "FORMAT", "VIEW", "REFERENCE", "TRACKING", "VIEWSTAT", "ALL", "ROWS", "END", "ELSE", "WHEN",
    "THEN", "ABOVE", "BELOW", "AT", "ABOVE_OR_BELOW", "DATA", "CATEGORY", "SECURITY_ENFORCED",
})
_STRING_ESCAPES: Final = {
    "\\": "\\\\", "'": "\\'", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b",
    "\f": "\\f",
}
_UNESCAPES: Final = {
    "\\": "\\", "'": "'", '"': '"', "n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f",
    "_": "\ue000", "%": "\ue001",
}
_LIKE_ESCAPED: Final = {"\ue000": "\\_", "\ue001": "\\%"}


# ---------------------------------------------------------------- identifiers and literals


def validate_identifier(name: object, what: str = "field") -> str:
    """An object, field or relationship API name: letters, digits, single/double underscores."""
    if not isinstance(name, str) or not name:
        raise SoqlError(f"{what} name must be a non-empty string, got {name!r:.60}")
    if len(name) > 80 or not _IDENT_RE.fullmatch(name):
        raise SoqlError(f"invalid {what} name {name!r:.60}: use an API name such as Email or "
                        "Foo__c (letters, digits, underscores; starting with a letter)")
    if name.upper() in _RESERVED:
        raise SoqlError(f"invalid {what} name {name!r}: a reserved SOQL word")
    return name


def validate_field_path(path: object) -> str:
    """A dotted field path such as `Account.Owner.Email` (at most 5 relationship hops)."""
    if not isinstance(path, str) or not path:
        raise SoqlError(f"field path must be a non-empty string, got {path!r:.60}")
    parts = path.split(".")
    if len(parts) - 1 > MAX_RELATIONSHIP_DEPTH:
        raise SoqlError(f"field path {path!r:.80} has more than {MAX_RELATIONSHIP_DEPTH} "
                        "relationship hops")
    for part in parts:
        validate_identifier(part, "field")
    return path


def quote(value: str) -> str:
    """A SOQL string literal with `\\`, quotes and line breaks escaped; other controls rejected."""
    if len(value) > MAX_STRING_LITERAL:
        raise SoqlError(f"string literal longer than {MAX_STRING_LITERAL} characters")
    out = ["'"]
    for ch in value:
        esc = _STRING_ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch < " " or ch == "\x7f":
            raise SoqlError(f"control character U+{ord(ch):04X} cannot appear in a SOQL string")
        else:
            out.append(ch)
    out.append("'")
    return "".join(out)


def quote_id(value: object) -> str:
    """A validated record id (normalised to 18 characters) as a SOQL literal."""
    if not is_valid_id(value):
        raise SoqlError(f"not a Salesforce id: {value!r:.60}")
    return "'" + to_18(value) + "'"


def datetime_literal(moment: datetime) -> str:
    """A SOQL dateTime literal in UTC, whole seconds (unquoted, as SOQL wants)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise SoqlError("datetime literals need a timezone-aware datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def encoded_len(text: str) -> int:
    """Length of `text` percent-encoded with nothing left safe: an upper bound for any client."""
    return len(_urlquote(text, safe=""))


_QUOTE_COST: Final = encoded_len("'")


# ---------------------------------------------------------------- the safe filter parser


@dataclass(frozen=True, slots=True)
class SafeFilter:
    """A parsed WHERE fragment, re-rendered from its syntax tree, and the fields it reads."""

    text: str
    fields: frozenset[str]


_TOKEN_RE: Final = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2})
  | (?P<number>-?\d{1,18}(?:\.\d{1,18})?)(?![A-Za-z0-9_])
  | (?P<relative>[A-Za-z][A-Za-z0-9_]*:\d{1,4})
  | (?P<word>[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)*)
  | (?P<op>!=|<>|<=|>=|=|<|>)
  | (?P<punct>[(),])
  | (?P<string>')
    """,
    re.VERBOSE,
)
_RELATIVE_FIXED: Final = frozenset({
    "YESTERDAY", "TODAY", "TOMORROW", "LAST_WEEK", "THIS_WEEK", "NEXT_WEEK", "LAST_MONTH",
    "THIS_MONTH", "NEXT_MONTH", "LAST_90_DAYS", "NEXT_90_DAYS", "THIS_QUARTER", "LAST_QUARTER",
    "NEXT_QUARTER", "THIS_YEAR", "LAST_YEAR", "NEXT_YEAR", "THIS_FISCAL_QUARTER",
    "LAST_FISCAL_QUARTER", "NEXT_FISCAL_QUARTER", "THIS_FISCAL_YEAR", "LAST_FISCAL_YEAR",
    "NEXT_FISCAL_YEAR",
})
_RELATIVE_N_RE: Final = re.compile(
    r"(?:(?:LAST|NEXT)_N_(?:DAYS|WEEKS|MONTHS|QUARTERS|YEARS|FISCAL_QUARTERS|FISCAL_YEARS)"
    r"|N_(?:DAYS|WEEKS|MONTHS|QUARTERS|YEARS|FISCAL_QUARTERS|FISCAL_YEARS)_AGO):\d{1,4}"
)
_COMPARISON_OPS: Final = frozenset({"=", "!=", "<>", "<", "<=", ">", ">="})


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str
    pos: int


def _string_token(src: str, start: int) -> tuple[str, int]:
    """Decode the string literal opening at `start`; return (value, index after it)."""
    out: list[str] = []
    i = start + 1
    while i < len(src):
        ch = src[i]
        if ch == "'":
            return "".join(out), i + 1
        if ch == "\\":
            if i + 1 >= len(src):
                break
            nxt = src[i + 1]
            if nxt not in _UNESCAPES:
                raise SoqlError(f"invalid escape \\{nxt} at position {i} in filter")
            out.append(_UNESCAPES[nxt])
            i += 2
            continue
        if ch < " " or ch == "\x7f" or ch in _LIKE_ESCAPED:
            raise SoqlError(f"control character U+{ord(ch):04X} at position {i} in filter")
        out.append(ch)
        i += 1
    raise SoqlError(f"unterminated string literal starting at position {start} in filter")


def _tokenize(src: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i = 0
    while i < len(src):
        m = _TOKEN_RE.match(src, i)
        if m is None:
            raise SoqlError(f"unexpected {src[i:i + 10]!r} at position {i} in filter: only field "
                            "comparisons, AND/OR/NOT, IN, LIKE and literals are allowed")
        kind = m.lastgroup or ""
        if kind == "string":
            value, end = _string_token(src, i)
            toks.append(_Tok("string", value, i))
            i = end
            continue
        if kind != "ws":
            toks.append(_Tok(kind, m.group(), i))
        i = m.end()
    return toks


class _Parser:
    """Recursive descent over: or := and (OR and)*; and := not (AND not)*; not := NOT not | atom."""

    def __init__(self, src: str) -> None:
        self.toks = _tokenize(src)
        self.i = 0
        self.fields: set[str] = set()

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok is not None and tok.kind == "word" and tok.text.upper() == word:
            self.i += 1
            return True
        return False

    def expect_punct(self, ch: str) -> None:
        tok = self.peek()
        if tok is None or tok.text != ch:
            where = f"at position {tok.pos}" if tok else "at the end"
            raise SoqlError(f"expected {ch!r} {where} in filter")
        self.i += 1

    def parse(self) -> str:
        if not self.toks:
            raise SoqlError("filter is empty")
        text = self.or_expr(0)
        tok = self.peek()
        if tok is not None:
            raise SoqlError(f"unexpected {tok.text!r:.30} at position {tok.pos} in filter")
        return text

    def or_expr(self, depth: int) -> str:
        parts = [self.and_expr(depth)]
        while self.keyword("OR"):
            parts.append(self.and_expr(depth))
        return parts[0] if len(parts) == 1 else " OR ".join(_group(p) for p in parts)

    def and_expr(self, depth: int) -> str:
        parts = [self.not_expr(depth)]
        while self.keyword("AND"):
            parts.append(self.not_expr(depth))
        return parts[0] if len(parts) == 1 else " AND ".join(_group(p) for p in parts)

    def not_expr(self, depth: int) -> str:
        if depth > MAX_FILTER_DEPTH:
            raise SoqlError(f"filter nests deeper than {MAX_FILTER_DEPTH} levels")
        if self.keyword("NOT"):
            inner = self.not_expr(depth + 1)
            return "NOT " + (inner if _wrapped(inner) else "(" + inner + ")")
        tok = self.peek()
        if tok is not None and tok.text == "(":
            self.i += 1
            inner = self.or_expr(depth + 1)
            self.expect_punct(")")
            return "(" + inner + ")"
        return self.comparison()

    def comparison(self) -> str:
        tok = self.peek()
        if tok is None or tok.kind != "word":
            where = f"{tok.text!r:.30} at position {tok.pos}" if tok else "end of filter"
            raise SoqlError(f"expected a field name, found {where}")
        field = validate_field_path(tok.text)
        self.i += 1
        self.fields.add(field)
        negated = self.keyword("NOT")
        if self.keyword("IN"):
            return f"{field} {'NOT IN' if negated else 'IN'} ({self.value_list()})"
        if negated:
            raise SoqlError(f"expected IN after {field} NOT")
        if self.keyword("LIKE"):
            value = self.literal()
            if not value.startswith("'"):
                raise SoqlError(f"LIKE on {field} needs a string literal")
            return f"{field} LIKE {value}"
        if self.keyword("INCLUDES") or self.keyword("EXCLUDES"):
            op = self.toks[self.i - 1].text.upper()
            return f"{field} {op} ({self.value_list()})"
        op_tok = self.peek()
        if op_tok is None or op_tok.kind != "op" or op_tok.text not in _COMPARISON_OPS:
            where = f"{op_tok.text!r:.30} at position {op_tok.pos}" if op_tok else "end of filter"
            raise SoqlError(f"expected a comparison operator after {field}, found {where}")
        self.i += 1
        value = self.literal()
        if value == "null" and op_tok.text not in ("=", "!=", "<>"):
            raise SoqlError(f"null can only be compared with = or != (field {field})")
        return f"{field} {op_tok.text} {value}"

    def value_list(self) -> str:
        self.expect_punct("(")
        values = [self.literal()]
        while (tok := self.peek()) is not None and tok.text == ",":
            self.i += 1
            values.append(self.literal())
        self.expect_punct(")")
        return ", ".join(values)

    def literal(self) -> str:
        tok = self.peek()
        if tok is None:
            raise SoqlError("expected a value at the end of filter")
        self.i += 1
        if tok.kind == "string":
            rendered = quote(tok.text)
            for mark, escaped in _LIKE_ESCAPED.items():
                rendered = rendered.replace(mark, escaped)
            return rendered
        if tok.kind == "number":
            return tok.text
        if tok.kind in ("date", "datetime"):
            _check_datetime(tok.text)
            return tok.text
        if tok.kind == "relative":
            upper = tok.text.upper()
            if _RELATIVE_N_RE.fullmatch(upper):
                return upper
        if tok.kind == "word":
            upper = tok.text.upper()
            if upper in ("TRUE", "FALSE", "NULL"):
                return upper.lower()
            if upper in _RELATIVE_FIXED:
                return upper
        raise SoqlError(f"expected a literal value at position {tok.pos} in filter, "
                        f"found {tok.text!r:.30}")


def _check_datetime(text: str) -> None:
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise SoqlError(f"invalid date or dateTime literal {text!r}") from exc


def _group(text: str) -> str:
    """Parenthesise a sub-expression that holds a top-level AND/OR."""
    return text if _is_atomic(text) else "(" + text + ")"


def _wrapped(text: str) -> bool:
    """True when the whole text is one parenthesised group."""
    return text.startswith("(") and _closing_paren(text) == len(text) - 1


def _outside_strings(text: str) -> Iterator[tuple[int, int]]:
    """(index, parenthesis depth after it) of every character outside string literals."""
    depth = 0
    in_str = False
    i = 0
    while i < len(text):
        ch = text[i]
        if in_str:
            if ch == "\\":
                i += 1
            elif ch == "'":
                in_str = False
        elif ch == "'":
            in_str = True
        else:
            depth += (ch == "(") - (ch == ")")
            yield i, depth
        i += 1


def _closing_paren(text: str) -> int:
    """Index of the parenthesis that closes the one opening `text`, or -1."""
    for i, depth in _outside_strings(text):
        if depth == 0 and text[i] == ")":
            return i
    return -1


def _is_atomic(text: str) -> bool:
    """True when no AND/OR stands outside parentheses and strings."""
    return not any(depth == 0 and (text.startswith(" AND ", i) or text.startswith(" OR ", i))
                   for i, depth in _outside_strings(text))


def parse_filter(text: str) -> SafeFilter:
    """Parse a WHERE fragment such as `IsConverted = false AND LeadSource IN ('Web')`.

    Only field comparisons, IN/NOT IN, LIKE, INCLUDES/EXCLUDES, AND/OR/NOT, parentheses and
    literals are accepted; anything else (`;`, comments, subqueries, functions) is rejected.
    """
    if not isinstance(text, str):
        raise SoqlError("filter must be a string")
    if len(text) > MAX_FILTER_CHARS:
        raise SoqlError(f"filter is longer than {MAX_FILTER_CHARS} characters")
    parser = _Parser(text)
    rendered = parser.parse()
    return SafeFilter(rendered, frozenset(parser.fields))


# ---------------------------------------------------------------- query builders


DateWindow = tuple[datetime, datetime]


def _select_list(fields: Iterable[str]) -> str:
    seen: dict[str, str] = {}
    for f in fields:
        validate_field_path(f)
        seen.setdefault(f.lower(), f)
    if not seen:
        raise SoqlError("a SELECT needs at least one field")
    return ", ".join(seen.values())


def _where(conditions: Sequence[str]) -> str:
    parts = [c for c in conditions if c]
    if not parts:
        return ""
    return " WHERE " + " AND ".join(_group(p) for p in parts)


def _filter_text(where: SafeFilter | str | None) -> str:
    if where is None:
        return ""
    return (where if isinstance(where, SafeFilter) else parse_filter(where)).text


def _window(window: DateWindow | None, field: str) -> str:
    if window is None:
        return ""
    start, end = window
    validate_field_path(field)
    return f"{field} >= {datetime_literal(start)} AND {field} < {datetime_literal(end)}"


def select_by_ids(object_name: str, fields: Iterable[str], ids: Iterable[str],
                  where: SafeFilter | str | None = None) -> str:
    """`SELECT fields FROM object WHERE Id IN (...) [AND (filter)]`, every id validated."""
    validate_identifier(object_name, "object")
    id_list = ",".join(quote_id(i) for i in ids)
    if not id_list:
        raise SoqlError("select_by_ids needs at least one id")
    return (f"SELECT {_select_list(fields)} FROM {object_name}"
            + _where([f"Id IN ({id_list})", _filter_text(where)]))


def chunk_ids_by_uri_length(ids: Iterable[str], base_uri_len: int, max_uri: int = MAX_URI,
                            max_ids: int | None = None) -> list[list[str]]:
    """Split ids so `base + 'id','id',...` stays within `max_uri` once percent-encoded.

    `base_uri_len` is the encoded length of the whole request URI with an empty id list
    (see `select_by_ids_uri_base`). Each id costs its quoted, encoded length plus an encoded
    comma; nothing here assumes a fixed number of ids per chunk.
    """
    chunks: list[list[str]] = []
    current: list[str] = []
    used = base_uri_len
    comma = encoded_len(",")
    for sf_id in ids:
        quoted = quote_id(sf_id)
        # a valid id is alphanumeric: only its two quotes grow when percent-encoded
        cost = len(quoted) + 2 * (_QUOTE_COST - 1)
        sep = comma if current else 0
        if base_uri_len + cost > max_uri:
            raise SoqlError(f"URI base of {base_uri_len} characters leaves no room for an id "
                            f"under the {max_uri}-character cap")
        if current and (used + sep + cost > max_uri or (max_ids and len(current) >= max_ids)):
            chunks.append(current)
            current, used, sep = [], base_uri_len, 0
        current.append(quoted[1:-1])
        used += sep + cost
    if current:
        chunks.append(current)
    return chunks


def select_by_ids_uri_base(object_name: str, fields: Iterable[str], uri_prefix: str,
                           where: SafeFilter | str | None = None) -> int:
    """Encoded URI length of `uri_prefix + select_by_ids(...)` with an empty id list."""
    validate_identifier(object_name, "object")
    soql = (f"SELECT {_select_list(fields)} FROM {object_name}"
            + _where(["Id IN ()", _filter_text(where)]))
    return len(uri_prefix) + encoded_len(soql)


def select_by_ids_chunked(object_name: str, fields: Sequence[str], ids: Iterable[str],
                          uri_prefix: str, where: SafeFilter | str | None = None,
                          max_uri: int = MAX_URI - HEADER_ALLOWANCE,
                          max_ids: int | None = None) -> list[str]:
    """One `select_by_ids` query per chunk, each one's request URI within `max_uri`.

    `uri_prefix` is the request target before the query text, e.g.
    `/services/data/v66.0/query?q=`. Salesforce caps URI plus headers at 16,384 bytes, so the
    default budget keeps `HEADER_ALLOWANCE` bytes free for the headers.
    """
    base = select_by_ids_uri_base(object_name, fields, uri_prefix, where)
    return [select_by_ids(object_name, fields, chunk, where)
            for chunk in chunk_ids_by_uri_length(ids, base, max_uri, max_ids)]


def keyset_page(object_name: str, fields: Iterable[str], after_id: str | None = None, *,
                where: SafeFilter | str | None = None, window: DateWindow | None = None,
                window_field: str = "CreatedDate", limit: int = PAGE_LIMIT) -> str:
    """`... WHERE Id > :after AND (window) AND (filter) ORDER BY Id LIMIT n` for backfill."""
    validate_identifier(object_name, "object")
    if not 1 <= limit <= 50_000:
        raise SoqlError("limit must be between 1 and 50000")
    conds = [f"Id > {quote_id(after_id)}" if after_id else "", _window(window, window_field),
             _filter_text(where)]
    return (f"SELECT {_select_list(fields)} FROM {object_name}{_where(conds)}"
            f" ORDER BY Id LIMIT {limit}")


def modified_since(object_name: str, since: datetime, *, until: datetime | None = None,
                   fields: Iterable[str] = ("Id", "SystemModstamp"), after_id: str | None = None,
                   where: SafeFilter | str | None = None, limit: int = PAGE_LIMIT) -> str:
    """Records whose SystemModstamp is at or after `since` (and before `until`), keyset-paged."""
    validate_identifier(object_name, "object")
    conds = [f"SystemModstamp >= {datetime_literal(since)}",
             f"SystemModstamp < {datetime_literal(until)}" if until else "",
             f"Id > {quote_id(after_id)}" if after_id else "", _filter_text(where)]
    return (f"SELECT {_select_list(fields)} FROM {object_name}{_where(conds)}"
            f" ORDER BY Id LIMIT {limit}")


def select_children(object_name: str, parent_field: str, parent_ids: Iterable[str],
                    fields: Iterable[str] = ("Id",), after_id: str | None = None,
                    limit: int = PAGE_LIMIT, where: SafeFilter | str | None = None) -> str:
    """Children by parent id, keyset-paged: Account → Contact fan-out; Opportunity → its
    primary contact role (`where`)."""
    validate_identifier(object_name, "object")
    validate_identifier(parent_field, "field")
    id_list = ",".join(quote_id(i) for i in parent_ids)
    if not id_list:
        raise SoqlError("select_children needs at least one parent id")
    conds = [f"{parent_field} IN ({id_list})",
             f"Id > {quote_id(after_id)}" if after_id else "", _filter_text(where)]
    return (f"SELECT {_select_list(fields)} FROM {object_name}{_where(conds)}"
            f" ORDER BY Id LIMIT {limit}")


def _bounds(field: str, since: datetime | None, until: datetime | None) -> str:
    """`field >= since AND field < until`, either side left out when None."""
    validate_field_path(field)
    parts = [f"{field} >= {datetime_literal(since)}" if since is not None else "",
             f"{field} < {datetime_literal(until)}" if until is not None else ""]
    return " AND ".join(p for p in parts if p)


def count(object_name: str, where: SafeFilter | str | None = None, *,
          window: DateWindow | None = None, window_field: str = "CreatedDate",
          since: datetime | None = None, until: datetime | None = None) -> str:
    """`SELECT COUNT() FROM object [WHERE ...]`, for progress estimates. `since`/`until` bound
    `window_field` on either side alone (a `window` bounds both)."""
    validate_identifier(object_name, "object")
    if window is not None and (since is not None or until is not None):
        raise SoqlError("count takes a window or since/until, not both")
    return (f"SELECT COUNT() FROM {object_name}"
            + _where([_window(window, window_field), _bounds(window_field, since, until),
                      _filter_text(where)]))


def first_by(object_name: str, field: str, *, where: SafeFilter | str | None = None,
             descending: bool = False) -> str:
    """`SELECT Id, field FROM object [WHERE filter] ORDER BY field ASC|DESC LIMIT 1`: the
    record with the lowest (or highest) `field`, e.g. the first and last CreatedDate."""
    validate_identifier(object_name, "object")
    validate_field_path(field)
    order = "DESC" if descending else "ASC"
    return (f"SELECT {_select_list(['Id', field])} FROM {object_name}"
            + _where([_filter_text(where)]) + f" ORDER BY {field} {order} LIMIT 1")


def select_all(object_name: str, fields: Iterable[str]) -> str:
    """`SELECT fields FROM object ORDER BY Id`: every record (the caller pages through it)."""
    validate_identifier(object_name, "object")
    return f"SELECT {_select_list(fields)} FROM {object_name} ORDER BY Id"


def select_where_in(object_name: str, fields: Iterable[str], field: str, values: Iterable[str],
                    where: SafeFilter | str | None = None) -> str:
    """`SELECT fields FROM object WHERE field IN ('v1', ...) [AND (filter)]`, every value a
    quoted string literal (e.g. the Leads holding one of these emails)."""
    validate_identifier(object_name, "object")
    validate_field_path(field)
    literals = ",".join(quote(v) for v in values)
    if not literals:
        raise SoqlError("select_where_in needs at least one value")
    return (f"SELECT {_select_list(fields)} FROM {object_name}"
            + _where([f"{field} IN ({literals})", _filter_text(where)]))
