"""A SOQL subset: tokenizer, recursive-descent parser and compiled execution over the tables."""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

from .errors import SalesforceError
from .ids import is_valid_id, to18
from .schema import (
    BY_PREFIX,
    NAME_FIELDS,
    ROLLUPS,
    SCHEMA,
    SCHEMA_LOWER,
    STRING_TYPES,
    Field,
    SObject,
)
from .state import OrgState, Row, Table, parse_datetime

Getter = Callable[[Row], Any]
Predicate = Callable[[Row], bool]

_KEYWORDS = frozenset({"select", "from", "where", "and", "or", "not", "in", "like", "order", "by",
                       "asc", "desc", "nulls", "first", "last", "limit", "offset", "null",
                       "true", "false", "count"})
_TOKEN_RE = re.compile(r"""
    (?P<ws>\s+)
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2}(?![\dT]))
  | (?P<number>[+-]?\d+(?:\.\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<string>')
  | (?P<op>!=|<>|<=|>=|=|<|>)
  | (?P<punct>[(),.:])
""", re.VERBOSE)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", '"': '"', "'": "'",
            "\\": "\\", "%": "\\%", "_": "\\_"}
_STRING_RE = re.compile(r"'((?:[^'\\]|\\.)*)'", re.DOTALL)
_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)
_RELATIVE_DATES = frozenset({"today", "yesterday", "tomorrow", "last_n_days", "next_n_days"})


@dataclass
class Token:
    kind: str  # ident, string, number, date, datetime, op, punct, eof
    value: str
    pos: int


def _malformed(query: str, pos: int, message: str) -> SalesforceError:
    return SalesforceError(400, "MALFORMED_QUERY", _located(query, pos, message))


def _located(query: str, pos: int, message: str) -> str:
    line = query.replace("\n", " ")
    return f"\n{line}\n{' ' * pos}^\nERROR at Row:1:Column:{pos + 1}\n{message}"


def tokenize(query: str) -> list[Token]:
    """Split a SOQL statement into tokens (strings unescaped, LIKE escapes kept)."""
    out: list[Token] = []
    pos = 0
    n = len(query)
    while pos < n:
        m = _TOKEN_RE.match(query, pos)
        if m is None:
            raise _malformed(query, pos, f"unexpected token: '{query[pos]}'")
        kind = m.lastgroup or ""
        if kind == "ws":
            pos = m.end()
            continue
        if kind == "string":
            sm = _STRING_RE.match(query, pos)
            if sm is None:
                raise _malformed(query, pos, "unexpected end of query: missing quote")
            raw = sm.group(1)
            if "\\" in raw:
                for esc in _ESCAPE_RE.finditer(raw):
                    if esc.group(1) not in _ESCAPES:
                        raise _malformed(query, pos + 1 + esc.start(),
                                         "Invalid string literal: bad escape sequence")
                raw = _ESCAPE_RE.sub(lambda e: _ESCAPES[e.group(1)], raw)
            out.append(Token("string", raw, pos))
            pos = sm.end()
            continue
        out.append(Token(kind, m.group(kind), pos))
        pos = m.end()
    out.append(Token("eof", "", n))
    return out


# -- AST ----------------------------------------------------------------------------------------
@dataclass
class Path:
    parts: list[str]
    pos: int


@dataclass
class Literal:
    kind: str  # string, number, date, datetime, bool, null, relative
    value: Any
    pos: int


@dataclass
class Compare:
    path: Path
    op: str  # = != < <= > >= in notin like
    values: list[Literal]


@dataclass
class BoolOp:
    op: str  # and, or
    items: list[Any]


@dataclass
class Not:
    item: Any


@dataclass
class OrderKey:
    path: Path
    desc: bool
    nulls_first: bool


@dataclass
class SelectItem:
    path: Path | None  # None for COUNT()
    aggregate: str | None = None
    alias: str | None = None


@dataclass
class Query:
    text: str
    select: list[SelectItem]
    sobject: str
    sobject_pos: int
    where: Any = None
    order: list[OrderKey] = field(default_factory=list)
    limit: int | None = None
    offset: int = 0

    @property
    def is_count(self) -> bool:
        return len(self.select) == 1 and self.select[0].aggregate == "count" \
            and self.select[0].path is None


