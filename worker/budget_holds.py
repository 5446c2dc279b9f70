"""Tenants on hold in the fair queue while their monthly budget is spent.

An attempt that finds its tenant over budget claims nothing (shared/audits/runs.py);
its job puts the tenant on hold (`hold`) and ends, and the audit stays queued. The
reconciler enqueues it again once it has no job, into its flow, where it waits without
being picked, like the tenant's other jobs. Each reconciler run takes off hold the
tenants whose budget allows again (`release_affordable`): raised with `auditq tenant
set`, or reset by a new month. PostgreSQL decides, Redis only remembers: after a Redis
wipe the hold is gone, and the first attempt turned away puts it back.
"""

import structlog
from redis.exceptions import RedisError

from shared.db import statement_connection
from shared.fair_queue import held_tenants, hold_tenant, release_tenant
from shared.spend import repository as spend
from worker.context import JobContext

log = structlog.get_logger("worker.budget_holds")


async def hold(ctx: JobContext, tenant: str) -> None:
    """Stop picking the tenant's jobs; a Redis error is logged (the claim still turns
    them away)."""
    try:
        await hold_tenant(ctx["redis"], ctx["settings"].queue_name, tenant)
    except (RedisError, OSError) as exc:
        log.warning("tenant_hold_failed", tenant=tenant, error=type(exc).__name__)
        return
    log.info("tenant_on_hold", tenant=tenant, reason="monthly_budget_exhausted")


async def release_affordable(ctx: JobContext) -> list[str]:
    """Take off hold the tenants whose budget allows again; their names."""
    queue_name = ctx["settings"].queue_name
    held = await held_tenants(ctx["redis"], queue_name)
    if not held:
        return []
    async with statement_connection(ctx["engine"]) as conn:
        still_over = await spend.over_budget_of(conn, tenants=sorted(held))
    released = sorted(held - still_over)
    for tenant in released:
        waiting = await release_tenant(ctx["redis"], queue_name, tenant)
        log.info("tenant_released", tenant=tenant, waiting=waiting)
    return released
