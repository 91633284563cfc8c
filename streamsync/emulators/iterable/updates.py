"""User writes: request checking at receipt (identity, types, schema) and applying to profiles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from .profiles import SUBSCRIPTION_FIELDS, Profile, Project, merge_data, placeholder_email
from .replies import ApiError
from .validation import (
    DATE,
    OBJECT,
    STRING,
    compatible,
    incoming_types,
    is_iterable_date,
    normalize_email,
    user_id_problem,
    value_type,
)

_BOOL_FIELDS = ("preferUserId", "mergeNestedObjects")
_STR = "String value expected"
_BOOL = "Boolean value expected"
_OBJ = "Object value expected"


@dataclass(slots=True)
class Receipt:
    """When and through which endpoint a write arrived."""

    endpoint: str
    queue: str
    mono_s: float
    wall_s: float
    request_no: int


@dataclass(slots=True)
class UserWrite:
    """An accepted user update waiting to be applied."""

    email: str | None
    user_id: str | None
    data: dict[str, Any]
    merge: bool
    prefer_user_id: bool
    new_email: str | None
    new_user_id: str | None
    receipt: Receipt


@dataclass(slots=True)
class DeleteWrite:
    """Delete the user with this email, or every user with this userId."""

    email: str | None
    user_id: str | None
    receipt: Receipt


@dataclass(slots=True)
class EmailChange:
    """updateEmail: move a user to a new email."""

    current_email: str | None
    current_user_id: str | None
    new_email: str
    receipt: Receipt


Write = UserWrite | DeleteWrite | EmailChange


@dataclass
class Rejection:
    """Why one user of a request was not accepted: a failedUpdates list and the reported key."""

    category: str
    key: str
    detail: str = ""


@dataclass
class FieldCheck:
    """Per-request schema bookkeeping: new fields, dropped fields and type mismatches."""

    project: Project
    create_new: bool
    pending: dict[str, str] = field(default_factory=dict)
    filtered: dict[str, None] = field(default_factory=dict)
    mismatches: dict[str, dict[str, Any]] = field(default_factory=dict)

    def scan(self, obj: dict[str, Any], prefix: str, new: dict[str, str], bad: list[str]) -> None:
        """Type-check `obj` against the schema; note new fields, drop filtered ones in place."""
        dropped: list[str] = []
        for key, value in obj.items():
            if value is None:
                continue
            path = prefix + key if prefix else key
            expected = self.project.fields.get(path) or self.pending.get(path) or new.get(path)
            if type(value) is str and expected == STRING:
                continue
            kind = _kind_of(path, value)
            if expected is None:
                if not self.create_new:
                    self.filtered[path] = None
                    dropped.append(key)
                    continue
                if kind:
                    new[path] = kind
            elif not compatible(expected, kind):
                bad.append(path)
                self._mismatch(path, expected, kind, value)
                continue
            if kind == OBJECT:
                self._scan_nested(path, value, new, bad)
        for key in dropped:
            del obj[key]

    def _scan_nested(self, path: str, value: Any, new: dict[str, str], bad: list[str]) -> None:
        """An object field, or an array of objects: each object is scanned under `path.`."""
        for item in (value,) if type(value) is dict else value:
            if type(item) is dict:
                self.scan(item, path + ".", new, bad)

    def _mismatch(self, path: str, expected: str, kind: str, value: Any) -> None:
        """Record a type mismatch as Iterable's field-type report shows it."""
        self.mismatches[f"{self.project.name}:::{path}"] = {
            "incomingTypes": incoming_types(kind),
            "expectedType": expected,
            "category": "user",
            "offendingValue": value if type(value) is str else orjson.dumps(value).decode(),
            "_type": "UnexpectedType",
        }


def _kind_of(path: str, value: Any) -> str:
    """The type a value would give a new field (a string in Iterable's date format: date)."""
    if type(value) is str:
        return DATE if is_iterable_date(value) else STRING
    return value_type(path, value)


def resolve(project: Project, email: str | None, user_id: str | None) -> Profile | None:
    """The existing user a write with these identifiers addresses, without creating one."""
    if project.project_type == "userId":
        return project.get_by_user_id(user_id) if user_id is not None else None
    if project.project_type == "email":
        if email is not None:
            return project.by_email.get(email)
        return project.get_by_user_id(user_id) if user_id is not None else None
    by_id = project.get_by_user_id(user_id) if user_id is not None else None
    return by_id if by_id is not None else (
        project.by_email.get(email) if email is not None else None
    )


