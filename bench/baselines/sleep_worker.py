"""Baseline of figure 3: a bare arq worker whose job only sleeps, with arq's defaults.

Only what the comparison needs is set: the Redis URL, the queue and `max_jobs`
(the same concurrency as auditq's worker, `WORKER_CONCURRENCY`). Everything else
is arq's default: `poll_delay=0.5`, results kept for an hour (which is how the
benchmark reads each job's start and finish), no abort polling.

`arq bench.baselines.sleep_worker.WorkerSettings` with REDIS_URL, QUEUE_NAME and
WORKER_CONCURRENCY in the environment; jobs are `sleep_job(seconds)`.
"""

import asyncio
import os
from typing import Any, ClassVar

from arq.connections import RedisSettings


async def sleep_job(ctx: dict[str, Any], seconds: float) -> None:
    await asyncio.sleep(seconds)


class WorkerSettings:
    functions: ClassVar = [sleep_job]
    redis_settings = RedisSettings.from_dsn(os.environ["REDIS_URL"])
    queue_name = os.environ["QUEUE_NAME"]
    max_jobs = int(os.environ["WORKER_CONCURRENCY"])
