"""Error responses as the OpenAPI document shows them."""

from collections import defaultdict
from typing import Any

from api.problems import MEDIA_TYPE, Problem
from shared.errors import AppError

# Every route can answer these: bad input, and PostgreSQL being unreachable.
_ALWAYS = {
    422: ["validation_error"],
    503: ["database_unavailable"],
}


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


def _problem(status: int, codes: list[str]) -> dict[str, Any]:
    return {
        "model": Problem,
        "description": "Problem detail; `code` is one of: " + ", ".join(f"`{c}`" for c in codes),
        "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
