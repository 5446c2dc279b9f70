"""The retention cron: with `RETENTION_DAYS` set, old finished audits are deleted.

It runs hourly under arq's `unique` lock, in chunks of `CHUNK` rows, each in
its own short transaction, and stops after `MAX_CHUNKS_PER_RUN` so one run
never occupies the database for long; the next run carries on.
"""

from datetime import timedelta

import structlog

from shared.audits import retention
from shared.db import session_scope
from worker.context import JobContext

log = structlog.get_logger("worker.retention")

CHUNK = 500
MAX_CHUNKS_PER_RUN = 200


async def purge_expired(ctx: JobContext) -> int:
    days = ctx["settings"].retention_days
    if days is None:
        return 0
    age = timedelta(days=days)
    deleted = 0
    for _ in range(MAX_CHUNKS_PER_RUN):
        async with session_scope(ctx["session_factory"]) as session:
            removed = await retention.delete_finished_before(session, age=age, chunk=CHUNK)
        deleted += removed
        if removed < CHUNK:
            break
    async with session_scope(ctx["session_factory"]) as session:
        batches = await retention.delete_empty_batches_before(session, age=age)
    if deleted or batches:
        log.info("retention_purged", audits=deleted, batches=batches, retention_days=days)
    return deleted