class Parser:
    """Recursive descent over the token list."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = tokenize(text)
        self.i = 0

    def peek(self) -> Token:
        return self.toks[self.i]

    def next(self) -> Token:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def is_kw(self, word: str, offset: int = 0) -> bool:
        tok = self.toks[min(self.i + offset, len(self.toks) - 1)]
        return tok.kind == "ident" and tok.value.lower() == word

    def expect_kw(self, word: str) -> Token:
        tok = self.next()
        if tok.kind != "ident" or tok.value.lower() != word:
            raise self.unexpected(tok)
        return tok

    def expect_punct(self, ch: str) -> Token:
        tok = self.next()
        if tok.kind != "punct" or tok.value != ch:
            raise self.unexpected(tok)
        return tok

    def unexpected(self, tok: Token) -> SalesforceError:
        if tok.kind == "eof":
            return _malformed(self.text, tok.pos, "unexpected token: '<EOF>'")
        shown = f"'{tok.value}'" if tok.kind == "string" else tok.value
        return _malformed(self.text, tok.pos, f"unexpected token: {shown}")

    def parse(self) -> Query:
        self.expect_kw("select")
        select = self.select_list()
        self.expect_kw("from")
        obj_tok = self.next()
        if obj_tok.kind != "ident":
            raise self.unexpected(obj_tok)
        q = Query(self.text, select, obj_tok.value, obj_tok.pos)
        if self.is_kw("where"):
            self.next()
            q.where = self.or_expr()
        if self.is_kw("order"):
            self.next()
            self.expect_kw("by")
            q.order = self.order_list()
        if self.is_kw("limit"):
            self.next()
            q.limit = self.integer()
        if self.is_kw("offset"):
            self.next()
            q.offset = self.integer()
            if q.offset > 2000:
                raise _malformed(self.text, self.toks[self.i - 1].pos,
                                 "Maximum SOQL offset allowed is 2000")
        tok = self.peek()
        if tok.kind != "eof":
            raise self.unexpected(tok)
        return q

    def integer(self) -> int:
        tok = self.next()
        if tok.kind != "number" or not tok.value.isdigit():
            raise self.unexpected(tok)
        return int(tok.value)

    def select_list(self) -> list[SelectItem]:
        items: list[SelectItem] = []
        while True:
            if self.is_kw("count") and self.toks[self.i + 1].value == "(":
                self.next()
                self.expect_punct("(")
                path = None
                if not (self.peek().kind == "punct" and self.peek().value == ")"):
                    path = self.path()
                self.expect_punct(")")
                alias = None
                tok = self.peek()
                if tok.kind == "ident" and tok.value.lower() not in _KEYWORDS:
                    alias = self.next().value
                items.append(SelectItem(path, "count", alias))
            else:
                items.append(SelectItem(self.path()))
            tok = self.peek()
            if tok.kind == "punct" and tok.value == ",":
                self.next()
                continue
            return items

    def path(self) -> Path:
        tok = self.next()
        if tok.kind != "ident" or tok.value.lower() in ("from", "where"):
            raise self.unexpected(tok)
        parts = [tok.value]
        while self.peek().kind == "punct" and self.peek().value == ".":
            self.next()
            nxt = self.next()
            if nxt.kind != "ident":
                raise self.unexpected(nxt)
            parts.append(nxt.value)
        return Path(parts, tok.pos)

    def order_list(self) -> list[OrderKey]:
        keys: list[OrderKey] = []
        while True:
            path = self.path()
            desc = False
            if self.is_kw("asc") or self.is_kw("desc"):
                desc = self.next().value.lower() == "desc"
            nulls_first = not desc
            if self.is_kw("nulls"):
                self.next()
                tok = self.next()
                if tok.kind != "ident" or tok.value.lower() not in ("first", "last"):
                    raise self.unexpected(tok)
                nulls_first = tok.value.lower() == "first"
            keys.append(OrderKey(path, desc, nulls_first))
            if self.peek().kind == "punct" and self.peek().value == ",":
                self.next()
                continue
            return keys

    def or_expr(self) -> Any:
        items = [self.and_expr()]
        while self.is_kw("or"):
            self.next()
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else BoolOp("or", items)

    def and_expr(self) -> Any:
        items = [self.not_expr()]
        while self.is_kw("and"):
            self.next()
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else BoolOp("and", items)

    def not_expr(self) -> Any:
        if self.is_kw("not"):
            self.next()
            return Not(self.not_expr())
        tok = self.peek()
        if tok.kind == "punct" and tok.value == "(":
            self.next()
            inner = self.or_expr()
            self.expect_punct(")")
            return inner
        return self.comparison()

    def comparison(self) -> Compare:
        path = self.path()
        tok = self.next()
        if tok.kind == "op":
            op = "!=" if tok.value == "<>" else tok.value
            return Compare(path, op, [self.literal()])
        if tok.kind == "ident":
            word = tok.value.lower()
            if word == "like":
                return Compare(path, "like", [self.literal()])
            if word == "in":
                return Compare(path, "in", self.literal_list())
            if word == "not" and self.is_kw("in"):
                self.next()
                return Compare(path, "notin", self.literal_list())
        raise self.unexpected(tok)

    def literal_list(self) -> list[Literal]:
        self.expect_punct("(")
        values = [self.literal()]
        while self.peek().kind == "punct" and self.peek().value == ",":
            self.next()
            values.append(self.literal())
        self.expect_punct(")")
        return values

    def literal(self) -> Literal:
        tok = self.next()
        if tok.kind == "string":
            if len(tok.value) > 4000:
                raise _malformed(self.text, tok.pos, "String literal too long (max 4000)")
            return Literal("string", tok.value, tok.pos)
        if tok.kind == "number":
            return Literal("number", float(tok.value), tok.pos)
        if tok.kind == "date":
            return Literal("date", tok.value, tok.pos)
        if tok.kind == "datetime":
            return Literal("datetime", parse_datetime(tok.value), tok.pos)
        if tok.kind == "ident":
            word = tok.value.lower()
            if word in ("true", "false"):
                return Literal("bool", word == "true", tok.pos)
            if word == "null":
                return Literal("null", None, tok.pos)
            if word in _RELATIVE_DATES:
                n = 0
                if word.endswith("_n_days"):
                    self.expect_punct(":")
                    n = self.integer()
                return Literal("relative", (word, n), tok.pos)
        raise self.unexpected(tok)


def parse(text: str) -> Query:
    """Parse one SOQL statement."""
    if not text.strip():
        raise SalesforceError(400, "MALFORMED_QUERY", "unexpected token: '<EOF>'")
    return Parser(text).parse()


# -- compilation --------------------------------------------------------------------------------
@dataclass
class ResolvedPath:
    """A field path resolved against the schema, with a row getter."""

    names: list[str]  # canonical names along the path
    leaf: Field
    getter: Getter
    hops: list[tuple[str, Field]]  # (relationship name, reference field) per hop


class Compiler:
    """Turns a parsed query into getters, a predicate and a renderer."""

    def __init__(self, state: OrgState, query: Query, *, version: str) -> None:
        self.state = state
        self.q = query
        self.version = version
        obj = SCHEMA_LOWER.get(query.sobject.lower())
        if obj is None:
            raise SalesforceError(400, "INVALID_TYPE", _located(
                query.text, query.sobject_pos,
                f"sObject type '{query.sobject}' is not supported. If you are attempting to use a "
                "custom object, be sure to append the '__c' after the entity name. Please "
                "reference your WSDL or the describe call for the appropriate names."))
        self.obj = obj
        self.rows_by_prefix = {t.obj.key_prefix: t.rows for t in state.tables.values()}

    def invalid_field(self, path: Path, message: str) -> SalesforceError:
        return SalesforceError(400, "INVALID_FIELD", _located(self.q.text, path.pos, message))

    def resolve(self, path: Path) -> ResolvedPath:
        parts = list(path.parts)
        if len(parts) > 1 and parts[0].lower() == self.obj.name.lower():
            parts = parts[1:]
        objs: list[SObject] = [self.obj]
        names: list[str] = []
        hops: list[tuple[str, Field]] = []
        polymorphic = False
        for hop in parts[:-1]:
            if polymorphic:
                raise self.invalid_field(path, f"Didn't understand relationship '{hop}' in "
                                         "field path.")
            rel: Field | None = None
            for o in objs:
                rel = o.relationships.get(hop.lower())
                if rel is not None:
                    break
            if rel is None or not rel.reference_to or not all(r in SCHEMA
                                                              for r in rel.reference_to):
                raise self.invalid_field(
                    path, f"Didn't understand relationship '{hop}' in field path. If you are "
                    "attempting to use a custom relationship, be sure to append the '__r' after "
                    "the custom relationship name. Please reference your WSDL or the describe "
                    "call for the appropriate names.")
            assert rel.relationship_name is not None
            names.append(rel.relationship_name)
            hops.append((rel.relationship_name, rel))
            objs = [SCHEMA[r] for r in rel.reference_to]
            polymorphic = len(objs) > 1
        leaf_name = parts[-1]
        leaf: Field | None = None
        if polymorphic and leaf_name.lower() not in NAME_FIELDS:
            leaf = None
        else:
            for o in objs:
                leaf = o.get(leaf_name)
                if leaf is not None:
                    break
        if leaf is None:
            entity = "Name" if polymorphic else objs[0].name
            raise self.invalid_field(
                path, f"No such column '{leaf_name}' on entity '{entity}'. If you are attempting "
                "to use a custom field, be sure to append the '__c' after the custom field name. "
                "Please reference your WSDL or the describe call for the appropriate names.")
        names.append(leaf.name)
        getter = self._getter(hops, leaf.name)
        return ResolvedPath(names, leaf, getter, hops)

    def _leaf_getter(self, obj: SObject, name: str) -> Getter:
        f = obj.get(name)
        if f is None:
            return lambda row: None
        if f.via is not None:
            return self._copy_getter(obj, f.via)
        if f.rollup is not None:
            return self._rollup_getter(f.rollup)
        if not f.is_compound:
            return itemgetter(f.slot)
        slots = [(k, obj.by_lower[s.lower()].slot) for k, s in f.components]
        if f.type == "address":
            def address(row: Row) -> Any:
                vals = {k: row[s] for k, s in slots}
                if all(v is None for v in vals.values()):
                    return None
                return {"city": vals["City"], "country": vals["Country"],
                        "geocodeAccuracy": None, "latitude": None, "longitude": None,
                        "postalCode": vals["PostalCode"], "state": vals["State"],
                        "street": vals["Street"]}
            return address
        name_slots = [s for k, s in slots if k in ("FirstName", "LastName")]

        def full_name(row: Row) -> Any:
            return " ".join(row[s] for s in name_slots if row[s]) or None
        return full_name

    def _copy_getter(self, obj: SObject,
                     via: tuple[str, tuple[tuple[str, str], ...]]) -> Getter:
        """A read-only copy: the value of a field of the record the reference points to."""
        ref_slot = obj.slot(via[0])
        by_prefix = {SCHEMA[t].key_prefix: (self.rows_by_prefix[SCHEMA[t].key_prefix],
                                            self._leaf_getter(SCHEMA[t], name))
                     for t, name in via[1]}

        def copy(row: Row) -> Any:
            ref = row[ref_slot]
            target = by_prefix.get(ref[:3]) if ref is not None else None
            if target is None:
                return None
            parent = target[0].get(ref)
            return None if parent is None else target[1](parent)
        return copy

    def _rollup_getter(self, rollup: tuple[str, str, str]) -> Getter:
        """A rollup: how many live child records reference the row (and qualify)."""
        child, ref_field, kind = rollup
        table = self.state.tables[child]
        index = table.index_for(table.obj.slot(ref_field))
        rows = table.rows
        deleted = table.deleted_slot
        needed = [table.obj.slot(n) for n in ROLLUPS[kind]]

        def count(row: Row) -> int:
            return sum(1 for i in index.get(row[0], ())
                       if not (r := rows[i])[deleted] and all(r[s] for s in needed))
        return count

    def parent_getter(self, hops: list[tuple[str, Field]]) -> Callable[[Row], Row | None]:
        """Row -> the parent row reached through `hops` (None when a link is empty)."""
        rows_by_prefix = self.rows_by_prefix
        steps: list[tuple[str, int]] = []
        objs = [self.obj]
        for _, ref in hops:
            slot = next(o.get(ref.name) for o in objs if o.get(ref.name) is not None)
            assert slot is not None
            steps.append((ref.name, slot.slot))
            objs = [SCHEMA[r] for r in ref.reference_to]
        slots_only = [s for _, s in steps]
        get_rows = rows_by_prefix.get

        def parent(row: Row) -> Row | None:
            cur: Row | None = row
            for s in slots_only:
                assert cur is not None
                ref = cur[s]
                if ref is None:
                    return None
                table = get_rows(ref[:3])
                cur = table.get(ref) if table is not None else None
                if cur is None:
                    return None
            return cur
        return parent

    def _getter(self, hops: list[tuple[str, Field]], leaf: str) -> Getter:
        if not hops:
            return self._leaf_getter(self.obj, leaf)
        parent = self.parent_getter(hops)
        targets = [SCHEMA[r] for r in hops[-1][1].reference_to]
        by_prefix = {o.key_prefix: self._leaf_getter(o, leaf) for o in targets}
        if len(by_prefix) == 1:
            only = next(iter(by_prefix.values()))

            def single(row: Row) -> Any:
                p = parent(row)
                return None if p is None else only(p)
            return single

        def poly(row: Row) -> Any:
            p = parent(row)
            if p is None:
                return None
            g = by_prefix.get(p[0][:3])
            return None if g is None else g(p)
        return poly

    # -- WHERE ----------------------------------------------------------------------------------
    def predicate(self, node: Any) -> Predicate:
        if isinstance(node, BoolOp):
            preds = [self.predicate(i) for i in node.items]
            if node.op == "and":
                return lambda row: all(p(row) for p in preds)
            return lambda row: any(p(row) for p in preds)
        if isinstance(node, Not):
            inner = self.predicate(node.item)
            return lambda row: not inner(row)
        assert isinstance(node, Compare)
        return self.compare(node)

    def value_of(self, path: Path, f: Field, lit: Literal) -> Any:
        """A literal converted to the stored representation of field f."""
        if lit.kind == "null":
            return None
        if lit.kind == "relative" and f.type in ("date", "datetime"):
            return self._relative_day(lit, f.type)
        if lit.kind == _literal_kind_for(f.type):
            v = lit.value
            if f.type in ("id", "reference") and len(v) == 15 and is_valid_id(v):
                return to18(v)
            return v
        expected = _EXPECTED_TYPE.get(f.type, "string")
        quoted = "and should be enclosed in quotes" if expected in ("string", "id") \
            else "and should not be enclosed in quotes"
        raise SalesforceError(400, "INVALID_FIELD", _located(
            self.q.text, lit.pos,
            f"value of filter criterion for field '{f.name}' must be of type {expected} "
            f"{quoted}"))

    def _relative_day(self, lit: Literal, field_type: str) -> str:
        """TODAY, LAST_N_DAYS:n, ... as the stored form of a date or datetime field."""
        word, n = lit.value
        today = datetime.fromtimestamp(self.state.clock(), UTC).date()
        offsets = {"today": 0, "yesterday": -1, "tomorrow": 1, "last_n_days": -n,
                   "next_n_days": n}
        day = (today + timedelta(days=offsets[word])).isoformat()
        return day if field_type == "date" else day + "T00:00:00.000+0000"

    def compare(self, node: Compare) -> Predicate:
        rp = self.resolve(node.path)
        f = rp.leaf
        if f.type == "address":
            raise self.invalid_field(node.path, f"field '{f.name}' can not be filtered in a "
                                     "query call")
        values = [self.value_of(node.path, f, lit) for lit in node.values]
        if node.op == "like":
            if f.type not in STRING_TYPES and f.type not in ("id", "reference"):
                raise self.invalid_field(node.path, f"invalid operator on {f.type} field")
            return _like(rp.getter, _like_regex(node.values[0].value))
        read = rp.getter
        if f.type in STRING_TYPES:
            values = [v.casefold() if isinstance(v, str) else v for v in values]
            read = _casefolded(rp.getter)
        if node.op in ("in", "notin"):
            return _membership(read, set(values), negate=node.op == "notin")
        return _ordering(read, node.op, values[0])

    # -- SELECT rendering -----------------------------------------------------------------------
    def renderer(self) -> tuple[Callable[[Row], dict[str, Any]], list[tuple[str, Getter]]]:
        """(row -> REST record dict, [(dotted column, getter)] for CSV)."""
        columns: list[tuple[str, Getter]] = []
        tree: dict[str, Any] = {}
        seen: set[str] = set()
        for item in self.q.select:
            if item.aggregate:
                raise SalesforceError(400, "MALFORMED_QUERY", _located(
                    self.q.text, 0, "Aggregate functions must be the only field selected"))
            assert item.path is not None
            rp = self.resolve(item.path)
            dotted = ".".join(rp.names)
            if dotted.lower() in seen:
                raise self.invalid_field(item.path, f"duplicate field selected: {dotted}")
            seen.add(dotted.lower())
            columns.append((dotted, rp.getter))
            node = tree
            for i, (rel_name, _) in enumerate(rp.hops):
                sub = node.get(rel_name)
                if sub is None:
                    sub = {"__hops__": rp.hops[: i + 1]}
                    node[rel_name] = sub
                node = sub
            node[rp.names[-1]] = self._leaf_getter_any(rp)
        return self._render_node(tree, self.obj.name, None), columns

    def _leaf_getter_any(self, rp: ResolvedPath) -> Callable[[Row], Any]:
        """Getter applied to the row of the leaf's own object (the parent row for a path)."""
        if not rp.hops:
            return rp.getter
        targets = [SCHEMA[r] for r in rp.hops[-1][1].reference_to]
        by_prefix = {o.key_prefix: self._leaf_getter(o, rp.leaf.name) for o in targets}
        if len(by_prefix) == 1:
            return next(iter(by_prefix.values()))
        return lambda row: (g(row) if (g := by_prefix.get(row[0][:3])) else None)

    def _render_node(self, tree: dict[str, Any], obj_name: str | None,
                     hop_field: Field | None) -> Callable[[Row], dict[str, Any]]:
        prefix = f"/services/data/v{self.version}/sobjects/"
        leaves: list[tuple[str, Callable[[Row], Any]]] = []
        children: list[tuple[str, Callable[[Row], Row | None], Callable[[Row], Any]]] = []
        for key, value in tree.items():
            if key == "__hops__":
                continue
            if isinstance(value, dict):
                hops = value["__hops__"]
                ref = hops[-1][1]
                # Parent row from *this* node's row: one hop.
                child_parent = self._one_hop(ref, obj_name)
                targets = ref.reference_to
                child_render = self._render_node(
                    value, targets[0] if len(targets) == 1 else None, ref)
                children.append((key, child_parent, child_render))
            else:
                leaves.append((key, value))
        fixed_type = obj_name
        poly = hop_field is not None and len(hop_field.reference_to) > 1

        def render(row: Row) -> dict[str, Any]:
            sf_id = row[0]
            if fixed_type is not None:
                t = fixed_type
                url_obj = fixed_type
            else:
                o = BY_PREFIX.get(sf_id[:3])
                url_obj = o.name if o else "Name"
                t = "Name" if poly else url_obj
            rec: dict[str, Any] = {"attributes": {"type": t, "url": prefix + url_obj + "/" + sf_id}}
            for key, get in leaves:
                rec[key] = get(row)
            for key, parent, sub in children:
                p = parent(row)
                rec[key] = None if p is None else sub(p)
            return rec
        return render

    def _one_hop(self, ref: Field, obj_name: str | None) -> Callable[[Row], Row | None]:
        rows_by_prefix = self.rows_by_prefix
        name = ref.name
        if obj_name is not None:
            slot = SCHEMA[obj_name].slot(name)
            targets = {SCHEMA[r].key_prefix for r in ref.reference_to}
            if len(targets) == 1:
                only = rows_by_prefix[next(iter(targets))]

                def fixed(row: Row) -> Row | None:
                    target = row[slot]
                    return None if target is None else only.get(target)
                return fixed

            def fixed_poly(row: Row) -> Row | None:
                target = row[slot]
                if target is None:
                    return None
                table = rows_by_prefix.get(target[:3])
                return None if table is None else table.get(target)
            return fixed_poly

        def hop(row: Row) -> Row | None:
            o = BY_PREFIX.get(row[0][:3])
            if o is None:
                return None
            f = o.get(name)
            if f is None:
                return None
            target = row[f.slot]
            if target is None:
                return None
            table = rows_by_prefix.get(target[:3])
            return None if table is None else table.get(target)
        return hop