class UserChecker:
    """Checks the users of one request at receipt; accepted users become `UserWrite`s."""

    def __init__(self, project: Project, create_new: bool, per_user_types: bool) -> None:
        self.project = project
        self.fields = FieldCheck(project, create_new)
        self.per_user_types = per_user_types
        self.json_errors: dict[str, str] = {}
        self.param_errors: dict[str, str] = {}

    def check(self, item: Any, where: str, receipt: Receipt) -> UserWrite | Rejection | None:
        """Check one user object; None when it is malformed (see json_errors/param_errors)."""
        if type(item) is not dict:
            self.json_errors[where] = _OBJ
            return None
        email = item.get("email")
        user_id = item.get("userId")
        data = item.get("dataFields")
        ok = True
        if email is not None and type(email) is not str:
            self.json_errors[where + ".email"] = _STR
            ok = False
        if user_id is not None and type(user_id) is not str:
            self.json_errors[where + ".userId"] = _STR
            ok = False
        if data is not None and type(data) is not dict:
            self.json_errors[where + ".dataFields"] = _OBJ
            ok = False
        for name in _BOOL_FIELDS:
            flag = item.get(name)
            if flag is not None and type(flag) is not bool:
                self.json_errors[f"{where}.{name}"] = _BOOL
                ok = False
        if not ok:
            return None
        if email is None and user_id is None:
            self.param_errors[where] = "Either email or userId must be provided"
            return None
        return self._identity_and_fields(
            email, user_id, data if data is not None else {},
            item.get("preferUserId") is True, item.get("mergeNestedObjects") is True, receipt,
        )

    def _identity_and_fields(
        self,
        raw_email: str | None,
        user_id: str | None,
        data: dict[str, Any],
        prefer: bool,
        merge: bool,
        receipt: Receipt,
    ) -> UserWrite | Rejection:
        email: str | None = None
        if raw_email is not None:
            email = normalize_email(raw_email)
            if email is None:
                return Rejection("invalidEmails", raw_email, f"Invalid email: {raw_email}")
        target = resolve(self.project, email, user_id)
        refused = self._identity_problem(email, user_id, target, prefer)
        if refused is not None:
            return refused
        new_email: str | None = None
        new_user_id: str | None = None
        if "email" in data:
            moved = self._data_email(data.pop("email"), target)
            if isinstance(moved, Rejection):
                return moved
            new_email = moved
        if "userId" in data:
            moved = self._data_user_id(data.pop("userId"), target)
            if isinstance(moved, Rejection):
                return moved
            new_user_id = moved
        if data:
            new: dict[str, str] = {}
            bad: list[str] = []
            self.fields.scan(data, "", new, bad)
            if bad and self.per_user_types:
                key, by_email = self._data_key(email, user_id)
                return Rejection(
                    "invalidDataEmails" if by_email else "invalidDataUserIds",
                    key,
                    f"Type mismatch for fields {bad}",
                )
            if new:
                self.fields.pending.update(new)
        return UserWrite(email, user_id, data, merge, prefer, new_email, new_user_id, receipt)

    def _identity_problem(self, email: str | None, user_id: str | None,
                          target: Profile | None, prefer: bool) -> Rejection | None:
        """Why the identifiers of a write are refused (None: they are fine)."""
        project = self.project
        ptype = project.project_type
        if user_id is not None:
            problem = user_id_problem(user_id)
            if problem is not None:
                return Rejection("invalidUserIds", user_id, problem)
        if ptype == "userId" and user_id is None:
            assert email is not None
            msg = "userID-based projects identify users by userId"
            return Rejection("notFoundEmails", email, msg)
        if email is not None and email in project.forgotten_emails:
            return Rejection("forgottenEmails", email, "Contact is GDPR forgotten")
        if user_id is not None and user_id in project.forgotten_user_ids:
            return Rejection("forgottenUserIds", user_id, "Contact is GDPR forgotten")
        if ptype == "email" and email is None and target is None and not prefer:
            assert user_id is not None
            return Rejection("notFoundUserIds", user_id, f"No user exists with userId {user_id}")
        if ptype == "hybrid" and email is not None and user_id is not None:
            owner = project.by_email.get(email)
            if owner is not None and owner is not target:
                return Rejection("conflictEmails", email, f"Email {email} belongs to another user")
            if target is not None and target.user_id not in (None, user_id):
                return Rejection("conflictEmails", email, f"Email {email} has another userId")
        return None

    def _data_key(self, email: str | None, user_id: str | None) -> tuple[str, bool]:
        if self.project.project_type == "userId" or email is None:
            assert user_id is not None
            return user_id, False
        return email, True

    def _data_email(self, value: Any, target: Profile | None) -> str | None | Rejection:
        if self.project.project_type == "email" or value is None:
            return None  # the email of an email-based project only changes through updateEmail
        if type(value) is not str:
            return Rejection("invalidEmails", str(value), "dataFields.email must be a string")
        email = normalize_email(value)
        if email is None:
            return Rejection("invalidEmails", value, f"Invalid email: {value}")
        if email in self.project.forgotten_emails:
            return Rejection("forgottenEmails", email, "Contact is GDPR forgotten")
        if self.project.project_type == "hybrid":
            owner = self.project.by_email.get(email)
            if owner is not None and owner is not target:
                return Rejection("conflictEmails", email, f"Email {email} belongs to another user")
        return email

    def _data_user_id(self, value: Any, target: Profile | None) -> str | None | Rejection:
        if value is None:
            return None
        if type(value) is not str:
            return Rejection("invalidUserIds", str(value), "dataFields.userId must be a string")
        problem = user_id_problem(value)
        if problem is not None:
            return Rejection("invalidUserIds", value, problem)
        if value in self.project.forgotten_user_ids:
            return Rejection("forgottenUserIds", value, "Contact is GDPR forgotten")
        if self.project.project_type != "email":
            owner = self.project.get_by_user_id(value)
            if owner is not None and owner is not target:
                msg = f"userId {value} belongs to another user"
                return Rejection("conflictUserIds", value, msg)
        return value

    def raise_for_request_errors(self, endpoint: str) -> None:
        """Raise the 400 for malformed bodies (BadJsonBody before BadParams)."""
        if self.json_errors:
            raise ApiError(400, "BadJsonBody", f"[{endpoint}] Invalid JSON body", self.json_errors)
        if self.param_errors:
            raise ApiError(400, "BadParams", f"[{endpoint}] Invalid parameters", self.param_errors)

    def raise_for_type_mismatch(self) -> None:
        """Raise the whole-request 400 when any value's type conflicts with the schema."""
        if self.fields.mismatches:
            raise ApiError(
                400,
                "RequestFieldsTypesMismatched",
                f"Project {self.project.id}: The request does not have the same data types as "
                "the existing fields",
                {"validationErrors": self.fields.mismatches},
            )

    def commit_fields(self, max_fields: int) -> list[str]:
        """Add the request's new fields to the schema; 400 when the field cap would be passed."""
        pending = self.fields.pending
        if not pending:
            return []
        schema = self.project.fields
        if len(schema) + len(pending) > max_fields:
            raise ApiError(
                400,
                "UniqueFieldsLimitExceeded",
                f"Project {self.project.id}: adding {len(pending)} fields would exceed the limit "
                f"of {max_fields} unique user fields ({len(schema)} exist)",
                {"limit": max_fields, "existing": len(schema), "new": sorted(pending)},
            )
        schema.update(pending)
        return list(pending)


