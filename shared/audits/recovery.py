"""What the reconciler does to audits (worker/reconciler.py): lost attempts and lost jobs."""

from datetime import timedelta
from uuid import UUID

from shared.audits import repository as audits
from shared.audits.repository import Keyset, LostAudit
from shared.db import Statements
from shared.fair_queue import QueuedRun
from shared.queue import defer_run
from shared.webhooks import outbox

WORKER_LOST = "worker_lost"
_WORKER_LOST_MESSAGE = "the worker running the last attempt stopped (crash or timeout)"


async def recover_expired_leases(conn: Statements) -> tuple[list[UUID], list[LostAudit]]:
    """Audits whose worker vanished: re-queue them, or fail those on their last attempt.

    Returns the re-queued ids, enqueued after commit, and the audits failed `worker_lost`.
    The failures' webhook events, and their batches', are written in the same transaction.
    """
    recovered = await audits.recover_expired_leases(
        conn, code=WORKER_LOST, message=_WORKER_LOST_MESSAGE
    )
    for run in recovered.requeued:
        defer_run(conn, run)
    await outbox.batches_may_have_ended(conn, [lost.run.batch_id for lost in recovered.failed])
    return [run.audit_id for run in recovered.requeued], recovered.failed


async def queued_before(
    conn: Statements, *, age: timedelta, limit: int, after: Keyset | None = None
) -> list[Keyset]:
    """Queued audits untouched for `age`, candidates for a lost job, oldest first."""
    return await audits.queued_before(conn, age=age, limit=limit, after=after)


async def queued_runs(conn: Statements, audit_ids: list[UUID]) -> list[QueuedRun]:
    """How to queue these audits' runs again (those still queued): their tenant, priority
    and batch."""
    return await audits.queued_runs(conn, audit_ids)
