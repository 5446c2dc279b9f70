"""An attempt's `Admission`: the rate limits around its model call (shared/llm/ratelimit.py).

`reserve` runs before the claim: a job whose model has no room now is sent back
(`RetryIn`) before it has claimed the audit, so it spends none of its attempts and
holds no worker slot while it waits. An audit of n `samples` reserves n requests and n
times the tokens at once: its calls are made together or not at all. `settle` counts
what the calls used beyond the estimate the reservation was made with.
"""

from dataclasses import dataclass
from uuid import UUID

import structlog

from shared.audits import repository
from shared.audits.repository import ClaimedAudit
from shared.audits.runs import RATE_LIMIT_WAIT, Connect, RetryIn
from shared.audits.samples import Sampled
from shared.llm.errors import ModelError
from shared.llm.ratelimit import (
    NOTHING_RESERVED,
    ModelRateLimited,
    ModelRateLimiter,
    Reservation,
    estimate_tokens,
)
from worker.backoff import rate_limit_delay
from worker.metrics import WorkerMetrics

log = structlog.get_logger("worker.run_audit")


@dataclass(frozen=True)
class RateLimitAdmission:
    """The limits of the job's `job_try`-th run, shared with every worker through Redis."""

    rate_limiter: ModelRateLimiter
    connect: Connect
    job_try: int
    metrics: WorkerMetrics

    async def reserve(self, audit_id: UUID) -> Reservation | RetryIn:
        """Take the call's share of its model's limits, or say when there will be room."""
        if not await self.rate_limiter.needs_reservation():
            return NOTHING_RESERVED
        async with self.connect() as conn:
            call = await repository.next_call(conn, audit_id=audit_id)
        if call is None:
            # Nothing to claim, as the claim will find. Should it claim after all (a lease
            # expired in between), the call is counted in full when it is settled.
            return NOTHING_RESERVED
        tokens = estimate_tokens(prompt_chars=call.text_chars, criteria=call.criteria)
        try:
            return await self.rate_limiter.reserve(
                call.model, tokens=tokens * call.samples, requests=call.samples
            )
        except ModelRateLimited as limited:
            # A full window frees room a little at a time: the jitter widens with each try so
            # that fewer jobs come back for the same room. A pause frees everything at once:
            # the narrowest jitter spreads them, and the windows meter the rest.
            job_try = 1 if limited.paused else self.job_try
            delay = rate_limit_delay(limited.wait_s, job_try=job_try)
            log.info(
                "audit_rate_limited",
                model=call.model,
                reason=limited.reason,
                retry_in_s=round(delay, 2),
            )
            self.metrics.rate_limit_waited(call.model)
            return RetryIn(delay, RATE_LIMIT_WAIT)

    async def settle(self, audit: ClaimedAudit, reserved: Reservation, used: Sampled) -> None:
        """Count the requests and tokens the calls used beyond their reservation."""
        await self.rate_limiter.settle(
            audit.model,
            reserved,
            requests=used.model_calls,
            tokens=used.usage.prompt_tokens + used.usage.completion_tokens,
        )

    async def on_model_error(self, audit: ClaimedAudit, error: ModelError) -> None:
        """A provider's 429 pauses the model for every worker."""
        await self.rate_limiter.pause_if_rate_limited(audit.model, error)