def apply_write(project: Project, write: Write, wall_s: float) -> tuple[Profile | None, str]:
    """Apply one accepted write to the profiles; returns the user touched and an outcome."""
    if isinstance(write, UserWrite):
        return _apply_update(project, write, wall_s)
    if isinstance(write, DeleteWrite):
        return _apply_delete(project, write)
    return _apply_email_change(project, write, wall_s)


def _apply_update(project: Project, w: UserWrite, wall_s: float) -> tuple[Profile | None, str]:
    targets = {"email": _email_project_target, "userId": _user_id_project_target}
    found = targets.get(project.project_type, _hybrid_target)(project, w, wall_s)
    if found is None:
        return None, "skipped: email and userId belong to different users"
    profile, outcome = found
    if profile is None:
        return None, outcome
    data = w.data
    if any(name in data for name in _SUBSCRIPTION_NAMES):
        data = _take_subscription_fields(profile, data)
    merge_data(profile.data, data, w.merge)
    profile.updated_wall = wall_s
    return profile, outcome


def _email_project_target(project: Project, w: UserWrite,
                          wall_s: float) -> tuple[Profile | None, str]:
    """The user an update of an email-based project lands on (created when new)."""
    outcome = "updated"
    if w.email is not None:
        profile = project.by_email.get(w.email)
        if profile is None:
            profile = project.create(w.email, None, wall_s)
            outcome = "created"
        uid = w.new_user_id if w.new_user_id is not None else w.user_id
        if uid is not None and uid != profile.user_id:
            project.set_user_id(profile, uid)
        return profile, outcome
    assert w.user_id is not None
    found = project.get_by_user_id(w.user_id)
    if found is None:
        if not w.prefer_user_id:
            return None, "skipped: no user with this userId"
        found = project.create(placeholder_email(w.user_id), w.user_id, wall_s)
        outcome = "created"
    if w.new_user_id is not None and w.new_user_id != found.user_id:
        project.set_user_id(found, w.new_user_id)
    return found, outcome


