"""The one error base of the domain layer; the API renders it as a problem detail."""

from collections.abc import Mapping
from typing import Any, ClassVar


class AppError(Exception):
    """An error a client can act on, with a stable `code` and an HTTP status."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"

    def __init__(
        self, detail: str, *, headers: Mapping[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra


class NotFound(AppError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(AppError):
    status = 409
    code = "conflict"
    title = "Conflict"


class InvalidRequest(AppError):
    status = 422
    code = "invalid_request"
    title = "Invalid request"
