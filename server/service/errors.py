"""The service's errors: each dialect turns them into its own error body."""

from __future__ import annotations


class ServiceError(Exception):
    """An error a dialect turns into its own error body. `errors` lists (field, message) for bad input."""

    status = 400
    title = "Bad request"

    def __init__(self, detail: str, errors: list[tuple[str, str]] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}


class NotFound(ServiceError):
    status, title = 404, "Not found"


class Gone(ServiceError):
    """It existed, but its data was removed (retention)."""

    status, title = 410, "Gone"


class InvalidInput(ServiceError):
    status, title = 422, "Invalid input"

    @classmethod
    def of(cls, field_name: str, message: str) -> InvalidInput:
        return cls(f"{field_name}: {message}", [(field_name, message)])


class QueueFull(ServiceError):
    status, title = 429, "Too many requests"


class Unauthorized(ServiceError):
    status, title = 401, "Unauthenticated"


class StoreUnavailable(ServiceError):
    """The database could not be read or written (a full or read-only disk, a lost connection)."""

    status, title = 503, "Service unavailable"
