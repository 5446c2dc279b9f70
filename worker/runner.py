"""The Procfile's worker (`python -m worker`): arq's worker, kept alive through a Redis restart.

arq's own `Worker` ends the process on the first Redis error that reaches its poll loop
(python-arq/arq#498). The worker's Redis client waits out a short outage
(`shared.queue.redis_settings`), but not a connection cut between a WATCH and its EXEC,
which redis-py reports at once as a `WatchError`; nor an outage longer than its retries.
This worker logs the error, pauses and polls again: jobs already running carry on, and
what Redis lost the reconciler enqueues again from PostgreSQL.

It also starts jobs in one round trip to Redis per poll. arq's `start_jobs` makes several
per job id the poll returns (WATCH, EXISTS, ZSCORE, then MULTI/PSETEX/EXEC), and the
poll returns the jobs already running too, oldest first: a busy worker paid for every
job in flight before it reached a new one. Here the jobs this process runs are skipped
without asking, and a Lua script makes arq's checks for the rest (not in progress, still
queued, due) and marks up to the free slots' worth in progress, atomically. Redis round
trips are the dearest thing a job does after its model call.

And it refills a freed slot at once: arq polls the queue every `poll_delay` and leaves a
slot that frees in between empty until the next poll, on average half a `poll_delay` per
job. This worker starts queued jobs as soon as one ends, `REFILL_GATHER_S` later to take
the jobs that end together in one go; arq's whole poll (aborts, health beat, cron) still
runs every `poll_delay`. What each change did is measured in bench/RESULTS.md (Tuning).

It overrides private methods of arq's `Worker`: arq is pinned below its next minor, and
tests/worker/test_runner.py checks the methods are still as this class expects.

`arq worker.settings.WorkerSettings` still runs the same settings with arq's plain worker.
"""

import asyncio
from typing import Any

import structlog
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from shared.config import get_settings
from shared.logging import configure_logging
from worker.settings import worker_options

log = structlog.get_logger("worker.runner")

REDIS_PAUSE_S = 1.0
REFILL_GATHER_S = 0.002

# arq's conditions for starting a job (not in progress already, still queued, and due: a
# job deferred again since the poll is not), for each candidate in turn until `limit` have
# started. Returns id, score, id, score, … of the jobs it marked in progress. The
# in-progress keys are built here from their prefix: arq runs on one Redis, not a cluster.
START_JOBS = """
local queue, prefix = KEYS[1], ARGV[1]
local now, timeout_ms, limit = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local started = {}
for i = 5, #ARGV do
  if #started >= 2 * limit then break end
  local job_id = ARGV[i]
  if redis.call('exists', prefix .. job_id) == 0 then
    local score = redis.call('zscore', queue, job_id)
    if score and tonumber(score) <= now then
      redis.call('psetex', prefix .. job_id, timeout_ms, '1')
      table.insert(started, job_id)
      table.insert(started, score)
    end
  end
end
return started
"""


class RedisTolerantWorker(Worker):
    """arq's `Worker`: outlives Redis errors, starts jobs in one round trip, refills at once."""

    _start_jobs: AsyncScript | None = None

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        # arq's loop sleeps `poll_delay_s` after each poll; this worker waits itself.
        self._poll_wait_s = self.poll_delay_s
        self.poll_delay_s = 0.0
        self._slot_freed = asyncio.Event()

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
            await self._until_next_poll()
        except (RedisError, OSError) as exc:
            log.warning("redis_unavailable", error=type(exc).__name__, retry_in_s=REDIS_PAUSE_S)
            await asyncio.sleep(REDIS_PAUSE_S)

    async def _until_next_poll(self) -> None:
        """Wait `poll_delay`, starting queued jobs in the slots that free up meanwhile."""
        deadline = self.loop.time() + self._poll_wait_s
        while (remaining := deadline - self.loop.time()) > 0:
            self._slot_freed.clear()
            try:
                await asyncio.wait_for(self._slot_freed.wait(), remaining)
            except TimeoutError:
                return
            await asyncio.sleep(REFILL_GATHER_S)
            await self._refill()
            if self.burst:
                return  # arq's loop decides after each poll whether a burst is over

    async def _refill(self) -> None:
        """The job-starting half of arq's poll; aborts and the health beat wait for the next."""
        if self.job_counter >= self.max_jobs or not self.allow_pick_jobs:
            return
        if self.burst and self.max_burst_jobs >= 0:
            return  # arq's poll counts a capped burst's jobs
        due = await self.pool.zrangebyscore(
            self.queue_name,
            min=float("-inf"),
            max=timestamp_ms(),
            start=0,
            num=self.queue_read_limit,
        )
        await self.start_jobs(due)

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._slot_freed.set()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Start what the free slots can take of `job_ids`, marked in progress by `START_JOBS`."""
        free_slots = self.max_jobs - self.job_counter
        candidates = [job_id for job_id in job_ids if not self._running_here(job_id.decode())]
        if free_slots <= 0 or not candidates:
            return
        for job_id, score in await self._mark_in_progress(candidates, free_slots):
            await self.sem.acquire()  # a free slot: does not wait
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    def _running_here(self, job_id: str) -> bool:
        task = self.tasks.get(job_id)
        return task is not None and not task.done()

    async def _mark_in_progress(self, job_ids: list[bytes], limit: int) -> list[tuple[str, int]]:
        """`(job id, score)` of the jobs marked in progress, at most `limit` of them."""
        if self._start_jobs is None:
            self._start_jobs = self.pool.register_script(START_JOBS)
        timeout_ms = int(self.in_progress_timeout_s * 1000)
        args: list[str | int | bytes] = [in_progress_key_prefix, timestamp_ms(), timeout_ms, limit]
        reply = await self._start_jobs(keys=[self.queue_name], args=[*args, *job_ids])
        pairs = zip(reply[::2], reply[1::2], strict=True)
        return [(job_id.decode(), int(float(score))) for job_id, score in pairs]


def run() -> None:
    settings = get_settings()
    # As `arq` configures its own, before startup.
    configure_logging(settings.log_level, settings.log_format)
    RedisTolerantWorker(**worker_options(settings)).run()