def _user_id_project_target(project: Project, w: UserWrite,
                            wall_s: float) -> tuple[Profile | None, str]:
    """The user an update of a userId-based project lands on (created when new)."""
    assert w.user_id is not None
    outcome = "updated"
    profile = project.get_by_user_id(w.user_id)
    if profile is None:
        profile = project.create(None, w.user_id, wall_s)
        outcome = "created"
    email = w.new_email if w.new_email is not None else w.email
    if email is not None and email != profile.email:
        project.set_email(profile, email)
    if w.new_user_id is not None and w.new_user_id != profile.user_id:
        if project.get_by_user_id(w.new_user_id) is None:
            project.set_user_id(profile, w.new_user_id)
        else:
            outcome = "updated; userId change skipped: conflict"
    return profile, outcome


_SUBSCRIPTION_NAMES = frozenset((*SUBSCRIPTION_FIELDS, "userListIds"))


def _take_subscription_fields(profile: Profile, data: dict[str, Any]) -> dict[str, Any]:
    """Set the subscription arrays a user update carries (no subscribe/unsubscribe events)."""
    rest: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SUBSCRIPTION_NAMES and type(value) is list:
            ids = [v for v in value if type(v) is int]
            profile.subscriptions().set(key, ids)
        else:
            rest[key] = value
    return rest


def _hybrid_target(project: Project, w: UserWrite, wall_s: float) -> tuple[Profile, str] | None:
    by_id = project.get_by_user_id(w.user_id) if w.user_id is not None else None
    by_email = project.by_email.get(w.email) if w.email is not None else None
    if by_id is not None and by_email is not None and by_id is not by_email:
        return None
    found = by_id if by_id is not None else by_email
    if found is None:
        return project.create(w.email, w.user_id, wall_s), "created"
    profile = found
    notes: list[str] = []
    if w.email is not None and profile.email != w.email:
        project.set_email(profile, w.email)
    if w.user_id is not None and profile.user_id != w.user_id:
        if profile.user_id is None:
            project.set_user_id(profile, w.user_id)
        else:
            notes.append("userId change skipped: conflict")
    if w.new_email is not None and w.new_email != profile.email:
        owner = project.by_email.get(w.new_email)
        if owner is None:
            project.set_email(profile, w.new_email)
        else:
            notes.append("email change skipped: conflict")
    if w.new_user_id is not None and w.new_user_id != profile.user_id:
        if project.get_by_user_id(w.new_user_id) is None:
            project.set_user_id(profile, w.new_user_id)
        else:
            notes.append("userId change skipped: conflict")
    return profile, "; ".join(["updated", *notes])


def _apply_delete(project: Project, w: DeleteWrite) -> tuple[Profile | None, str]:
    if w.email is not None:
        profile = project.by_email.get(w.email)
        if profile is None:
            return None, "skipped: no such user"
        project.delete(profile)
        return profile, "deleted"
    assert w.user_id is not None
    group = list(project.by_user_id.get(w.user_id, []))
    for profile in group:
        project.delete(profile)
    return (group[0] if group else None), f"deleted {len(group)}"


def _apply_email_change(
    project: Project, w: EmailChange, wall_s: float
) -> tuple[Profile | None, str]:
    if w.current_email is not None:
        profile = project.by_email.get(w.current_email)
    else:
        assert w.current_user_id is not None
        profile = project.get_by_user_id(w.current_user_id)
    if profile is None:
        return None, "skipped: no such user"
    if project.by_email.get(w.new_email) is not None:
        return profile, "skipped: new email exists"
    project.set_email(profile, w.new_email)
    profile.updated_wall = wall_s
    return profile, "email changed"


def write_keys(write: Write) -> list[str]:
    """The identifiers a write is filed under in the history."""
    if isinstance(write, UserWrite):
        keys = [write.email, write.user_id, write.new_email, write.new_user_id]
    elif isinstance(write, DeleteWrite):
        keys = [write.email, write.user_id]
    else:
        keys = [write.current_email, write.current_user_id, write.new_email]
    out: list[str] = []
    for key in keys:
        if key is not None and key not in out:
            out.append(key)
    return out


__all__ = [
    "DeleteWrite",
    "EmailChange",
    "Receipt",
    "Rejection",
    "UserChecker",
    "UserWrite",
    "Write",
    "apply_write",
    "resolve",
    "write_keys",
]
