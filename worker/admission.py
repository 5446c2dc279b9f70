"""The rate limits around an audit's model call (shared/llm/ratelimit.py), as `run_audit` uses them.

`reserve_model_call` runs before the claim: a job whose model has no room now is sent
back with `Retry(defer=...)` before it has claimed the audit, so it spends none of its
attempts and holds no worker slot while it waits. `settle_model_call` counts what the
call used beyond the estimate the reservation was made with.
"""

from uuid import UUID

import structlog
from arq import Retry

from shared.audits import repository as lifecycle
from shared.audits.repository import ClaimedAudit
from shared.db import statement_connection
from shared.llm.ratelimit import (
    NOTHING_RESERVED,
    ModelRateLimited,
    Reservation,
    estimate_tokens,
)
from shared.llm.schemas import ModelOutcome
from worker.backoff import rate_limit_delay
from worker.context import JobContext

log = structlog.get_logger("worker.run_audit")


async def reserve_model_call(ctx: JobContext, audit_id: UUID) -> Reservation:
    """Take the call's share of its model's limits, or defer the job until there is room."""
    if not await ctx["rate_limiter"].needs_reservation():
        return NOTHING_RESERVED
    async with statement_connection(ctx["engine"]) as conn:
        call = await lifecycle.next_call(conn, audit_id=audit_id)
    if call is None:
        # Nothing to claim, as the claim will find. Should it claim after all (a lease
        # expired in between), the call is counted in full when it is settled.
        return NOTHING_RESERVED
    tokens = estimate_tokens(prompt_chars=call.text_chars, criteria=call.criteria)
    try:
        return await ctx["rate_limiter"].reserve(call.model, tokens=tokens)
    except ModelRateLimited as limited:
        # A full window frees room a little at a time: the jitter widens with each try so
        # that fewer jobs come back for the same room. A pause frees everything at once:
        # the narrowest jitter spreads them, and the windows meter the rest.
        job_try = 1 if limited.paused else ctx["job_try"]
        delay = rate_limit_delay(limited.wait_s, job_try=job_try)
        log.info(
            "audit_rate_limited",
            model=call.model,
            reason=limited.reason,
            retry_in_s=round(delay, 2),
        )
        raise Retry(defer=delay) from None


async def settle_model_call(
    ctx: JobContext, audit: ClaimedAudit, reserved: Reservation, outcome: ModelOutcome
) -> None:
    """Count the requests and tokens the call used beyond its reservation."""
    await ctx["rate_limiter"].settle(
        audit.model,
        reserved,
        requests=outcome.model_calls,
        tokens=outcome.prompt_tokens + outcome.completion_tokens,
    )
