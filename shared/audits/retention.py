"""Deleting old finished audits (`RETENTION_DAYS`), a little at a time.

Each statement deletes at most `chunk` rows and skips rows another transaction
holds, so a clean-up never blocks the API or a worker's fenced write, and each
short transaction keeps locks and WAL bursts small.
"""

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from shared.audits.models import Audit
from shared.audits.schemas import TERMINAL_STATUSES
from shared.batches.models import Batch


async def delete_finished_before(session: AsyncSession, *, age: timedelta, chunk: int) -> int:
    """Delete up to `chunk` audits that ended more than `age` ago; how many went."""
    expired = (
        sa.select(col(Audit.id))
        .where(
            col(Audit.status).in_(TERMINAL_STATUSES),
            col(Audit.finished_at) < sa.func.now() - age,
        )
        .limit(chunk)
        .with_for_update(skip_locked=True)
    )
    stmt = sa.delete(Audit).where(col(Audit.id).in_(expired.scalar_subquery()))
    result = await session.execute(stmt)
    return int(result.rowcount)  # type: ignore[attr-defined]


async def delete_empty_batches_before(session: AsyncSession, *, age: timedelta) -> int:
    """Delete batches older than `age` whose audits are all gone."""
    has_audits = sa.exists().where(col(Audit.batch_id) == col(Batch.id))
    stmt = sa.delete(Batch).where(col(Batch.created_at) < sa.func.now() - age, ~has_audits)
    result = await session.execute(stmt)
    return int(result.rowcount)  # type: ignore[attr-defined]
