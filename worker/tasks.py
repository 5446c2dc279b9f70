"""`run_audit`: rate limits → claim → ask the model → validate → finish, fenced."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

import structlog
from arq import Retry

from shared.audits import repository as lifecycle
from shared.audits.findings import asked_criteria, audit_findings
from shared.audits.repository import ClaimedAudit
from shared.audits.scoring import build_result
from shared.db import (
    DATABASE_ERRORS,
    StatementConnection,
    is_database_unavailable,
    statement_connection,
)
from shared.llm.client import audit_content
from shared.llm.errors import ModelError
from shared.llm.schemas import ModelOutcome
from worker.admission import reserve_model_call, settle_model_call
from worker.backoff import retry_delay
from worker.context import JobContext

log = structlog.get_logger("worker.run_audit")

INTERRUPTED = "attempt_interrupted"
# A fenced write that finds PostgreSQL out of reach is tried again after these pauses:
# 7.5 s in all, within the job timeout's margin for the database (worker/timing.py).
FINISH_RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)
DATABASE_DOWN_DEFER_S = 2.0

T = TypeVar("T")


async def run_audit(ctx: JobContext, audit_id: str) -> None:
    """Run one attempt of an audit; a duplicate or stale job exits quietly."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(audit_id=audit_id, job_try=ctx["job_try"])
    try:
        reserved = await reserve_model_call(ctx, UUID(audit_id))  # or Retry, before any claim
        audit = await _claim(ctx, UUID(audit_id))
    except DATABASE_ERRORS as exc:
        if not is_database_unavailable(exc):
            raise
        # No attempt spent: back in a moment, rather than failed with a traceback and
        # left for the reconciler, as every job picked up during a restart would be.
        log.warning("database_unavailable", retry_in_s=DATABASE_DOWN_DEFER_S)
        raise Retry(defer=DATABASE_DOWN_DEFER_S) from exc
    if audit is None:
        log.info(
            "job_skipped", reason="audit is not claimable (duplicate job, finished or cancelled)"
        )
        return
    structlog.contextvars.bind_contextvars(request_id=audit.request_id, attempt=audit.attempts)
    log.info("audit_started", model=audit.model, criteria=len(audit.criteria))
    try:
        outcome = await _ask_model(ctx, audit)
    except ModelError as error:
        await _on_model_error(ctx, audit, error)
    except asyncio.CancelledError:
        await asyncio.shield(_on_interrupted(ctx, audit))
        raise
    else:
        await settle_model_call(ctx, audit, reserved, outcome)
        await _on_success(ctx, audit, outcome)


async def _claim(ctx: JobContext, audit_id: UUID) -> ClaimedAudit | None:
    async with statement_connection(ctx["engine"]) as conn:
        return await lifecycle.claim(conn, audit_id=audit_id, lease=ctx["timing"].lease)


async def _ask_model(ctx: JobContext, audit: ClaimedAudit) -> ModelOutcome:
    return await audit_content(
        ctx["llm"],
        model=audit.model,
        subject=audit.subject,
        content=audit.content,
        criteria=asked_criteria(audit.criteria),
    )


async def _on_success(ctx: JobContext, audit: ClaimedAudit, outcome: ModelOutcome) -> None:
    result = build_result(
        findings=audit_findings(outcome.findings),
        criteria=audit.criteria,
        summary=outcome.summary,
        pass_threshold=audit.pass_threshold,
        dropped_quotes=outcome.dropped_quotes,
    )
    written = await _write_finish(
        ctx,
        audit,
        lambda conn: lifecycle.succeed(
            conn,
            audit_id=audit.id,
            attempt=audit.attempts,
            result=result,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            prompt_version=outcome.prompt_version,
            provider_request_id=outcome.request_id,
        ),
        ended_as=lambda status: status == "succeeded",
    )
    _log_finish(
        written,
        "audit_succeeded",
        score=result.score,
        verdict=result.verdict,
        dropped_quotes=outcome.dropped_quotes,
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        provider_request_id=outcome.request_id,
    )


