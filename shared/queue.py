"""The arq queue: the Redis pool, and jobs sent only after their rows committed.

Services never talk to Redis. They note what must happen once the transaction
commits (`defer_run`, `defer_abort`) on its session, or on the statement connection
whose statement committed; the owner of the transaction calls `send_pending` after
its commit, so a job never names a row that does not exist yet. If Redis is
unreachable then, nothing is lost: the row is the source of truth and the worker's
reconciler enqueues every queued audit that has no job.

Jobs wait in the fair queue (shared/fair_queue.py) until a worker picks them.
"""

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

import structlog
from arq.connections import ArqRedis, RedisSettings
from arq.constants import abort_jobs_ss, expires_extra_ms, job_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, RedisError, TimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from shared import tracing
from shared.config import Settings
from shared.db import SessionFactory, StatementConnection, session_scope, statement_connection
from shared.fair_queue import ENQUEUE_LUA, QueuedRun, fair_prefix

log = structlog.get_logger(__name__)

RUN_AUDIT = "run_audit"
_PENDING = "auditq.pending_jobs"


def _retry(*, cap: float, retries: int) -> Retry:
    """Reconnect after 0.1, 0.2, 0.4 s… (doubling up to `cap`), `retries` times in all."""
    return Retry(ExponentialBackoff(cap=cap, base=0.05), retries=retries)


def create_redis(settings: Settings) -> ArqRedis:
    """An arq client for `REDIS_URL` (`redis://`, `rediss://` or `unix://`).

    It connects lazily, so an API started while Redis is down still serves.
    """
    redis: ArqRedis = ArqRedis.from_url(
        settings.redis_url,
        # Under a second: a request must not hang while Redis is down (the reconciler
        # enqueues what the API could not).
        retry=_retry(cap=1.0, retries=3),
        retry_on_error=[ConnectionError, TimeoutError],
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=15,
    )
    redis.default_queue_name = settings.queue_name
    return redis


def redis_settings(settings: Settings) -> RedisSettings:
    """The worker's connection, described the way arq wants it.

    arq ends the worker on the first Redis error that reaches its poll loop, so every
    command waits out a restart of up to about 17 s instead (0.1 + 0.2 + … + 2 s).
    OSError: redis-py raises a refused connection (or a unix socket gone) at once
    otherwise. arq's own start-up retries are off: the retry covers start-up too, and
    `arq --check` gives its answer within the same 17 s.
    """
    conf = RedisSettings.from_dsn(settings.redis_url)
    conf.retry = _retry(cap=2.0, retries=12)
    conf.retry_on_error = [ConnectionError, TimeoutError, OSError]
    conf.conn_retries = 0
    conf.conn_timeout = 2
    return conf


def audit_job_id(audit_id: UUID) -> str:
    return f"audit:{audit_id}"


@dataclass
class PendingJobs:
    run: list[QueuedRun] = field(default_factory=list)
    abort: list[UUID] = field(default_factory=list)


class Transactional(Protocol):
    """What a service writes through: an `AsyncSession`, or `Statements` (shared/db.py)."""

    @property
    def info(self) -> dict[Any, Any]: ...


def _pending(session: Transactional) -> PendingJobs:
    pending: PendingJobs = session.info.setdefault(_PENDING, PendingJobs())
    return pending


def defer_run(session: Transactional, run: QueuedRun) -> None:
    """Enqueue `run_audit` for this audit once the session's transaction commits."""
    _pending(session).run.append(run)


def defer_abort(session: Transactional, audit_id: UUID) -> None:
    """Abort this audit's running job once the session's transaction commits."""
    _pending(session).abort.append(audit_id)


def discard_pending(session: Transactional) -> None:
    session.info.pop(_PENDING, None)


async def send_pending(session: Transactional, redis: ArqRedis) -> None:
    """Send what the committed transaction deferred; a Redis outage is logged, not raised."""
    pending: PendingJobs | None = session.info.pop(_PENDING, None)
    if pending is None:
        return
    try:
        if pending.run:
            with tracing.enqueue_span(queue=redis.default_queue_name, jobs=len(pending.run)):
                await enqueue_runs(redis, pending.run)
        await abort_runs(redis, pending.abort)
    except (RedisError, OSError) as exc:
        log.warning(
            "enqueue_failed",
            audit_ids=[str(i) for i in [*(r.audit_id for r in pending.run), *pending.abort]],
            error=type(exc).__name__,
            note="the reconciler will enqueue queued audits once Redis is back",
        )


async def enqueue_runs(redis: ArqRedis, runs: Iterable[QueuedRun]) -> None:
    """Queue `run_audit` jobs on the fair queue in one command, skipping audits that have a job.

    arq's `enqueue_job` costs a WATCH round trip and a MULTI of its own per job; a
    batch of 1,000 wants one command. A script is atomic as MULTI/EXEC is, and one
    command with one reply costs the API far less CPU than a pipeline's five.
    """
    jobs = {audit_job_id(run.audit_id): run for run in runs}
    if not jobs:
        return
    now_ms = timestamp_ms()
    keys = [abort_jobs_ss, *(job_key_prefix + j for j in jobs)]
    args: list[Any] = [fair_prefix(redis.default_queue_name), expires_extra_ms]
    for job_id, run in jobs.items():
        payload = serialize_job(RUN_AUDIT, (str(run.audit_id),), {}, None, now_ms)
        args += [job_id, payload, str(run.priority), run.tenant, run.flow]
    # EVALSHA, loading the script first when Redis lacks it (first use, or a restart since).
    # Registering only hashes the text; no round trip.
    await redis.register_script(ENQUEUE_LUA)(keys=keys, args=args)


async def abort_runs(redis: ArqRedis, audit_ids: Iterable[UUID]) -> None:
    """Ask workers to cancel these audits' jobs (arq `allow_abort_jobs`)."""
    marks = {audit_job_id(audit_id): timestamp_ms() for audit_id in audit_ids}
    if marks:
        await redis.zadd(abort_jobs_ss, marks)


async def missing_jobs(redis: ArqRedis, audit_ids: list[UUID]) -> list[UUID]:
    """The audits among these that have no job in Redis (lost to a flush or a failed enqueue)."""
    async with redis.pipeline(transaction=False) as pipe:
        for audit_id in audit_ids:
            pipe.exists(job_key_prefix + audit_job_id(audit_id))
        exists = await pipe.execute()
    return [audit_id for audit_id, found in zip(audit_ids, exists, strict=True) if not found]


@asynccontextmanager
async def transaction(factory: SessionFactory, redis: ArqRedis) -> AsyncIterator[AsyncSession]:
    """A session scope that sends the jobs it deferred once it has committed."""
    async with session_scope(factory) as session:
        yield session
    await send_pending(session, redis)


@asynccontextmanager
async def statements(engine: AsyncEngine, redis: ArqRedis) -> AsyncIterator[StatementConnection]:
    """`transaction` for a statement connection: the jobs it deferred are sent after it.

    Each statement commits as it runs, so what was deferred is sent even if the caller
    fails afterwards: its row exists.
    """
    try:
        async with statement_connection(engine) as conn:
            yield conn
    finally:
        await send_pending(conn, redis)
