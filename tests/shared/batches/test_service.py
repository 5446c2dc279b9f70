"""The batches service against real PostgreSQL and Redis, without the HTTP layer."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, job_key_prefix
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlmodel import col

from shared.audits.models import Audit
from shared.batches import service as batches
from shared.batches.results import stream_results
from shared.batches.schemas import BatchCounts, BatchCreate
from shared.batches.summary import BatchSummary
from shared.config import Settings
from shared.db import SessionStatements
from shared.queue import send_pending
from shared.tenants.caller import DEFAULT_TENANT
from tests.factories import batch_request
from tests.fixtures.jobs import queued_job_ids


def batch_of(size: int) -> BatchCreate:
    return BatchCreate.model_validate(batch_request(size))


@contextmanager
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL statements sent through `engine` inside the block."""
    sent: list[str] = []

    def record(*args: Any) -> None:
        sent.append(args[2])  # (conn, cursor, statement, parameters, context, executemany)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def create(session: AsyncSession, size: int) -> BatchSummary:
    created = await batches.create(
        SessionStatements(session),
        tenant=DEFAULT_TENANT,
        settings=Settings(),
        data=batch_of(size),
        request_id="req-1",
    )
    await session.commit()
    assert not created.replayed
    return created.resource


async def audits_of(session: AsyncSession, batch_id: UUID) -> list[Audit]:
    stmt = sa.select(Audit).where(col(Audit.batch_id) == batch_id).order_by(col(Audit.batch_index))
    return list((await session.execute(stmt)).scalars())


async def test_create_inserts_every_audit_in_one_statement(
    session: AsyncSession, engine: AsyncEngine
) -> None:
    with statements(engine) as sent:
        summary = await create(session, 250)

    audit_inserts = [sql for sql in sent if sql.lstrip().upper().startswith("INSERT INTO AUDIT")]
    assert len(audit_inserts) == 1
    assert summary.counts == BatchCounts(queued=250, total=250)
    stored = await audits_of(session, summary.batch.id)
    assert [a.batch_index for a in stored] == list(range(250))
    assert [a.subject for a in stored] == [f"Page {i}" for i in range(250)]
    assert {(a.status, a.request_id, a.attempts) for a in stored} == {("queued", "req-1", 0)}


async def test_create_defers_the_jobs_until_the_caller_sends_them(
    session: AsyncSession, redis: ArqRedis, settings: Settings
) -> None:
    created = await batches.create(
        SessionStatements(session), tenant=DEFAULT_TENANT, settings=Settings(), data=batch_of(5)
    )
    await session.commit()

    assert await queued_job_ids(redis, settings) == set()  # services never talk to Redis
    await send_pending(session, redis)

    stored = await audits_of(session, created.resource.batch.id)
    job_ids = [f"audit:{a.id}" for a in stored]
    assert await queued_job_ids(redis, settings) == set(job_ids)
    assert await redis.exists(*(job_key_prefix + job_id for job_id in job_ids)) == 5


async def test_create_with_a_used_key_returns_the_first_batch_and_queues_nothing(
    session: AsyncSession, redis: ArqRedis, settings: Settings
) -> None:
    first = await batches.create(
        SessionStatements(session),
        tenant=DEFAULT_TENANT,
        settings=Settings(),
        data=batch_of(2),
        idempotency_key="nightly-1",
    )
    await session.commit()
    await send_pending(session, redis)
    await redis.flushdb()

    again = await batches.create(
        SessionStatements(session),
        tenant=DEFAULT_TENANT,
        settings=Settings(),
        data=batch_of(2),
        idempotency_key="nightly-1",
    )
    await session.commit()
    await send_pending(session, redis)

    assert again.replayed
    assert again.resource.batch.id == first.resource.batch.id
    assert again.resource.counts == BatchCounts(queued=2, total=2)
    assert await queued_job_ids(redis, settings) == set()


