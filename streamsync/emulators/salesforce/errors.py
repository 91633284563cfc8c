"""The error Salesforce reports: HTTP status plus a JSON array of {message, errorCode, fields}."""

from __future__ import annotations

from typing import Any


class SalesforceError(Exception):
    """An API error with the status and body Salesforce would send."""

    def __init__(self, status: int, error_code: str, message: str,
                 fields: list[str] | None = None) -> None:
        super().__init__(f"{status} {error_code}: {message}")
        self.status = status
        self.error_code = error_code
        self.message = message
        self.fields = fields

    def body(self) -> list[dict[str, Any]]:
        item: dict[str, Any] = {"message": self.message, "errorCode": self.error_code}
        if self.fields is not None:
            item["fields"] = self.fields
        return [item]

    def collection_error(self) -> dict[str, Any]:
        """The shape of one error inside a composite/sobjects result item."""
        return {"statusCode": self.error_code, "message": self.message,
                "fields": self.fields or []}


def not_found() -> SalesforceError:
    return SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")


def invalid_session() -> SalesforceError:
    return SalesforceError(401, "INVALID_SESSION_ID", "Session expired or invalid")
