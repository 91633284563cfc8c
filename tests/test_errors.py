"""streamsync/errors.py: every exception class of the product lives there, each in one branch
of the tree by what the caller should do, with typed attributes logs and readiness read."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from streamsync import errors
from streamsync.errors import (
    BatchError,
    ConfigError,
    FatalError,
    RecordError,
    RetriableError,
    Stopped,
    StreamsyncError,
    Terminated,
    TransientError,
    UsageError,
    describe_error,
)
from streamsync.models import DeadLetterReason, EventProblem

PACKAGE = Path(errors.__file__).parent
# What the caller does: refuse (usage/config), stop (fatal), try again later (retriable),
# dead-letter the record (record), or stop as asked (stop).
DISPOSITIONS: dict[str, tuple[type[BaseException], ...]] = {
    "usage/config": (ConfigError, UsageError, errors.ConfigProblems),
    "fatal": (FatalError,),
    "retriable": (RetriableError,),
    "record": (RecordError,),
    "stop": (Stopped, Terminated),
}


def _exception_classes() -> list[type[BaseException]]:
    return [obj for _, obj in inspect.getmembers(errors, inspect.isclass)
            if issubclass(obj, BaseException) and obj.__module__ == errors.__name__]


def _is_exception_class(node: ast.ClassDef, known: set[str]) -> bool:
    names = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
             for b in node.bases}
    return any(n in known or n.endswith(("Error", "Exception")) for n in names)


def test_no_exception_class_is_defined_outside_errors_py() -> None:
    """Emulators share no code with the product and keep their own."""
    known = {cls.__name__ for cls in _exception_classes()} | {"Exception", "BaseException"}
    outside = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "emulators" or relative == Path("errors.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and _is_exception_class(node, known):
                outside.append(f"{relative}:{node.lineno} {node.name}")
    assert outside == []


def test_the_check_finds_an_exception_class_where_there_should_be_none(tmp_path: Path) -> None:
    tree = ast.parse("class Odd(TransientError):\n    pass\nclass Fine:\n    pass\n")
    classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    known = {"TransientError"}
    assert [_is_exception_class(c, known) for c in classes] == [True, False]


@pytest.mark.parametrize("cls", _exception_classes(), ids=lambda c: c.__name__)
def test_every_class_sits_in_exactly_one_disposition(cls: type[BaseException]) -> None:
    if cls is StreamsyncError:
        return
    branches = [name for name, roots in DISPOSITIONS.items() if issubclass(cls, roots)]
    assert len(branches) == 1, f"{cls.__name__} is in {branches or 'no branch'}"


def test_batch_error_is_a_record_error_whose_reason_a_single_user_would_get() -> None:
    rejected = errors.BatchRejected(400, "RequestFieldsTypesMismatched", "bad", None, {})
    too_large = errors.BatchTooLarge(413, "BatchTooLarge", "big")
    other = BatchError(400, "BadParams", "nope")
    assert [e.reason for e in (rejected, too_large, other)] == [
        "type_mismatch", "too_large", "rejected"]
    assert str(other) == "iterable rejected the request: HTTP 400 BadParams: nope"
    assert (rejected.reason, too_large.reason) == (DeadLetterReason.TYPE_MISMATCH,
                                                   DeadLetterReason.TOO_LARGE)
    assert errors.MalformedEvent("x").reason == EventProblem.MALFORMED_EVENT
    assert errors.UnexpectedEntity("Task").reason == EventProblem.UNKNOWN_ENTITY
    assert (other.api, other.status) == ("iterable", 400)


def test_the_tree_in_the_docstring_names_every_class() -> None:
    doc = errors.__doc__ or ""
    missing = [cls.__name__ for cls in _exception_classes() if cls.__name__ not in doc]
    assert missing == []


def test_describe_error_logs_typed_fields_and_a_cut_message() -> None:
    error = TransientError("x" * 500, api="iterable", endpoint="bulkUpdate", status=503,
                           retry_after_s=4.0)
    fields = describe_error(error)
    assert fields["error"] == "TransientError"
    assert (fields["api"], fields["endpoint"], fields["status"], fields["retry_after_s"]) == (
        "iterable", "bulkUpdate", 503, 4.0)
    assert fields["message"] == "x" * errors.MESSAGE_CHARS + "..."
    assert "status" not in describe_error(ValueError("plain"))