def _like_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


# -- execution ----------------------------------------------------------------------------------
@dataclass
class QueryResult:
    """Matched rows in order, and how to render them."""

    sobject: str
    rows: list[Row]
    render: Callable[[Row], dict[str, Any]] | None
    columns: list[tuple[str, Getter]]
    total_size: int
    aggregate: list[dict[str, Any]] | None = None


_LITERAL_KINDS = {"id": "string", "reference": "string", "address": "string",
                  "boolean": "bool", "double": "number", "currency": "number",
                  "percent": "number", "int": "number", "date": "date", "datetime": "datetime"}
_EXPECTED_TYPE = {"reference": "id", "id": "id", "boolean": "boolean", "date": "date",
                  "datetime": "dateTime", "double": "double", "currency": "double", "int": "int"}
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda x, v: bool(x < v), "<=": lambda x, v: bool(x <= v),
    ">": lambda x, v: bool(x > v), ">=": lambda x, v: bool(x >= v),
}


def _literal_kind_for(field_type: str) -> str | None:
    """The literal kind a filter on a field of this type takes (None: no literal fits)."""
    if field_type in STRING_TYPES:
        return "string"
    return _LITERAL_KINDS.get(field_type)


def _casefolded(get: Getter) -> Getter:
    def folded(row: Row) -> Any:
        v = get(row)
        return v.casefold() if isinstance(v, str) else v
    return folded


