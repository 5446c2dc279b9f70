"""Audits for the worker benchmarks: recorded and queued through auditq's own services,
then followed in PostgreSQL until they end.

The benchmark process submits the way the API does (`batches.create` inside
`shared.queue.transaction`, or `audits.create` inside `shared.queue.statements`:
rows committed, then one Redis command), without HTTP in the way, and reads the
audits' own timestamps (`created_at`, `started_at`, `finished_at`, all
PostgreSQL's clock) afterwards.
"""

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from uuid import UUID

import asyncpg
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.workload import audit_body
from shared.audits import service as audits
from shared.audits.schemas import AuditCreate, AuditFields
from shared.audits.status import TERMINAL, sql_list
from shared.batches import service as batches
from shared.batches.schemas import BatchCreate
from shared.config import Settings
from shared.db import (
    SessionFactory,
    SessionStatements,
    asyncpg_dsn,
    create_engine,
    create_session_factory,
)
from shared.queue import create_redis, statements, transaction
from shared.tenants.caller import DEFAULT_TENANT

CHUNK = 1000


@dataclass
class Client:
    settings: Settings
    engine: AsyncEngine
    factory: SessionFactory
    redis: ArqRedis


@asynccontextmanager
async def client(database_url: str, redis_url: str, queue_name: str) -> AsyncIterator[Client]:
    settings = Settings(database_url=database_url, redis_url=redis_url, queue_name=queue_name)
    engine = create_engine(settings, pool_size=2)
    redis = create_redis(settings)
    try:
        yield Client(settings, engine, create_session_factory(engine), redis)
    finally:
        await redis.aclose()
        await engine.dispose()


def redis_commands_to_submit(count: int) -> int:
    """What `submit` has Redis run (`enqueue_runs`): per chunk one EVALSHA (and an EVAL
    the first time), whose script runs ZREM, SET and ZADD per audit; INFO commandstats
    counts a script's commands too."""
    chunks = -(-count // CHUNK)
    return 3 * count + 2 * chunks


async def submit(
    c: Client, count: int, *, start: int = 0, samples: int = 1, callback_url: str | None = None
) -> list[UUID]:
    """`count` audits as batches of up to 1,000 (one transaction, one Redis command each),
    each asking for `samples`; with `callback_url`, every audit and every batch sends its
    end there."""
    ids: list[UUID] = []
    for first in range(start, start + count, CHUNK):
        size = min(CHUNK, start + count - first)
        items = [{**audit_body(first + i), "samples": samples} for i in range(size)]
        data = BatchCreate(
            audits=[AuditFields.model_validate(item) for item in items],
            callback_url=callback_url,
            item_events=callback_url is not None,
        )
        async with transaction(c.factory, c.redis) as session:
            created = await batches.create(
                SessionStatements(session), data=data, tenant=DEFAULT_TENANT, settings=c.settings
            )
        ids.append(created.resource.batch.id)
    return ids


async def submit_one_by_one(c: Client, count: int, *, gap_s: tuple[float, float]) -> None:
    """Single audits, one INSERT and one enqueue each, at random intervals (an idle system)."""
    rng = random.Random(11)
    for index in range(count):
        data = AuditCreate.model_validate(audit_body(index))
        async with statements(c.engine, c.redis) as conn:
            await audits.create(conn, data=data, tenant=DEFAULT_TENANT, settings=c.settings)
        await asyncio.sleep(rng.uniform(*gap_s))


async def submit_singles(c: Client, count: int, *, callback_url: str | None = None) -> None:
    """Single audits as fast as one client sends them, one INSERT and one enqueue each,
    each with `callback_url` (`POST /audits`' way)."""
    for index in range(count):
        data = AuditCreate.model_validate({**audit_body(index), "callback_url": callback_url})
        async with statements(c.engine, c.redis) as conn:
            await audits.create(conn, data=data, tenant=DEFAULT_TENANT, settings=c.settings)


@dataclass(frozen=True)
class Timeline:
    """When each audit was created, started and finished (epoch seconds, PostgreSQL's clock)."""

    created: list[float]
    started: list[float]
    finished: list[float]
    statuses: dict[str, int]


async def _fetch(connection: asyncpg.Connection, sql: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(sql)
    return rows


async def wait_until_done(database_url: str, expected: int, *, timeout_s: float) -> Timeline:
    """Poll (twice a second) until `expected` audits have ended, then read their timeline."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        deadline = time.monotonic() + timeout_s
        done_sql = f"SELECT count(*) FROM audit WHERE status IN {sql_list(TERMINAL)}"
        while (done := await connection.fetchval(done_sql)) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{done} of {expected} audits ended within {timeout_s} s")
            await asyncio.sleep(0.5)
    finally:
        await connection.close()
    return await timeline(database_url)


async def timeline(database_url: str) -> Timeline:
    """Every audit's timestamps as they stand; only the ended ones count."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await _fetch(
            connection,
            "SELECT status, extract(epoch FROM created_at) AS c, "
            "extract(epoch FROM started_at) AS s, extract(epoch FROM finished_at) AS f "
            "FROM audit",
        )
    finally:
        await connection.close()
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    ended = [row for row in rows if row["f"] is not None]
    return Timeline(
        created=[float(row["c"]) for row in ended],
        started=[float(row["s"]) for row in ended],
        finished=[float(row["f"]) for row in ended],
        statuses=statuses,
    )


async def truncate(database_url: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute("TRUNCATE audit, batch CASCADE")
    finally:
        await connection.close()
