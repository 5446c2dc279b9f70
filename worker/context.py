"""What a worker process builds once and its jobs share (`ctx`)."""

import asyncio
import logging
from contextlib import suppress
from typing import Any, NotRequired, TypedDict

from arq.connections import ArqRedis
from openai import AsyncOpenAI
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import tracing, workers
from shared.audits.repository import Keyset
from shared.audits.runs import Clock
from shared.config import Settings
from shared.db import SessionFactory, create_engine, create_session_factory
from shared.llm.client import create_client
from shared.llm.probe import probe_provider
from shared.llm.ratelimit import ModelRateLimiter, create_rate_limiter
from shared.llm.sampling import Sampling
from shared.logging import configure_logging
from shared.spend.prices import PriceTable
from worker import metrics
from worker.backoff import retry_delay
from worker.metrics import MetricsServer, WorkerMetrics
from worker.timing import JobTiming
from worker.webhooks import start_delivering


class JobContext(TypedDict):
    """arq's `ctx` as auditq's jobs use it (arq adds `job_id`, `job_try`, … per job)."""

    settings: Settings
    engine: AsyncEngine
    session_factory: SessionFactory
    llm: AsyncOpenAI
    sampling: Sampling
    rate_limiter: ModelRateLimiter
    prices: PriceTable
    timing: JobTiming
    clock: Clock
    redis: ArqRedis
    metrics: WorkerMetrics
    metrics_server: MetricsServer | None
    job_try: int
    reconcile_after: NotRequired[Keyset | None]


# arq's line as a job starts, and as it returns: `run_audit` logs both transitions itself,
# with the audit's id and request id. Retries, aborts and failures still show.
_ROUTINE_JOB_LINES = frozenset({"%6.2fs → %s(%s)%s", "%6.2fs ← %s ● %s"})


def _not_routine_job_line(record: logging.LogRecord) -> bool:
    return record.msg not in _ROUTINE_JOB_LINES


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]  # worker/settings.py puts it there
    configure_logging(settings.log_level, settings.log_format)
    tracing.configure(settings, service="auditq-worker")
    logging.getLogger("arq.worker").addFilter(_not_routine_job_line)
    # One pooled connection per concurrent job would idle through the model calls;
    # a job holds a connection only for its short claim and finish statements.
    ctx["engine"] = create_engine(settings, pool_size=max(5, settings.worker_concurrency // 5))
    ctx["session_factory"] = create_session_factory(ctx["engine"])
    ctx["llm"] = create_client(settings)
    ctx["sampling"] = Sampling.from_settings(settings)
    # Over arq's Redis pool (set in `ctx` before startup): closed with it, nothing of its own.
    ctx["rate_limiter"] = create_rate_limiter(settings, ctx["redis"])
    ctx["prices"] = PriceTable.of(settings)
    # Now, not on the first reply: loading the maintained table takes a second.
    await asyncio.to_thread(ctx["prices"].warm, settings.models)
    ctx["timing"] = JobTiming.from_settings(settings)
    # Given in `ctx` by tests whose retries should come back at once.
    ctx.setdefault("clock", Clock(retry_delay=retry_delay, sleep=asyncio.sleep))
    # In the background: a slow or absent provider must not hold up the worker's start.
    ctx["provider_probe"] = asyncio.create_task(
        probe_provider(ctx["llm"], model=settings.openai_model)
    )
    ctx["metrics"], ctx["metrics_server"] = metrics.start(settings.metrics_port)
    ctx["worker_id"] = workers.new_worker_id()
    ctx["heartbeat"] = asyncio.create_task(
        workers.beat_forever(ctx["redis"], settings.queue_name, ctx["worker_id"])
    )
    # Beside the audits, on its own connections: a slow receiver never holds one of theirs.
    ctx["webhooks"] = start_delivering(settings, ctx["metrics"])


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["webhooks"].stop()
    for task in (ctx["provider_probe"], ctx["heartbeat"]):
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    with suppress(RedisError, OSError):  # else it drops out within ALIVE_FOR_S anyway
        await workers.leave(ctx["redis"], ctx["settings"].queue_name, ctx["worker_id"])
    if ctx["metrics_server"] is not None:
        await ctx["metrics_server"].close()
    await ctx["llm"].close()
    await ctx["engine"].dispose()