def _like(get: Getter, pattern: re.Pattern[str]) -> Predicate:
    def like(row: Row) -> bool:
        v = get(row)
        return v is not None and pattern.fullmatch(str(v)) is not None
    return like


def _membership(read: Getter, wanted: set[Any], *, negate: bool) -> Predicate:
    """IN / NOT IN: NOT IN (..., null) also leaves out the rows whose value is null."""
    if not negate:
        return lambda row: read(row) in wanted
    has_null = None in wanted
    return lambda row: (read(row) not in wanted) and not (has_null and read(row) is None)


def _ordering(read: Getter, op: str, v0: Any) -> Predicate:
    """=, != and the four orderings; an ordering against null matches nothing."""
    if op == "=":
        return lambda row: read(row) == v0
    if op == "!=":
        return lambda row: read(row) != v0
    if v0 is None:
        return lambda row: False
    cmp = _COMPARISONS[op]
    return lambda row: (x := read(row)) is not None and cmp(x, v0)


def execute(state: OrgState, text: str, *, include_deleted: bool = False,
            version: str = "66.0") -> QueryResult:
    """Parse, compile and run a query against the state."""
    q = parse(text)
    comp = Compiler(state, q, version=version)
    table = state.tables[comp.obj.name]
    pred = comp.predicate(q.where) if q.where is not None else None
    if not include_deleted:
        pred = _live_only(table, pred)
    render = None
    columns: list[tuple[str, Getter]] = []
    aggregates = [i for i in q.select if i.aggregate]
    if aggregates and len(q.select) > 1:
        raise SalesforceError(400, "MALFORMED_QUERY", _located(
            text, 0, "Field must be grouped or aggregated"))
    if not aggregates:
        render, columns = comp.renderer()
    order_keys = _order_keys(comp, q)
    id_order = (not order_keys) or (len(order_keys) == 1 and not order_keys[0][0].hops
                                    and order_keys[0][0].leaf.name == "Id")
    descending = bool(order_keys) and order_keys[0][1].desc
    stop = q.limit + q.offset if id_order and q.limit is not None and not aggregates else None
    rows = _scan(table, q.where, pred, stop, descending if id_order else False)
    if not id_order:
        rows = _sort(rows, order_keys)
    total = len(rows)
    rows = rows[q.offset:] if q.limit is None else rows[q.offset:q.offset + q.limit]
    if aggregates:
        return _aggregate(comp, aggregates[0], rows, total, q.limit)
    return QueryResult(comp.obj.name, rows, render, columns, len(rows))


