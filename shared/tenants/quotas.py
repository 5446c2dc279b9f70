"""A tenant's quotas: how much it may have queued or running, and submit a minute.

**Queued and running** (`max_queued`): a counted submission takes a transaction-scoped
advisory lock on its tenant, counts the tenant's unfinished audits (up to the limit,
no further) and inserts, all in one transaction. The next submitter of that tenant
waits for the lock and then counts what the first one inserted, so twenty concurrent
submits against a quota of five leave exactly five. A batch that does not fit whole is
refused whole. Retries count the same way: the audits they queue again are checked
against the quota after the UPDATE, under the lock, and a retry that went past it is
rolled back. Tenants without a quota skip all of it.

**Submissions a minute** (`submit_rpm`): every `POST /audits` and `POST /batches` of
the tenant is one submission, whatever a batch holds, counted in Redis in a moving
window (the `limits` library's Lua script, atomic across API processes): exact, so
no 60 seconds ever see more than the limit. A request counts once its body is valid,
whether the service then accepts it or not. While Redis is unreachable the rate is not
checked (logged `submit_rate_unchecked`): submits go on, as they do without a limit.
"""

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.audits import repository as audits
from shared.db import Statements
from shared.errors import AppError

log = structlog.get_logger("auditq.quotas")

# A tenant's `max_queued` (None: unlimited), as the API's directory knows it.
QuotaOf = Callable[[str], Awaitable[int | None]]

# When the queue will have room depends on the workers, which the API does not see:
# this is a sensible time to poll again, not a promise.
QUOTA_RETRY_AFTER_S = 30


class QuotaExceeded(AppError):
    status = 429
    code = "quota_exceeded"
    title = "Quota exceeded"


class RateLimited(AppError):
    status = 429
    code = "rate_limited"
    title = "Too many submissions"


async def lock(conn: Statements, *, tenant: str) -> None:
    """Hold the tenant's counted submissions until this transaction ends."""
    await audits.lock_submissions(conn, tenant=tenant)


async def check_room(conn: Statements, *, tenant: str, max_queued: int, adding: int) -> None:
    """Raise `QuotaExceeded` unless `adding` more audits fit; after `lock`, in its transaction."""
    held = await audits.count_unfinished(conn, tenant=tenant, at_most=max_queued)
    if held + adding <= max_queued:
        return
    if adding > max_queued:
        advice = f"split it into submissions of at most {max_queued}"
    else:
        advice = f"it has {held}; submit again once some have finished"
    raise _exceeded(tenant, max_queued, f"this submission adds {adding}: {advice}")


async def check_requeued(conn: Statements, *, tenant: str, max_queued: int, requeued: int) -> None:
    """After a retry queued `requeued` audits again under `lock`: `QuotaExceeded` (which
    rolls the retry back) if that took the tenant past its quota."""
    held = await audits.count_unfinished(conn, tenant=tenant, at_most=max_queued + 1)
    if held > max_queued:
        advice = "retry once some have finished"
        raise _exceeded(tenant, max_queued, f"retrying {requeued} would go past it: {advice}")


def _exceeded(tenant: str, max_queued: int, why: str) -> QuotaExceeded:
    return QuotaExceeded(
        f"Tenant {tenant!r} may have at most {max_queued} audits queued or running "
        f"(max_queued); {why}.",
        headers={"Retry-After": str(QUOTA_RETRY_AFTER_S)},
        limit="max_queued",
        max_queued=max_queued,
    )


class SubmitRate:
    """Each tenant's submissions in the last minute, shared by every API process."""

    def __init__(self, redis: Redis, *, key_prefix: str) -> None:
        # The API's own connection pool, as the model's limiter uses the worker's.
        shared_pool: dict[str, Any] = {"connection_pool": redis.connection_pool}
        storage = RedisStorage(
            "async+redis://", implementation="redispy", key_prefix=key_prefix, **shared_pool
        )
        self._window = MovingWindowRateLimiter(storage)

    async def take(self, tenant: str, *, per_minute: int | None) -> None:
        """Count one submission, or raise `RateLimited` when the minute is full."""
        if per_minute is None:
            return
        item = RateLimitItemPerMinute(per_minute, namespace="submit")
        try:
            if await self._window.hit(item, tenant):
                return
            stats = await self._window.get_window_stats(item, tenant)
        except (RedisError, OSError) as exc:
            # As for the enqueue: a Redis outage must not refuse what PostgreSQL can take.
            log.warning("submit_rate_unchecked", tenant=tenant, error=type(exc).__name__)
            return
        wait_s = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimited(
            f"Tenant {tenant!r} may submit {per_minute} times a minute (submit_rpm); "
            f"submit again in {wait_s} s.",
            headers={"Retry-After": str(wait_s)},
            limit="submit_rpm",
            submit_rpm=per_minute,
        )
