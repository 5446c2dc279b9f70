"""How an audit is shown to clients.

Built from the typed row the repository returns, validated once into the response model.
"""

from typing import Any

from shared.audits.repository import AuditRow
from shared.audits.schemas import AuditDetail, AuditError, AuditRead, Provenance, Usage
from shared.audits.status import AuditStatus
from shared.spend.amounts import usd


def _usage(audit: AuditRow) -> Usage | None:
    prompt, completion = audit.prompt_tokens, audit.completion_tokens
    if prompt is None or completion is None:
        return None
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cost_usd=usd(audit.cost_usd),
    )


def _error(audit: AuditRow) -> AuditError | None:
    if audit.error_code is None:
        return None
    return AuditError(code=audit.error_code, message=audit.error_message or "")


def _provenance(audit: AuditRow) -> Provenance | None:
    """What produced the result; the columns of audits that succeeded before some of them
    were recorded are null."""
    if audit.status != AuditStatus.SUCCEEDED:
        return None
    return Provenance(
        model=audit.served_model,
        model_requested=audit.model,
        prompt_version=audit.prompt_version,
        schema_sha256=audit.schema_sha256,
        provider_request_id=audit.provider_request_id,
        temperature=audit.temperature,
        seed=audit.seed,
        auditq_version=audit.auditq_version,
    )


def _fields(audit: AuditRow) -> dict[str, Any]:
    return {
        "id": audit.id,
        "tenant": audit.tenant,
        "status": audit.status,
        "subject": audit.subject,
        "model": audit.model,
        "criteria": audit.criteria,
        "rubric": audit.rubric_name,
        "rubric_version": audit.rubric_version,
        "metadata": audit.metadata,
        "batch_id": audit.batch_id,
        "priority": audit.priority,
        "attempts": audit.attempts,
        "created_at": audit.created_at,
        "updated_at": audit.updated_at,
        "started_at": audit.started_at,
        "finished_at": audit.finished_at,
        "result": audit.result or None,
        "error": _error(audit),
        "usage": _usage(audit),
        "samples": audit.samples,
        "rerun_of": audit.rerun_of,
        "provenance": _provenance(audit),
        "callback_url": audit.callback_url,
    }


def to_read(audit: AuditRow) -> AuditRead:
    return AuditRead.model_validate(_fields(audit))


def to_detail(audit: AuditRow) -> AuditDetail:
    return AuditDetail.model_validate({**_fields(audit), "content": audit.content})