def _live_only(table: Table, pred: Predicate | None) -> Predicate | None:
    """The predicate restricted to rows not in the recycle bin (when the object has one)."""
    deleted_slot = table.deleted_slot
    if deleted_slot < 0:
        return pred

    def live(row: Row) -> bool:
        return not row[deleted_slot] and (pred is None or pred(row))
    return live


def _order_keys(comp: Compiler, q: Query) -> list[tuple[ResolvedPath, OrderKey]]:
    keys = [(comp.resolve(k.path), k) for k in q.order]
    for rp, k in keys:
        if rp.leaf.type == "address":
            raise comp.invalid_field(k.path, f"field '{rp.leaf.name}' can not be sorted in a "
                                     "query call")
    return keys


def _aggregate(comp: Compiler, item: SelectItem, rows: list[Row], total: int,
               limit: int | None) -> QueryResult:
    """COUNT() (the total, capped by LIMIT) or COUNT(field) (an AggregateResult row)."""
    if item.path is None:
        if limit is not None:
            total = min(total, limit)
        return QueryResult(comp.obj.name, [], None, [], total)
    rp = comp.resolve(item.path)
    n = sum(1 for r in rows if rp.getter(r) is not None)
    agg = [{"attributes": {"type": "AggregateResult"}, item.alias or "expr0": n}]
    return QueryResult(comp.obj.name, [], None, [], 1, agg)


