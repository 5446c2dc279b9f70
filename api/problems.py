"""RFC 9457 problem details: the one shape of every error the API returns."""

from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from shared.db import is_database_unavailable
from shared.errors import AppError

PROBLEM_TYPE = "https://auditq.dev/problems/"
MEDIA_TYPE = "application/problem+json"


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(
        description="Where the problem is, e.g. `['body', 'criteria', 3, 'id']`."
    )
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem detail; `code` is stable and safe to branch on."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[ValidationIssue] | None = None


def problem_response(
    *, status: int, code: str, title: str, detail: str, **extra: Any
) -> JSONResponse:
    body = {
        "type": PROBLEM_TYPE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    return JSONResponse(jsonable_encoder(body), status_code=status, media_type=MEDIA_TYPE)


async def app_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return problem_response(
        status=exc.status, code=exc.code, title=exc.title, detail=exc.detail, **exc.extra
    )


def _issue(error: dict[str, Any]) -> dict[str, Any]:
    return {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}


def _summary(issues: list[dict[str, Any]]) -> str:
    first = issues[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(issues) - 1} more problem(s), see `errors`)" if len(issues) > 1 else ""
    return f"{where}: {first['msg']}{more}"


async def validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    issues = [_issue(error) for error in exc.errors()]
    return problem_response(
        status=422,
        code="validation_error",
        title="Invalid request",
        detail=_summary(issues),
        errors=issues,
    )


_HTTP_CODES = {
    # FastAPI's answer to a body it cannot decode at all (e.g. JSON that is not UTF-8).
    400: ("bad_request", "Bad request"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("payload_too_large", "Payload too large"),
}


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "HTTP error"))
    response = problem_response(
        status=exc.status_code, code=code, title=title, detail=str(exc.detail)
    )
    response.headers.update(exc.headers or {})
    if exc.status_code == 405:
        response.headers["Allow"] = ", ".join(_allowed_methods(request))
    return response


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> list[str]:
    """Every method the path answers: Starlette's own `Allow` names only its first route's."""
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]


async def database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    """503 while PostgreSQL is out of reach; any other database error is a 500, logged."""
    if not is_database_unavailable(exc):
        raise exc
    response = problem_response(
        status=503,
        code="database_unavailable",
        title="Database unavailable",
        detail="PostgreSQL cannot be reached right now; nothing was changed. Retry shortly.",
    )
    response.headers["Retry-After"] = "5"
    return response


def internal_error_response() -> JSONResponse:
    return problem_response(
        status=500,
        code="internal_error",
        title="Internal error",
        detail="Something went wrong on our side; the request id in X-Request-ID helps trace it.",
    )


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """The last resort: an error in the middleware itself (InternalErrors answers the routes').

    Starlette sends this from its outermost middleware, past RequestContext, which
    therefore cannot add the header the detail points to.
    """
    response = internal_error_response()
    request_id = getattr(request.state, "request_id", None)
    if request_id is not None:
        response.headers["X-Request-ID"] = request_id
    return response
