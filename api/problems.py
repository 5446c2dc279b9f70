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
from shared.errors import AppError, summarize_issues

# A reference the API itself resolves: GET /problems/{code} describes the code.
PROBLEM_TYPE = "/problems/"
MEDIA_TYPE = "application/problem+json"
JSON_TYPES = ("application/json",)


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
    response = problem_response(
        status=exc.status, code=exc.code, title=exc.title, detail=exc.detail, **exc.extra
    )
    response.headers.update(exc.headers)
    return response


def _issue(error: dict[str, Any]) -> dict[str, Any]:
    return {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    issues = [_issue(error) for error in exc.errors()]
    media_type = _media_type(request)
    if media_type and not _is_json(media_type) and any(i["loc"] == ["body"] for i in issues):
        return unsupported_media_type(media_type)
    return problem_response(
        status=422,
        code="validation_error",
        title="Invalid request",
        detail=summarize_issues(issues),
        errors=issues,
    )


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type in JSON_TYPES or media_type.endswith("+json")


def unsupported_media_type(media_type: str) -> JSONResponse:
    """A body FastAPI did not read as JSON, for its content type (curl -d sends a form)."""
    return problem_response(
        status=415,
        code="unsupported_media_type",
        title="Unsupported media type",
        detail=f"the body must be JSON, sent with `Content-Type: application/json`"
        f" (this request said `{media_type}`)",
    )


_HTTP_CODES = {
    # FastAPI's answer to a body it cannot decode at all (e.g. JSON that is not UTF-8).
    400: ("bad_request", "Bad request"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    408: ("request_timeout", "Request timeout"),
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
    """The last resort: an error in the middleware itself (RequestGate answers the routes').

    Starlette sends this from its outermost middleware, past RequestGate, which
    therefore cannot add the header the detail points to.
    """
    response = internal_error_response()
    request_id = getattr(request.state, "request_id", None)
    if request_id is not None:
        response.headers["X-Request-ID"] = request_id
    return response


class ProblemType(BaseModel):
    """What a problem `code` means: the document its `type` reference points to."""

    code: str
    title: str
    status: list[int] = Field(description="The HTTP statuses it comes with.")
    description: str


# The codes rendered here rather than raised as an `AppError`: (status, code, title, why).
_PROBLEMS_OF_THE_API = [
    (422, "validation_error", "Invalid request", "The request does not match the schema; "
     "`errors[].loc` names each field at fault."),
    *((status, code, title, f"{title}.") for status, (code, title) in _HTTP_CODES.items()),
    (415, "unsupported_media_type", "Unsupported media type",
     "The body must be JSON, sent with `Content-Type: application/json`."),
    (400, "invalid_host", "Invalid host",
     "The `Host` header names no host this API serves (`ALLOWED_HOSTS`)."),
    (429, "server_busy", "Server busy",
     "The API process is reading as many request bodies as it may (`MAX_INFLIGHT_BODY_BYTES`);"
     " retry after `Retry-After` seconds."),
    (500, "internal_error", "Internal error",
     "Something went wrong in auditq; `X-Request-ID` identifies the request in its logs."),
    (503, "database_unavailable", "Database unavailable",
     "PostgreSQL cannot be reached; nothing was changed. Retry after `Retry-After` seconds."),
]  # fmt: skip


def problem_types() -> dict[str, ProblemType]:
    """Every code the API answers with: its own, and every `AppError` loaded."""
    types: dict[str, ProblemType] = {}

    def add(status: int, code: str, title: str, description: str) -> None:
        known = types.setdefault(
            code, ProblemType(code=code, title=title, status=[], description=description)
        )
        known.status = sorted({*known.status, status})

    for status, code, title, description in _PROBLEMS_OF_THE_API:
        add(status, code, title, description)
    for error in _subclasses(AppError):
        add(error.status, error.code, error.title, _first_line(error.__doc__) or f"{error.title}.")
    return types


def _subclasses(cls: type[AppError]) -> list[type[AppError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n")[0]


async def describe_problem(code: str) -> ProblemType:
    """`GET /problems/{code}`: what the `type` of a problem detail refers to."""
    found = problem_types().get(code)
    if found is None:
        raise StarletteHTTPException(404, f"auditq answers with no problem code {code!r}")
    return found