def _id_bounds(where: Any) -> tuple[str | None, bool, str | None, bool, list[str] | None]:
    """Id range and Id list implied by top-level AND terms: (lo, lo_incl, hi, hi_incl, ids)."""
    terms = where.items if isinstance(where, BoolOp) and where.op == "and" else [where]
    lo: str | None = None
    lo_incl = True
    hi: str | None = None
    hi_incl = True
    ids: list[str] | None = None
    for t in terms:
        if not isinstance(t, Compare) or len(t.path.parts) != 1 \
                or t.path.parts[0].lower() != "id":
            continue
        vals = [v.value for v in t.values if v.kind == "string"]
        if len(vals) != len(t.values):
            continue
        vals = [to18(v) if len(v) == 15 and is_valid_id(v) else v for v in vals]
        if t.op == "in" or t.op == "=":
            ids = sorted(set(vals)) if ids is None else sorted(set(ids) & set(vals))
        elif t.op in (">", ">="):
            if lo is None or vals[0] > lo or (vals[0] == lo and t.op == ">"):
                lo, lo_incl = vals[0], t.op == ">="
        elif t.op in ("<", "<="):
            if hi is None or vals[0] < hi or (vals[0] == hi and t.op == "<"):
                hi, hi_incl = vals[0], t.op == "<="
    return lo, lo_incl, hi, hi_incl, ids


