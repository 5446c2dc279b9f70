"""The reconciler: what makes a Redis restart, a failed enqueue or a killed worker lose nothing.

PostgreSQL is the source of truth. Every run, under arq's `unique` cron lock:
1. running audits whose lease expired go back to `queued` (and are enqueued), or
   to `failed` (`worker_lost`) when that was their last attempt;
2. queued audits untouched for `ORPHAN_AGE` that have no job in Redis are enqueued.
   The age leaves the API time to enqueue after its commit. Each run checks
   `SCAN_LIMIT` of them and the next run carries on after the last one (the
   position is kept in the worker's `ctx`), so however long the backlog, every
   queued audit is checked within a few runs;
3. tenants on hold whose monthly budget allows again are released (worker/budget_holds.py).
"""

from datetime import timedelta
from typing import Any
from uuid import UUID

import structlog

from shared.audits import recovery
from shared.db import SessionStatements, statement_connection
from shared.fair_queue import set_weights
from shared.queue import enqueue_runs, missing_jobs, transaction
from shared.tenants import service as tenants
from worker import budget_holds
from worker.context import JobContext

log = structlog.get_logger("worker.reconciler")

ORPHAN_AGE = timedelta(seconds=10)
SCAN_LIMIT = 2000


async def _enqueue_orphans(ctx: JobContext) -> list[UUID]:
    """Enqueue the next page of queued audits that have no job; wraps at the end."""
    after = ctx.get("reconcile_after")
    async with statement_connection(ctx["engine"]) as conn:
        page = await recovery.queued_before(conn, age=ORPHAN_AGE, limit=SCAN_LIMIT, after=after)
    ctx["reconcile_after"] = page[-1] if len(page) == SCAN_LIMIT else None
    orphans = await missing_jobs(ctx["redis"], [audit_id for _, audit_id in page])
    if not orphans:
        return []
    async with statement_connection(ctx["engine"]) as conn:
        runs = await recovery.queued_runs(conn, orphans)
    await enqueue_runs(ctx["redis"], runs)
    return [run.audit_id for run in runs]


async def _share_weights(ctx: JobContext) -> None:
    async with statement_connection(ctx["engine"]) as conn:
        weights = await tenants.weights(conn)
    await set_weights(ctx["redis"], ctx["settings"].queue_name, weights)


async def reconcile(ctx: JobContext) -> dict[str, Any]:
    await _share_weights(ctx)
    async with transaction(ctx["session_factory"], ctx["redis"]) as session:
        requeued, lost = await recovery.recover_expired_leases(SessionStatements(session))
    for audit in lost:  # counted once their failure is committed
        ctx["metrics"].audit_lost(audit)
    failed = [audit.run.audit_id for audit in lost]
    orphans = await _enqueue_orphans(ctx)
    released = await budget_holds.release_affordable(ctx)
    counts = {
        "leases_requeued": len(requeued),
        "leases_failed": len(failed),
        "orphans": len(orphans),
        "tenants_released": len(released),
    }
    if any(counts.values()):
        log.warning(
            "reconciled",
            **counts,
            audit_ids=[str(i) for i in [*requeued, *failed, *orphans][:50]],
        )
    return counts
