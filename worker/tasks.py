"""`run_audit`: one attempt of an audit (shared/audits/runs.py), its outcome told to arq."""

from functools import partial
from uuid import UUID

import structlog
from arq import Retry
from openai import AsyncOpenAI

from shared.audits.findings import asked_criteria
from shared.audits.repository import ClaimedAudit
from shared.audits.runs import RetryIn, run_attempt
from shared.db import statement_connection
from shared.llm.client import audit_content
from shared.llm.schemas import ModelOutcome
from worker.admission import RateLimitAdmission
from worker.context import JobContext


async def run_audit(ctx: JobContext, audit_id: str) -> None:
    """Run one attempt of an audit; a duplicate or stale job exits quietly."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(audit_id=audit_id, job_try=ctx["job_try"])
    connect = partial(statement_connection, ctx["engine"])
    outcome = await run_attempt(
        UUID(audit_id),
        connect=connect,
        lease=ctx["timing"].lease,
        admission=RateLimitAdmission(ctx["rate_limiter"], connect, job_try=ctx["job_try"]),
        ask_model=partial(ask_model, ctx["llm"]),
        clock=ctx["clock"],
    )
    if isinstance(outcome, RetryIn):
        raise Retry(defer=outcome.seconds)


async def ask_model(client: AsyncOpenAI, audit: ClaimedAudit) -> ModelOutcome:
    """The model's findings on the claimed audit."""
    return await audit_content(
        client,
        model=audit.model,
        subject=audit.subject,
        content=audit.content,
        criteria=asked_criteria(audit.criteria),
    )
