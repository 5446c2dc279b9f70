"""The Procfile's worker (`python -m worker`): arq's worker, kept alive through a Redis restart.

arq's own `Worker` ends the process on the first Redis error that reaches its poll loop
(python-arq/arq#498). The worker's Redis client waits out a short outage
(`shared.queue.redis_settings`), but not a connection cut between a WATCH and its EXEC,
which redis-py reports at once as a `WatchError`; nor an outage longer than its retries.
This worker logs the error, pauses and polls again: jobs already running carry on, and
what Redis lost the reconciler enqueues again from PostgreSQL.

`arq worker.settings.WorkerSettings` still runs the same settings with arq's plain worker.
"""

import asyncio

import structlog
from arq.worker import Worker
from redis.exceptions import RedisError

from shared.config import get_settings
from shared.logging import configure_logging
from worker.settings import WorkerSettings

log = structlog.get_logger("worker.runner")

REDIS_PAUSE_S = 1.0


class RedisTolerantWorker(Worker):
    """An arq `Worker` whose poll loop outlives Redis errors."""

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            log.warning("redis_unavailable", error=type(exc).__name__, retry_in_s=REDIS_PAUSE_S)
            await asyncio.sleep(REDIS_PAUSE_S)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        for job_id in job_ids:
            try:
                await super().start_jobs([job_id])
            except (RedisError, OSError):
                # arq took a slot for the job before Redis failed; the job never started.
                self._release_sem_dec_counter_on_complete()
                raise


def run() -> None:
    configure_logging(get_settings().log_level)  # as `arq` configures its own, before startup
    RedisTolerantWorker(**WorkerSettings).run()
