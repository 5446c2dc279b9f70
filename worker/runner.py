"""The Procfile's worker (`python -m worker`): arq's worker, kept alive through a Redis restart.

arq's own `Worker` ends the process on the first Redis error that reaches its poll loop
(python-arq/arq#498). The worker's Redis client waits out a short outage
(`shared.queue.redis_settings`), but not a connection cut between a WATCH and its EXEC,
which redis-py reports at once as a `WatchError`; nor an outage longer than its retries.
This worker logs the error, pauses and polls again: jobs already running carry on, and
what Redis lost the reconciler enqueues again from PostgreSQL.

It also starts jobs in one round trip to Redis per poll, and picks them fairly. The jobs
this process runs are skipped without asking; one script (`shared.fair_queue.PICK_LUA`)
starts the due jobs of arq's queue that nobody runs (deferred retries, a killed worker's
jobs) under arq's checks (not in progress, still queued, due), then fills the free slots
left from the fair queue (docs/SCHEDULING.md), marking each in progress, atomically. arq's
`start_jobs` makes several round trips per job id instead, and only knows its one queue.
Redis round trips are the dearest thing a job does after its model call.

And it refills a freed slot at once: arq polls the queue every `poll_delay` and leaves a
slot that frees in between empty until the next poll, on average half a `poll_delay` per
job. This worker starts queued jobs as soon as one ends, `REFILL_GATHER_S` later to take
the jobs that end together in one go; arq's whole poll (aborts, health beat, cron) still
runs every `poll_delay`. What each change did is measured in bench/RESULTS.md (Tuning).
Likewise it starts queued work as soon as the API queues it: the enqueue script publishes
on the fair queue's wake channel, which a long-running worker listens to.

It overrides private methods of arq's `Worker`: arq is pinned below its next minor, and
tests/worker/test_runner.py checks the methods are still as this class expects.

arq's plain worker (`arq worker.settings.WorkerSettings`) does not read the fair queue:
it would run deferred retries only. Run this one.
"""

import asyncio
from typing import Any

import structlog
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from shared.audits.priority import Priority
from shared.config import get_settings
from shared.fair_queue import PICK_LUA, fair_prefix, wake_channel
from shared.logging import configure_logging
from worker.settings import worker_options

log = structlog.get_logger("worker.runner")

REDIS_PAUSE_S = 1.0
REFILL_GATHER_S = 0.002


class RedisTolerantWorker(Worker):
    """arq's `Worker`: outlives Redis errors, starts jobs in one round trip, refills at once."""

    _pick_jobs: AsyncScript | None = None

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._bulk_min_share = settings["ctx"]["settings"].bulk_min_share
        # arq's loop sleeps `poll_delay_s` after each poll; this worker waits itself.
        self._poll_wait_s = self.poll_delay_s
        self.poll_delay_s = 0.0
        # Set when a slot frees or work is queued: either can start a job now.
        self._wake = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    async def _poll_iteration(self) -> None:
        try:
            if self._listener is None and not self.burst:
                self._listener = self.loop.create_task(self._listen_for_work())
            await super()._poll_iteration()
            await self._until_next_poll()
            if self.burst:
                await self._start_waiting_work()
        except (RedisError, OSError) as exc:
            log.warning("redis_unavailable", error=type(exc).__name__, retry_in_s=REDIS_PAUSE_S)
            await asyncio.sleep(REDIS_PAUSE_S)

    async def _until_next_poll(self) -> None:
        """Wait `poll_delay`, starting queued jobs as slots free up or work is queued."""
        deadline = self.loop.time() + self._poll_wait_s
        while (remaining := deadline - self.loop.time()) > 0:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return
            await asyncio.sleep(REFILL_GATHER_S)
            await self._refill()
            if self.burst:
                return  # arq's loop decides after each poll whether a burst is over

    async def _listen_for_work(self) -> None:
        """Wake the poll loop whenever work is queued; through Redis outages, for good."""
        while True:
            try:
                async with self.pool.pubsub() as pubsub:
                    await pubsub.subscribe(wake_channel(self.queue_name))
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._wake.set()
            except (RedisError, OSError) as exc:
                log.warning("wake_unavailable", error=type(exc).__name__, retry_in_s=REDIS_PAUSE_S)
                await asyncio.sleep(REDIS_PAUSE_S)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await super().close()

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

    async def _start_waiting_work(self) -> None:
        """Start a job of the fair queue if any waits, a slot freeing first if none is free.

        arq ends a burst when its queue is empty, and a job of the fair queue joins arq's
        queue only when it starts: a slot that freed since the poll would end the burst.
        """
        waiting = [fair_prefix(self.queue_name) + f"tenants:{p}" for p in Priority]
        while await self.pool.exists(*waiting):
            if self.job_counter < self.max_jobs:
                await self._refill()
                return
            self._wake.clear()
            await self._wake.wait()

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._wake.set()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Fill the free slots: due jobs of `job_ids` first, then the fair queue's picks."""
        free_slots = self.max_jobs - self.job_counter
        if free_slots <= 0:
            return
        candidates = [job_id for job_id in job_ids if not self._running_here(job_id.decode())]
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
        if self._pick_jobs is None:
            self._pick_jobs = self.pool.register_script(PICK_LUA)
        args: list[str | int | float | bytes] = [
            in_progress_key_prefix,
            job_key_prefix,
            timestamp_ms(),
            int(self.in_progress_timeout_s * 1000),
            limit,
            fair_prefix(self.queue_name),
            self._bulk_min_share,
        ]
        reply = await self._pick_jobs(keys=[self.queue_name], args=[*args, *job_ids])
        pairs = zip(reply[::2], reply[1::2], strict=True)
        return [(job_id.decode(), int(float(score))) for job_id, score in pairs]


def run() -> None:
    settings = get_settings()
    # As `arq` configures its own, before startup.
    configure_logging(settings.log_level, settings.log_format)
    RedisTolerantWorker(**worker_options(settings)).run()
