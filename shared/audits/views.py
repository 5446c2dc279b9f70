"""How an audit row is shown to clients (DESIGN §4 "Audit representation")."""

from shared.audits.models import Audit
from shared.audits.schemas import AuditDetail, AuditError, AuditRead, AuditResult, Criterion, Usage


def _usage(audit: Audit) -> Usage | None:
    if audit.prompt_tokens is None or audit.completion_tokens is None:
        return None
    return Usage(
        prompt_tokens=audit.prompt_tokens,
        completion_tokens=audit.completion_tokens,
        total_tokens=audit.prompt_tokens + audit.completion_tokens,
    )


def _error(audit: Audit) -> AuditError | None:
    if audit.error_code is None:
        return None
    return AuditError(code=audit.error_code, message=audit.error_message or "")


def _fields(audit: Audit) -> dict[str, object]:
    return {
        "id": audit.id,
        "status": audit.status,
        "subject": audit.subject,
        "model": audit.model,
        "criteria": [Criterion.model_validate(c) for c in audit.criteria],
        "rubric": audit.rubric_name,
        "rubric_version": audit.rubric_version,
        "metadata": audit.metadata_,
        "batch_id": audit.batch_id,
        "attempts": audit.attempts,
        "created_at": audit.created_at,
        "updated_at": audit.updated_at,
        "started_at": audit.started_at,
        "finished_at": audit.finished_at,
        "result": AuditResult.model_validate(audit.result) if audit.result else None,
        "error": _error(audit),
        "usage": _usage(audit),
    }


def to_read(audit: Audit) -> AuditRead:
    return AuditRead.model_validate(_fields(audit))


def to_detail(audit: Audit) -> AuditDetail:
    return AuditDetail.model_validate({**_fields(audit), "content": audit.content})