async def _on_model_error(ctx: JobContext, audit: ClaimedAudit, error: ModelError) -> None:
    await ctx["rate_limiter"].pause_if_rate_limited(audit.model, error)
    if not error.transient:
        written = await _write_finish(
            ctx,
            audit,
            lambda conn: lifecycle.fail(
                conn,
                audit_id=audit.id,
                attempt=audit.attempts,
                code=error.code,
                message=error.message,
                usage=error.usage,
            ),
            ended_as=lambda status: status == "failed",
        )
        _log_finish(written, "audit_failed", error_code=error.code, permanent=True)
        return
    status = await _requeue_or_fail(ctx, audit, code=error.code, message=error.message)
    if status == "queued":
        delay = retry_delay(audit.attempts, retry_after=error.retry_after)
        log.warning("audit_retry_scheduled", error_code=error.code, retry_in_s=round(delay, 2))
        raise Retry(defer=delay)
    _log_finish(status is not None, "audit_failed", error_code=error.code, attempts_exhausted=True)


async def _on_interrupted(ctx: JobContext, audit: ClaimedAudit) -> None:
    """Cancelled by shutdown, arq's timeout or an abort: give the attempt back at once.

    A cancelled audit is no longer `running`, so the fenced write leaves it alone.
    """
    message = "the attempt was interrupted (worker shutdown or job timeout)"
    status = await _requeue_or_fail(ctx, audit, code=INTERRUPTED, message=message)
    log.warning("audit_interrupted", new_status=status)
    if status == "failed":  # that was the last attempt: the audit ends here
        _log_finish(True, "audit_failed", error_code=INTERRUPTED, attempts_exhausted=True)


async def _requeue_or_fail(
    ctx: JobContext, audit: ClaimedAudit, *, code: str, message: str
) -> str | None:
    return await _write_finish(
        ctx,
        audit,
        lambda conn: lifecycle.requeue_or_fail(
            conn, audit_id=audit.id, attempt=audit.attempts, code=code, message=message
        ),
        ended_as=lambda status: status if status in ("queued", "failed") else None,
    )


async def _write_finish(
    ctx: JobContext,
    audit: ClaimedAudit,
    write: Callable[[StatementConnection], Awaitable[T]],
    *,
    ended_as: Callable[[str], T],
) -> T:
    """One fenced write of the attempt's outcome, retried while PostgreSQL restarts.

    The model's answer is paid for: a restart must not throw it away and leave the audit
    `running` until its lease runs out. The fence makes a second try harmless: a write
    that committed before its connection broke finds the audit no longer running. That
    try then reads what the attempt left (`ended_as` of the audit's status), so a write
    whose reply was lost still counts, and is logged, as written.
    """
    retried = False
    for delay in FINISH_RETRY_DELAYS_S:
        try:
            return await _write_once(ctx, audit, write, ended_as if retried else None)
        except DATABASE_ERRORS as exc:
            if not is_database_unavailable(exc):
                raise
            log.warning("finish_write_retry", error=type(exc).__name__, retry_in_s=delay)
            await asyncio.sleep(delay)
            retried = True
    return await _write_once(ctx, audit, write, ended_as)


async def _write_once(
    ctx: JobContext,
    audit: ClaimedAudit,
    write: Callable[[StatementConnection], Awaitable[T]],
    ended_as: Callable[[str], T] | None,
) -> T:
    """The write; fenced out on a retry (`ended_as` given), what the attempt left counts."""
    async with statement_connection(ctx["engine"]) as conn:
        written = await write(conn)
        if written or ended_as is None:
            return written
        status = await lifecycle.status_left_by(conn, audit_id=audit.id, attempt=audit.attempts)
        return written if status is None else ended_as(status)


def _log_finish(written: bool, event: str, **fields: Any) -> None:
    if written:
        log.info(event, **fields)
    else:
        log.info(
            "finish_discarded", would_have_been=event, reason="attempt no longer owns the audit"
        )
