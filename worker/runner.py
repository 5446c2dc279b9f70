"""The Procfile's worker (`python -m worker`): arq's worker, kept alive through a Redis restart.

arq's own `Worker` ends the process on the first Redis error that reaches its poll loop
(python-arq/arq#498). The worker's Redis client waits out a short outage
(`shared.queue.redis_settings`), but not a connection cut between a WATCH and its EXEC,
which redis-py reports at once as a `WatchError`; nor an outage longer than its retries.
This worker logs the error, pauses and polls again: jobs already running carry on, and
what Redis lost the reconciler enqueues again from PostgreSQL.

It also starts each job in one round trip to Redis where arq's `start_jobs` takes four
(WATCH, EXISTS, ZSCORE, then MULTI/PSETEX/EXEC): a Lua script makes the same checks and
marks the job in progress atomically. Redis round trips are the dearest thing a job does
after its model call (bench/RESULTS.md).

`arq worker.settings.WorkerSettings` still runs the same settings with arq's plain worker.
"""

import asyncio

import structlog
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from shared.config import get_settings
from shared.logging import configure_logging
from worker.settings import WorkerSettings

log = structlog.get_logger("worker.runner")

REDIS_PAUSE_S = 1.0

# arq's conditions for starting a job: not in progress already, still queued, and due
# (a job deferred again since the poll is not). Returns the job's score when it starts.
START_JOB = """
if redis.call('exists', KEYS[1]) == 1 then return false end
local score = redis.call('zscore', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('psetex', KEYS[1], ARGV[3], '1')
return score
"""


class RedisTolerantWorker(Worker):
    """An arq `Worker` whose poll loop outlives Redis errors, and starts jobs in one round trip."""

    _start_job: AsyncScript | None = None

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            log.warning("redis_unavailable", error=type(exc).__name__, retry_in_s=REDIS_PAUSE_S)
            await asyncio.sleep(REDIS_PAUSE_S)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's `start_jobs`, each job checked and marked in progress by `START_JOB`."""
        for job_id_b in job_ids:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            job_id = job_id_b.decode()
            try:
                score = await self._mark_in_progress(job_id)
            except (RedisError, OSError):
                # The slot was taken for a job that never started.
                self._release_sem_dec_counter_on_complete()
                raise
            if score is None:
                # Running elsewhere, finished, or deferred again meanwhile: as arq skips it.
                self._release_sem_dec_counter_on_complete()
                continue
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def _mark_in_progress(self, job_id: str) -> int | None:
        """The job's score, once marked in progress; None when it must not start now."""
        if self._start_job is None:
            self._start_job = self.pool.register_script(START_JOB)
        keys = [in_progress_key_prefix + job_id, self.queue_name]
        args: list[str | int] = [job_id, timestamp_ms(), int(self.in_progress_timeout_s * 1000)]
        score = await self._start_job(keys=keys, args=args)
        return None if score is None else int(float(score))


def run() -> None:
    configure_logging(get_settings().log_level)  # as `arq` configures its own, before startup
    RedisTolerantWorker(**WorkerSettings).run()