def _stamp_floor(where: Any) -> str | None:
    """The lowest SystemModstamp a top-level AND term allows (>= or > a datetime literal)."""
    terms = where.items if isinstance(where, BoolOp) and where.op == "and" else [where]
    floor: str | None = None
    for t in terms:
        if isinstance(t, Compare) and t.op in (">", ">=") and len(t.path.parts) == 1 \
                and t.path.parts[0].lower() == "systemmodstamp" \
                and t.values[0].kind == "datetime":
            value = str(t.values[0].value)
            floor = value if floor is None or value > floor else floor
    return floor


def _reference_candidates(table: Table, where: Any) -> list[str] | None:
    """Sorted ids allowed by top-level AND terms `Ref = 'id'` / `Ref IN (...)` on reference
    fields of the queried object, via the table's reference index (None: no such term)."""
    terms = where.items if isinstance(where, BoolOp) and where.op == "and" else [where]
    found: set[str] | None = None
    for t in terms:
        if not isinstance(t, Compare) or t.op not in ("=", "in") or len(t.path.parts) != 1:
            continue
        f = table.obj.get(t.path.parts[0])
        if f is None or f.type != "reference" or any(v.kind != "string" for v in t.values):
            continue
        index = table.index_for(f.slot)
        ids: set[str] = set()
        for v in t.values:
            value = str(v.value)
            key = to18(value) if len(value) == 15 and is_valid_id(value) else value
            ids |= index.get(key, set())
        found = ids if found is None else found & ids
    return None if found is None else sorted(found)


