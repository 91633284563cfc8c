"""Iterable's reply bodies: the envelope, errors raised by handlers, and bulk-update results."""

from __future__ import annotations

from typing import Any, Final

SUCCESS: Final[dict[str, Any]] = {"msg": "", "code": "Success", "params": None}

FAILED_LISTS: Final[tuple[str, ...]] = (
    "invalidEmails",
    "invalidUserIds",
    "notFoundEmails",
    "notFoundUserIds",
    "invalidDataEmails",
    "invalidDataUserIds",
    "conflictEmails",
    "conflictUserIds",
    "forgottenEmails",
    "forgottenUserIds",
)

# How a refused single-user write is answered (status, code).
SINGLE_ERRORS: Final[dict[str, tuple[int, str]]] = {
    "invalidEmails": (400, "InvalidEmailAddressError"),
    "invalidUserIds": (400, "InvalidUserIdError"),
    "forgottenEmails": (409, "ForgottenUserError"),
    "forgottenUserIds": (409, "ForgottenUserError"),
    "conflictEmails": (409, "EmailAlreadyExists"),
    "conflictUserIds": (409, "UserIdAlreadyExists"),
    "notFoundUserIds": (400, "UnknownUserIdError"),
    "notFoundEmails": (400, "BadParams"),
    "invalidDataEmails": (400, "RequestFieldsTypesMismatched"),
    "invalidDataUserIds": (400, "RequestFieldsTypesMismatched"),
}

NOT_FOUND_HTML: Final = (
    "<!DOCTYPE html><html><head><title>Action not found</title></head>"
    "<body><h1>Action not found</h1></body></html>"
)
TOO_LARGE_HTML: Final = (
    "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
    "<center><h1>413 Request Entity Too Large</h1></center>\r\n</body>\r\n</html>\r\n"
)


def envelope(msg: str, code: str, params: Any = None) -> dict[str, Any]:
    """The `IterableApiResponse` body."""
    return {"msg": msg, "code": code, "params": params}


class ApiError(Exception):
    """A request-level failure answered with `status` and an IterableApiResponse body."""

    def __init__(
        self,
        status: int,
        code: str,
        msg: str,
        params: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {msg}")
        self.status = status
        self.code = code
        self.msg = msg
        self.params = params
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The reply body."""
        return envelope(self.msg, self.code, self.params)


class BulkResult:
    """Accumulates the outcome of a bulk update into `UserBulkUpdateListResponse`."""

    __slots__ = ("success", "users", "failed", "created", "filtered")

    def __init__(self) -> None:
        self.success = 0
        self.users = 0
        self.failed: dict[str, list[str]] = {name: [] for name in FAILED_LISTS}
        self.created: list[str] = []
        self.filtered: dict[str, None] = {}

    def fail(self, category: str, key: str) -> None:
        """Record one user that was not updated."""
        self.failed[category].append(key)

    @property
    def fail_count(self) -> int:
        """Users not updated."""
        return sum(len(v) for v in self.failed.values())

    def body(self) -> dict[str, Any]:
        """The reply: counts, every failedUpdates list (even empty), and the deprecated lists."""
        return {
            "successCount": self.success,
            "failCount": self.fail_count,
            "invalidEmails": list(self.failed["invalidEmails"]),
            "invalidUserIds": list(self.failed["invalidUserIds"]),
            "filteredOutFields": list(self.filtered),
            "createdFields": list(self.created),
            "noOpEmails": [],
            "noOpUserIds": [],
            "failedUpdates": self.failed,
        }
