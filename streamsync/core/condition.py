"""An event rule's `condition` (the `filter` language of core/soql.py) evaluated on a record's
values in process, as Salesforce would evaluate it in a WHERE clause (docs/events.md §3)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from streamsync.core.soql import _RELATIVE_FIXED, _Tok, _tokenize, parse_filter
from streamsync.errors import SoqlError

Values = Mapping[str, Any]  # field name (lower case) → value
Predicate = Callable[[Values], bool]

_NULL: Final = object()


@dataclass(frozen=True, slots=True)
class _Literal:
    value: Any  # str, Decimal, bool, or _NULL
    kind: str   # string, number, date, datetime, boolean, null


def _datetime_ms(value: str) -> int | None:
    """Epoch milliseconds of a SOQL/CDC dateTime (`...Z`, `...+0000`, `...+00:00`)."""
    text = value.strip().replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", text):
        text = text[:-2] + ":" + text[-2:]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _compare(value: Any, lit: _Literal) -> int | None:
    """-1/0/1 comparing a record value with a literal; None when they cannot be compared."""
    if lit.kind == "number":
        number = _number(value)
        if number is None:
            return None
        bound: Decimal = lit.value
        return (number > bound) - (number < bound)
    if lit.kind == "boolean":
        return 0 if isinstance(value, bool) and value is lit.value else 1
    if not isinstance(value, str):
        return None
    if lit.kind == "datetime" or (lit.kind == "date" and len(value) > 10):
        left, right = _datetime_ms(value), _datetime_ms(lit.value if lit.kind == "datetime"
                                                         else lit.value + "T00:00:00Z")
        if left is None or right is None:
            return None
        return (left > right) - (left < right)
    a, b = value.lower(), str(lit.value).lower()
    return (a > b) - (a < b)


def _like(pattern: str) -> re.Pattern[str]:
    out = []
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


class _Compiler:
    """Recursive descent over the tokens parse_filter accepted, building a predicate."""

    def __init__(self, text: str) -> None:
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok is not None and tok.kind == "word" and tok.text.upper() == word:
            self.i += 1
            return True
        return False

    def or_expr(self) -> Predicate:
        parts = [self.and_expr()]
        while self.keyword("OR"):
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else (lambda v: any(p(v) for p in parts))

    def and_expr(self) -> Predicate:
        parts = [self.not_expr()]
        while self.keyword("AND"):
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else (lambda v: all(p(v) for p in parts))

    def not_expr(self) -> Predicate:
        if self.keyword("NOT"):
            inner = self.not_expr()
            return lambda v: not inner(v)
        tok = self.peek()
        if tok is not None and tok.text == "(":
            self.i += 1
            inner = self.or_expr()
            self.i += 1  # ")" (parse_filter checked the grammar)
            return inner
        return self.comparison()

    def comparison(self) -> Predicate:
        field = self.toks[self.i].text.lower()
        self.i += 1
        negated = self.keyword("NOT")
        if self.keyword("IN"):
            values = self.value_list()
            return _in(field, values, negated)
        if self.keyword("LIKE"):
            regex = _like(str(self.literal().value))
            return lambda v: isinstance(v.get(field), str) and bool(regex.fullmatch(v[field]))
        for word in ("INCLUDES", "EXCLUDES"):
            if self.keyword(word):
                return _includes(field, self.value_list(), word == "EXCLUDES")
        op = self.toks[self.i].text
        self.i += 1
        return _operator(field, op, self.literal())

    def value_list(self) -> list[_Literal]:
        self.i += 1  # "("
        values = [self.literal()]
        while (tok := self.peek()) is not None and tok.text == ",":
            self.i += 1
            values.append(self.literal())
        self.i += 1  # ")"
        return values

    def literal(self) -> _Literal:
        tok = self.toks[self.i]
        self.i += 1
        if tok.kind == "string":
            return _Literal(tok.text.replace("\ue000", "\\_").replace("\ue001", "\\%"), "string")
        if tok.kind == "number":
            return _Literal(Decimal(tok.text), "number")
        if tok.kind in ("date", "datetime"):
            return _Literal(tok.text, tok.kind)
        upper = tok.text.upper()
        if upper in ("TRUE", "FALSE"):
            return _Literal(upper == "TRUE", "boolean")
        if upper == "NULL":
            return _Literal(_NULL, "null")
        raise SoqlError(f"relative date literal {tok.text!r} is not supported in an event "
                        "condition (it would change meaning with the day it is evaluated)")


def _operator(field: str, op: str, lit: _Literal) -> Predicate:
    if lit.kind == "null":
        return (lambda v: v.get(field) is None) if op == "=" else \
            (lambda v: v.get(field) is not None)

    def check(values: Values) -> bool:
        value = values.get(field)
        if value is None:
            return op in ("!=", "<>")  # SOQL: a null field is "not equal" to any value
        order = _compare(value, lit)
        if order is None:
            return op in ("!=", "<>")
        return {"=": order == 0, "!=": order != 0, "<>": order != 0, "<": order < 0,
                "<=": order <= 0, ">": order > 0, ">=": order >= 0}[op]

    return check


def _in(field: str, values: list[_Literal], negated: bool) -> Predicate:
    def check(v: Values) -> bool:
        value = v.get(field)
        found = any((lit.kind == "null" and value is None)
                    or (value is not None and lit.kind != "null" and _compare(value, lit) == 0)
                    for lit in values)
        return found != negated

    return check


def _includes(field: str, values: list[_Literal], excludes: bool) -> Predicate:
    wanted = [{part.strip().lower() for part in str(lit.value).split(";")} for lit in values]

    def check(v: Values) -> bool:
        value = v.get(field)
        have = {p.strip().lower() for p in value.split(";")} if isinstance(value, str) else set()
        hit = any(group <= have for group in wanted)
        return hit != excludes

    return check


@dataclass(frozen=True)
class Condition:
    """A compiled condition: `holds(values)` with values keyed by lower-case field name."""

    text: str
    fields: frozenset[str]  # as written in the condition
    holds: Predicate


def compile_condition(text: str) -> Condition:
    """Validate with the filter grammar (SoqlError), then build the predicate. Relative date
    literals (TODAY, LAST_N_DAYS:7) are refused."""
    safe = parse_filter(text)
    for tok in _tokenize(text):
        if tok.kind == "relative" or (tok.kind == "word" and tok.text.upper() in _RELATIVE_FIXED):
            raise SoqlError(f"relative date literal {tok.text!r} is not supported in an event "
                            "condition (it would change meaning with the day it is evaluated)")
    compiler = _Compiler(text)
    return Condition(safe.text, safe.fields, compiler.or_expr())
