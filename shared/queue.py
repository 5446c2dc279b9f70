"""The arq queue: the Redis pool, and jobs sent only after their rows committed.

Services never talk to Redis. They note what must happen once the transaction
commits (`defer_run`, `defer_abort`) on its session, or on the statement connection
whose statement committed; the owner of the transaction calls `send_pending` after
its commit, so a job never names a row that does not exist yet. If Redis is
unreachable then, nothing is lost: the row is the source of truth and the worker's
reconciler enqueues every queued audit that has no job.
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

from shared.config import Settings
from shared.db import SessionFactory, StatementConnection, session_scope, statement_connection

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
    run: list[UUID] = field(default_factory=list)
    abort: list[UUID] = field(default_factory=list)


class Transactional(Protocol):
    """What a service writes through: an `AsyncSession`, or `Statements` (shared/db.py)."""

    @property
    def info(self) -> dict[Any, Any]: ...


def _pending(session: Transactional) -> PendingJobs:
    pending: PendingJobs = session.info.setdefault(_PENDING, PendingJobs())
    return pending


def defer_run(session: Transactional, audit_id: UUID) -> None:
    """Enqueue `run_audit` for this audit once the session's transaction commits."""
    _pending(session).run.append(audit_id)


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
        await enqueue_runs(redis, pending.run)
        await abort_runs(redis, pending.abort)
    except (RedisError, OSError) as exc:
        log.warning(
            "enqueue_failed",
            audit_ids=[str(i) for i in pending.run + pending.abort],
            error=type(exc).__name__,
            note="the reconciler will enqueue queued audits once Redis is back",
        )


# KEYS: the queue, the abort marks, then each job's key; ARGV: enqueue time (ms), the job
# keys' lifetime (ms), then each job's id and payload. The jobs arq's `enqueue_job` would
# make, deduplicated by job id as it does (SET NX on the job key), with no abort mark left
# from a cancelled run of the same audit.
_ENQUEUE_LUA = """
for i = 3, #KEYS do
  local job_id = ARGV[2 * i - 3]
  redis.call('ZREM', KEYS[2], job_id)
  redis.call('SET', KEYS[i], ARGV[2 * i - 2], 'PX', ARGV[2], 'NX')
  redis.call('ZADD', KEYS[1], 'NX', ARGV[1], job_id)
end
"""


async def enqueue_runs(redis: ArqRedis, audit_ids: Iterable[UUID]) -> None:
    """Enqueue `run_audit` jobs in one command, skipping audits that have a job.

    arq's `enqueue_job` costs a WATCH round trip and a MULTI of its own per job; a
    batch of 1,000 wants one command. A script is atomic as MULTI/EXEC is, and one
    command with one reply costs the API far less CPU than a pipeline's five.
    """
    jobs = {audit_job_id(audit_id): str(audit_id) for audit_id in audit_ids}
    if not jobs:
        return
    now_ms = timestamp_ms()
    keys = [redis.default_queue_name, abort_jobs_ss, *(job_key_prefix + j for j in jobs)]
    args: list[Any] = [now_ms, expires_extra_ms]  # redis-py's stubs want str only
    for job_id, audit_id in jobs.items():
        args += [job_id, serialize_job(RUN_AUDIT, (audit_id,), {}, None, now_ms)]
    # EVALSHA, loading the script first when Redis lacks it (first use, or a restart since).
    # Registering only hashes the text; no round trip.
    await redis.register_script(_ENQUEUE_LUA)(keys=keys, args=args)


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