async def test_summaries_of_several_batches_come_from_one_grouped_query(
    session: AsyncSession, engine: AsyncEngine
) -> None:
    sizes = [1, 2, 3]
    created = [await create(session, size) for size in sizes]
    first = (await audits_of(session, created[1].batch.id))[0]
    await session.execute(
        sa.update(Audit)
        .where(col(Audit.id) == first.id)
        .values(status="succeeded", prompt_tokens=10, completion_tokens=5)
    )
    await session.commit()

    with statements(engine) as sent:
        page, next_cursor = await batches.list_page(
            SessionStatements(session), tenant=None, limit=10, cursor=None, cursor_key=b"k" * 32
        )

    assert len(sent) == 2  # the page of batches, then the counts of all of them
    assert next_cursor is None
    assert [summary.batch.id for summary in page] == [c.batch.id for c in reversed(created)]
    assert [summary.counts for summary in page] == [
        BatchCounts(queued=3, total=3),
        BatchCounts(queued=1, succeeded=1, total=2),
        BatchCounts(queued=1, total=1),
    ]
    assert [(s.prompt_tokens, s.completion_tokens) for s in page] == [(0, 0), (10, 5), (0, 0)]
    assert {summary.status for summary in page} == {"running"}


async def test_cancel_aborts_only_the_audits_that_had_not_ended(
    session: AsyncSession, redis: ArqRedis
) -> None:
    summary = await create(session, 3)
    done, *unfinished = await audits_of(session, summary.batch.id)
    await session.execute(sa.update(Audit).where(col(Audit.id) == done.id).values(status="failed"))
    await session.commit()

    cancelled = await batches.cancel(SessionStatements(session), batch=summary.batch)
    await session.commit()
    await send_pending(session, redis)

    assert cancelled.counts == BatchCounts(failed=1, cancelled=2, total=3)
    assert cancelled.status == "cancelled"
    assert cancelled.batch.cancelled_at is not None
    for audit in unfinished:
        assert await redis.zscore(abort_jobs_ss, f"audit:{audit.id}") is not None
    assert await redis.zscore(abort_jobs_ss, f"audit:{done.id}") is None


async def test_results_after_reads_in_chunks_in_submission_order(session: AsyncSession) -> None:
    summary = await create(session, 10)
    await create(session, 4)  # another batch, not to be mixed in
    conn = SessionStatements(session)

    chunks = []
    after = None
    while chunk := await batches.results_after(
        conn, batch_id=summary.batch.id, after=after, limit=3
    ):
        chunks.append(chunk)
        after = chunk[-1].id

    assert [len(chunk) for chunk in chunks] == [3, 3, 3, 1]
    lines = [json.loads(row.line) for chunk in chunks for row in chunk]
    assert [line["subject"] for line in lines] == [f"Page {i}" for i in range(10)]
    assert [line["id"] for line in lines] == [str(row.id) for chunk in chunks for row in chunk]


async def test_results_after_an_audit_of_another_batch_is_none(session: AsyncSession) -> None:
    summary = await create(session, 2)
    other = await create(session, 1)
    conn = SessionStatements(session)
    strangers = await batches.results_after(conn, batch_id=other.batch.id, after=None, limit=5)
    assert strangers

    after_a_stranger = await batches.results_after(
        conn, batch_id=summary.batch.id, after=strangers[0].id, limit=5
    )

    assert after_a_stranger is None


async def test_a_stream_ends_without_an_empty_chunk(
    session: AsyncSession, engine: AsyncEngine
) -> None:
    summary = await create(session, 6)
    await session.commit()
    batch_id = summary.batch.id
    first = await batches.results_after(
        SessionStatements(session), batch_id=batch_id, after=None, limit=3
    )
    assert first is not None

    chunks = [
        chunk async for chunk in stream_results(engine, batch_id=batch_id, first=first, chunk=3)
    ]

    assert [chunk.count(b"\n") for chunk in chunks] == [3, 3]
