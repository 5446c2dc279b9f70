"""Error responses as the OpenAPI document shows them."""

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI

from api.problems import MEDIA_TYPE, Problem
from shared.errors import AppError

# Every route can answer these: bad input, and PostgreSQL being unreachable.
_ALWAYS = {
    422: ["validation_error"],
    503: ["database_unavailable"],
}
# A route that reads a JSON body can also answer these, before the body is validated.
BODY_PROBLEMS = {
    400: ["bad_request"],
    413: ["payload_too_large"],
    415: ["unsupported_media_type"],
}
# A submission also counts against its tenant's quotas (shared/tenants/quotas.py) and
# its monthly budget (shared/spend/budgets.py).
SUBMIT_LIMITS = ["quota_exceeded", "rate_limited", "budget_exhausted"]
SUBMIT_PROBLEMS = {**BODY_PROBLEMS, 429: SUBMIT_LIMITS}
# A rerun has no body, but it is a submission all the same.
RERUN_PROBLEMS = {429: SUBMIT_LIMITS}


def problems(
    *errors: type[AppError], extra: dict[int, list[str]] | None = None
) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: the domain errors it raises, as problem details."""
    codes: dict[int, list[str]] = defaultdict(list)
    for status, names in [*_ALWAYS.items(), *(extra or {}).items()]:
        codes[status].extend(names)
    for error in errors:
        codes[error.status].append(error.code)
    return {status: _problem(status, names) for status, names in sorted(codes.items())}


def problem_of(error: type[AppError]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for one error alone, e.g. on a whole router."""
    return {error.status: _problem(error.status, [error.code])}


def _problem(status: int, codes: list[str]) -> dict[str, Any]:
    return {
        "model": Problem,
        "description": "Problem detail; `code` is one of: " + ", ".join(f"`{c}`" for c in codes),
        "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def document_problems_as_sent(app: FastAPI) -> None:
    """List problem responses under `application/problem+json` only.

    FastAPI also files a response `model` under the route's own media type,
    `application/json`, which would tell client generators to expect problems
    as something they are never sent as.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()
        for response in _responses(document):
            content = response.get("content", {})
            if MEDIA_TYPE in content:
                content.pop("application/json", None)
        return document

    # FastAPI's documented way to change the schema is to replace this method.
    app.openapi = openapi  # type: ignore[method-assign]


def document_bearer_keys(app: FastAPI) -> None:
    """Mark every operation that can answer 401 as wanting a Bearer key.

    Routes read the key themselves (api/auth.py): one dependency fewer per request
    than FastAPI's `HTTPBearer`, whose only other effect is this entry.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()
        schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "A key of `auditq key create` (or one of `API_KEYS`). "
            "A GET also takes the dashboard's HttpOnly cookie `auditq_key` instead "
            "(set by signing in at `/dashboard`).",
        }
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                if "401" in operation.get("responses", {}):
                    operation["security"] = [{"bearer": []}]
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _responses(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            yield from operation.get("responses", {}).values()
