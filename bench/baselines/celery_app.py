"""auditq's own audit job on Celery, as most users would set it up.

Redis is the broker, no result backend (auditq keeps no results in Redis either),
and the worker runs with Celery's defaults: the prefork pool, one process per
core. Celery runs sync tasks, so each task drives the async job with
`asyncio.run`, as most users of an async code base do: the job is
`worker.tasks.run_audit` itself (the same claim, simulator call through
`shared.llm.client.audit_content` and fenced write through
`shared.audits.repository`), given a `ctx` built by `worker.context.startup` and
closed by `worker.context.shutdown` around each task, because an event loop, and
every pool and client bound to it, lives only as long as `asyncio.run`.

`celery -A bench.baselines.celery_app worker` with DATABASE_URL, REDIS_URL, QUEUE_NAME and
OPENAI_BASE_URL in the environment.
"""

import asyncio
import os
from typing import Any, cast

from celery import Celery

from bench.common import celery_broker_url
from shared.config import get_settings
from shared.queue import create_redis
from worker.context import JobContext, shutdown, startup
from worker.tasks import run_audit

app = Celery("auditq_peer", broker=celery_broker_url(os.environ["REDIS_URL"]))
app.conf.task_default_queue = os.environ["QUEUE_NAME"]
app.conf.broker_connection_retry_on_startup = True


async def _run(audit_id: str) -> None:
    settings = get_settings()
    redis = create_redis(settings)
    ctx: dict[str, Any] = {"settings": settings, "redis": redis, "job_try": 1}
    await startup(ctx)
    try:
        await run_audit(cast(JobContext, ctx), audit_id)
    finally:
        await shutdown(ctx)
        await redis.aclose()


@app.task(name="run_audit")
def run_audit_task(audit_id: str) -> None:
    asyncio.run(_run(audit_id))
