"""The retention cron: with `RETENTION_DAYS` set, old finished audits are deleted.

It runs hourly under arq's `unique` lock, in chunks of `CHUNK` rows, each a statement
of its own (its own short transaction, keeping locks and WAL bursts small), and stops
after `MAX_CHUNKS_PER_RUN` so one run never occupies the database for long; the next
run carries on.
"""

from datetime import timedelta

import structlog

from shared.audits import repository as audits
from shared.batches import repository as batches
from shared.db import statement_connection
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
    async with statement_connection(ctx["engine"]) as conn:
        for _ in range(MAX_CHUNKS_PER_RUN):
            removed = await audits.delete_finished_before(conn, age=age, chunk=CHUNK)
            deleted += removed
            if removed < CHUNK:
                break
        emptied = await batches.delete_empty_before(conn, age=age)
    if deleted or emptied:
        log.info("retention_purged", audits=deleted, batches=emptied, retention_days=days)
    return deleted
