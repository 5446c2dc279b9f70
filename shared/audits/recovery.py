"""What the reconciler does to audits (worker/reconciler.py): lost attempts and lost jobs."""

from datetime import timedelta
from uuid import UUID

from shared.audits import repository as audits
from shared.audits.repository import Keyset
from shared.audits.status import AuditStatus
from shared.db import Statements
from shared.queue import defer_run

WORKER_LOST = "worker_lost"
_WORKER_LOST_MESSAGE = "the worker running the last attempt stopped (crash or timeout)"


async def recover_expired_leases(conn: Statements) -> tuple[list[UUID], list[UUID]]:
    """Audits whose worker vanished: re-queue them, or fail those on their last attempt.

    Returns (requeued, failed) ids; the re-queued ones are enqueued after commit.
    """
    recovered = await audits.recover_expired_leases(
        conn, code=WORKER_LOST, message=_WORKER_LOST_MESSAGE
    )
    for audit_id in recovered[AuditStatus.QUEUED]:
        defer_run(conn, audit_id)
    return recovered[AuditStatus.QUEUED], recovered[AuditStatus.FAILED]


async def queued_before(
    conn: Statements, *, age: timedelta, limit: int, after: Keyset | None = None
) -> list[Keyset]:
    """Queued audits untouched for `age`, candidates for a lost job, oldest first."""
    return await audits.queued_before(conn, age=age, limit=limit, after=after)
