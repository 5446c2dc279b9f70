"""`run_audit`: one attempt of an audit (shared/audits/runs.py), its outcome told to arq."""

from functools import partial
from uuid import UUID

import structlog
from arq import Retry
from openai import AsyncOpenAI

from shared.audits.findings import asked_criteria
from shared.audits.repository import ClaimedAudit
from shared.audits.runs import OnHold, RetryIn, run_attempt
from shared.db import statement_connection
from shared.llm.client import audit_content
from shared.llm.sampling import Sampling
from shared.llm.schemas import ModelOutcome
from worker import budget_holds
from worker.admission import RateLimitAdmission
from worker.context import JobContext
from worker.metrics import WorkerMetrics


async def run_audit(ctx: JobContext, audit_id: str) -> None:
    """Run one attempt of an audit; a duplicate or stale job exits quietly."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(audit_id=audit_id, job_try=ctx["job_try"])
    connect = partial(statement_connection, ctx["engine"])
    metrics = ctx["metrics"]
    outcome = await run_attempt(
        UUID(audit_id),
        connect=connect,
        lease=ctx["timing"].lease,
        admission=RateLimitAdmission(
            ctx["rate_limiter"], connect, job_try=ctx["job_try"], metrics=metrics
        ),
        ask_model=partial(ask_model, ctx["llm"], ctx["sampling"], metrics),
        clock=ctx["clock"],
        on_ended=metrics.audit_ended,
        on_charged=metrics.cost_charged,
        prices=ctx["prices"],
    )
    if isinstance(outcome, OnHold):
        await budget_holds.hold(ctx, outcome.tenant)
    if isinstance(outcome, RetryIn):
        metrics.job_retried(outcome.reason)
        raise Retry(defer=outcome.seconds)


async def ask_model(
    client: AsyncOpenAI,
    sampling: Sampling,
    metrics: WorkerMetrics,
    audit: ClaimedAudit,
    sample: int,
) -> ModelOutcome:
    """Sample `sample` of the model's findings on the claimed audit; each request, and each
    reply rejected, is told to `metrics`."""
    return await audit_content(
        client,
        model=audit.model,
        subject=audit.subject,
        content=audit.content,
        criteria=asked_criteria(audit.criteria),
        sampling=sampling.for_sample(sample),
        observe=metrics.model_requested,
        on_invalid=metrics.reply_invalid,
    )