def _scan(table: Table, where: Any, pred: Predicate | None, stop: int | None,
          descending: bool) -> list[Row]:
    """Matching rows in Id order, using the sorted ids for ranges and lists, and the
    SystemModstamp index for recent-change filters."""
    ids, rows = table.ids, table.rows
    start, end, id_list = _candidates(table, where)
    if id_list is not None:
        candidates = [rows[i] for i in id_list if i in rows]
        if descending:
            candidates.reverse()
        return _take(candidates, pred, stop)
    if start >= end:
        return []
    if pred is None and stop is None:
        seq = ids[start:end]
        if descending:
            seq.reverse()
        return [rows[i] for i in seq]
    rng = range(end - 1, start - 1, -1) if descending else range(start, end)
    return _take((rows[ids[k]] for k in rng), pred, stop)


def _candidates(table: Table, where: Any) -> tuple[int, int, list[str] | None]:
    """(start, end) in the sorted ids, or the sorted id list the WHERE narrows the scan to."""
    ids, rows = table.ids, table.rows
    start, end = 0, len(ids)
    if where is None:
        return start, end, None
    lo, lo_incl, hi, hi_incl, id_list = _id_bounds(where)
    if lo is not None:
        start = bisect_left(ids, lo) if lo_incl else bisect_right(ids, lo)
    if hi is not None:
        end = bisect_right(ids, hi) if hi_incl else bisect_left(ids, hi)
    if id_list is None:
        id_list = _reference_candidates(table, where)
    floor = _stamp_floor(where) if id_list is None else None
    if floor is not None:
        recent = table.modified_since(floor)
        if len(recent) * 4 < end - start:
            lo_id = ids[start] if start < len(ids) else None
            hi_id = ids[end - 1] if end > 0 else None
            id_list = sorted(i for i in recent if i in rows and lo_id is not None
                             and hi_id is not None and lo_id <= i <= hi_id)
    return start, end, id_list


def _take(candidates: Iterable[Row], pred: Predicate | None, stop: int | None) -> list[Row]:
    """The candidates that match, stopping after `stop` of them."""
    out: list[Row] = []
    for row in candidates:
        if pred is None or pred(row):
            out.append(row)
            if stop is not None and len(out) >= stop:
                break
    return out


def _sort(rows: list[Row], keys: list[tuple[ResolvedPath, OrderKey]]) -> list[Row]:
    out = list(rows)
    for rp, k in reversed(keys):
        get = rp.getter
        fold = rp.leaf.type in STRING_TYPES
        null_rank = 0 if (k.nulls_first != k.desc) else 2

        def key(row: Row, get: Getter = get, fold: bool = fold,
                null_rank: int = null_rank) -> tuple[int, Any]:
            v = get(row)
            if v is None:
                return (null_rank, 0)
            return (1, v.casefold() if fold and isinstance(v, str) else v)
        out.sort(key=key, reverse=k.desc)
    return out
