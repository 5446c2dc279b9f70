"""The limits of a submission that a deployment sets (`MAX_CONTENT_CHARS`, `ALLOWED_MODELS`).

The request schemas check what never changes; these checks take the process's
`Settings`, passed in, and answer as request validation does: 422 `validation_error`
with every problem in `errors`, each at its `loc`.
"""

from collections.abc import Sequence
from typing import Any

from shared.audits.schemas import AuditCreate
from shared.config import Settings
from shared.errors import InvalidRequest

Loc = tuple[str | int, ...]


class SubmissionInvalid(InvalidRequest):
    code = "validation_error"
    title = "Invalid request"

    def __init__(self, issues: Sequence[dict[str, Any]]) -> None:
        first = issues[0]
        where = ".".join(str(part) for part in first["loc"])
        more = f" (and {len(issues) - 1} more problem(s), see `errors`)" if len(issues) > 1 else ""
        super().__init__(f"{where}: {first['msg']}{more}", errors=list(issues))


def _issue(loc: Loc, msg: str) -> dict[str, Any]:
    return {"loc": list(loc), "msg": f"Value error, {msg}", "type": "value_error"}


def problems_of(
    data: AuditCreate, settings: Settings, *, loc: Loc = ("body",)
) -> list[dict[str, Any]]:
    """What this audit asks beyond the deployment's limits; empty when nothing."""
    issues = []
    limit = settings.max_content_chars
    if len(data.content) > limit:
        msg = f"must be at most {limit} characters (MAX_CONTENT_CHARS), got {len(data.content)}"
        issues.append(_issue((*loc, "content"), msg))
    if data.model is not None and data.model not in settings.models:
        msg = f"must be one of ALLOWED_MODELS: {', '.join(settings.models)}"
        issues.append(_issue((*loc, "model"), msg))
    return issues


def check(data: AuditCreate, settings: Settings) -> None:
    """Refuse an audit beyond the deployment's limits, as request validation would."""
    if issues := problems_of(data, settings):
        raise SubmissionInvalid(issues)


def check_all(items: Sequence[AuditCreate], settings: Settings) -> None:
    """`check` for a batch's items, every problem named at its item's index."""
    issues = [
        issue
        for index, item in enumerate(items)
        for issue in problems_of(item, settings, loc=("body", "audits", index))
    ]
    if issues:
        raise SubmissionInvalid(issues)
