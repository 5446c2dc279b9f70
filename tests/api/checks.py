"""Assertions the API tests of batches, rubrics and idempotency share."""

import asyncio
from typing import Any

import sqlalchemy as sa
from arq.connections import ArqRedis
from httpx import Response
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import Settings
from shared.tenants.directory import Directory
from tests.fixtures.jobs import queued_job_ids


def assert_problem(response: Response, status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 problem detail with this status and `code`; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert (body["status"], body["code"]) == (status, code)
    assert body["type"].endswith("/" + code)
    assert body["title"]
    assert body["detail"]
    return body


async def row_counts(engine: AsyncEngine) -> dict[str, int]:
    """How many rows `audit`, `batch` and `rubric` hold."""
    async with engine.connect() as connection:
        return {
            table: int(await connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)
            for table in ("audit", "batch", "rubric")
        }


async def audit_row(engine: AsyncEngine, audit_id: str) -> dict[str, Any]:
    """Every column of one stored audit."""
    async with engine.connect() as connection:
        result = await connection.execute(
            sa.text("SELECT * FROM audit WHERE id = :id"), {"id": audit_id}
        )
        return dict(result.mappings().one())


async def queued_jobs(redis: ArqRedis, settings: Settings) -> set[str]:
    """The job ids waiting in this test's queue."""
    return await queued_job_ids(redis, settings)


async def assert_nothing_written(
    engine: AsyncEngine, redis: ArqRedis, settings: Settings, *, rubrics: int = 0
) -> None:
    """No batch, no audit, no job: a refused request left no trace (`rubrics` may pre-exist)."""
    assert await row_counts(engine) == {"audit": 0, "batch": 0, "rubric": rubrics}
    assert await queued_jobs(redis, settings) == set()


async def until_notified(directory: Directory, *, since: int) -> None:
    """Wait for the API's key directory to hear of a change committed after `since`."""
    for _ in range(500):
        if directory.generation != since:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("PostgreSQL's notification of the change never arrived")


async def until_listening(directory: Directory) -> None:
    """Wait for the API's key directory to listen for changes (and so to cache)."""
    for _ in range(500):
        if directory.listening:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the key directory never started listening")
