"""The one error base of the domain layer; the API renders it as a problem detail."""

from collections.abc import Mapping, Sequence
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


def summarize_issues(issues: Sequence[Mapping[str, Any]]) -> str:
    """The `detail` of a validation problem: where the first issue is, and how many more."""
    first = issues[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(issues) - 1} more problem(s), see `errors`)" if len(issues) > 1 else ""
    return f"{where}: {first['msg']}{more}"
